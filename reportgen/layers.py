"""Layer inspection and selection: what every named layer outputs, which layers a config means, where a
CAM looks. Plain data over one described forward; hooks come from `reportgen.hooks`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import LayerPattern
from .errors import ReportgenError, did_you_mean
from .hooks import capture_outputs, get_layer

if TYPE_CHECKING:
    from .context import ModelInfo


@dataclass(frozen=True)
class LayerInfo:
    name: str  # qualified name from named_modules()
    type: str  # class name
    output_shape: tuple | None  # of the LAST call during a 1-image forward (None: not called, or not a tensor)
    num_params: int
    is_leaf: bool
    order: int | None = None  # position of its (last) call in the forward pass


def describe_model(model: nn.Module, example: torch.Tensor, *, hooks: bool = True
                   ) -> tuple[dict[str, LayerInfo], object]:
    """(every named module with its type, parameter count and output shape, the model's raw output) from one
    forward of `example` (no grad).
    Without `hooks` (a TorchScript model takes none) the layers are listed without output shapes."""
    named = [name for name, _ in model.named_modules() if name] if hooks else []
    shape_of = lambda output: tuple(output.shape) if torch.is_tensor(output) else None  # noqa: E731
    with capture_outputs(model, named, keep=shape_of) as shapes, torch.no_grad():
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


# ---------------------------------------------------------------------------- the automatic CAM layer


@dataclass(frozen=True)
class AutoLayer:
    name: str
    shape: tuple  # (N, C, h, w) of its output
    skipped: tuple[tuple[str, tuple], ...] = ()  # later 4-D layers passed over (1x1 output): (name, shape)

    def note(self) -> str:
        c, h, w = self.shape[1:]
        text = (f"Target layer `{self.name}` was picked automatically: the last layer with a spatial output "
                f"({c}×{h}×{w}) before global pooling.")
        if self.skipped:
            later = ", ".join(f"`{name}` ({s[1]}×{s[2]}×{s[3]})" for name, s in self.skipped)
            text += (f" Later layers {later} were passed over: a 1×1 output gives a constant map "
                     "(the input is small for this model).")
        return text + " Set `analyses.cam.target_layers` to choose others."


def auto_cam_layer(info: ModelInfo) -> AutoLayer:
    """The last layer with a 4-D (N, C, h, w) output with h*w > 1 before global pooling: where a CAM looks,
    and the later 4-D layers it passed over because their output is 1×1."""
    best = None
    called = sorted((layer for layer in info.layers.values() if layer.order is not None), key=lambda l: l.order)
    skipped: list[LayerInfo] = []
    for layer in called:
        shape = layer.output_shape
        if shape is None or len(shape) != 4 or layer.type.startswith("Adaptive"):
            continue
        if math.prod(shape[2:]) > 1:
            best, skipped = layer.name, []
        elif best is not None:
            skipped.append(layer)
    if best is None:
        raise ReportgenError(f"{type(info.model).__name__} has no layer with a spatial (N, C, H, W) output, so "
                             "there is nowhere to put a class activation map.")
    # prefer the outermost module with the same output (`layer4` over `layer4.1.relu`)
    target_shape = info.layers[best].output_shape
    for name in info.layers:
        if best.startswith(name + ".") and info.layers[name].output_shape == target_shape:
            best = name
            break
    outer = _outermost(info, [layer.name for layer in skipped])
    return AutoLayer(name=best, shape=target_shape,
                     skipped=tuple((name, info.layers[name].output_shape) for name in outer))


def _outermost(info: ModelInfo, names: list[str]) -> list[str]:
    """`names` with each replaced by its outermost ancestor of the same output, without duplicates."""
    out: list[str] = []
    for name in names:
        shape = info.layers[name].output_shape
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in info.layers and info.layers[candidate].output_shape == shape:
                name = candidate
                break
        if not any(name == o or name.startswith(o + ".") for o in out):
            out = [o for o in out if not o.startswith(name + ".")] + [name]
    return out


def default_cam_layer(info: ModelInfo) -> str:
    return auto_cam_layer(info).name


# ---------------------------------------------------------------------------- selection by name and pattern


def depth_of(name: str) -> int:
    """torchinfo's depth: `layer1` -> 1, `layer1.0.conv1` -> 3."""
    return name.count(".") + 1


def match_pattern(info: ModelInfo, pattern: LayerPattern) -> list[str]:
    """Layers of `info` whose class name and depth match, in forward order (never-called layers last)."""
    found = [layer for layer in info.layers.values()
             if (pattern.type is None or layer.type == pattern.type)
             and (pattern.depth is None or depth_of(layer.name) == pattern.depth)]
    position = {name: i for i, name in enumerate(info.layers)}
    found.sort(key=lambda l: (l.order is None, l.order if l.order is not None else 0, position[l.name]))
    return [layer.name for layer in found]


def describe_pattern(pattern: LayerPattern) -> str:
    parts = ([f"type: {pattern.type}"] if pattern.type is not None else []) + \
            ([f"depth: {pattern.depth}"] if pattern.depth is not None else [])
    return "{" + ", ".join(parts) + "}"


def select_layers(info: ModelInfo, specs: Sequence[str | LayerPattern], key: str) -> list[str]:
    """Qualified names for a list of names and patterns, without duplicates, in the order given.

    Unknown names and patterns that match nothing raise ReportgenError naming `key` (the config key)."""
    names: list[str] = []
    for spec in specs:
        if isinstance(spec, LayerPattern):
            matched = match_pattern(info, spec)
            if not matched:
                raise ReportgenError(_no_match(info, spec, key))
        else:
            try:
                info.layer(spec)
            except ReportgenError as exc:
                raise ReportgenError(f"`{key}`: {exc}") from None
            matched = [spec]
        names.extend(m for m in matched if m not in names)
    return names


def _no_match(info: ModelInfo, pattern: LayerPattern, key: str) -> str:
    model = type(info.model).__name__
    message = f"`{key}`: no layer of {model} matches {describe_pattern(pattern)}."
    if pattern.depth is not None:
        at_depth = sorted({l.type for l in info.layers.values() if depth_of(l.name) == pattern.depth})
        deepest = max((depth_of(n) for n in info.layers), default=0)
        if not at_depth:
            return message + f" Its layers go down to depth {deepest}."
        message += f" Types at depth {pattern.depth}: {', '.join(at_depth)}."
    types = sorted({l.type for l in info.layers.values()})
    if pattern.type is not None and pattern.type not in types:
        message += did_you_mean(pattern.type, types) + f" Types in the model: {', '.join(types)}."
    return message


def is_conv(module: nn.Module) -> bool:
    """An nn.Conv2d (or subclass), also inside a TorchScript module."""
    return isinstance(module, nn.Conv2d) or getattr(module, "original_name", None) == "Conv2d"


def first_conv(info: ModelInfo) -> str:
    """The first Conv2d the forward pass calls."""
    convs = [n for n in match_pattern(info, LayerPattern(type="Conv2d"))
             if is_conv(get_layer(info.model, n))]
    if not convs:
        convs = [n for n, m in info.model.named_modules() if n and is_conv(m)]
    if not convs:
        raise ReportgenError(f"{type(info.model).__name__} has no nn.Conv2d layer, so it has no kernels to show.")
    return convs[0]


def is_spatial_map(info: ModelInfo, name: str, spatial: bool = True) -> bool:
    """Called, with a 4-D output, not adaptive (global) pooling; `spatial`: and h*w > 1."""
    layer = info.layers[name]
    shape = layer.output_shape
    return (layer.order is not None and shape is not None and len(shape) == 4
            and (not spatial or math.prod(shape[2:]) > 1) and not layer.type.startswith("Adaptive"))
