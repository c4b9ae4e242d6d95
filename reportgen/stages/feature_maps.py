"""The `feature_maps` stage: what each listed layer outputs for each image.

One forward pass per chunk of `inputs.batch_size` images, with forward hooks on ALL listed layers
at once (`hooks.forward_hooks`, removed on exit, also when a layer raises). Each hook copies the
layer's output (float32, on the CPU) the moment the layer returns, so a later in-place op (ResNet's
`ReLU(inplace=True)` after `bn1`, `out += identity` after a block's `bn2`) cannot change what we keep.
Each layer keeps its full (N, C, h, w) output, the channels to show and a few statistics.

Default layers, "the top-level blocks":
  1. start at the model; while exactly one child has a 4-D output (adaptive pooling aside) and that
     child is a container (VGG's or our demo's `features`), descend into it;
  2. candidates = the children with a 4-D (N, C, h, w) output, h*w > 1 (if any), not adaptive pooling;
  3. if some candidates are containers, keep only those (ResNet: layer1 ... layer4, not the stem);
  4. more than 8: keep the last layer before each change of spatial size (VGG: the ReLU ending
     each stage), then at most 8 evenly spaced ones.

Channels shown (`order`): the first `max_channels` (index), or the most active over all images by
spatial mean (mean) or spatial max (max), the same channels for every image so grids compare.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..config.rules import COUNT, setting
from ..config.values import LayerPattern
from ..errors import ReportgenError
from ..hooks import capture_outputs, cpu_copy
from ..layers import depth_of, is_spatial_map, map_view, select_layers, spatial_shape
from ..ops import batches
from ..progress import plural
from . import Context, ModelInfo, Stage


@dataclass(frozen=True)
class FeatureMapsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the top-level blocks
    max_channels: int = setting(32, **COUNT)
    order: Literal["index", "mean", "max"] = "index"
    scale: Literal["channel", "shared"] = "channel"


MAX_DEFAULT_LAYERS = 8
TOP_CHANNELS = 3  # most active channels listed per image


@dataclass(frozen=True)
class LayerMaps:
    name: str
    type: str
    maps: np.ndarray  # (N, C, h, w) float32: the layer's output for every image
    channels: tuple[int, ...]  # (K,) channels to show, in display order, K <= max_channels
    mean: np.ndarray  # (N,) float32 over channels and space
    std: np.ndarray  # (N,) float32
    zeros: np.ndarray  # (N,) float32: fraction of exact zeros (dead ReLU units)
    dead_channels: np.ndarray  # (N,) int64: channels that are zero everywhere
    top: np.ndarray  # (N, TOP_CHANNELS) int64: most active channels by spatial mean, most active first
    top_values: np.ndarray  # (N, TOP_CHANNELS) float32: their spatial means
    score: np.ndarray  # (C,) float64: over ALL images of the build (also those not kept), the sum of each
    #                    channel's spatial mean (order mean) or spatial max (order max); zeros (order index)


@dataclass(frozen=True)
class FeatureMapsResult:
    images: tuple[str, ...]  # (N,) image names
    layers: tuple[LayerMaps, ...]
    order: str
    scale: str  # "channel" | "shared": how the figures scale tiles
    max_channels: int
    notes: tuple[str, ...] = ()  # skipped layers, with why


# ---------------------------------------------------------------------------- layer selection

def _children(info: ModelInfo, prefix: str) -> list[str]:
    depth = depth_of(prefix) if prefix else 0
    return [n for n in info.layers
            if depth_of(n) == depth + 1 and (not prefix or n.startswith(prefix + "."))]


def default_layers(info: ModelInfo) -> list[str]:
    """The top-level blocks with a spatial feature map (see the module docstring); a transformer's blocks (or
    stages) as its family declares them (`models.layouts`), at most 8 evenly spaced."""
    blocks = [n for n in (info.adapter.layouts.blocks if info.adapter is not None else ()) if is_spatial_map(info, n)]
    if blocks:
        picks = np.linspace(0, len(blocks) - 1, min(MAX_DEFAULT_LAYERS, len(blocks))).round().astype(int)
        return [blocks[i] for i in sorted(set(picks.tolist()))]
    prefix = ""
    while True:
        maps = [n for n in _children(info, prefix) if is_spatial_map(info, n, spatial=False)]
        if len(maps) == 1 and not info.layers[maps[0]].is_leaf:
            prefix = maps[0]
            continue
        break
    candidates = [n for n in maps if is_spatial_map(info, n)] or maps
    if not candidates:
        if not prefix:
            raise ReportgenError(f"{type(info.model).__name__} has no top-level layer with an (N, C, H, W) "
                                 "feature map output: list layers under `analyses.feature_maps.layers`.")
        candidates = [prefix]
    containers = [n for n in candidates if not info.layers[n].is_leaf]
    if containers:
        candidates = containers
    candidates.sort(key=lambda n: info.layers[n].order)
    if len(candidates) > MAX_DEFAULT_LAYERS:
        spatial = [spatial_shape(info, n)[2:] for n in candidates]
        candidates = [n for i, n in enumerate(candidates) if i == len(candidates) - 1 or spatial[i] != spatial[i + 1]]
    if len(candidates) > MAX_DEFAULT_LAYERS:
        picks = np.linspace(0, len(candidates) - 1, MAX_DEFAULT_LAYERS).round().astype(int)
        candidates = [candidates[i] for i in sorted(set(picks.tolist()))]
    return candidates


def listed_layers(info: ModelInfo, cfg: FeatureMapsConfig) -> tuple[list[str], list[str]]:
    """(layers to capture, notes on layers a pattern matched that give no 4-D feature map, skipped).

    A layer named explicitly must give a feature map: otherwise a ReportgenError says why (as CAM does)."""
    if not cfg.layers:
        return default_layers(info), []
    named = {spec for spec in cfg.layers if not isinstance(spec, LayerPattern)}
    keep, notes = [], []
    for name in select_layers(info, cfg.layers, "analyses.feature_maps.layers"):
        layer = info.layers[name]
        if layer.order is None:
            why = "is not called by the forward pass"
        elif layer.output_shape is None or spatial_shape(info, name) is None:
            what = "no tensor" if layer.output_shape is None else f"shape {_batchless(layer.output_shape)}"
            why = f"produces {what}, not a (C, H, W) feature map"
        else:
            keep.append(name)
            continue
        if name in named:
            try:
                hint = ", ".join(f"`{n}`" for n in default_layers(info)[:4])
            except ReportgenError:
                hint = ""
            raise ReportgenError(f"`analyses.feature_maps.layers`: layer `{name}` ({layer.type}) {why}. Choose "
                                 f"layers with an (N, C, H, W) output{', like ' + hint if hint else ''}; "
                                 "`reportgen layers CONFIG` lists every layer's output shape.")
        notes.append(f"`{name}` ({layer.type}) {why}: skipped.")
    if not keep:
        raise ReportgenError("`analyses.feature_maps.layers`: none of the layers matched gives a (C, H, W) "
                             "feature map. " + " ".join(notes))
    return keep, notes


def _batchless(shape: Sequence[int]) -> str:
    return "(N, " + ", ".join(str(s) for s in shape[1:]) + ")" if len(shape) > 1 else str(tuple(shape))


# ---------------------------------------------------------------------------- stage contract

def check(info: ModelInfo, cfg: FeatureMapsConfig) -> None:
    listed_layers(info, cfg)


def run(ctx: Context, cfg: FeatureMapsConfig) -> FeatureMapsResult:
    names, notes = listed_layers(ctx.info, cfg)
    outputs, runtime_notes = capture_maps(ctx.model, ctx.batch, names, ctx.config.inputs.batch_size,
                                          forward=ctx.forward, engine=ctx.engine,
                                          views={name: map_view(ctx.info, name) for name in names})
    notes += runtime_notes
    layers = tuple(summarize(name, ctx.info.layers[name].type, outputs[name], cfg.max_channels, cfg.order)
                   for name in names if name in outputs)
    ctx.log(f"feature_maps: {plural(len(layers), 'layer')} for {plural(len(ctx.images), 'image')}")
    return FeatureMapsResult(images=tuple(im.name for im in ctx.images), layers=layers, order=cfg.order,
                             scale=cfg.scale, max_channels=cfg.max_channels, notes=tuple(notes))


def arrays(result: FeatureMapsResult) -> dict[str, np.ndarray]:
    return {f"feature_maps/{layer.name}/{image}": layer.maps[i].astype(np.float32)
            for layer in result.layers for i, image in enumerate(result.images)}


def _image_stats(layer: LayerMaps, i: int) -> dict:
    return {"mean": float(layer.mean[i]), "std": float(layer.std[i]), "zero_fraction": float(layer.zeros[i]),
            "dead_channels": int(layer.dead_channels[i]), "top_channels": [int(c) for c in layer.top[i]]}


def records(result: FeatureMapsResult) -> list[dict]:
    """Per image, each layer's statistics (images.jsonl)."""
    return [{layer.name: _image_stats(layer, i) for layer in result.layers} for i in range(len(result.images))]


