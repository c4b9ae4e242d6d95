"""What the evaluation's ranking table is made of: a column's record (what the number is, which config metric
asks for it, whether higher is better, which maps it scores; `scoring` declares them with their scorers), its
rows (a method at a layer) and the statistic every cell shows (the mean over images and its bootstrap interval)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..methods import REGISTRY

Row = tuple[str, str]  # (method, layer): a CAM at a target layer (or `fused`); a gradient method at ""
# the columns that score any map also score the computed baseline maps (`baselines`: family "baseline"); those of
# gradient methods only need a raw attribution, which a baseline has not
BOTH, GRADIENTS = ("cam", "gradients", "baseline"), ("gradients",)
CENTRE = "baseline_centre"  # the centre-Gaussian baseline's row (`baselines.centre_map`), a name no method has
RESAMPLES = 1000  # bootstrap resamples of the images


@dataclass(frozen=True)
class Column:
    """One column of the ranking table: a number per image, from the metric the config names `metric`."""

    id: str  # key in report.json and images.jsonl
    metric: str  # the `analyses.evaluation.metrics` entry that asks for it
    label: str
    better: str  # "higher" | "lower"
    families: tuple[str, ...]  # the maps it scores
    definition: str


def row_key(row: Row) -> str:
    """`gradcam/layer4` for a CAM at a layer, `saliency` for a gradient method."""
    method, layer = row
    return f"{method}/{layer}" if layer else method


def family(row: Row) -> str:
    if row[0] == CENTRE:
        return "baseline"
    return REGISTRY[row[0]].family if row[0] in REGISTRY else ("cam" if row[1] else "gradients")


def bootstrap(values: np.ndarray, seed: int, resamples: int = RESAMPLES) -> dict | None:
    """Mean over images and its 95 % percentile bootstrap interval (images resampled with replacement, numpy's
    generator seeded with `seed`); NaN images left out; None when none is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    draws = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": mean, "low": float(min(low, mean)), "high": float(max(high, mean)), "n": int(v.size)}
