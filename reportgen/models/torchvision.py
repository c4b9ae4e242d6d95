"""`model.source: torchvision`: a classification, segmentation or detection model by name, random or with weights
from the local cache.

Weights come only from the local torch hub cache (never downloaded) and load with `weights_only=True`. The
model is built by torchvision's builder without weights, with the arguments the weights imply (the class count,
GoogLeNet's and Inception's transform_input, a ViT's image size), then the state dict is loaded into it as
torchvision's builder would (DenseNet's old key names renamed, GoogLeNet's and Inception's auxiliary heads dropped
unless asked for). The weights also carry the preprocessing (`weights.transforms()`) and the class names
(`weights.meta["categories"]`).

The segmentation models (FCN, DeepLabV3, LRASPP: `torchvision.models.segmentation`) are task "segmentation": they
return {"out": (N, K, H, W) at the input's resolution, "aux": ...}. They are always built with `weights=None,
weights_backbone=None` passed explicitly (left at their defaults, the builders download ImageNet weights for their
backbone); weights for the whole model come from `model.weights` (which imply `num_classes` and FCN's and
DeepLabV3's `aux_loss`) or a `checkpoint:`.

The detectors (Faster R-CNN v1, v2 and MobileNetV3 (320), RetinaNet v1 and v2, FCOS, SSD and SSDlite:
`torchvision.models.detection`, `DETECTORS`) are task "detection", built the same way (`weights=None,
weights_backbone=None`); their keyword arguments (`num_classes`, `box_score_thresh` / `score_thresh`,
`detections_per_img`, `min_size` / `max_size`, ...) pass through. They take unnormalised 0-1 images and return
boxes in the input's pixels (`detection.py` says how reportgen feeds them); their weights prescribe no resize and no
normalisation. Mask and Keypoint R-CNN are not among them: reportgen explains boxes.
"""
from __future__ import annotations

import importlib
import re
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config.rules import setting, string_keys
from ..config.values import Normalize, Preprocess
from ..errors import ReportgenError, did_you_mean
from .adapter import ModelAdapter, Source
from .checkpoint import first_line, torch_load


_DYNAMO_UTILS = "torch._dynamo.utils"


if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class TorchvisionOptions:
    name: str | None = None  # a classifier, segmenter or detector of torchvision.models (resnet18, fcn_resnet50)
    weights: str | None = None  # e.g. IMAGENET1K_V1: only from the local torch cache, never downloaded
    kwargs: dict = setting(factory=dict, check=string_keys)  # keyword arguments of the builder (num_classes, ...)

    # what a key of these says where another source is chosen
    _ELSEWHERE = {"weights": "names torchvision weights; a `{source}` model takes its weights from `checkpoint:` (a "
                             "local .safetensors or state_dict file)."}

    def _validate(self, err) -> None:
        if not self.name:
            err("name", "source `torchvision` needs a model name (like resnet18).")


def import_models() -> types.ModuleType:
    """`torchvision.models`, imported without importing torch._dynamo.

    torchvision's `ops.roi_align` (imported by every `import torchvision`) does `from torch._dynamo.utils import
    is_compile_supported`, and importing torch._dynamo costs more than torch itself (1-2 s of a build's start on
    two cores) although a classifier never calls it. So for the length of torchvision's import a stand-in for
    `torch._dynamo.utils` sits in `sys.modules`; its `is_compile_supported` imports the real function when first
    called (roi_align only, and only under torch.compile), and any other name asked of it imports the real
    module. The stand-in is removed as soon as torchvision is imported: later imports get the real module."""
    if "torchvision.models" in sys.modules or _DYNAMO_UTILS in sys.modules:
        return importlib.import_module("torchvision.models")
    stand_in = types.ModuleType(_DYNAMO_UTILS, "stands in for torch._dynamo.utils while torchvision imports")

    def real() -> types.ModuleType:
        if sys.modules.get(_DYNAMO_UTILS) is stand_in:
            del sys.modules[_DYNAMO_UTILS]
        return importlib.import_module(_DYNAMO_UTILS)

    def is_compile_supported(*args, **kwargs):
        return real().is_compile_supported(*args, **kwargs)

    def attribute(name: str):  # any other name: the real module's (not dunders: `inspect` probes every module)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in.is_compile_supported = is_compile_supported
    stand_in.__getattr__ = attribute
    sys.modules[_DYNAMO_UTILS] = stand_in
    try:
        return importlib.import_module("torchvision.models")
    finally:
        if sys.modules.get(_DYNAMO_UTILS) is stand_in:
            del sys.modules[_DYNAMO_UTILS]


