"""The evaluation of a detector's per-box maps (`model.task: detection`): what applies, and how it is scored.

A detector's map explains ONE explained box j of its image i (`ctx.boxes`, the cam stage's `BoxMapsResult`), so
every score here is per box (the unit a mean and its bootstrap interval are over), not per image:

- deletion, insertion (as the D-RISE paper scores its maps), ROAD, confidence change: the classifier's metrics
  (`metrics.scoring`) with the box's score in place of p(target): column j of `methods.boxes.BoxScores` on the
  perturbed input, pytorch-grad-cam's `FasterRCNNBoxScoreTarget` of box j (IoU + score of the best-matching
  detection of its class when that IoU > 0.5, else 0: in [0, 2]), each perturbed input scored against the boxes of
  the image it derives from (`BoxScores.for_rows(owner)`), `batch_size` a forward;
- localisation: the pointing game (with `tolerance`), the energy in the box and the top-15 % IoU, against the TRUE
  box each explained box matches (`metrics.detection.match_boxes` at `detection.iou_threshold`, truth
  `ImageInput.boxes`); a box that matches none (a false positive, a crowd, an image without annotations) is not
  scored, and the count of scored boxes is the columns' `n`;
- the sanity cascade: every method's maps of the same boxes recomputed on the randomised copy (the detcam stage's
  `cam_detection.box_maps`), compared with the trained model's, per box. A box the randomised model no longer finds
  (no detection of its class at IoU > 0.5) scores 0 everywhere, so its gradient maps are constant: its correlation
  is NaN, left out of the mean as any constant map's (a note says how many boxes were still found at the end).

The centre-Gaussian baseline (`metrics.baselines`) is a row as in a classifier's evaluation: the same map for every
box, scored by every column; a method whose interval meets it is marked "not better than a baseline".

Infidelity and max-sensitivity (`REFUSED`) are refused by `refuse`, naming them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import DetectionConfig
from ..errors import ReportgenError
from ..methods.boxes import BoxScores
from ..metrics import baselines, perturbation, sanity
from ..metrics.columns import Row, row_key
from ..metrics.detection import match_boxes
from ..metrics.localisation import box_mask
from ..metrics.scoring import COLUMNS, METRICS, SCORERS, MapBatch, Options
from ..ops import batches
from ..progress import plural
from . import Context, ModelInfo
from . import evaluation as evaluation_

DETECTION = "detection"
BOXES = 16  # boxes scored together: each holds a copy of its image and of the substrates while it is scored

# the evaluation metrics that do not apply to a detector, and why (`refuse` names them)
REFUSED = {
    "infidelity": "it scores a gradient method's raw attribution, and a detector's maps are CAMs and D-RISE (the "
                  "gradients section does not apply to a detector)",
    "sensitivity": "max-sensitivity recomputes a gradient method's attribution on noisy copies, and a detector's maps "
                   "are CAMs and D-RISE (the gradients section does not apply to a detector)",
}
# the task record's `settings_refused` entry for the key only infidelity reads
SETTINGS_REFUSED = {
    "analyses.evaluation.infidelity_sd": "it is infidelity's noise, and infidelity does not apply to a detector; its "
                                         "evaluation scores deletion, insertion, ROAD, the confidence change, the "
                                         "pointing game against the true boxes and the sanity cascade.",
}
NOTE = ("A detector's maps are scored per explained box: p(target) is the box's score, IoU + score of the detection "
        "of its class that best matches it (IoU > 0.5, else 0; pytorch-grad-cam's FasterRCNNBoxScoreTarget, in [0, "
        "2]); localisation scores the boxes that match a true box, against that box.")

# (model, forward, batch, boxes, methods, cam options) -> method -> (J, N, H, W) in [0, 1] (`cam_detection.box_maps`)
BoxMaps = Callable[[nn.Module, Callable, torch.Tensor, list, Sequence[str], object], dict[str, torch.Tensor]]


def applies() -> tuple[str, ...]:
    """The evaluation metrics that apply to a detector, in column order."""
    return tuple(m for m in METRICS if m not in REFUSED)


def refuse(metrics: Sequence[str] | None) -> None:
    """A ReportgenError naming the metrics asked for that do not apply to a detector, and why."""
    refused = [m for m in metrics or () if m in REFUSED]
    if refused:
        why = "; ".join(f"{m}: {REFUSED[m]}" for m in refused)
        raise ReportgenError(f"`analyses.evaluation.metrics`: {', '.join(f'`{m}`' for m in refused)} "
                             f"{'does' if len(refused) == 1 else 'do'} not apply to a detector (`model.task: "
                             f"{DETECTION}`): {why}. What applies: {', '.join(applies())} (null: all of them).")


def wanted(cfg: evaluation_.EvaluationConfig) -> tuple[str, ...]:
    return cfg.metrics if cfg.metrics is not None else applies()


def check(info: ModelInfo, cfg: evaluation_.EvaluationConfig) -> None:
    """A step that leaves nothing to delete; metrics that do not apply to a detector; localisation asked for
    without true boxes."""
    _, h, w = info.config.model.input_size
    if cfg.step is not None and cfg.step >= h * w:
        raise ReportgenError(f"`analyses.evaluation.step`: {cfg.step} pixels a step is the whole {h}×{w} input, so "
                             f"deletion and insertion have no step in between; use fewer than {h * w} (null: "
                             f"{perturbation.default_step(h, w)}, RISE's 224 at 224²).")
    refuse(cfg.metrics)
    if cfg.metrics is not None and "localisation" in cfg.metrics and info.config.detection.annotations is None:
        raise ReportgenError("`analyses.evaluation.metrics` asks for localisation, the pointing game of each box's "
                             "map against its true box, but there are no true boxes: set `detection.annotations` "
                             "(a COCO JSON or a JSONL manifest of boxes), or leave `metrics` null to score "
                             "localisation only where true boxes exist.")


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BoxEvaluationResult(evaluation_.EvaluationResult):
    """The evaluation's result with one scored unit per explained box: `indices` / `names` are each scored box's
    image (repeated for an image's boxes), `ranks` its place among that image's explained boxes (best first)."""

    ranks: tuple[int, ...] = ()
    truth: tuple[int, ...] = ()  # per scored box: the true box it matches (index in `ImageInput.boxes`), or -1
    iou_threshold: float = DetectionConfig.iou_threshold  # a true positive's IoU with its true box


class BoxTargets:
    """`BoxScores` as the perturbation metrics' forward: x -> (B, J) box scores taken as they are (no softmax:
    `probabilities = True`), row b scored against the boxes of the image it derives from (`for_rows`)."""

    probabilities = True

    def __init__(self, scores: BoxScores):
        self.scores = scores

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x).float()

    def for_rows(self, owner: torch.Tensor | Sequence[int]) -> BoxTargets:
        return BoxTargets(self.scores.for_rows(owner))


def flatten(per_image: Sequence[np.ndarray | torch.Tensor], counts: Sequence[int]) -> np.ndarray:
    """Per image (J_i or more, H, W) maps -> (ΣJ_i, H, W) float32: each image's first `counts[i]` in order."""
    parts = [np.asarray(m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m, dtype=np.float32)[:k]
             for m, k in zip(per_image, counts)]
    if any(len(m) != k for m, k in zip(parts, counts)):
        raise ValueError(f"maps of {[len(m) for m in parts]} boxes for images with {list(counts)} explained boxes")
    return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32)


