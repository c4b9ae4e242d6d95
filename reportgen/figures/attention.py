"""Attention as pictures: per image, the rollout and gradient rollout over the image, and one grid of the class
token's attention per layer (rows) and head (columns)."""
from __future__ import annotations

import numpy as np

from ..stages.attention import AttentionResult
from .common import apply_colormap, make_figure, overlay_figure, resize_float, to_png, upscale_nearest
from .grid import compose_grid

MIN_SIDE = 160
TILE = 48  # side of a head's tile in the per-layer grid
MAX_IMAGES = 8  # images drawn in detail


def plot(result: AttentionResult, ctx) -> dict:
    cfg = result.config
    images = []
    for i, image in enumerate(ctx.images[:MAX_IMAGES]):
        base = np.ascontiguousarray(image.display[..., :3])
        under = to_png(base)
        maps = [("Attention rollout", result.rollout[i])]
        if result.grad_rollout is not None:
            label = result.labels.get(result.classes[i], f"class {result.classes[i]}")
            maps.append((f"Gradient rollout ({label})", result.grad_rollout[i]))
        figures = [make_figure(upscale_nearest(base, MIN_SIDE), alt=f"Input image {image.name}", caption=image.name)]
        for title, values in maps:  # drawn min to max (arrays.npz keeps them divided by their maximum)
            values = (values - values.min()) / max(float(np.ptp(values)), 1e-12)
            heat = apply_colormap(np.clip(resize_float(values, base.shape[:2]), 0, 1), cfg.colormap)
            figures.append(overlay_figure(under, heat, cfg.alpha, alt=f"{title} for image {image.name}: the map "
                                          "over the image", caption=title, min_side=MIN_SIDE))
        images.append({"name": image.name, "figures": figures, "heads": _heads(result, i, image.name, cfg.colormap)})
    return {"layers": list(result.layers), "heads": result.heads, "grid": list(result.grid),
            "prefix": result.prefix, "notes": list(result.notes), "images": images,
            "hidden_images": max(0, len(ctx.images) - MAX_IMAGES)}


def _heads(result: AttentionResult, i: int, name: str, cmap: str):
    """One figure: a row per layer, a tile per head, each tile min-max scaled on its own."""
    maps = result.cls_maps[i]  # (layers, heads, h, w)
    layers, heads = maps.shape[:2]
    flat = maps.reshape(layers * heads, *maps.shape[2:])
    lo = flat.min(axis=(1, 2), keepdims=True)
    hi = flat.max(axis=(1, 2), keepdims=True)
    scaled = (flat - lo) / np.maximum(hi - lo, 1e-12)
    tiles = np.stack([apply_colormap(np.clip(resize_float(t, (TILE, TILE)), 0, 1), cmap) for t in scaled])
    grid = compose_grid(tiles, cols=heads)
    return make_figure(grid, alt=f"Class token attention of image {name}: one row per layer ({layers}), one tile per "
                                 f"head ({heads}), each tile scaled on its own",
                       caption=f"{name}: layers top to bottom, heads left to right")
