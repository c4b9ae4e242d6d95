"""What `analyses.dataset` computes for a detector: COCO's AP and AR over the data set (AP@[.5:.95], AP50, AP75, AP
per object size, AR@1/10/100, per-class AP and precision-recall curves) equal to pycocotools' COCOeval("bbox") on
the same detections, and per image its true positives, false positives and misses.

Not a stage of its own (no `SPEC`): `stages/dataset.py`'s record with these functions (`VARIANT`), the contract
of `stages/dataset_segmentation.py`.

- AP counts EVERY detection the model returned (`ctx.outputs`, at most 100 per image), not only those drawn:
  COCO's AP needs the low scores too. The image's true boxes are `ImageInput.boxes` (display pixels, as the
  detections). An image without them (None: the annotations do not list it) is counted and not scored; an image
  listed with no box IS scored (each of its detections a false positive).
- Per image, at `detection.iou_threshold` among the detections the page draws and the maps explain (scoring at
  least `detection.score_threshold`, the best `detection.max_boxes`): true positives, false positives and misses,
  matched as COCOeval does (`metrics.detection.match_boxes`: a match of a crowd box is neither, a crowd box is
  never missed).
- Streamed with flat memory: a batch's result holds its images' `DetectionEval` (per image and class ≤ 100 scores
  and a few packed bits, about 2.4 kB an image of 100 detections) and four numbers per image; `reduce` merges
  them (batches, then torchrun's ranks: `dist.gather` pickles the results). An image is given once in all: its
  `image_id` (the COCO id, a manifest's line) orders images among tied scores as COCOeval's sorted ids do.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from ..metrics.detection import AREA_RANGES, DetectionEval, DetectionSummary, match_boxes
from ..progress import plural
from . import Context, LabelledImages



@dataclass(frozen=True)
class DetectionDatasetResult(LabelledImages):
    evaluation: DetectionEval  # the scored images' matches: what COCO's AP needs, nothing more
    images: tuple[str, ...]  # (N,) image names
    labelled: np.ndarray  # (N,) bool: the image has true boxes (it is scored)
    shown: np.ndarray  # (N,) int64 detections scoring at least the score threshold
    true_positives: np.ndarray  # (N,) int64 among those, at the IoU threshold; −1 without truth
    false_positives: np.ndarray  # (N,) int64, likewise
    missed: np.ndarray  # (N,) int64 true boxes no shown detection took (crowds never), −1 without truth
    detections: np.ndarray  # (N,) int64 every detection (what AP counts)
    score_threshold: float
    iou_threshold: float

    @functools.cached_property
    def summary(self) -> DetectionSummary:
        """COCO's numbers over the scored images (computed once: each reads every match)."""
        return self.evaluation.summary()


# ---------------------------------------------------------------------------- the stage contract

def run(ctx: Context, cfg) -> DetectionDatasetResult:
    """One batch: `ctx.outputs` (per image its Detections, all of them, display pixels) and each image's
    `boxes` (`annotations.ImageBoxes` in display pixels, or None). `cfg`: the dataset options (none used)."""
    detections = ctx.outputs
    if detections is None or len(detections) != len(ctx.images):
        raise ValueError(f"a detector's batch needs one Detections per image, got "
                         f"{'none' if detections is None else len(detections)} for {len(ctx.images)} images")
    options = ctx.config.detection
    score_threshold, iou, most = options.score_threshold, options.iou_threshold, options.max_boxes
    labels = ctx.labels if ctx.labels else ctx.info.num_classes
    evaluation = DetectionEval(labels)
    counts = np.full((len(ctx.images), 5), -1, dtype=np.int64)  # shown, tp, fp, missed, all
    for i, (image, found) in enumerate(zip(ctx.images, detections)):
        boxes, scores, classes = (np.asarray(v.detach().cpu()) if hasattr(v, "detach") else np.asarray(v)
                                  for v in (found.boxes, found.scores, found.labels))
        shown = found.drawn(score_threshold, most)  # what the page draws and the maps explain
        counts[i, 0], counts[i, 4] = len(shown), len(scores)
        truth = image.boxes
        if truth is None:
            continue
        image_id = truth.image_id if truth.image_id is not None else ctx.offset + i
        try:  # no `size`: annotations.py checked the boxes inside their images, before rounding moved them
            evaluation.update(image_id, (boxes, scores, classes), truth.truths())
        except ValueError as exc:
            raise ValueError(f"image {image.name}: {exc}") from None
        match = match_boxes(shown.boxes, shown.scores, shown.labels, truth.boxes, truth.labels, iou=iou,
                            crowd=truth.iscrowd)
        counts[i, 1:4] = (match.truth_of >= 0).sum(), match.false_positive.sum(), match.missed.sum()
    result = DetectionDatasetResult(
        evaluation=evaluation, images=tuple(im.name for im in ctx.images), labelled=counts[:, 1] >= 0,
        shown=counts[:, 0], true_positives=counts[:, 1], false_positives=counts[:, 2], missed=counts[:, 3],
        detections=counts[:, 4], score_threshold=score_threshold, iou_threshold=iou)
    ctx.log(f"dataset: {plural(len(result.images), 'image')}, {result.count} with true boxes, "
            f"{plural(int(result.detections.sum()), 'detection')} scored")
    return result


