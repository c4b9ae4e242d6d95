"""Gradient saliency maps as pictures, in the display conventions of Captum's `visualize_image_attr`:
channels reduced to one map, a sign transform, scaling by the value below which (100 − outlier_perc)% of
the cumulative |attribution| lies, clipping to [−1, 1]; then a heat map and an overlay on the image.
"""
from __future__ import annotations

import math

import numpy as np

from ..methods import title as method_title
from ..stages.gradients import GAP_WARNING, GradientsResult, distinct
from .common import (Figure, apply_colormap, drawn_in_parallel, make_figure, map_figure, method_picker, overlay_figure,
                     to_png, upscale_nearest)
from .grid import colorbar_image

DEFAULT_CMAPS = {"absolute_value": "Blues", "positive": "Greens", "all": "RdBu_r"}  # Captum's, diverging for all
MIN_SIDE = 160  # small inputs (64x64) are upscaled (nearest) to at least this many pixels
THUMB_SIDE = 224


def reduce_channels(attr: np.ndarray, sign: str) -> np.ndarray:
    """(C, H, W) -> (H, W): the sum of absolute values over channels for `absolute_value`, the plain sum
    (Captum's `np.sum(attr, axis=2)`) for `positive` and `all`, so that signs survive."""
    attr = np.asarray(attr, dtype=np.float32)
    return np.abs(attr).sum(axis=0) if sign == "absolute_value" else attr.sum(axis=0)


def cumulative_sum_threshold(values: np.ndarray, percentile: float) -> float:
    """Captum's `_cumulative_sum_threshold`: the smallest value at which the sorted cumulative sum of
    `values` (non-negative) reaches `percentile`% of the total."""
    sorted_vals = np.sort(values.flatten())
    cum_sums = np.cumsum(sorted_vals)
    index = np.where(cum_sums >= cum_sums[-1] * 0.01 * percentile)[0][0]
    return float(sorted_vals[index])


def normalize_attribution(attr: np.ndarray, sign: str, outlier_perc: float) -> np.ndarray:
    """(C, H, W) attribution -> (H, W) float32 in [0, 1] (`absolute_value`, `positive`) or [−1, 1] (`all`):
    Captum's `_normalize_attr` on the channel-reduced map. An all-zero map stays zero."""
    reduced = reduce_channels(attr, sign)
    if sign == "positive":
        reduced = np.maximum(reduced, 0)
    elif sign == "absolute_value":
        reduced = np.abs(reduced)
    threshold = cumulative_sum_threshold(np.abs(reduced), 100.0 - outlier_perc)
    if threshold == 0:
        return np.zeros(reduced.shape, dtype=np.float32)
    return np.clip(reduced / threshold, -1, 1).astype(np.float32)


def colour(normed: np.ndarray, sign: str, cmap: str) -> np.ndarray:
    """(H, W) normalised map -> (H, W, 3) uint8 heat map (for `all`, [−1, 1] spans the colour map)."""
    return apply_colormap((normed + 1) / 2 if sign == "all" else normed, cmap)


GREY_FLOOR = 96  # the darkest grey beneath an overlay: the maps' strong colours (dark blue, green, red) stay distinct


