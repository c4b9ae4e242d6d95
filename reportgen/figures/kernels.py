"""Figures of the `kernels` stage: kernel grids, weight statistics and filter visualisations.

Colour scale: ONE symmetric scale per figure, [-m, m] with m = max |w| over the weights shown, so
zero is always the same colour (mid grey in RGB tiles, white in the diverging `RdBu_r` tiles) and
tiles compare within the figure. A conv with 3 input channels shows each filter (3, kh, kw) as an
RGB tile (channel c of the weight drives colour channel c; grey = 0); deeper convs show a strip of
per-input-channel tiles per filter. Tiny kernels are upscaled with nearest neighbours.

No thumbnails: nearest-upscaled tiles of flat colour compress far better at full size than a
smoothly resampled thumbnail would (the page scales them down with `image-rendering: pixelated`).
"""
from __future__ import annotations

import io

import numpy as np

from ..stages import Context
from ..stages.kernels import FilterVisualisation, KernelsResult, LayerKernels
from .common import Figure, apply_colormap, make_figure, matplotlib_classes
from .grid import (colorbar_image, compose_grid, grid_cols, hstack, label_tiles, resize_tiles, symmetric_scale,
                   to_uint8)

DIVERGING = "RdBu_r"
RGB_TILE = 42  # px: the short side of an upscaled RGB kernel tile
CHANNEL_TILE = 24  # px: ... of one input channel's tile in deeper layers
OPTIMIZED_TILE = 112  # px: long side of a filter-visualisation tile
SIDE_BY_SIDE = 256  # px: kernel grids up to this tall sit beside their statistics (a report row's height)


def plot(result: KernelsResult, ctx: Context) -> dict:
    layers = []
    for layer in result.layers:
        grid, caption = plot_kernel_grid(layer, result.max_filters, result.max_channels)
        layers.append({
            "name": layer.name,
            "grid": grid,
            "caption": caption,  # the long description, shown under the figures
            "side_by_side": grid.height <= SIDE_BY_SIDE,
            "stats": plot_weight_stats(layer),
            "row": _layer_row(layer),
        })
    optimized = [{
        "layer": vis.layer,
        "grid": plot_optimized(vis),
        "rows": [{"filter": f, "start": float(s), "end": float(e), "gain": _gain(float(s), float(e))}
                 for f, s, e in zip(vis.filters, vis.start, vis.end)],
        "steps": vis.steps,
        "lr": vis.lr,
        "seed": vis.seed,
    } for vis in result.optimized]
    return {"layers": layers, "optimized": optimized, "notes": list(result.notes),
            "warnings": list(result.warnings)}


def _gain(start: float, end: float) -> str:
    return f"{end / start:.1f}x" if start > 1e-12 else "n/a"


def _layer_row(layer: LayerKernels) -> dict:
    w = layer.weight
    return {
        "layer": layer.name,
        "shape": " x ".join(str(s) for s in w.shape),
        "params": int(w.size),
        "mean": float(w.mean()),
        "std": float(w.std()),
        "min": float(w.min()),
        "max": float(w.max()),
        "norm_min": float(layer.norms.min()),
        "norm_median": float(np.median(layer.norms)),
        "norm_max": float(layer.norms.max()),
        "dead": len(layer.dead),
        "exploding": len(layer.exploding),
    }


def kernel_tiles(layer: LayerKernels, max_filters: int, max_channels: int) -> tuple[np.ndarray, float, bool]:
    """The kernel tiles before layout -> ((F, kh, kw, 3) RGB tiles or (F, c, kh, kw) values in [0, 1], m, rgb).

    F = min(out, max_filters); c = min(in, max_channels); values are w / (2m) + 0.5 with m = max |w| shown."""
    w = layer.weight[:max_filters]  # (F, in, kh, kw)
    rgb = w.shape[1] == 3
    if not rgb:
        w = w[:, :max_channels]
    scaled, m = symmetric_scale(w)
    if rgb:
        return scaled.transpose(0, 2, 3, 1), m, True  # (F, kh, kw, 3)
    return scaled, m, False  # (F, c, kh, kw)


