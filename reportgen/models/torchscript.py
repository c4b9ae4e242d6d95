"""`model.source: torchscript`: a TorchScript file (`torch.jit.save`), loaded on the CPU.

A TorchScript model runs, and its parameters can be read (kernels, summary), but its layers take no forward
hooks: what reads layer outputs cannot run (`ModelAdapter.hooks` is False; see `adapter.TORCHSCRIPT_LIMITS`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config.rules import setting
from ..errors import ReportgenError
from .adapter import ModelAdapter, Source

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class TorchscriptOptions:
    path: Path | None = setting(None, kind="path")  # the file `torch.jit.save` wrote

    def _validate(self, err) -> None:
        if self.path is None:
            err("path", "source `torchscript` needs `path:` to the saved model.")


def load(cfg: ModelConfig, base_dir: Path | None = None) -> ModelAdapter:
    """The TorchScript model in `cfg.path`."""
    if not cfg.path.is_file():
        raise ReportgenError(f"`model.path`: the TorchScript file {cfg.path} does not exist.")
    try:
        with warnings.catch_warnings():  # torch's note that torch.jit.load is deprecated: not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(cfg.path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
        raise ReportgenError(f"`model.path`: {cfg.path} is not a TorchScript model ({type(exc).__name__}).") from None
    return ModelAdapter(model=model, source="torchscript", description=f"TorchScript {cfg.path.name}")


SOURCE = Source(name="torchscript", options=TorchscriptOptions, load=load, order=40,
                note="a TorchScript file (runs; its layers take no hooks)",
                runs_code="runs the TorchScript program in `model.path`")
