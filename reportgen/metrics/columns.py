"""The evaluation's metric registry: one record per column of its ranking table (what the number is, which
config metric asks for it, whether higher is better, which maps it scores), the rows it scores, and the
statistic every cell shows (the mean over images and its bootstrap interval)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..methods import REGISTRY

Row = tuple[str, str]  # (method, layer): a CAM at a target layer (or `fused`); a gradient method at ""
BOTH, GRADIENTS = ("cam", "gradients"), ("gradients",)
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


COLUMNS = (
    Column("deletion_auc", "deletion", "Deletion AUC", "lower", BOTH,
           "RISE deletion: area under p(target) while the most salient pixels go to the deletion substrate"),
    Column("insertion_auc", "insertion", "Insertion AUC", "higher", BOTH,
           "RISE insertion: area under p(target) while the most salient pixels come back on the insertion start"),
    Column("road", "road", "ROAD", "higher", BOTH,
           "pytorch-grad-cam's ROADCombined: (mean LeRF − mean MoRF) / 2 over the percentiles, noisy linear imputer"),
    Column("drop_in_confidence", "confidence_change", "Drop (grad-cam)", "lower", BOTH,
           "pytorch-grad-cam's DropInConfidence on x·map: max(0, p − p(x·map)), not divided by p"),
    Column("average_drop", "confidence_change", "Average drop (torch-cam)", "lower", BOTH,
           "torch-cam's Average Drop on x·map: max(0, p − p(x·map)) / p"),
    Column("increase_in_confidence", "confidence_change", "Increase in confidence", "higher", BOTH,
           "pytorch-grad-cam's IncreaseInConfidence and torch-cam's Increase in Confidence: share of images with "
           "p(x·map) > p"),
    Column("infidelity", "infidelity", "Infidelity", "lower", GRADIENTS,
           "Captum's normalised infidelity of the raw attribution, Gaussian noise, 10 samples (gradient methods)"),
    Column("sensitivity", "sensitivity", "Max-sensitivity", "lower", GRADIENTS,
           "Captum's sensitivity_max: uniform noise in ±0.02, 10 samples (gradient methods)"),
    Column("pointing_game", "localisation", "Pointing game", "higher", BOTH,
           "share of images whose map maximum lies in the object's box or mask (within the tolerance)"),
    Column("energy_pointing_game", "localisation", "Energy in box", "higher", BOTH,
           "share of the map's mass (minimum shifted to 0) inside the box or mask"),
    Column("top_iou", "localisation", "IoU top 15 %", "higher", BOTH,
           "IoU of the box or mask and the pixels at or above the map's 85th percentile"),
    Column("sanity_spearman", "sanity", "Spearman after randomisation", "lower", BOTH,
           "Spearman rank correlation of |map| with the trained model's after the whole network is randomised "
           "(sanity images only): high means the map does not depend on the weights"),
)
COLUMN = {c.id: c for c in COLUMNS}
METRICS = tuple(dict.fromkeys(c.metric for c in COLUMNS))  # every metric a config may ask for, in column order


def row_key(row: Row) -> str:
    """`gradcam/layer4` for a CAM at a layer, `saliency` for a gradient method."""
    method, layer = row
    return f"{method}/{layer}" if layer else method


def family(row: Row) -> str:
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


def mark_best(table: list[dict], columns: tuple[str, ...]) -> None:
    """Add to each row's `best` the columns in which its mean (`row["scores"][column]["mean"]`) is the best of
    all rows (ties: every tied row)."""
    for column in columns:
        sign = -1 if COLUMN[column].better == "lower" else 1
        means = [(sign * row["scores"][column]["mean"], k) for k, row in enumerate(table)
                 if row["scores"][column] is not None]
        if means:
            top = max(v for v, _ in means)
            for v, k in means:
                if v == top:
                    table[k]["best"].append(column)
