"""The evaluation's metric registry: per metric of the config, its columns of the ranking table (`COLUMNS`,
declared with `@scores` on its scorer) and its scorer: a function of one batch's maps (`MapBatch`) that calls
the metric functions of this package and returns, per row, a number per image for each of its columns.

What a map is here: a CAM as the cam stage gives it (in [0, 1]); a gradient attribution as the report draws it
(`gradient_map`: the sum over channels of its absolute values, divided by its maximum, so in [0, 1] too, which
x·map of the confidence change needs; every other metric ignores the scale). Infidelity and max-sensitivity
score the raw attribution, and max-sensitivity recomputes it on perturbed inputs through `MapBatch.explain`.

- `deletion`, `insertion`: RISE's curves and AUCs (`perturbation.deletion_insertion`), `step` pixels a step;
- `road`: pytorch-grad-cam's ROADCombined at `percentiles` (`perturbation.road`), the imputer's noise drawn
  from a generator seeded per image (the same noise for every map of that image);
- `confidence_change`: x·map (`perturbation.confidence_change`): pytorch-grad-cam's drop (not divided by p),
  torch-cam's Average Drop (divided by p), Increase in Confidence;
- `infidelity`, `sensitivity` (gradient methods, on the raw attribution): Captum's normalised infidelity with
  Gaussian noise of sd `infidelity_sd`, and `sensitivity_max` (uniform ±0.02), 10 samples each, seeded per image;
- `localisation` (images whose input gives a box or a mask): pointing game (`tolerance`), energy pointing game,
  IoU of the top 15 % with the object.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..methods.gradients import image_generator
from . import localisation, perturbation, regions, robustness
from .columns import BOTH, GRADIENTS, Column, Row, family, row_key

SAMPLES = 10  # infidelity and sensitivity: perturbations per image (Captum's default)
TOP_PERCENTILE = 85.0  # localisation IoU: the map's pixels at or above this percentile


@dataclass(frozen=True)
class Options:
    """The metrics' settings (the evaluation stage's options)."""

    step: int | None = None  # deletion / insertion: pixels a step (None: RISE's 224 at 224², by area)
    deletion_substrate: str = "zero"
    insertion_substrate: str = "blur"
    batch_size: int = 64  # perturbed inputs per forward
    percentiles: tuple[float, ...] = (20.0, 40.0, 60.0, 80.0)  # ROAD
    infidelity_sd: float = 0.1
    tolerance: float = 0.0  # pointing game: pixels around the object that still count
    not_recomputed: frozenset[str] = frozenset()  # methods max-sensitivity leaves out (costly to recompute)


@dataclass
class MapBatch:
    """What the metrics of one batch score: its images in the evaluation subset, every map, their targets."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # perturbed inputs -> logits, no autograd (`regions`: a segmenter)
    x: torch.Tensor  # (n, C, H, W) the scored images
    indices: list[int]  # their indices among all images
    maps: dict[Row, np.ndarray]  # (n, H, W) float32 in [0, 1]
    targets: dict[Row, np.ndarray]  # (n,) int64
    attributions: dict[Row, torch.Tensor]  # gradient rows: (n, C, H, W) raw
    masks: list[np.ndarray | None]  # per image (H, W) bool, or None
    # gradient method, x, targets, i -> raw maps of x: rows that are all (perturbed) copies of image i of `x` (its
    # feature mask, where the inputs give one, is image i's)
    explain: Callable[[str, torch.Tensor, torch.Tensor, int], torch.Tensor]
    options: Options
    seed: int
    cache: dict = field(default_factory=dict)

    def rows(self, families: tuple[str, ...]) -> list[Row]:
        """The rows of these families (a column's `families`)."""
        return [r for r in self.maps if family(r) in families]

    def by_target(self, rows: list[Row]) -> list[tuple[np.ndarray, list[Row]]]:
        """Rows grouped by their target vector (CAM and gradients may explain other classes)."""
        groups: dict[tuple, list[Row]] = {}
        for row in rows:
            groups.setdefault(tuple(self.targets[row].tolist()), []).append(row)
        return [(np.array(t, dtype=np.int64), rs) for t, rs in groups.items()]

    def generator(self, i: int) -> torch.Generator:
        """Image i's noise (ROAD, infidelity, sensitivity): seeded by the image's index, the same for every map."""
        return image_generator(self.seed, self.indices[i])


