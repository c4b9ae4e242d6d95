"""The pictures of a comparison (`reportgen compare`): each map of A beside B's and their difference.

A and B share one scale (the larger of their maxima), so equal colours mean equal values; the difference
B − A is drawn on a diverging scale symmetric about zero (white: unchanged; red: B higher; blue: A higher).
"""
from __future__ import annotations

import numpy as np

from .common import apply_colormap, make_figure, upscale_nearest

DIVERGING = "RdBu_r"
MIN_SIDE = 96  # px: small maps are enlarged by whole pixels


def plot(comparison) -> list[dict]:
    """Per shared map: {key, a, b, difference: Figure, mean_abs_difference, correlation}."""
    rows = []
    for pair in comparison.maps:
        top = float(max(np.abs(pair.a).max(), np.abs(pair.b).max())) or 1.0
        span = float(np.abs(pair.difference).max()) or 1.0
        picture = lambda values, cmap: upscale_nearest(apply_colormap(values, cmap), MIN_SIDE)  # noqa: E731
        rows.append({
            "key": pair.key, "class_a": pair.class_a, "class_b": pair.class_b,
            "a": make_figure(picture(np.abs(pair.a) / top, "jet"), alt=f"A: {pair.key}"),
            "b": make_figure(picture(np.abs(pair.b) / top, "jet"), alt=f"B: {pair.key}"),
            "difference": make_figure(picture(pair.difference / (2 * span) + 0.5, DIVERGING),
                                      alt=f"B minus A: {pair.key}, largest change {span:.3g}"),
            "mean_abs_difference": pair.mean_abs_difference, "correlation": pair.correlation,
        })
    return rows
