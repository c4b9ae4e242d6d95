"""`model.source: timm`: a timm model by name, `timm.create_model(name, pretrained=False, **kwargs)`.

Nothing is downloaded: the model is built with random weights, and weights come only from `checkpoint:` (a
local `.safetensors` or state_dict file, loaded by `load_model` like every source's). The preprocessing is
timm's own data config for the model (`timm.data.resolve_model_data_config`): its resize (size / crop_pct),
centre crop, interpolation, mean and std, used by `inputs.preprocess: from_weights`.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from ..config import ModelConfig, Normalize, Preprocess
from ..errors import ReportgenError, did_you_mean
from .adapter import ModelAdapter
from .checkpoint import first_line

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
    if cfg.weights is not None:
        raise ReportgenError("`model.weights` names torchvision weights; a timm model takes its weights from "
                             "`model.checkpoint` (a local .safetensors or state_dict file). reportgen never downloads.")
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
                        prescribed=preprocess_from_data_config(timm, model, cfg.input_size))


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