Scores = dict[Row, dict[str, np.ndarray]]  # row -> column -> (n,) float64, NaN: none
Scorer = Callable[[MapBatch], Scores]
COLUMNS: list[Column] = []  # the ranking table's columns, in order
SCORERS: dict[str, Scorer] = {}  # the scorers of the metrics scored per batch, by their config name


def scores(*columns: Column) -> Callable[[Scorer], Scorer]:
    """Declares the decorated scorer as the one of `columns` (their metric), which it fills."""
    def register(scorer: Scorer) -> Scorer:
        COLUMNS.extend(columns)
        SCORERS[columns[0].metric] = scorer
        return scorer

    return register


def curves(job: MapBatch) -> dict[Row, perturbation.Curves]:
    """Deletion and insertion curves of every map, computed once per batch for both columns."""
    if "curves" not in job.cache:
        out: dict[Row, perturbation.Curves] = {}
        for targets, rows in job.by_target(job.rows(COLUMN["deletion_auc"].families)):
            out.update(perturbation.deletion_insertion(
                job.forward, job.x, {r: job.maps[r] for r in rows}, targets, step=job.options.step,
                substrate=job.options.deletion_substrate, insertion_substrate=job.options.insertion_substrate,
                batch_size=job.options.batch_size))
        job.cache["curves"] = out
    return job.cache["curves"]


@scores(Column("deletion_auc", "deletion", "Deletion AUC", "lower", BOTH, "RISE deletion: area under p(target) "
               "while the most salient pixels go to the deletion substrate"))
def score_deletion(job: MapBatch) -> Scores:
    return {row: {"deletion_auc": c.deletion_auc} for row, c in curves(job).items()}


@scores(Column("insertion_auc", "insertion", "Insertion AUC", "higher", BOTH, "RISE insertion: area under "
               "p(target) while the most salient pixels come back on the insertion start"))
def score_insertion(job: MapBatch) -> Scores:
    return {row: {"insertion_auc": c.insertion_auc} for row, c in curves(job).items()}


@scores(Column("road", "road", "ROAD", "higher", BOTH, "pytorch-grad-cam's ROADCombined: (mean LeRF − mean MoRF) "
               "/ 2 over the percentiles, noisy linear imputer"))
def score_road(job: MapBatch) -> Scores:
    out = {}
    for row in job.rows(COLUMN["road"].families):
        values = [perturbation.road(regions.for_image(job.forward, i), job.x[i:i + 1], {row: job.maps[row][i:i + 1]},
                                    job.targets[row][i:i + 1], percentiles=job.options.percentiles,
                                    generator=job.generator(i), batch_size=job.options.batch_size)[row].combined[0]
                  for i in range(len(job.indices))]
        out[row] = {"road": np.asarray(values, dtype=np.float64)}
    return out


@scores(Column("drop_in_confidence", "confidence_change", "Drop (grad-cam)", "lower", BOTH,
               "pytorch-grad-cam's DropInConfidence on x·map: max(0, p − p(x·map)), not divided by p"),
        Column("average_drop", "confidence_change", "Average drop (torch-cam)", "lower", BOTH,
               "torch-cam's Average Drop on x·map: max(0, p − p(x·map)) / p"),
        Column("increase_in_confidence", "confidence_change", "Increase in confidence", "higher", BOTH,
               "pytorch-grad-cam's IncreaseInConfidence and torch-cam's Increase in Confidence: share of images "
               "with p(x·map) > p"))
def score_confidence(job: MapBatch) -> Scores:
    out = {}
    for targets, rows in job.by_target(job.rows(COLUMN["drop_in_confidence"].families)):
        changes = perturbation.confidence_change(job.forward, job.x, {r: job.maps[r] for r in rows}, targets,
                                                 batch_size=job.options.batch_size)
        for row, c in changes.items():
            out[row] = {"drop_in_confidence": c.drop_in_confidence.astype(np.float64),
                        "average_drop": c.average_drop.astype(np.float64),
                        "increase_in_confidence": c.increase_in_confidence.astype(np.float64)}
    return out


@scores(Column("infidelity", "infidelity", "Infidelity", "lower", GRADIENTS, "Captum's normalised infidelity of "
               "the raw attribution, Gaussian noise, 10 samples (gradient methods)"))
def score_infidelity(job: MapBatch) -> Scores:
    out = {}
    for row in job.rows(COLUMN["infidelity"].families):
        t = torch.as_tensor(job.targets[row])
        out[row] = {"infidelity": np.array([
            robustness.infidelity(job.forward, job.x[i:i + 1], job.attributions[row][i:i + 1], t[i:i + 1],
                                  sd=job.options.infidelity_sd, n_samples=SAMPLES, generator=job.generator(i))[0]
            for i in range(len(job.indices))])}
    return out


