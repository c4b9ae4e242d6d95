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
    """Per drawn pair of maps: {pair: its PairRow, a, b, difference: Figure}."""
    rows = []
    for pair in comparison.maps:
        top = float(max(np.abs(pair.a).max(), np.abs(pair.b).max())) or 1.0
        span = float(np.abs(pair.difference).max()) or 1.0
        picture = lambda values, cmap: upscale_nearest(apply_colormap(values, cmap), MIN_SIDE)  # noqa: E731
        rows.append({
            "pair": pair.row,
            "a": make_figure(picture(np.abs(pair.a) / top, "jet"), alt=f"A: {pair.row.key_a}"),
            "b": make_figure(picture(np.abs(pair.b) / top, "jet"), alt=f"B: {pair.row.key_b}"),
            "difference": make_figure(picture(pair.difference / (2 * span) + 0.5, DIVERGING),
                                      alt=f"B minus A: {pair.row.key}, largest change {span:.3g}"),
        })
    return rows
