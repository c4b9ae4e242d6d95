"""`model.source: timm`: a timm model by name, `timm.create_model(name, pretrained=False, **kwargs)`.

Nothing is downloaded: the model is built with random weights, and weights come only from `checkpoint:` (a
local `.safetensors` or state_dict file, loaded by `load_model` like every source's). The preprocessing is
timm's own data config for the model (`timm.data.resolve_model_data_config`): its resize (size / crop_pct),
centre crop, interpolation, mean and std, used by `inputs.preprocess: from_weights`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.rules import setting, string_keys
from ..config.values import Normalize, Preprocess
from ..errors import ReportgenError, did_you_mean
from .adapter import ModelAdapter, Source
from .checkpoint import first_line

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class TimmOptions:
    name: str | None = None  # any of timm.list_models() (random weights; a checkpoint gives trained ones)
    kwargs: dict = setting(factory=dict, check=string_keys)  # keyword arguments of timm.create_model

    def _validate(self, err) -> None:
        if not self.name:
            err("name", "source `timm` needs a model name (like vit_tiny_patch16_224).")

INSTALL = "pip install 'reportgen[timm]'"


def import_timm():
    """The timm package, or the error that says how to install it."""
    try:
        import timm
    except ImportError:
        raise ReportgenError(f"`model.source: timm` needs the timm package, which is not installed: {INSTALL}") from None
    return timm


def load(cfg: ModelConfig, base_dir: Path | None = None) -> ModelAdapter:
    """The timm model `cfg.name` built with `cfg.kwargs` (num_classes, img_size, ...), random weights."""
    timm = import_timm()
    names = timm.list_models()
    if cfg.name not in names:
        close = did_you_mean(cfg.name, names, n=3)
        raise ReportgenError(f"`model.name`: `{cfg.name}` is not a timm model.{close} See `timm.list_models()`.")
    kwargs = dict(cfg.kwargs)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    except Exception as exc:  # an unknown keyword, an impossible size
        key = "kwargs" if kwargs else "name"
        raise ReportgenError(f"`model.{key}`: timm.create_model({cfg.name!r}{', ' + shown if shown else ''}) failed: "
                             f"{type(exc).__name__}: {first_line(exc)}.") from None
    call = cfg.name + (f"({shown})" if shown else "")
    return ModelAdapter(model=model, source="timm", description=f"timm {call} (random weights)",
                        prescribed=preprocess_from_data_config(timm, model, cfg.input_size), task="classification")


def preprocess_from_data_config(timm, model, input_size) -> Preprocess:
    """timm's eval transform for the model at `input_size` (`model.input_size`) as a Preprocess: resize the shorter
    side to floor(size / crop_pct), centre-crop to the input size (crop_mode "squash" or a non-square size: resize
    to floor(size / crop_pct) both ways), normalise with the model's mean and std."""
    data = timm.data.resolve_data_config({"input_size": tuple(input_size)}, model=model)
    _, h, w = data["input_size"]
    crop_pct = data.get("crop_pct") or 1.0
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    resize = scale if data.get("crop_mode") == "squash" or h != w else (scale[0],)
    interpolation = data.get("interpolation", "bilinear")
    return Preprocess(resize=resize, center_crop=(h, w),
                      normalize=Normalize(mean=tuple(data["mean"]), std=tuple(data["std"])),
                      interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear")


SOURCE = Source(name="timm", options=TimmOptions, load=load, order=20,
                note="a timm model by name (`pip install 'reportgen[timm]'`), weights from a checkpoint")