def load(cfg: ModelConfig, base_dir: Path | None = None) -> ModelAdapter:
    """The torchvision model `cfg.name` built with `cfg.kwargs`, with `cfg.weights` from the local cache."""
    tvm = import_models()

    segmenters = segmentation_names()
    names = torchvision_names() + segmenters + list(DETECTORS)
    if cfg.name not in names:
        raise ReportgenError(f"`model.name`: `{cfg.name}` is not a torchvision classification, segmentation or "
                             f"detection model.{did_you_mean(cfg.name, names)} See `torchvision.models.list_models()`."
                             + (" reportgen explains boxes: Mask and Keypoint R-CNN are not among its detectors."
                                if cfg.name.startswith(("maskrcnn_", "keypointrcnn_")) else ""))
    task = "segmentation" if cfg.name in segmenters else "detection" if cfg.name in DETECTORS else "classification"
    kwargs = dict(cfg.kwargs)
    call = cfg.name + (f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" if kwargs else "")
    fixed = _no_downloads(kwargs) if task != "classification" else {}
    kwargs = {key: value for key, value in kwargs.items() if key not in fixed}  # given as None: said once
    if cfg.weights is None:
        model = _build(cfg.name, None, kwargs, fixed=fixed)
        return ModelAdapter(model=model, source="torchvision", description=f"torchvision {call} (random weights)",
                            task=task)
    enum = tvm.get_model_weights(cfg.name)
    choices = [w.name for w in enum] + ["DEFAULT"]
    if cfg.weights not in choices:
        raise ReportgenError(f"`model.weights`: `{cfg.weights}` is not a weights name of {cfg.name}."
                             f"{did_you_mean(cfg.weights, choices)} Valid: {', '.join(choices)}.")
    weights = enum[cfg.weights] if cfg.weights != "DEFAULT" else enum.DEFAULT
    path = weights_cache_path(weights)
    if not path.is_file():
        raise ReportgenError(
            f"the weights {weights} are not in the local torch cache: expected the file {path}. reportgen never "
            f"downloads. Copy the file there (it comes from {weights.url}), or set `model.weights: null` for "
            "random weights, or give a `checkpoint:`."
        )
    with torch.device("cpu"):  # real tensors, also while the model is built on the meta device
        state = torch_load(path, trust=False, key="model.weights",
                           hint=f"Replace it with the file from {weights.url}.")
    model = _build(cfg.name, weights, kwargs, path, state, fixed=fixed)
    categories = weights.meta.get("categories")
    return ModelAdapter(model=model, source="torchvision", description=f"torchvision {call} ({weights})",
                        categories=list(categories) if categories else None,
                        prescribed=Preprocess(normalize=None) if task == "detection" else
                        preprocess_from_weights(weights), task=task)


def _no_downloads(kwargs: dict) -> dict:
    """What a segmentation or detection builder is always given: `weights=None, weights_backbone=None` (their defaults
    download the backbone's ImageNet weights; the model's own weights are loaded afterwards, as a classifier's);
    weights named in the kwargs are refused: reportgen never downloads."""
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:
            raise ReportgenError(f"`model.kwargs`: `{key}: {kwargs[key]}` makes torchvision download weights, and "
                                 "reportgen never downloads. Give the whole model's weights with `model.weights` (from "
                                 "the local torch cache) or `checkpoint:`, or leave it out.")
    return {"weights": None, "weights_backbone": None}


def _build(name: str, weights: object | None, kwargs: dict, path: Path | None = None,
           state: dict | None = None, fixed: dict | None = None) -> nn.Module:
    """torchvision's builder with `kwargs` and the `fixed` arguments, then the weights' `state` loaded; its
    warnings kept off the terminal (GoogLeNet's and Inception's notes about their default initialisation); an
    error names the key to mend."""
    tvm = import_models()

    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if weights is None:
                return tvm.get_model(name, **kwargs, **(fixed or {}))
            model = tvm.get_model(name, **_implied(name, weights, kwargs), **(fixed or {}))
            _load_weights(model, name, state, kwargs)
            return model
    except Exception as exc:
        if kwargs and isinstance(exc, TypeError):  # an unknown keyword, a value of the wrong type
            raise ReportgenError(f"`model.kwargs`: torchvision's {name}({shown}) failed: {first_line(exc)}.") from None
        if kwargs and weights is not None and isinstance(exc, ValueError) and "expected value" in str(exc):
            raise ReportgenError(f"`model.kwargs`: {first_line(exc)}: the weights {weights} fix it. Leave it out "
                                 "of `model.kwargs`, or set `model.weights: null`.") from None
        if kwargs and weights is not None:
            raise ReportgenError(f"`model.kwargs`: {name}({shown}) does not fit the weights file {path} "
                                 f"({type(exc).__name__}: {first_line(exc)}). The weights fix the architecture: "
                                 "leave out the kwargs that change it.") from None
        if weights is None:
            raise ReportgenError(f"`model.{'kwargs' if kwargs else 'name'}`: torchvision's {name}({shown}) raised "
                                 f"{type(exc).__name__}: {first_line(exc)}.") from None
        raise ReportgenError(f"`model.weights`: the file {path} does not fit {name} "
                             f"({type(exc).__name__}: {first_line(exc)}). Replace it with the file from "
                             f"{weights.url}.") from None


def _implied(name: str, weights: object, kwargs: dict) -> dict:
    """`kwargs` with what torchvision's builders set when given `weights`: the class count, a ViT's or MaxViT's
    input size, GoogLeNet's and Inception's auxiliary heads (in the weights), transform_input and no random
    init, VGG's no random init. A given value that differs is the builders' ValueError."""
    implied = {"num_classes": len(weights.meta["categories"])} if weights.meta.get("categories") else {}
    if name.startswith(("fcn_", "deeplabv3_")):
        implied["aux_loss"] = True  # the weights hold the auxiliary classifier
    if name.startswith("vit_"):
        implied["image_size"] = weights.meta["min_size"][0]
    elif name.startswith("maxvit_"):
        implied["input_size"] = weights.meta["min_size"]
    elif name in ("googlenet", "inception_v3"):
        implied |= {"aux_logits": True, "init_weights": False,
                    "transform_input": kwargs.get("transform_input", True)}
    elif name.startswith("vgg"):
        kwargs = {**kwargs, "init_weights": False}
    for key, value in implied.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"The parameter '{key}' expected value {value} but got {kwargs[key]} instead.")
    return {**kwargs, **implied}


