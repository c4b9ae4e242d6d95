"""The version of reportgen (what report.json and the manifests record)."""
__version__ = "0.1.0"