def true_boxes(boxes: Sequence, truths: Sequence, iou: float, shape: tuple[int, int]
               ) -> tuple[list[np.ndarray | None], list[int]]:
    """Per explained box (images in order, each image's boxes in order; `boxes[i]` a `Detections`): the mask (H, W)
    of the true box it matches (`match_boxes` at `iou`, as the page marks true positives), or None, and that true
    box's index (-1: none)."""
    masks: list[np.ndarray | None] = []
    index: list[int] = []
    for found, truth in zip(boxes, truths):
        if truth is None or len(truth.boxes) == 0 or len(found) == 0:
            masks += [None] * len(found)
            index += [-1] * len(found)
            continue
        match = match_boxes(found.boxes, found.scores, found.labels, truth.boxes, truth.labels, iou=iou,
                            crowd=truth.iscrowd)
        for t in match.truth_of.tolist():
            masks.append(box_mask(truth.boxes[t], shape) if t >= 0 else None)
            index.append(t if t >= 0 else -1)
    return masks, index


# ---------------------------------------------------------------------------- the stage


def run(ctx: Context, cfg: evaluation_.EvaluationConfig) -> BoxEvaluationResult:
    """The stage's `run` for a detector: the cam stage's `BoxMapsResult` of the batch, scored (`evaluate`)."""
    from . import cam_detection  # the detector's cam stage

    found = ctx.results.get(cam_detection.BoxMapsResult)
    if found is None:
        raise ReportgenError("no box maps reached the evaluation: it must run in the same batches as the cam stage.")
    return evaluate(ctx, cfg, found, box_maps=cam_detection.box_maps)