def to_json(result: FeatureMapsResult) -> dict:
    return {
        "order": result.order,
        "scale": result.scale,
        "layers": [{
            "name": layer.name,
            "type": layer.type,
            "shape": list(layer.maps.shape[1:]),
            "channels_shown": list(layer.channels),
            "images": [{"image": image, **_image_stats(layer, i)} for i, image in enumerate(result.images)],
        } for layer in result.layers],
        "notes": list(result.notes),
    }


# ---------------------------------------------------------------------------- compute

def layer_outputs(model: torch.nn.Module, batch: torch.Tensor, names: Sequence[str], chunk: int, forward=None,
                  engine=None) -> list[dict]:
    """Per chunk of images, layer -> its output (copied to the CPU as the layer returned, `hooks.cpu_copy`): from
    the forward of a gradient pass the `engine` already ran when it observed every one of `names`, else one
    forward without autograd per `chunk` images of our own, with hooks that are gone on return, also on error."""
    chunks = engine.observed(names) if engine is not None and names else None
    if chunks is not None or not names:
        return chunks or []
    chunks = []
    with torch.no_grad(), capture_outputs(model, names, keep=cpu_copy) as outputs:
        for rows in batches(batch.shape[0], chunk):
            outputs.clear()
            (forward or model)(batch[rows])
            chunks.append(dict(outputs))
    return chunks


