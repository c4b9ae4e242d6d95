"""reportgen: explain a PyTorch image classifier in one self-contained static HTML report.

    import reportgen
    report = reportgen.build("config.yaml", model=my_model, images=[pil_image], overrides={"seed": 1})
    report.metrics()  # {"dataset/top1_accuracy": ..., ...}

Importing the package is cheap: torch loads only when a build or validation runs.
"""
from .version import __version__  # noqa: F401


def load_config(path, overrides=()):
    from .config import load_config as _load

    return _load(path, overrides)


def build(config, *, model=None, images=None, overrides=None, log=None, detail=None):
    """See `reportgen.api.build`."""
    from .api import build as _build

    return _build(config, model=model, images=images, overrides=overrides, log=log, detail=detail)