def evaluate(ctx: Context, cfg: evaluation_.EvaluationConfig, found, *, truths: Sequence | None = None,
             box_maps: BoxMaps | None = None) -> BoxEvaluationResult:
    """Every map of `found` (the cam stage's `BoxMapsResult` of this batch: per image (J_i, H, W) per method) scored
    for the batch's images in the evaluation subset (see the module). `truths`: per image of the batch its true
    boxes (`annotations.ImageBoxes` or None; default `ImageInput.boxes`); `box_maps`: what recomputes the maps for
    the sanity cascade (`cam_detection.box_maps`)."""
    n, _, h, w = ctx.batch.shape
    seed = ctx.config.seed
    count = ctx.count if ctx.count is not None else ctx.offset + n
    detail = tuple(ctx.detail) if ctx.detail is not None else tuple(range(count))
    chosen = evaluation_.subset(count, detail, cfg.images, seed)
    metrics = wanted(cfg)
    step = cfg.step if cfg.step is not None else perturbation.default_step(h, w)
    iou = ctx.config.detection.iou_threshold
    base = BoxEvaluationResult(config=cfg, rows=(), columns=(), indices=(), names=(), scores={}, step=step,
                               seed=seed, task=DETECTION, offset=ctx.offset, size=n, iou_threshold=iou, notes=(NOTE,))
    where = {name: k for k, name in enumerate(found.images)}
    boxes = list(ctx.boxes)
    truths = list(truths) if truths is not None else [image.boxes for image in ctx.images]
    positions = [p for p in range(n) if ctx.offset + p in chosen and len(boxes[p])]
    if not positions:
        return base

    counts = [len(boxes[p]) for p in positions]
    rows: list[Row] = [(m, found.layers.get(m, "")) for m in found.methods if m in found.maps]
    maps = {row: flatten([found.maps[row[0]][where[ctx.images[p].name]] for p in positions], counts) for row in rows}
    image_of = np.repeat(np.asarray(positions), counts)  # each scored box's image (position in the batch)
    ranks = np.concatenate([np.arange(k) for k in counts])
    baselines.add_centre(maps, {row: ranks for row in rows}, (h, w))  # the centre-Gaussian row, scored as the maps
    masks, truth = true_boxes([boxes[p] for p in positions], [truths[p] for p in positions], iou, (h, w))
    scores_forward = ctx.engine.forward
    if not isinstance(scores_forward, BoxScores):
        raise ReportgenError("a detector's evaluation needs the engine's box scores (`methods.boxes.BoxScores`).")
    options = Options(step=cfg.step, deletion_substrate=cfg.substrates.deletion,
                      insertion_substrate=cfg.substrates.insertion, batch_size=cfg.batch_size,
                      percentiles=cfg.percentiles, infidelity_sd=cfg.infidelity_sd, tolerance=cfg.tolerance)
    scores: dict[str, dict[str, np.ndarray]] = {row_key(r): {} for r in maps}
    fraction, sums = None, {}
    ctx.log(f"evaluation: {', '.join(m for m in metrics if m in SCORERS)} on {plural(len(image_of), 'box', 'boxes')}")
    for part in batches(len(image_of), BOXES):
        # one scored row per box: a copy of its image, its rank as the target, its image as the owner
        owners = torch.as_tensor(image_of[part])
        job = MapBatch(forward=BoxTargets(scores_forward.for_rows(owners)), x=ctx.batch[owners.to(ctx.batch.device)],
                       indices=[ctx.offset + int(p) for p in image_of[part]], maps={r: m[part] for r, m in maps.items()},
                       targets={row: ranks[part] for row in maps}, attributions={}, masks=masks[part],
                       explain=_no_attributions, options=options, seed=seed)
        for metric in metrics:
            if metric in SCORERS and metric not in REFUSED:
                for row, columns in SCORERS[metric](job).items():
                    for column, values in columns.items():  # a part's boxes without truth: no localisation columns
                        scores[row_key(row)].setdefault(column, np.full(len(image_of), np.nan))[part] = values
        for row, c in job.cache.get("curves", {}).items():
            fraction = c.fraction
            d, i, k = sums.get(row_key(row), (0.0, 0.0, 0))
            sums[row_key(row)] = (d + c.deletion.sum(0, dtype=np.float64), i + c.insertion.sum(0, dtype=np.float64),
                                  k + len(c.deletion))

    outcome, notes = None, list(base.notes)
    shown = [p for p in positions if ctx.offset + p in set(detail)][:cfg.sanity.images]
    if "sanity" in metrics and detail and ctx.offset <= min(detail) < ctx.offset + n and shown:
        ctx.log("evaluation: sanity cascade")  # on the first detail image's batch, its detail images with boxes
        outcome = _sanity(ctx, cfg, found, rows, shown, box_maps)
        notes.append(_found_note(outcome))
    if "localisation" in metrics and not any(m is not None for m in masks):
        notes.append("No scored box matches a true box (`detection.annotations` gives none for these images, or "
                     "every explained box is a false positive): there is no pointing game.")
    columns = tuple(c.id for c in COLUMNS if any(c.id in s for s in scores.values())
                    or (c.id == "sanity_spearman" and outcome is not None))
    return dataclasses.replace(
        base, rows=tuple(maps), columns=columns, indices=tuple(ctx.offset + int(p) for p in image_of),
        names=tuple(ctx.images[int(p)].name for p in image_of), scores=scores, fraction=fraction, curve_sums=sums,
        sanity=outcome, ranks=tuple(int(r) for r in ranks), truth=tuple(truth), notes=tuple(notes))


