"""Layer inspection and selection: what every named layer outputs, which layers a config means, where a
CAM looks. Plain data over one described forward; hooks come from `reportgen.hooks`.

A layer's map is its output as (N, C, H, W): the output itself for a CNN, the view its model family declares
for a transformer (`models.layouts`: tokens folded into their grid, channels-last permuted); `spatial_shape`
gives its shape, `map_view` the function."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


# ---------------------------------------------------------------------------- layer maps


def spatial_shape(info: ModelInfo, name: str) -> tuple | None:
    """The (N, C, H, W) shape of layer `name`'s map, or None when its output is no map: not a tensor, not 4-D
    once viewed, or (in a transformer whose family declares its maps) undeclared. A token layer whose length
    is not prefix + its grid raises ReportgenError naming the layer and its shape."""
    shape = info.layers[name].output_shape if name in info.layers else None
    if shape is None:
        return None
    adapter = info.adapter
    if adapter is not None:
        if adapter.is_map(name) is False:
            return None
        layout = adapter.layout(name)
        if layout is not None:
            shape = layout.spatial_shape(name, tuple(shape))
    return tuple(shape) if len(shape) == 4 else None


def map_view(info: ModelInfo, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How layer `name`'s output becomes its (N, C, H, W) map (None: it already is)."""
    return info.adapter.layer_view(name) if info.adapter is not None else None


def layout_text(info: ModelInfo, name: str) -> str:
    """The declared layout of a layer in words ("tokens (N, 1 + 14·14, C)"), or "" (none declared)."""
    layout = info.adapter.layout(name) if info.adapter is not None else None
    return layout.describe() if layout is not None and layout.kind != "channels_first" else ""


def map_text(info: ModelInfo, name: str) -> str:
    """A layer's map for listings: "192x14x14" (C x H x W), with "(tokens)" or "(channels-last)" when it is a
    view of another layout; "-" when the output is no map; the error's gist for a token layer of the wrong length."""
    try:
        shape = spatial_shape(info, name)
    except ReportgenError:
        return "not a grid"
    if shape is None:
        return "-"
    layout = info.adapter.layout(name) if info.adapter is not None else None
    kind = {"tokens": " (tokens)", "channels_last": " (channels-last)"}.get(layout.kind, "") if layout else ""
    return "x".join(map(str, shape[1:])) + kind


# ---------------------------------------------------------------------------- the automatic CAM layer


@dataclass(frozen=True)
class AutoLayer:
    name: str
    shape: tuple  # (N, C, h, w) of its map
    skipped: tuple[tuple[str, tuple], ...] = ()  # later 4-D layers passed over (1x1 output): (name, shape)
    why: str = ""  # the model family's recommendation, when it made the pick
    layout: str = ""  # the layer's output layout in words, when it is not (N, C, H, W)

    def note(self) -> str:
        c, h, w = self.shape[1:]
        folded = f", its {self.layout} output shown as {c}×{h}×{w} maps" if self.layout else f" ({c}×{h}×{w})"
        if self.why:
            return (f"Target layer `{self.name}` was picked automatically: {self.why}{folded}. Set "
                    "`analyses.cam.target_layers` to choose others.")
        text = (f"Target layer `{self.name}` was picked automatically: the last layer with a spatial output "
                f"({c}×{h}×{w}) before global pooling.")
        if self.skipped:
            later = ", ".join(f"`{name}` ({s[1]}×{s[2]}×{s[3]})" for name, s in self.skipped)
            text += (f" Later layers {later} were passed over: a 1×1 output gives a constant map "
                     "(the input is small for this model).")
        return text + " Set `analyses.cam.target_layers` to choose others."


def auto_cam_layer(info: ModelInfo) -> AutoLayer:
    """Where a CAM looks: the layer the model's family recommends (a transformer's: `models.layouts`), else the
    last layer with a (N, C, h, w) map with h*w > 1 before global pooling, and the later 4-D layers it passed
    over because their output is 1×1."""
    recommended = info.adapter.layouts.cam_layer if info.adapter is not None else None
    if recommended is not None and recommended in info.layers and spatial_shape(info, recommended) is not None:
        return AutoLayer(name=recommended, shape=spatial_shape(info, recommended), why=info.adapter.layouts.cam_why,
                         layout=layout_text(info, recommended))
    best = None
    called = sorted((layer for layer in info.layers.values() if layer.order is not None), key=lambda layer: layer.order)
    skipped: list[LayerInfo] = []
    shapes: dict[str, tuple | None] = {}
    for layer in called:
        try:
            shape = shapes[layer.name] = spatial_shape(info, layer.name)
        except ReportgenError:
            continue
        if shape is None or layer.type.startswith("Adaptive"):
            continue
        if math.prod(shape[2:]) > 1:
            best, skipped = layer.name, []
        elif best is not None:
            skipped.append(layer)
    if best is None:
        raise ReportgenError(f"{type(info.model).__name__} has no layer with a spatial (N, C, H, W) output, so "
                             "there is nowhere to put a class activation map.")
    # prefer the outermost module with the same output (`layer4` over `layer4.1.relu`)
    target_shape, raw_shape = shapes[best], info.layers[best].output_shape
    for name in info.layers:
        if best.startswith(name + ".") and info.layers[name].output_shape == raw_shape \
                and shapes.get(name) == target_shape:
            best = name
            break
    outer = _outermost(info, [layer.name for layer in skipped])
    return AutoLayer(name=best, shape=target_shape, layout=layout_text(info, best),
                     skipped=tuple((name, shapes.get(name) or info.layers[name].output_shape) for name in outer))


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
    found.sort(key=lambda layer: (layer.order is None, layer.order if layer.order is not None else 0, position[layer.name]))
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
        at_depth = sorted({layer.type for layer in info.layers.values() if depth_of(layer.name) == pattern.depth})
        deepest = max((depth_of(n) for n in info.layers), default=0)
        if not at_depth:
            return message + f" Its layers go down to depth {deepest}."
        message += f" Types at depth {pattern.depth}: {', '.join(at_depth)}."
    types = sorted({layer.type for layer in info.layers.values()})
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
    """Called, with a (N, C, H, W) map (`spatial_shape`), not adaptive (global) pooling; `spatial`: and h*w > 1."""
    layer = info.layers[name]
    try:
        shape = spatial_shape(info, name)
    except ReportgenError:
        return False
    return (layer.order is not None and shape is not None
            and (not spatial or math.prod(shape[2:]) > 1) and not layer.type.startswith("Adaptive"))