def grey_beneath(display: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the input's grey levels in [GREY_FLOOR, 255], the picture beneath a gradient overlay.
    Lighter than the input, but with its shapes at ~60 % contrast: a dark input (a blue background's grey is
    dark) would otherwise swallow the dark end of the colour map, where the attribution is strongest."""
    grey = display[..., :3].astype(np.float32).mean(axis=2, keepdims=True)
    return np.repeat(GREY_FLOOR + grey * (255 - GREY_FLOOR) / 255, 3, axis=2).round().astype(np.uint8)


def overlay_layer(heat: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8: the heat map as ONE layer that the page shows both alone (over white: exactly the heat map,
    to rounding) and over the input (each pixel as opaque as its colour is dark, so as its attribution is strong).

    A gradient map is mostly near zero, and a colour map's zero is a colour too (white for Blues and RdBu):
    laid evenly over the image it veiled all of it, and the input beneath was lost in a grey wash. Here a pixel's
    opacity is its colour's largest distance from white and its colour the heat map's un-blended from white
    (alpha · colour + (1 − alpha) · white = heat): where the attribution is weak the image shows as it is, where it
    is strong the map's colour, at `alpha`, does. The input beneath is grey (`grey_beneath`): the map's colours are
    not confused with the image's own. A function of the colour-map entry, so at most 256 colours: a palette PNG,
    carried once for the heat map and its overlay. (A colour map whose low end is dark, as jet's, is opaque
    everywhere: it covers the input at `alpha`, as a CAM's overlay does.)"""
    dark = 255.0 - heat[..., :3].astype(np.float32)  # each channel's distance from white
    alpha = dark.max(axis=2, keepdims=True)
    colour = 255.0 - dark * 255.0 / np.maximum(alpha, 1.0)
    return np.dstack([colour, alpha]).round().clip(0, 255).astype(np.uint8)


def plot(result: GradientsResult, ctx) -> dict:
    cfg = result.config
    sign, cmap = cfg.sign, cfg.colormap or DEFAULT_CMAPS[cfg.sign]
    c = result.completeness
    groups, rows = [], []

    def figures_of(i: int) -> list[list[Figure]]:
        """Image i's heat maps and overlays, per target rank."""
        image = ctx.images[i]
        under = to_png(grey_beneath(image.display))  # beneath every overlay of this image: one copy in the report
        drawn = {}
        for r in distinct(result.classes[i]):
            cls = result.classes[i, r]
            what = f"{image.name}, class {int(cls)} ({ctx.label(int(cls))})"
            figures = []
            for method, maps in result.maps.items():
                name = method_title(method)
                if method == "guided_gradcam":
                    name += f" at {result.cam_layer}"
                heat = colour(normalize_attribution(maps[i, r], sign, cfg.outlier_perc), sign, cmap)
                layer = overlay_layer(heat)  # the heat map alone (over white) and its overlay: one picture
                figures.append(map_figure(layer, f"{name} heat map ({sign}) for {what}", f"{name}: heat map",
                                          min_side=MIN_SIDE))
                figures.append(overlay_figure(under, layer, cfg.alpha,
                                              f"{name} over the image ({sign}) for {what}", f"{name}: overlay",
                                              min_side=MIN_SIDE))
            drawn[r] = figures
        return drawn

    per_image = drawn_in_parallel(figures_of, range(len(ctx.images)))
    for i, image in enumerate(ctx.images):
        for r in distinct(result.classes[i]):
            cls = int(result.classes[i, r])
            figures = per_image[i][r]
            gap = None if c is None else float(c.gap[i, r])
            groups.append({
                "title": f"{image.name}: {ctx.label(cls)} (class {cls}, rank {r + 1})",
                "image": _figure(image.display[..., :3], f"Input image {image.name}", "input"),
                "figures": figures,
                "methods": [m for m in result.maps for _ in range(2)],  # each figure's method (heat map, overlay)
                "gap": None if gap is None else _gap_text(gap),
                "gap_warn": gap is not None and not gap <= GAP_WARNING,
            })
            if c is not None:
                rows.append({
                    "image": image.name, "class_index": cls, "label": ctx.label(cls),
                    "attribution_sum": float(c.attribution_sum[i, r]), "score_difference": float(c.delta[i, r]),
                    "gap": _gap_text(gap), "ok": not gap > GAP_WARNING,
                })
    lo = -1.0 if sign == "all" else 0.0
    scale = colorbar_image(cmap, lo, 1.0, height=MIN_SIDE)
    return {
        "sign": sign,
        "outlier_perc": cfg.outlier_perc,
        "scale": Figure(png=to_png(scale), alt=f"Colour scale {cmap}: {lo:g} to 1, in units of the clipping value",
                        width=scale.shape[1], height=scale.shape[0]),
        "notes": _notes(result, ctx),
        "warnings": list(result.warnings),
        "groups": groups,
        "picker": method_picker(result.maps),
        "completeness": rows,
        "timings": [{"method": method_title(m), "seconds": s} for m, s in result.seconds.items()],
    }


def _figure(pixels: np.ndarray, alt: str, caption: str) -> Figure:
    return make_figure(upscale_nearest(pixels, MIN_SIDE), alt=alt, caption=caption, thumb_side=THUMB_SIDE)


def _gap_text(gap: float) -> str:
    return "undefined (f(x) = f(baseline))" if math.isnan(gap) else f"{100 * gap:.2f}%"


def _notes(result: GradientsResult, ctx) -> list[str]:
    cfg = result.config
    notes = []
    methods = result.maps
    if ("saliency" in methods or "input_x_gradient" in methods) and any(result.reused_cam_pass):
        notes.append("Saliency and input × gradient reuse the forward and backward pass of the CAM section: "
                     "they cost no extra pass.")
    if result.cam_layer is not None:
        notes.append(f"Guided Grad-CAM: Grad-CAM at layer {result.cam_layer}, upsampled (nearest) to the input, "
                     "times guided backprop.")
    if "smoothgrad" in methods:
        notes.append(f"SmoothGrad: mean |gradient| over {cfg.samples} noisy copies, noise sd {cfg.stdev:g} × the "
                     f"image's value range, seed {result.seed}.")
    if "integrated_gradients" in methods:
        notes.append(f"Integrated gradients: {cfg.steps} Gauss–Legendre steps from a {result.baseline} baseline.")
    return notes