def plot_kernel_grid(layer: LayerKernels, max_filters: int, max_channels: int) -> tuple[Figure, str]:
    """One picture of a layer's kernels with its colour bar, and the caption saying what is shown."""
    out, cin, kh, kw = layer.weight.shape
    values, m, rgb = kernel_tiles(layer, max_filters, max_channels)
    shown_f = values.shape[0]
    if rgb:
        tiles = resize_tiles(to_uint8(values), min_side=RGB_TILE, max_side=96)  # (F, s, s, 3)
        cols = grid_cols(shown_f)
        grid = compose_grid(tiles, cols, pad=2)
        grid = label_tiles(grid, [str(i) for i in range(shown_f)], tiles.shape[1:3], cols, pad=2)
        bar = colorbar_image("gray", -m, m, grid.shape[0])
        what = f"each filter's 3 input channels as one RGB tile (grey = 0, one scale [-{m:.3g}, {m:.3g}])"
    else:
        shown_c = values.shape[1]
        tiles = resize_tiles(to_uint8(values.reshape(-1, kh, kw)), min_side=CHANNEL_TILE, max_side=64)
        tiles = apply_colormap(tiles.astype(np.float32) / 255.0, DIVERGING)  # (F*c, s, s, 3)
        tiles = tiles.reshape((shown_f, shown_c) + tiles.shape[1:])  # (F, c, s, s, 3)
        blank = np.full((shown_f, 1) + tiles.shape[2:], 255, dtype=np.uint8)  # room for the filter's label
        tiles = np.concatenate([blank, tiles], axis=1)
        strips = np.stack([compose_grid(t, shown_c + 1, pad=1) for t in tiles])  # (F, sh, sw, 3): one per filter
        cols = grid_cols(shown_f, aspect=2.0 * strips.shape[1] / strips.shape[2])  # a landscape layout
        grid = compose_grid(strips, cols, pad=6)
        grid = label_tiles(grid, [str(i) for i in range(shown_f)], strips.shape[1:3], cols, pad=6)
        bar = colorbar_image(DIVERGING, -m, m, grid.shape[0])
        what = (f"one strip per filter, one tile per input channel (input channels 0 to {shown_c - 1} of {cin}), "
                f"colour scale [-{m:.3g}, {m:.3g}], white = 0")
    cap = f"{shown_f} of {out} filters" if shown_f < out else f"all {out} filters"
    caption = f"{layer.name} ({layer.type}, weight {out} x {cin} x {kh} x {kw}): {cap}, {what}."
    pixels = hstack([grid, bar], gap=6)
    alt = f"Convolution kernels of layer {layer.name}: {cap}, {'RGB tiles' if rgb else 'per-channel tiles'}"
    short = f"{layer.name}: {cap}" if rgb else f"{layer.name}: {cap} x {values.shape[1]} of {cin} input channels"
    return make_figure(pixels, alt=alt, caption=short), caption


def plot_weight_stats(layer: LayerKernels) -> Figure:
    """Weight histogram and per-filter L2 norms (dead filters in blue, exploding in red), matplotlib object API."""
    MplFigure, FigureCanvasAgg = matplotlib_classes()  # imported here: only this figure needs them
    fig = MplFigure(figsize=(6.0, 2.4), dpi=100)
    FigureCanvasAgg(fig)
    ax_hist, ax_norm = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    counts, edges = np.histogram(layer.weight.ravel(), bins=60)
    ax_hist.stairs(counts, edges, fill=True, color="#4c72b0")  # one artist, not 60 bars: drawn in a fraction
    ax_hist.set_title("weights", fontsize=9)
    ax_hist.set_ylabel("count", fontsize=8)
    colours = np.array(["#8c8c8c"] * len(layer.norms), dtype=object)
    colours[list(layer.dead)] = "#1f77b4"
    colours[list(layer.exploding)] = "#d62728"
    ax_norm.bar(np.arange(len(layer.norms)), layer.norms, width=0.9, color=list(colours))
    ax_norm.axhline(float(np.median(layer.norms)), color="black", linewidth=0.8, linestyle="--")
    ax_norm.set_title("L2 norm per filter (--- median; blue: dead, red: exploding)", fontsize=7.5, loc="right")
    ax_norm.set_xlabel("filter", fontsize=8)
    ax_norm.set_xlim(-0.8, len(layer.norms) - 0.2)
    for ax in (ax_hist, ax_norm):
        ax.tick_params(labelsize=7)
    # fixed margins that fit these labels at this size (tight_layout would draw the figure once more to measure)
    fig.subplots_adjust(left=0.09, right=0.985, bottom=0.19, top=0.89, wspace=0.22)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    png = buffer.getvalue()
    width, height = (int(v) for v in fig.canvas.get_width_height())
    return Figure(png=png, alt=f"Weight histogram and per-filter L2 norms of layer {layer.name}",
                  caption=f"{layer.name}: weights and filter norms",
                  width=width, height=height)


def plot_optimized(vis: FilterVisualisation) -> Figure:
    """The synthesised inputs, one tile per filter, labelled with the filter index."""
    images = vis.images  # (F, H, W, C) in [0, 1]
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    tiles = resize_tiles(to_uint8(stretch(images[..., :3])), min_side=48, max_side=OPTIMIZED_TILE)
    cols = grid_cols(len(tiles))
    grid = compose_grid(tiles, cols, pad=2)
    grid = label_tiles(grid, [str(f) for f in vis.filters], tiles.shape[1:3], cols, pad=2)
    return make_figure(
        grid,
        alt=f"Activation maximisation for layer {vis.layer}: the input that most excites filters "
            f"{', '.join(map(str, vis.filters))}",
        caption=f"{vis.layer}: inputs synthesised by gradient ascent ({vis.steps} steps, lr {vis.lr:g}, "
                f"seed {vis.seed}), one per filter, labelled with the filter index; each tile contrast-stretched "
                "(1st to 99th percentile).",
)


def stretch(images: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """(F, H, W, C) floats -> same shape in [0, 1]: each image's `low`..`high` percentile range mapped to [0, 1]."""
    flat = images.reshape(len(images), -1)
    lo = np.percentile(flat, low, axis=1).reshape(-1, 1, 1, 1)
    hi = np.percentile(flat, high, axis=1).reshape(-1, 1, 1, 1)
    span = np.maximum(hi - lo, 1e-6)
    return np.clip((images - lo) / span, 0.0, 1.0).astype(np.float32)
