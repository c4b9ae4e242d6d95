"""reportgen: explain a PyTorch CNN in one self-contained static HTML report.

    from reportgen import load_config, build
    report = build(load_config("config.yaml"))

Importing the package is cheap: torch loads only when a build or validation runs.
"""
__version__ = "0.1.0"


def load_config(path, overrides=()):
    from .config import load_config as _load

    return _load(path, overrides)


def build(config, log=None, detail=None):
    from .pipeline import build as _build

    quiet = lambda message: None  # noqa: E731
    return _build(config, log=log or quiet, detail=detail or quiet)