def capture_maps(model: torch.nn.Module, batch: torch.Tensor, names: Sequence[str],
                 chunk: int, forward=None, engine=None, views=None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The output of every layer in `names` for every image -> (name -> (N, C, h, w) float32, notes on layers
    that produced something else at run time). Each output is copied while its layer returns (a later
    in-place op cannot change it; `hooks.cpu_copy`); a layer called twice keeps its last call's output. From
    the forward of a gradient pass the `engine` already ran (it observed these layers), else one forward per
    chunk of images of our own, with hooks that are gone on return, also on error. `views`: layer -> how its
    output becomes (N, C, h, w) (a transformer's tokens; `ModelAdapter.layer_view`)."""
    bad: dict[str, str] = {}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for outputs in layer_outputs(model, batch, names, chunk, forward, engine):
        for name in names:
            out = outputs.get(name)
            view = (views or {}).get(name)
            if view is not None and torch.is_tensor(out):
                out = view(out).contiguous()
            if not torch.is_tensor(out) or out.dim() != 4:
                bad[name] = "no tensor" if not torch.is_tensor(out) else f"shape {_batchless(out.shape)}"
                continue
            parts[name].append(out.numpy())
    maps = {name: np.concatenate(p) for name, p in parts.items() if name not in bad and p}
    notes = [f"`{name}` produced {what} during the forward pass, not a (C, H, W) feature map: skipped."
             for name, what in bad.items()]
    return maps, notes


def channel_score(maps: np.ndarray, order: str) -> np.ndarray:
    """(N, C, h, w) -> (C,) float64: the sum over images of each channel's spatial mean (order mean) or spatial
    max (order max); zeros for order index."""
    if order == "index":
        return np.zeros(maps.shape[1])
    if order == "mean":
        return maps.mean(axis=(2, 3), dtype=np.float64).sum(axis=0)
    if order == "max":
        return maps.max(axis=(2, 3)).astype(np.float64).sum(axis=0)
    raise ValueError(f"unknown channel order {order!r}")


def choose_channels(score: np.ndarray, k: int, order: str) -> tuple[int, ...]:
    """(C,) channel scores -> k channel indices: the first k (index) or the k with the largest score, largest
    first; ties keep the lower index."""
    k = min(k, len(score))
    if order == "index":
        return tuple(range(k))
    return tuple(int(i) for i in np.argsort(-score, kind="stable")[:k])


def summarize(name: str, kind: str, maps: np.ndarray, max_channels: int, order: str) -> LayerMaps:
    """Channels to show and per-image statistics of one layer's (N, C, h, w) output."""
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)  # (N, C, h*w)
    spatial_mean = flat.mean(axis=2, dtype=np.float64)  # (N, C)
    k = min(TOP_CHANNELS, c)
    top = np.argsort(-spatial_mean, axis=1, kind="stable")[:, :k]  # (N, k)
    score = channel_score(maps, order)
    return LayerMaps(
        name=name,
        type=kind,
        maps=maps,
        channels=choose_channels(score, max_channels, order),
        mean=flat.mean(axis=(1, 2), dtype=np.float64).astype(np.float32),
        std=flat.reshape(n, -1).std(axis=1, dtype=np.float64).astype(np.float32),
        zeros=(flat == 0).mean(axis=(1, 2)).astype(np.float32),
        dead_channels=(flat == 0).all(axis=2).sum(axis=1).astype(np.int64),
        top=top.astype(np.int64),
        top_values=np.take_along_axis(spatial_mean, top, axis=1).astype(np.float32),
        score=score,
    )


PER_IMAGE = ("maps", "mean", "std", "zeros", "dead_channels", "top", "top_values")


def select(result: FeatureMapsResult, rows: list[int]) -> FeatureMapsResult:
    """The result of the images `rows` only; each layer's channel scores still sum over every image."""
    layers = tuple(dataclasses.replace(layer, **{f: getattr(layer, f)[rows] for f in PER_IMAGE})
                   for layer in result.layers)
    return dataclasses.replace(result, images=tuple(result.images[i] for i in rows), layers=layers)


def reduce(results: list[FeatureMapsResult]) -> FeatureMapsResult:
    """The result of all images from those of consecutive batches: each layer's per-image arrays joined, its
    channel scores added up and its channels chosen from them."""
    first = results[0]
    if len(results) == 1:
        return first
    layers = []
    for j, layer in enumerate(first.layers):
        score = sum(r.layers[j].score for r in results)
        joined = {f: np.concatenate([getattr(r.layers[j], f) for r in results]) for f in PER_IMAGE}
        layers.append(dataclasses.replace(layer, **joined, score=score,
                                          channels=choose_channels(score, first.max_channels, first.order)))
    return dataclasses.replace(first, images=tuple(name for r in results for name in r.images), layers=tuple(layers),
                               notes=tuple(dict.fromkeys(note for r in results for note in r.notes)))


SPEC = Stage(name="feature_maps", title="Feature maps", order=40, options=FeatureMapsConfig, run=run, check=check,
             reduce=reduce, select=select, observes=lambda info, cfg: listed_layers(info, cfg)[0], arrays=arrays,
             to_json=to_json, records=records, needs_hooks=True)