def reduce(results: list[DetectionDatasetResult]) -> DetectionDatasetResult:
    """All images of consecutive batches' (or ranks') results: the evaluations merged, the per-image numbers
    joined."""
    first = results[0]
    if len(results) == 1:
        return first
    joined = {name: np.concatenate([getattr(r, name) for r in results])
              for name in ("labelled", "shown", "true_positives", "false_positives", "missed", "detections")}
    return dataclasses.replace(first, evaluation=functools.reduce(DetectionEval.merge, [r.evaluation for r in results]),
                               images=tuple(name for r in results for name in r.images), **joined)


def totals(result: DetectionDatasetResult) -> dict[str, np.ndarray]:
    """`dataset/precision50` and `dataset/precision75`: (K, 101) float32 precision at the recall points 0:.01:1 per
    class (NaN: no true box of it), when an image is scored."""
    if not result.count:
        return {}
    s = result.summary
    return {"dataset/precision50": s.precision50.astype(np.float32),
            "dataset/precision75": s.precision75.astype(np.float32)}


AP_ROWS = (  # (key, what the page calls it): COCOeval's 12 numbers, in its order
    ("ap", "AP @[.50:.95]"), ("ap50", "AP @.50"), ("ap75", "AP @.75"), ("ap_small", "AP small"),
    ("ap_medium", "AP medium"), ("ap_large", "AP large"), ("ar1", "AR @1"), ("ar10", "AR @10"),
    ("ar100", "AR @100"), ("ar_small", "AR small"), ("ar_medium", "AR medium"), ("ar_large", "AR large"))


def class_rows(result: DetectionDatasetResult) -> list[dict]:
    """Per class with a true box or a detection kept: index, label, AP@[.5:.95] and AP50 (None: no true box),
    true boxes (crowds left out) and detections kept (≤ 100 per image and class)."""
    s = result.summary
    return [{"index": k, "label": s.classes[k], "ap": s.class_ap[k], "ap50": s.class_ap50[k],
             "truths": s.truths[k], "detections": s.detections[k]}
            for k in range(len(s.classes)) if s.truths[k] or s.detections[k]]


def curves(result: DetectionDatasetResult) -> dict:
    """The precision-recall curves of each class with a true box: {"recall": (101,), "classes": [{"index",
    "label", "iou50": (101,), "iou75": (101,)}]} (COCOeval's interpolated precision, area all, 100 detections)."""
    s = result.summary
    return {"recall": s.recall.tolist(),
            "classes": [{"index": k, "label": s.classes[k], "iou50": s.precision50[k].tolist(),
                         "iou75": s.precision75[k].tolist()} for k in range(len(s.classes)) if s.truths[k]]}


def count_totals(result: DetectionDatasetResult) -> dict[str, int]:
    """Over the scored images, among the shown detections: true positives, false positives, misses."""
    kept = result.labelled
    return {"detections": int(result.shown[kept].sum()), "true_positives": int(result.true_positives[kept].sum()),
            "false_positives": int(result.false_positives[kept].sum()), "missed": int(result.missed[kept].sum())}


def to_json(result: DetectionDatasetResult) -> dict:
    data: dict = {
        "task": "detection",
        "images": len(result.images),
        "labelled": result.count,
        "unlabelled": result.unlabelled,
        "detections": int(result.detections.sum()),
        "score_threshold": result.score_threshold,
        "iou_threshold": result.iou_threshold,
    }
    if not result.count:
        return data
    s = result.summary
    data.update({
        "coco": {key: getattr(s, key) for key, _ in AP_ROWS},  # null: no object of that size (COCOeval's −1)
        "area_ranges": {name: [lo, hi] for name, (lo, hi) in AREA_RANGES.items()},
        "per_class": class_rows(result),
        "pr_curves": curves(result),
        "at_threshold": count_totals(result),
    })
    return data


def headline(result: DetectionDatasetResult) -> dict[str, float]:
    """AP@[.5:.95], AP50, AP75 and AR@100 where defined (an image has a true box), and the images."""
    out = {"images": float(len(result.images))}
    if result.count:
        s = result.summary
        out |= {key: value for key in ("ap", "ap50", "ap75", "ar100") if (value := getattr(s, key)) is not None}
    return out


def records(result: DetectionDatasetResult) -> list[dict]:
    """Per image of a batch's result: {"detections": shown, "true_positives", "false_positives", "missed"} at the
    thresholds, or {"truth": None, "detections": shown} without true boxes."""
    out = []
    for i in range(len(result.images)):
        if not result.labelled[i]:
            out.append({"truth": None, "detections": int(result.shown[i])})
        else:
            out.append({"detections": int(result.shown[i]), "true_positives": int(result.true_positives[i]),
                        "false_positives": int(result.false_positives[i]), "missed": int(result.missed[i])})
    return out


# what `analyses.dataset` runs for a detector (`tasks.Task.variants`): the classifier's record, its functions these
def _variant():
    from . import dataset

    return dataset.SPEC.variant("dataset_detection", run=run, reduce=reduce, select=None, totals=totals,
                                to_json=to_json, metrics=headline, records=records)


VARIANT = _variant()