@scores(Column("sensitivity", "sensitivity", "Max-sensitivity", "lower", GRADIENTS,
               "Captum's sensitivity_max: uniform noise in ±0.02, 10 samples (gradient methods)"))
def score_sensitivity(job: MapBatch) -> Scores:
    out = {}
    for row in job.rows(COLUMN["sensitivity"].families):
        if row[0] in job.options.not_recomputed:
            continue
        t = torch.as_tensor(job.targets[row])
        out[row] = {"sensitivity": np.array([  # explain: (x, targets) -> raw attributions of copies of image i
            robustness.sensitivity_max(functools.partial(job.explain, row[0], image=i), job.x[i:i + 1], t[i:i + 1],
                                       n_samples=SAMPLES, generator=job.generator(i))[0]
            for i in range(len(job.indices))])}
    return out


@scores(Column("pointing_game", "localisation", "Pointing game", "higher", BOTH,
               "share of images whose map maximum lies in the object's box or mask (within the tolerance)"),
        Column("energy_pointing_game", "localisation", "Energy in box", "higher", BOTH,
               "share of the map's mass (minimum shifted to 0) inside the box or mask"),
        Column("top_iou", "localisation", "IoU top 15 %", "higher", BOTH, "IoU of the box or mask and the pixels at "
               "or above the map's 85th percentile"))
def score_localisation(job: MapBatch) -> Scores:
    have = [i for i, m in enumerate(job.masks) if m is not None]
    if not have:
        return {}
    out = {}
    masks = np.stack([job.masks[i] for i in have])
    for row in job.rows(COLUMN["pointing_game"].families):
        maps = job.maps[row][have]
        found = {"pointing_game": localisation.pointing_game(maps, masks, job.options.tolerance),
                 "energy_pointing_game": localisation.energy_pointing_game(maps, masks),
                 "top_iou": localisation.top_iou(maps, masks, TOP_PERCENTILE)}
        out[row] = {}
        for column, values in found.items():
            full = np.full(len(job.indices), np.nan)
            full[have] = [np.nan if v is None else float(v) for v in values]
            out[row][column] = full
    return out


# scored once per build, not per batch: the evaluation stage runs the sanity cascade
COLUMNS.append(Column("sanity_spearman", "sanity", "Spearman after randomisation", "lower", BOTH,
                      "Spearman rank correlation of |map| with the trained model's after the whole network is "
                      "randomised (sanity images only): high means the map does not depend on the weights"))
COLUMN = {c.id: c for c in COLUMNS}
METRICS = tuple(dict.fromkeys(c.metric for c in COLUMNS))  # every metric a config may ask for, in column order


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


def gradient_map(attribution: torch.Tensor | np.ndarray) -> np.ndarray:
    """(..., C, H, W) attribution -> (..., H, W) float32: Σ_c |a|, divided by each map's maximum (0 stays 0)."""
    a = np.abs(np.asarray(attribution, dtype=np.float32)).sum(axis=-3)
    top = a.reshape(*a.shape[:-2], -1).max(axis=-1)[..., None, None]
    return np.divide(a, top, out=np.zeros_like(a), where=top > 0)


def object_mask(mask: np.ndarray | None, box: tuple | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The object's pixels (H, W) bool: the mask when the input gives one, else its box's pixels; None without
    either."""
    if mask is not None:
        return np.asarray(mask, dtype=bool)
    if box is not None:
        return localisation.box_mask(box, shape)
    return None


@dataclass(frozen=True)
class Hit:
    """Where a map of a detail image peaks, and whether that is a hit (for the drawing)."""

    image: int  # index among all images
    name: str
    row: str  # row key
    peak: tuple[int, int]  # (row, column) in input pixels
    hit: bool


def peaks(job: MapBatch, j: int, name: str) -> list[Hit]:
    """Where each map of image j peaks (its first maximum, row-major) and whether it is a pointing-game hit;
    constant maps (no peak) left out."""
    out = []
    for row, maps in job.maps.items():
        m = maps[j]
        if m.max() == m.min():
            continue
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        hit = localisation.pointing_game(m[None], job.masks[j][None], job.options.tolerance)[0]
        out.append(Hit(image=job.indices[j], name=name, row=row_key(row), peak=(int(peak[0]), int(peak[1])),
                       hit=bool(hit)))
    return out
