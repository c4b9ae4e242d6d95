"""The `evaluation` stage: which map to believe? Every map the `cam` and `gradients` stages computed, scored.

Streamed with them: in each batch it reads their results for the batch (`ctx.results`, every image of the
batch, before their `select` keeps only the detail images), scores the batch's images that belong to the
evaluation subset (`subset`: `images` of all images, seeded, the detail images always in) and keeps small
per-image numbers; `reduce` puts the batches together and `summarize` gives the mean and a seeded 95 %
bootstrap interval over images of every (method, layer) row and metric column.

The metrics (their columns and scorers, and what each computes) are `metrics.scoring`; maps recomputed
(max-sensitivity, sanity) come from the cam and gradients stages' `recompute` (`methods.dispatch.explain`).
The target is each image's first explained class of that stage (top-1 by default). The sanity cascade
(`metrics.sanity.cascade`) runs ONCE, in the batch that holds the first detail image, on that batch's detail
images (at most `sanity.images`): every method's maps recomputed on the randomised copy after each block, the
maps of the first of those images kept at every step.

Forwards of perturbed inputs go through `metrics.forward.inference_forward`, `batch_size` at a time. A segmenter's
evaluation (its class-in-region scores, the metrics that apply to it): `evaluation_regions`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..config.rules import COUNT, SEED, clean, setting
from ..errors import ReportgenError, did_you_mean
from ..metrics import baselines, cost, perturbation, sanity
from ..metrics.columns import Row, bootstrap, family, row_key
from ..progress import plural
from ..metrics.scoring import (COLUMN, COLUMNS, METRICS, SCORERS, Hit, MapBatch, Options, gradient_map, mark_best,
                               object_mask, peaks)
from . import Context, ModelInfo, Stage
from . import cam as cam_stage
from . import evaluation_regions as regions_
from . import gradients as gradients_stage
from .cam import CamResult
from .evaluation_regions import engine_for, logits_forward  # noqa: F401  (the stage's API: tests recompute maps)
from .gradients import GradientsResult


@dataclass(frozen=True)
class SubstratesConfig:
    """What deletion replaces pixels with, and what insertion starts from (RISE: zeros, a blurred copy)."""

    deletion: Literal["zero", "blur", "mean"] = "zero"
    insertion: Literal["zero", "blur", "mean"] = "blur"


@dataclass(frozen=True)
class SanityConfig:
    """Cascading parameter randomisation: `blocks` (top-level blocks, head first) or `modules` (every module with
    `reset_parameters`, as Quantus's MPRT), seeded; on the first few detail images."""

    blocks: Literal["blocks", "modules"] = "blocks"
    seed: int | None = setting(None, **SEED)  # default: the config's seed
    images: int = setting(4, **COUNT)  # at most this many detail images (those of the first detail image's batch)


@dataclass(frozen=True)
class EvaluationConfig:
    """Scores of every map the cam and gradients stages computed: faithfulness, sanity and localisation."""

    metrics: tuple[str, ...] | None = None  # null: all (localisation where boxes or masks exist); case, `-` forgiven
    images: int = setting(64, **COUNT)  # a seeded subset of all images scored (the detail images always in)
    batch_size: int = setting(64, **COUNT)  # perturbed inputs per forward
    step: int | None = setting(None, **COUNT)  # deletion/insertion pixels per step; null: 224 at 224², by area
    substrates: SubstratesConfig = field(default_factory=SubstratesConfig)
    percentiles: tuple[float, ...] = setting((20.0, 40.0, 60.0, 80.0), gt=0, lt=100)  # ROAD
    infidelity_sd: float = setting(0.1, gt=0)  # infidelity's Gaussian noise, normalised input units
    tolerance: float = setting(0.0, ge=0)  # pointing game: pixels around the box that still count (15: the paper's)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    # max-sensitivity and the sanity cascade recompute maps: "bounded" skips a forward-only method (rise, occlusion,
    # the superpixel methods) whose recomputations cost more forwards than its deletion curve; "always" recomputes all
    recompute: Literal["bounded", "always"] = "bounded"

    def _validate(self, err: Callable[[str, str], None]) -> EvaluationConfig:
        if not self.percentiles:
            err("percentiles", "needs at least one percentile (ROAD's default: [20, 40, 60, 80]).")
        if self.metrics is None:
            return self
        if not self.metrics:
            err("metrics", f"needs at least one metric (or null for all): {', '.join(METRICS)}.")
        names = []
        for name in self.metrics:
            key = re.sub(r"[\s-]+", "_", name.strip().lower())
            if key not in METRICS:
                err("metrics", f"unknown metric `{clean(name)}`.{did_you_mean(key, METRICS)} Metrics: "
                               f"{', '.join(METRICS)}.")
            names.append(key)
        return dataclasses.replace(self, metrics=tuple(dict.fromkeys(names)))


SANITY_LIMIT = 0.5  # a final Spearman correlation above this: the maps do not depend on the learned weights


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SanityOutcome:
    cascade: sanity.Cascade  # keys: row keys (see `row_key`)
    images: tuple[str, ...]  # the images it ran on
    image: str  # the one whose maps are kept at each step
    maps: dict[str, np.ndarray] = field(repr=False)  # row key -> (B + 1, H, W) float16: trained, then each block
    mode: str = "blocks"
    seed: int = 0


@dataclass(frozen=True)
class EvaluationResult:
    config: EvaluationConfig
    rows: tuple[Row, ...]  # cam rows (config order, each layer then `fused`), then gradient rows
    columns: tuple[str, ...]  # column ids computed, COLUMNS order
    indices: tuple[int, ...]  # scored images: index among all images
    names: tuple[str, ...]  # ... and name
    scores: dict[str, dict[str, np.ndarray]] = field(repr=False)  # row key -> column -> (n,) float64, NaN: none
    fraction: np.ndarray | None = None  # (P,) deletion/insertion x axis
    curve_sums: dict[str, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict, repr=False)
    sanity: SanityOutcome | None = None
    hits: tuple[Hit, ...] = ()
    boxes: dict[int, tuple] = field(default_factory=dict)  # detail image index -> box (x0, y0, x1, y1) or None
    step: int = 0
    seed: int = 0
    task: str = "classification"  # the model's (`metrics` that apply)
    offset: int = 0  # batch results: the batch's first image among all images, and its size (for `records`)
    size: int = 0
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- checks


def check(info: ModelInfo, cfg: EvaluationConfig) -> None:
    """A step that leaves nothing to delete; localisation asked for with images that carry no box or mask."""
    _, h, w = info.config.model.input_size
    if cfg.step is not None and cfg.step >= h * w:
        raise ReportgenError(f"`analyses.evaluation.step`: {cfg.step} pixels a step is the whole {h}×{w} input, so "
                             f"deletion and insertion have no step in between; use fewer than {h * w} (null: "
                             f"{perturbation.default_step(h, w)}, RISE's 224 at 224²).")
    regions_.refuse(info.task, cfg.metrics)
    if cfg.metrics is not None and "localisation" in cfg.metrics:
        from .. import datasets

        entries = datasets.select(info.config, info.labels, info.num_classes)
        if info.config.inputs.limit is not None:
            entries = entries[:info.config.inputs.limit]
        lacking = [info.config.shown_path(e.path) for e in entries if e.box is None and e.mask is None]
        if lacking:
            raise ReportgenError(
                f"`analyses.evaluation.metrics` asks for localisation, but {len(lacking)} of {len(entries)} images "
                f"have no box or mask: {datasets.listing(lacking, 5)}. Give them in a manifest (.csv / .jsonl: "
                "x0, y0, x1, y1 or mask), or leave `metrics` null to localise only the images that have them.")


def wanted(cfg: EvaluationConfig, task: str = "classification") -> tuple[str, ...]:
    """The metrics asked for (null: every one that applies to the task; localisation then only where boxes or masks
    exist)."""
    return cfg.metrics if cfg.metrics is not None else regions_.applies(task)


@functools.lru_cache(maxsize=8)  # asked once per batch with the same arguments
def subset(count: int, detail: tuple[int, ...], size: int, seed: int) -> frozenset[int]:
    """The images scored: every detail image, then a seeded sample of the others up to `size` in all (drawn from
    `range(count)` without listing it, so a million images cost what `size` does)."""
    chosen = set(detail)
    room = max(0, size - len(chosen))
    if room >= count - len(chosen):
        return frozenset(range(count))
    picks = random.Random(seed).sample(range(count), min(count, room + len(chosen)))
    return frozenset(chosen | set([i for i in picks if i not in chosen][:room]))


# ---------------------------------------------------------------------------- recomputing maps



# ---------------------------------------------------------------------------- the stage


def run(ctx: Context, cfg: EvaluationConfig) -> EvaluationResult:
    cam, grads = ctx.results.get(CamResult), ctx.results.get(GradientsResult)
    if cam is None and grads is None:
        raise ReportgenError("no CAM or gradient maps reached the evaluation: it must run in the same batches "
                             "as the cam and gradients stages.")
    n, _, h, w = ctx.batch.shape
    seed = ctx.config.seed
    count = ctx.count if ctx.count is not None else ctx.offset + n
    detail = tuple(ctx.detail) if ctx.detail is not None else tuple(range(count))
    chosen = subset(count, detail, cfg.images, seed)
    positions = [p for p in range(n) if ctx.offset + p in chosen]
    metrics = wanted(cfg, ctx.info.task)
    step = cfg.step if cfg.step is not None else perturbation.default_step(h, w)
    base = EvaluationResult(config=cfg, rows=(), columns=(), indices=(), names=(), scores={}, step=step, seed=seed,
                            task=ctx.info.task, offset=ctx.offset, size=n)
    regions = regions_.batch_regions(ctx)  # a segmenter's: what its maps explain
    if regions is not None and positions:  # an explained class predicted nowhere in its image has no score
        positions, left_out = regions_.scorable(regions, positions, batch_maps(cam, grads, positions, ctx.batch)[1])
        base = dataclasses.replace(base, notes=left_out)
    if not positions:
        return base

    maps, targets, attributions = batch_maps(cam, grads, positions, ctx.batch)
    baselines.add_centre(maps, targets, (h, w))  # a computed map, scored as the methods' (no method runs)
    x = ctx.batch[positions]
    images = [ctx.images[p] for p in positions]
    masks = [object_mask(image.mask, image.box, (h, w)) for image in images]
    indices = [ctx.offset + p for p in positions]

    segments = gradients_stage.image_segments(images, x)  # (n, H, W): the images' own feature masks, or None

    def attribution(method: str, xs: torch.Tensor, ts: torch.Tensor, image: int) -> torch.Tensor:
        rows = None if segments is None else segments[image:image + 1].expand(len(xs), -1, -1)  # copies of `image`
        return gradients_stage.recompute(grads, ctx.info, engine_for(ctx.info, ctx.model, xs), ts.cpu().numpy(),
                                         [method], seed, segments=rows, fast=gradients_stage.fast_forwards(ctx))[method]

    costly = cost.costly_recomputes(grads, cfg.recompute, metrics, (h, w), step)
    options = Options(step=cfg.step, deletion_substrate=cfg.substrates.deletion,
                      insertion_substrate=cfg.substrates.insertion, batch_size=cfg.batch_size,
                      percentiles=cfg.percentiles, infidelity_sd=cfg.infidelity_sd, tolerance=cfg.tolerance,
                      not_recomputed=frozenset(costly))
    forward = regions_.perturbation_forward(_perturbation_forward(ctx), None if regions is None else regions[positions])
    job = MapBatch(forward=forward, x=x, indices=indices, maps=maps, targets=targets,
                   attributions=attributions, masks=masks, explain=attribution, options=options, seed=seed)
    scores: dict[str, dict[str, np.ndarray]] = {row_key(r): {} for r in maps}
    for metric in metrics:
        if metric in SCORERS:
            ctx.log(f"evaluation: {metric} on {plural(len(indices), 'image')}")
            for row, columns in SCORERS[metric](job).items():
                scores[row_key(row)].update(columns)
    fraction, sums = None, {}
    for row, c in job.cache.get("curves", {}).items():
        fraction = c.fraction
        sums[row_key(row)] = (c.deletion.sum(0, dtype=np.float64), c.insertion.sum(0, dtype=np.float64), len(indices))

    shown, outcome = set(detail), None
    if "sanity" in metrics and detail and min(detail) in indices and (cam or set(grads.maps) - set(costly)):
        ctx.log("evaluation: sanity cascade")  # (on the maps it may recompute: none, no cascade)
        outcome = _sanity(ctx, cfg, cam, grads, [p for p in positions if ctx.offset + p in shown], regions,
                          skip=frozenset(costly))
    hits, boxes = [], {}
    if "localisation" in metrics:
        drawn = [j for j in range(len(indices)) if indices[j] in shown and masks[j] is not None]
        boxes = {indices[j]: images[j].box for j in drawn}
        hits = [hit for j in drawn for hit in peaks(job, j, images[j].name)]
    columns = tuple(c.id for c in COLUMNS if any(c.id in s for s in scores.values())
                    or (c.id == "sanity_spearman" and outcome is not None))
    notes = list(base.notes) + cost.costly_note(costly, metrics, (h, w), step)
    if grads is None and any(m in metrics for m in ("infidelity", "sensitivity")):
        notes.append("Infidelity and max-sensitivity score gradient attributions: without the gradients section "
                     "they have no rows.")
    return dataclasses.replace(
        base, rows=tuple(maps), columns=columns, indices=tuple(indices), names=tuple(i.name for i in images),
        scores=scores, fraction=fraction, curve_sums=sums, sanity=outcome, hits=tuple(hits), boxes=boxes,
        notes=tuple(notes))


def batch_maps(cam: CamResult | None, grads: GradientsResult | None, positions: list[int], like: torch.Tensor
               ) -> tuple[dict[Row, np.ndarray], dict[Row, np.ndarray], dict[Row, torch.Tensor]]:
    """The maps (n, H, W) in [0, 1] of the batch's images at `positions`, each row's targets (n,) (each image's first
    explained class) and the gradient rows' raw attributions (n, C, H, W) as tensors like `like`."""
    maps: dict[Row, np.ndarray] = {}
    targets: dict[Row, np.ndarray] = {}
    attributions: dict[Row, torch.Tensor] = {}
    if cam is not None:
        cam_targets = np.array([cam.targets[p][0] for p in positions], dtype=np.int64)
        for method in cam.computed_methods:
            for layer in cam.map_layers:
                if (method, layer, positions[0], int(cam_targets[0])) in cam.maps:
                    maps[(method, layer)] = np.stack([cam.maps[(method, layer, p, int(cam.targets[p][0]))]
                                                      for p in positions]).astype(np.float32)
                    targets[(method, layer)] = cam_targets
    if grads is not None:
        grad_targets = grads.classes[positions, 0].astype(np.int64)
        for method, values in grads.maps.items():
            raw = values[positions, 0]  # (n, C, H, W)
            maps[(method, "")] = gradient_map(raw)
            targets[(method, "")] = grad_targets
            attributions[(method, "")] = torch.from_numpy(np.ascontiguousarray(raw)).to(like)
    return maps, targets, attributions


def _perturbation_forward(ctx: Context) -> Callable[[torch.Tensor], torch.Tensor]:
    return gradients_stage.fast_forwards(ctx)(ctx.model, ctx.batch)  # the build's, shared with the gradients stage


def _sanity(ctx: Context, cfg: EvaluationConfig, cam: CamResult | None, grads: GradientsResult | None,
            positions: list[int], regions: torch.Tensor | None, skip: frozenset[str] = frozenset()) -> SanityOutcome:
    """The cascade on the batch's detail images (at most `sanity.images`), every method's maps recomputed (a
    segmenter's: in the regions of the trained model's prediction, `regions` of the batch)."""
    positions = positions[:cfg.sanity.images]
    fixed = None if regions is None else regions[positions]
    x = ctx.batch[positions]
    seed = cfg.sanity.seed if cfg.sanity.seed is not None else ctx.config.seed
    cam_t = np.array([cam.targets[p][0] for p in positions], dtype=np.int64) if cam is not None else None
    grad_t = grads.classes[positions, 0].astype(np.int64) if grads is not None else None
    segments = gradients_stage.image_segments([ctx.images[p] for p in positions], x)  # their own feature masks

    def recompute(model: nn.Module, xs: torch.Tensor, _targets: torch.Tensor) -> dict[str, np.ndarray]:
        engine = engine_for(ctx.info, model, xs, fixed)
        out: dict[str, np.ndarray] = {}
        if cam is not None:
            out.update({row_key(r): m for r, m in cam_stage.recompute(cam, ctx.info, engine, cam_t).items()})
        if grads is not None:
            found = gradients_stage.recompute(grads, ctx.info, engine, grad_t, [m for m in grads.maps if m not in skip],
                                              ctx.config.seed, ctx.offset + positions[0], segments,
                                              gradients_stage.fast_forwards(ctx))
            out.update({m: gradient_map(a.cpu().numpy()) for m, a in found.items()})
        return out

    order = sanity.blocks(ctx.model, cfg.sanity.blocks)
    targets = torch.as_tensor(cam_t if cam_t is not None else grad_t)
    result, maps = sanity.cascade_keeping_maps(ctx.model, order, recompute, x, targets, seed=seed)
    names = tuple(ctx.images[p].name for p in positions)
    return SanityOutcome(cascade=result, images=names, image=names[0], maps=maps, mode=cfg.sanity.blocks, seed=seed)


def reduce(results: list[EvaluationResult]) -> EvaluationResult:
    """The result of all images from the batches' (scores concatenated, curves summed, the one sanity run)."""
    results = [r for r in results if r.indices] or results[:1]
    first = results[0]
    if len(results) == 1:
        return first
    rows = tuple(dict.fromkeys(row for r in results for row in r.rows))
    columns = tuple(c.id for c in COLUMNS if any(c.id in r.columns for r in results))
    scores: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        key = row_key(row)
        scores[key] = {}
        for column in columns:
            if column == "sanity_spearman":
                continue
            parts = [r.scores.get(key, {}).get(column, np.full(len(r.indices), np.nan)) for r in results]
            if any(column in r.scores.get(key, {}) for r in results):
                scores[key][column] = np.concatenate(parts)
    sums: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for r in results:
        for key, (d, i, k) in r.curve_sums.items():
            if key in sums:
                d0, i0, k0 = sums[key]
                sums[key] = (d0 + d, i0 + i, k0 + k)
            else:
                sums[key] = (d, i, k)
    return dataclasses.replace(
        first, rows=rows, columns=columns, indices=tuple(i for r in results for i in r.indices),
        names=tuple(name for r in results for name in r.names), scores=scores,
        fraction=next((r.fraction for r in results if r.fraction is not None), None), curve_sums=sums,
        sanity=next((r.sanity for r in results if r.sanity is not None), None),
        hits=tuple(h for r in results for h in r.hits), boxes={k: v for r in results for k, v in r.boxes.items()},
        notes=tuple(dict.fromkeys(n for r in results for n in r.notes)),
        warnings=tuple(dict.fromkeys(w for r in results for w in r.warnings)))


# ---------------------------------------------------------------------------- aggregates


def per_image(result: EvaluationResult, row: Row, column: str) -> np.ndarray:
    """(n,) the column's values for the row, over its images (sanity: the sanity images)."""
    key = row_key(row)
    if column == "sanity_spearman":
        if result.sanity is None or key not in result.sanity.cascade.spearman:
            return np.zeros(0)
        values = result.sanity.cascade.spearman[key]
        return values[-1] if len(values) else np.zeros(0)
    return result.scores.get(key, {}).get(column, np.zeros(0))


def summarize(result: EvaluationResult) -> list[dict]:
    """Per row: method, layer, family and per column its bootstrap summary (None where not defined); `best` lists
    the columns in which the row's mean is the best of all rows; `baseline` and `not_better` (`baselines.mark`)."""
    table = [{"method": m, "layer": layer or None, "family": family((m, layer)), "key": row_key((m, layer)),
              "scores": {c: bootstrap(per_image(result, (m, layer), c), result.seed) for c in result.columns},
              "best": []} for m, layer in result.rows]
    mark_best(table, result.columns)
    baselines.mark(table, result.columns)
    return table


def mean_curves(result: EvaluationResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row key -> (mean deletion curve, mean insertion curve), each (P,)."""
    return {key: (d / k, i / k) for key, (d, i, k) in result.curve_sums.items() if k}


def sanity_verdicts(result: EvaluationResult) -> dict[str, float]:
    """Row key -> final mean Spearman, for the rows whose maps stay similar after full randomisation."""
    if result.sanity is None:
        return {}
    out = {}
    for key in result.sanity.cascade.spearman:
        final = result.sanity.cascade.mean_spearman(key)
        if len(final) and np.isfinite(final[-1]) and final[-1] > SANITY_LIMIT:
            out[key] = float(final[-1])
    return out


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def to_json(result: EvaluationResult) -> dict:
    cfg = result.config
    entry: dict = {
        "images": len(result.indices),
        "metrics": list(wanted(cfg, result.task)),
        "step": result.step,
        "seed": result.seed,
        "columns": [{"id": c, "label": COLUMN[c].label, "better": COLUMN[c].better,
                     "definition": COLUMN[c].definition} for c in result.columns],
        "rows": [{**{k: row[k] for k in ("method", "layer", "family", "best", "baseline", "not_better")},
                  "scores": {c: None if s is None else {k: _round(v) if k != "n" else v for k, v in s.items()}
                             for c, s in row["scores"].items()}} for row in summarize(result)],
        "notes": list(result.notes),
    }
    if result.fraction is not None:
        entry["curves"] = {"fraction": [_round(f, 5) for f in result.fraction],
                           "rows": [{"row": key, "deletion": [_round(v, 4) for v in d],
                                     "insertion": [_round(v, 4) for v in i]}
                                    for key, (d, i) in mean_curves(result).items()]}
    if result.sanity is not None:
        s = result.sanity
        entry["sanity"] = {
            "mode": s.mode, "seed": s.seed, "images": list(s.images), "blocks": list(s.cascade.blocks),
            "rows": [{"row": key, "spearman": [_round(v) for v in s.cascade.mean_spearman(key)],
                      "ssim": [_round(v) for v in s.cascade.mean_ssim(key)]} for key in s.cascade.spearman],
            "independent_of_weights": sanity_verdicts(result),
        }
    if result.boxes:
        where = dict(zip(result.indices, result.names))
        entry["localisation"] = {
            "tolerance": cfg.tolerance,
            "boxes": {where[i]: None if box is None else [float(v) for v in box] for i, box in result.boxes.items()},
            "hits": [{"image": h.name, "row": h.row, "peak": list(h.peak), "hit": h.hit} for h in result.hits]}
    return entry


def records(result: EvaluationResult) -> list[dict | None]:
    """Per image of the batch: row key -> column -> its score (None: not scored), or None when the image is not in
    the evaluation subset."""
    where = {index: j for j, index in enumerate(result.indices)}
    out: list[dict | None] = []
    for p in range(result.size):
        j = where.get(result.offset + p)
        if j is None:
            out.append(None)
            continue
        out.append({key: {c: _round(v[j]) for c, v in columns.items()} for key, columns in result.scores.items()})
    return out


def totals(result: EvaluationResult) -> dict[str, np.ndarray]:
    """`evaluation/<column>/<row key>` (n,) per-image scores; `evaluation/sanity/<row key>` (B + 1, H, W) the
    sanity image's maps, trained then after each block."""
    out = {f"evaluation/{c}/{key}": np.asarray(v, dtype=np.float32)
           for key, columns in result.scores.items() for c, v in columns.items()}
    if result.sanity is not None:
        out.update({f"evaluation/sanity/{key}": m.astype(np.float32) for key, m in result.sanity.maps.items()})
    return out


def headline(result: EvaluationResult) -> dict[str, float]:
    """Every column's mean per row, `<column>/<row key>` (`Report.metrics()`: `evaluation/deletion_auc/gradcam`)."""
    return {f"{column}/{row['key']}": float(summary["mean"]) for row in summarize(result)
            for column, summary in row["scores"].items()
            if summary is not None and summary.get("mean") is not None and math.isfinite(summary["mean"])}


SPEC = Stage(
    name="evaluation", title="Which map to believe", order=80, options=EvaluationConfig, run=run, check=check,
    reduce=reduce, totals=totals, to_json=to_json, records=records, requires_any=("cam", "gradients"),
    metrics=headline,
    needs_hooks=lambda cfg: ("the sanity check",) if "sanity" in wanted(cfg) else (),
)
