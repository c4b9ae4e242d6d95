"""`model.source: python`: the nn.Module given to `reportgen.build(config, model=...)`, used as it is
(`reportgen.models.given_model`); a config file cannot name one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ReportgenError
from .adapter import ModelAdapter, Source


@dataclass(frozen=True)
class GivenOptions:
    """No keys of its own: the model is the one given in Python."""


def load(cfg, base_dir: Path | None = None) -> ModelAdapter:
    raise ReportgenError("`model.source: python` is the model given in Python, `reportgen.build(config, model=...)`: "
                         "a config file names a model of another source.")


SOURCE = Source(name="python", options=GivenOptions, load=load, order=90,
                note="the nn.Module given to `reportgen.build(config, model=...)`")
