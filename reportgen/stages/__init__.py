"""Stages: one module per YAML key under `analyses`, each computing plain data (no matplotlib, no Jinja).

A stage module `reportgen.stages.<name>` provides:

    check(info: ModelInfo, cfg) -> None          optional: raise ReportgenError for what can be known
                                                 before running (bad layer names, class indices, ...)
    run(ctx: Context, cfg) -> <Name>Result       the computation, a small frozen dataclass of arrays
    arrays(result) -> dict[str, np.ndarray]      the `arrays.npz` entries (keys as in DESIGN.md), float32
    to_json(result) -> dict | list | None        optional: the stage's entry in report.json

The pipeline finds the module by name (`importlib`), so adding a stage touches no registry.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import Config, TargetSpec
from ..errors import ReportgenError, did_you_mean
from ..hooks import forward_hooks


@dataclass(frozen=True)
class ImageInput:
    name: str  # unique file stem: the `<image>` of arrays.npz keys
    source: str  # the file it came from
    original: np.ndarray  # (H0, W0, 3) uint8 RGB, EXIF-oriented, as loaded
    display: np.ndarray  # (H, W, 3) uint8 RGB: the resized/cropped pixels the model sees, before normalisation


@dataclass(frozen=True)
class LayerInfo:
    name: str  # qualified name from named_modules()
    type: str  # class name
    output_shape: tuple | None  # of the LAST call during a 1-image forward (None: not called, or not a tensor)
    num_params: int
    is_leaf: bool
    order: int | None = None  # position of its (last) call in the forward pass


@dataclass
class ModelInfo:
    """What can be known about the model without analysing images: for `check()` and `reportgen layers`."""

    model: nn.Module
    config: Config
    labels: list[str] | None
    num_classes: int
    layers: dict[str, LayerInfo]  # in named_modules() order; "" (the model itself) excluded
    description: str = ""  # one line for the report header
    notes: list[str] = field(default_factory=list)  # things the report should say (e.g. labels dropped)

    def layer(self, name: str) -> LayerInfo:
        if name not in self.layers:
            raise ReportgenError(
                f"layer `{name}` does not exist in {type(self.model).__name__}.{did_you_mean(name, self.layers)}"
                " Run `reportgen layers CONFIG` to list the layer names."
            )
        return self.layers[name]

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a label; a clear error when out of range or unknown."""
        if isinstance(target, int):
            if not 0 <= target < self.num_classes:
                raise ReportgenError(f"class index {target} is outside the model's {self.num_classes} outputs "
                                     f"(0 to {self.num_classes - 1}).")
            return target
        if not self.labels:
            raise ReportgenError(f"class `{target}` is a label, but the model has no labels: set `model.labels`"
                                 " or give class indices.")
        if target not in self.labels:
            raise ReportgenError(f"class `{target}` is not in the label list.{did_you_mean(target, self.labels)}")
        return self.labels.index(target)


@dataclass
class Context:
    """Everything a stage's `run` may use. Built once per build by the pipeline."""

    info: ModelInfo
    device: torch.device
    batch: torch.Tensor  # (N, C, H, W) float32, preprocessed, on `device`; never modified by a stage
    images: list[ImageInput]
    logits: torch.Tensor  # (N, K) float32 on the CPU, from one forward pass of `batch`
    results: dict[str, object] = field(default_factory=dict)  # stage name -> result, for stages that ran before
    shared: dict = field(default_factory=dict)  # passes one stage computed for a later one (engine.GradPass, ...)
    log: Callable[[str], None] = lambda message: None  # detail for `-v`

    @property
    def model(self) -> nn.Module:
        return self.info.model

    @property
    def config(self) -> Config:
        return self.info.config

    @property
    def labels(self) -> list[str] | None:
        return self.info.labels

    def label(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return f"class {index}"

    @property
    def probabilities(self) -> torch.Tensor:  # (N, K)
        return torch.softmax(self.logits.float(), dim=1)

    def targets(self, spec: TargetSpec) -> list[list[int]]:
        """Per image, the class indices a TargetSpec asks for (top-k predictions or the explicit list)."""
        if spec.explicit:
            classes = [self.info.class_index(c) for c in spec.classes]
            return [list(classes) for _ in self.images]
        k = min(spec.k, self.logits.shape[1])
        return self.logits.topk(k, dim=1).indices.tolist()

    @classmethod
    def for_tests(cls, model: nn.Module, batch: torch.Tensor, *, labels: list[str] | None = None,
                  names: list[str] | None = None, config: Config | None = None) -> "Context":
        """A context around an in-memory model and batch, for unit tests."""
        model.eval()
        with torch.no_grad():
            logits = model(batch).float().cpu()
        n = batch.shape[0]
        names = names or [f"img{i}" for i in range(n)]
        display = _to_display(batch)
        images = [ImageInput(name=names[i], source=f"{names[i]}.png", original=display[i], display=display[i])
                  for i in range(n)]
        info = ModelInfo(model=model, config=config or Config(), labels=labels, num_classes=logits.shape[1],
                         layers=describe_layers(model, batch[:1]))
        return cls(info=info, device=batch.device, batch=batch, images=images, logits=logits)


def _to_display(batch: torch.Tensor) -> list[np.ndarray]:
    x = batch.detach().float().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return [img[:3].permute(1, 2, 0).numpy() for img in x]


def describe_layers(model: nn.Module, example: torch.Tensor) -> dict[str, LayerInfo]:
    """Every named module with its type, parameter count and output shape in one forward of `example`."""
    return describe_model(model, example)[0]


def describe_model(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, LayerInfo], object]:
    """(`describe_layers`, the model's output) from the same single forward of `example` (no grad)."""
    shapes: dict[str, tuple | None] = {}

    def hook_for(name: str):
        def hook(_m, _i, output):
            shapes.pop(name, None)  # re-insert: dict order = order of last call
            shapes[name] = tuple(output.shape) if torch.is_tensor(output) else None
        return hook

    named = [name for name, _ in model.named_modules() if name]
    if isinstance(model, torch.jit.ScriptModule):  # no hooks: the layers are listed without output shapes
        named = []
    with forward_hooks(model, [(name, hook_for(name)) for name in named]), torch.no_grad():
        out = model(example)
    order = {name: i for i, name in enumerate(shapes)}
    return {
        name: LayerInfo(
            name=name,
            type=getattr(module, "original_name", type(module).__name__),  # TorchScript keeps it there
            output_shape=shapes.get(name),
            num_params=sum(p.numel() for p in module.parameters(recurse=False)),
            is_leaf=not any(True for _ in module.children()),
            order=order.get(name),
        )
        for name, module in model.named_modules()
        if name
    }, out


def default_cam_layer(info: ModelInfo) -> str:
    """The last layer with a 4-D (N, C, h, w) output with h*w > 1 before global pooling: where a CAM looks."""
    best = None
    called = sorted((layer for layer in info.layers.values() if layer.order is not None), key=lambda l: l.order)
    for layer in called:
        shape = layer.output_shape
        if (shape is not None and len(shape) == 4 and math.prod(shape[2:]) > 1
                and not layer.type.startswith("Adaptive")):
            best = layer.name
    if best is None:
        raise ReportgenError(f"{type(info.model).__name__} has no layer with a spatial (N, C, H, W) output, so "
                             "there is nowhere to put a class activation map.")
    # prefer the outermost module with the same output (`layer4` over `layer4.1.relu`)
    target_shape = info.layers[best].output_shape
    names = list(info.layers)
    for name in names:
        if best.startswith(name + ".") and info.layers[name].output_shape == target_shape:
            return name
    return best