def _no_attributions(method: str, x: torch.Tensor, targets: torch.Tensor, image: int = 0) -> torch.Tensor:
    raise ReportgenError(f"`{method}`: a detector's evaluation recomputes no gradient attributions.")


def detector_for(info: ModelInfo, model: nn.Module) -> Callable[[torch.Tensor], list]:
    """x -> one `Detections` per image of `model` (the build's model or a randomised copy), read as the adapter
    reads the build's (`ModelAdapter.forward`), every box the model returned."""
    from ..models.detection import from_torchvision

    adapter = info.adapter
    if adapter is None:
        return lambda x: from_torchvision(model(x))
    return lambda x: adapter.pick_logits(model(adapter.model_input(x)), size=tuple(x.shape[-2:]))


def _sanity(ctx: Context, cfg: evaluation_.EvaluationConfig, found, rows: list[Row], positions: list[int],
            box_maps: BoxMaps | None) -> evaluation_.SanityOutcome:
    """The cascade on the batch's detail images (at most `sanity.images`): every method's maps of their explained
    boxes recomputed on each randomised copy (the same boxes: only the model changes), one compared map per box."""
    if box_maps is None:
        from . import cam_detection  # the detector's cam stage

        box_maps = cam_detection.box_maps
    x = ctx.batch[positions]
    boxes = [ctx.boxes[p] for p in positions]
    counts = [len(b) for b in boxes]
    methods = [m for m, _ in rows]
    options = getattr(found, "config", None)
    seed = cfg.sanity.seed if cfg.sanity.seed is not None else ctx.config.seed

    def recompute(model: nn.Module, xs: torch.Tensor, _targets: torch.Tensor) -> dict[str, np.ndarray]:
        out = box_maps(model, detector_for(ctx.info, model), xs, boxes, methods, options)
        # (J, N, H, W) -> per image (J, H, W) -> the real boxes, in the order the scores have them
        return {row_key(row): flatten([out[row[0]][:, i] for i in range(len(boxes))], counts) for row in rows}

    order = sanity.blocks(ctx.model, cfg.sanity.blocks)
    ranks = torch.as_tensor(np.concatenate([np.arange(k) for k in counts]))
    result, maps = sanity.cascade_keeping_maps(ctx.model, order, recompute, x, ranks, seed=seed)
    names = tuple(ctx.images[p].name for p in positions)
    return evaluation_.SanityOutcome(cascade=result, images=names, image=names[0], maps=maps, mode=cfg.sanity.blocks,
                                     seed=seed)


