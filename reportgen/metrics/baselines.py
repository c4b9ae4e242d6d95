"""Baselines in the evaluation's ranking: maps that explain nothing, scored as the methods are, so a reader sees which
method beats them.

- the centre-Gaussian map (row `baseline_centre`): a Gaussian at the image's centre, sigma a quarter of the shorter
  side (`SIGMA_FRACTION`), its maximum 1. Many objects sit near the centre of a photograph, so a map that only says
  "the middle" scores well on deletion, insertion and localisation; it is computed (no method runs, no forward), and
  always scored when `analyses.evaluation` runs. Its row's family is "baseline": the columns of every map score it,
  those of gradient methods (infidelity, sensitivity: a raw attribution) and the sanity cascade do not.
- every row of a method whose record says `baseline=True` (`randomcam`, when configured: each of its layers).

A method row is "not better than a baseline" in a column (`mark`) when its 95 % interval [low, high] intersects a
baseline row's (the column's direction plays no part in that), or lies wholly on the worse side of it (↑: below,
↓: above): the only way to be better is an interval wholly on the better side of every baseline's.
"""
from __future__ import annotations

import numpy as np

from ..methods import REGISTRY
from .columns import CENTRE, Row, row_key
from .scoring import COLUMN

SIGMA_FRACTION = 0.25  # the centre Gaussian's sigma: a quarter of the image's shorter side
TITLE = "Centre Gaussian (baseline)"


def centre_map(h: int, w: int) -> np.ndarray:
    """(H, W) float32: exp(−d² / 2σ²), d the distance to the centre ((H−1)/2, (W−1)/2), σ = min(H, W) / 4,
    divided by its maximum (1 at the centre pixel of an odd size)."""
    sigma = SIGMA_FRACTION * min(h, w)
    y = (np.arange(h, dtype=np.float64) - (h - 1) / 2) ** 2
    x = (np.arange(w, dtype=np.float64) - (w - 1) / 2) ** 2
    m = np.exp(-(y[:, None] + x[None, :]) / (2 * sigma * sigma))
    return (m / m.max()).astype(np.float32)


def add_centre(maps: dict[Row, np.ndarray], targets: dict[Row, np.ndarray], shape: tuple[int, int]) -> None:
    """Add the centre row to a batch's maps (n, H, W), for the target of its first row (the cam stage's, else the
    gradients'): what the baseline is scored against."""
    if not maps:
        return
    first = next(iter(maps))
    n = len(maps[first])
    maps[(CENTRE, "")] = np.broadcast_to(centre_map(*shape), (n, *shape)).copy()
    targets[(CENTRE, "")] = targets[first]


def is_baseline(method: str) -> bool:
    """The centre row, or a method whose record is a baseline."""
    return method == CENTRE or (method in REGISTRY and REGISTRY[method].baseline)


def not_better(low: float, high: float, base_low: float, base_high: float, better: str) -> bool:
    """Whether an interval [low, high] is not better than a baseline's: they intersect, or it lies wholly on the
    worse side (`better`: "higher" | "lower")."""
    if low <= base_high and base_low <= high:
        return True
    return high < base_low if better == "higher" else low > base_high


def mark(table: list[dict], columns: tuple[str, ...]) -> None:
    """Per row of the ranking (`stages.evaluation.summarize`'s: method, layer, scores per column with low / high):
    `baseline` (bool) and `not_better` (column -> the row keys of the baselines it does not beat; baselines and
    unscored cells left out)."""
    for row in table:
        row["baseline"] = is_baseline(row["method"])
        row["not_better"] = {}
    bases = [row for row in table if row["baseline"]]
    for column in columns:
        for row in table:
            s = row["scores"].get(column)
            if row["baseline"] or s is None:
                continue
            beaten_by = [row_key((b["method"], b["layer"] or "")) for b in bases
                         if b["scores"].get(column) is not None
                         and not_better(s["low"], s["high"], b["scores"][column]["low"], b["scores"][column]["high"],
                                        COLUMN[column].better)]
            if beaten_by:
                row["not_better"][column] = beaten_by
