"""Figures of the `feature_maps` stage: per image and layer one grid of channel tiles (numpy/Pillow, one PNG),
beside the input image; per layer a table of statistics.

Tiles use the `viridis` colour map. Scale "channel": each tile min-max scaled on its own (shape, not
strength); "shared": one scale for the whole grid, drawn as a colour bar (strength compares across
channels). Tiles are upscaled with nearest neighbours to at least TILE_MIN px, big maps box-downscaled
to at most TILE_MAX px, so a 32-channel grid stays a few hundred pixels wide.
"""
from __future__ import annotations

import numpy as np

from ..stages import Context
from ..stages.feature_maps import FeatureMapsResult, LayerMaps
from .common import Figure, apply_colormap, drawn_in_parallel, make_figure, thumbnail, upscale_nearest
from .grid import colorbar_image, compose_grid, grid_cols, hstack, label_tiles, resize_tiles, scale_tiles, to_uint8

CMAP = "viridis"
TILE_MIN = 48
TILE_MAX = 64
PAD = 2
INPUT_MIN = 128  # px: small inputs (64 x 64) are enlarged with nearest neighbours to about this
INPUT_SIDE = 192  # px: the input image beside the grids is at most this big (it is also in the inputs section)


def plot(result: FeatureMapsResult, ctx: Context) -> dict:
    jobs = [(layer, i, name) for i, name in enumerate(result.images) for layer in result.layers]
    grids = iter(drawn_in_parallel(lambda job: plot_grid(*job, result.scale, result.order), jobs))
    images = []
    for i, name in enumerate(result.images):
        display = ctx.images[i].display if i < len(ctx.images) else None
        images.append({
            "name": name,
            "input": None if display is None else make_figure(
                thumbnail(upscale_nearest(display, INPUT_MIN), INPUT_SIDE),
                alt=f"Input image {name} as the model sees it", caption=f"{name} (input)"),
            "grids": [{"layer": layer.name, "figure": next(grids)} for layer in result.layers],
        })
    layers = [{
        "name": layer.name,
        "type": layer.type,
        "shape": " x ".join(str(s) for s in layer.maps.shape[1:]),
        "shown": len(layer.channels),
        "channels": int(layer.maps.shape[1]),
        "rows": _rows(layer, result.images),
    } for layer in result.layers]
    return {"images": images, "layers": layers, "notes": list(result.notes), "scale": result.scale,
            "order": result.order}


def _rows(layer: LayerMaps, images: tuple[str, ...]) -> list[dict]:
    return [{
        "image": image,
        "mean": float(layer.mean[i]),
        "std": float(layer.std[i]),
        "zeros": float(layer.zeros[i]) * 100.0,  # percent
        "dead_channels": int(layer.dead_channels[i]),
        "top": ", ".join(f"{int(c)} ({float(v):.3g})" for c, v in zip(layer.top[i], layer.top_values[i])),
    } for i, image in enumerate(images)]


def grid_pixels(maps: np.ndarray, channels: tuple[int, ...], scale: str) -> tuple[np.ndarray, float, float]:
    """(C, h, w) maps of one image -> ((H, W, 3) uint8 grid of the `channels` tiles, labelled, lo, hi)."""
    values, lo, hi = scale_tiles(maps[list(channels)], scale)  # (K, h, w) in [0, 1]
    tiles = resize_tiles(to_uint8(values), min_side=TILE_MIN, max_side=TILE_MAX)  # (K, s, s) uint8
    rgb = apply_colormap(tiles.astype(np.float32) / 255.0, CMAP)  # (K, s, s, 3)
    cols = grid_cols(len(channels))
    grid = compose_grid(rgb, cols, pad=PAD)
    return label_tiles(grid, [str(c) for c in channels], rgb.shape[1:3], cols, pad=PAD), lo, hi


def plot_grid(layer: LayerMaps, index: int, image: str, scale: str, order: str) -> Figure:
    grid, lo, hi = grid_pixels(layer.maps[index], layer.channels, scale)
    total = layer.maps.shape[1]
    shown = len(layer.channels)
    which = {"index": "in index order", "mean": "most active first (by mean)",
             "max": "most active first (by max)"}[order]
    if scale == "shared":
        grid = hstack([grid, colorbar_image(CMAP, lo, hi, grid.shape[0])], gap=6)
        how = f"one shared scale from {lo:.3g} to {hi:.3g}"
    else:
        how = f"each tile min-max scaled on its own, values {lo:.3g} to {hi:.3g}"
    count = f"{shown} of {total} channels" if shown < total else f"all {total} channels"
    # the caption stays short: it sets the figure's width in the report's horizontal rows
    return make_figure(
        grid,
        alt=f"Feature maps of layer {layer.name} ({layer.type}) for image {image}: {count} {which}, {how}, "
            "labelled with the channel index",
        caption=f"{layer.name}: {count}")