def _found_note(outcome: evaluation_.SanityOutcome) -> str:
    """How many boxes each method's last randomised copy still explains (a finite correlation), of all."""
    spearman = outcome.cascade.spearman
    if not spearman or not len(outcome.cascade.blocks):
        return "The sanity cascade randomised no block."
    total = next(iter(spearman.values())).shape[1]
    kept = ", ".join(f"{key} {int(np.isfinite(v[-1]).sum())}" for key, v in spearman.items())
    return (f"Sanity cascade of a detector: the maps of {plural(total, 'box', 'boxes')} recomputed on the randomised "
            "copies for the same boxes. A box the copy no longer detects (no detection of its class at IoU > 0.5) "
            "scores 0 and its map is constant, left out of the correlation; boxes still compared after the whole "
            f"network is randomised, per method: {kept}.")


# ---------------------------------------------------------------------------- the result's forms


def reduce(results: list[BoxEvaluationResult]) -> BoxEvaluationResult:
    """`evaluation.reduce`, with the boxes' ranks and true boxes put together alike."""
    scored = [r for r in results if r.indices] or results[:1]
    return dataclasses.replace(evaluation_.reduce(results), ranks=tuple(k for r in scored for k in r.ranks),
                               truth=tuple(t for r in scored for t in r.truth))


def to_json(result: BoxEvaluationResult) -> dict:
    """`evaluation.to_json` over boxes: `images` the images scored, `boxes` the boxes, `localisation` the pointing
    game's settings (each method's hit rate and the count of boxes it scored are the columns' mean and `n`)."""
    entry = evaluation_.to_json(result)
    entry["images"] = len(set(result.indices))
    entry["boxes"] = len(result.indices)
    entry["unit"] = "box"
    if "localisation" in wanted(result.config):
        entry["localisation"] = {"tolerance": result.config.tolerance, "iou_threshold": result.iou_threshold,
                                 "matched": int(sum(t >= 0 for t in result.truth))}
    return entry


def records(result: BoxEvaluationResult) -> list[dict | None]:
    """Per image of the batch: row key -> column -> the scores of its explained boxes, best box first (None: not
    scored), or None when the image is not in the evaluation subset."""
    boxes: dict[int, list[int]] = {}
    for k, index in enumerate(result.indices):
        boxes.setdefault(index, []).append(k)
    out: list[dict | None] = []
    for p in range(result.size):
        ks = boxes.get(result.offset + p)
        out.append(None if ks is None else {
            key: {c: [_round(v[k]) for k in ks] for c, v in columns.items()}
            for key, columns in result.scores.items()})
    return out


def _round(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)


def _variant():
    return dataclasses.replace(evaluation_.SPEC, run=run, check=check, reduce=reduce, to_json=to_json,
                               records=records, prepare=None, requires_any=("cam",))


# what `analyses.evaluation` runs for a detector (`tasks.Task.variants`: "reportgen.stages.evaluation_boxes:VARIANT")
VARIANT = _variant()