_DENSENET_OLD_KEY = re.compile(  # torchvision's own pattern (densenet.py)
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _load_weights(model: nn.Module, name: str, state: dict, kwargs: dict) -> None:
    """Load torchvision weights' `state` into `model` as torchvision's builder would. On a model built on the
    meta device (`load_model` builds it there when the weights overwrite it all) the tensors are assigned, cast
    to the model's dtypes as a copying load would: a copy into it is lost."""
    if name.startswith("densenet"):  # names of torchvision's old DenseNet files: `norm.1` is now `norm1`
        for key in list(state):
            state[_DENSENET_OLD_KEY.sub(r"\1\2", key)] = state.pop(key)
    expected = model.state_dict()
    meta = any(t.is_meta for t in expected.values())
    if meta:
        for key, value in state.items():
            if key in expected and value.dtype != expected[key].dtype:
                state[key] = value.to(expected[key].dtype)
    with torch.device("cpu"):  # what a layer makes as it loads is real (BatchNorm's num_batches_tracked, which
        model.load_state_dict(state, assign=meta)  # old files lack)
    if name in ("googlenet", "inception_v3") and not kwargs.get("aux_logits", name == "inception_v3"):
        model.aux_logits = False  # the weights hold the auxiliary heads; the model was not asked for them
        for head in ("aux1", "aux2") if name == "googlenet" else ("AuxLogits",):
            setattr(model, head, None)


def preprocess_from_weights(weights: object) -> Preprocess | None:
    """The resize/crop/interpolation/mean/std of torchvision weights' `transforms()`, or None when they
    give no image-classification or segmentation transform (a segmentation model's resizes the shorter side and
    crops nothing)."""
    try:
        t = weights.transforms()
        crop = getattr(t, "crop_size", None)  # a segmentation model's transform crops nothing
        return Preprocess(resize=tuple(t.resize_size) if t.resize_size else None,
                          center_crop=tuple(crop) if crop else None,
                          normalize=Normalize(mean=tuple(t.mean), std=tuple(t.std)),
                          interpolation=t.interpolation.value)
    except (AttributeError, TypeError):
        return None


def torchvision_names() -> list[str]:
    """The names of torchvision's classification models."""
    tvm = import_models()

    return sorted(tvm.list_models(module=tvm))


def segmentation_names() -> list[str]:
    """The names of torchvision's segmentation models (FCN, DeepLabV3, LRASPP)."""
    tvm = import_models()

    return sorted(tvm.list_models(module=tvm.segmentation))


# torchvision's detectors of boxes, which `model.source: torchvision` builds (list_models also has Mask and
# Keypoint R-CNN, whose masks and keypoints reportgen does not read)
DETECTORS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
             "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
             "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large")


def weights_cache_path(weights: object) -> Path:
    """Where torchvision would keep a weights file: <torch hub dir>/checkpoints/<file name of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


SOURCE = Source(name="torchvision", options=TorchvisionOptions, load=load, order=10,
                note="a torchvision model by name, weights from the local torch cache")
