"""COCO's detection scores over a data set (AP@[.5:.95], AP50, AP75, AP per object size, AR@1/10/100, per-class AP
and precision-recall curves), streamed image by image, equal to pycocotools 2.0.11's `COCOeval(iouType="bbox")`
on the same detections (`tests/test_metrics_detection.py` checks all 12 `stats` and the per-class AP against it).

What COCOeval does, and so what this does (its `evaluateImg`, `accumulate` and `summarize`):

- per image and class, the detections sorted by score (a stable sort: ties keep the order given) and cut to the
  best 100 (`maxDets[-1]`: per image AND class, as COCOeval's, not per image; torchvision's detectors return at
  most 100 per image anyway);
- IoU of boxes as its C code computes it from [x, y, w, h] (our [x0, y0, x1, y1] are converted so first); a crowd
  truth's IoU is the intersection over the DETECTION's area;
- at each of the 10 IoU thresholds .50:.05:.95 and each size range, each detection in score order takes the truth
  of highest IoU ≥ the threshold that is not yet taken (a crowd truth can be taken again), preferring truths
  that are not ignored; ties go to the later truth. A truth is ignored when it is a crowd or its area lies
  outside the range (bounds included on both sides: an area of exactly 32² is small AND medium); a detection
  matched to an ignored truth is ignored, and so is an unmatched one whose own box area is outside the range;
- size ranges use each truth's `area`: COCO's "area" field when the annotations give it (the segment's area in
  COCO's own files), else the box's area (w·h), which is what our annotation readers give; detections use
  their box's area;
- per class, size range and number of detections kept per image (1, 10, 100), the detections of all images are
  ranked by score (images in `image_id` order, then each image's order, as COCOeval's stable sort over its
  sorted image ids); precision is made monotone from the right and read at the 101 recall points 0:.01:1
  (0 beyond the last recall reached); recall is the last one reached;
- a class with no (non-ignored) truth in a range has no AP there (COCOeval's −1): it is left out of the means,
  and a size range with no object at all has no AP (None, "n/a" on a page).

What is kept per image and class is only what that needs: the (≤ 100) scores and, per size range and IoU
threshold, whether each detection is a match and whether it is ignored, plus the count of truths that count.
`merge` joins two accumulators (torchrun's ranks: `reportgen.dist.gather` pickles them); an image may be given
once in all. Boxes are numpy arrays or tensors (any device), in original-image pixels.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ReportgenError

IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)  # as COCOeval's Params
RECALL_POINTS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {"all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
               "large": (96 ** 2, 1e5 ** 2)}
_AT75 = int(np.argmin(np.abs(IOU_THRESHOLDS - .75)))  # COCOeval's AP75 row
_LOW = np.array([lo for lo, _ in AREA_RANGES.values()], dtype=np.float64)
_HIGH = np.array([hi for _, hi in AREA_RANGES.values()], dtype=np.float64)


@dataclass(frozen=True)
class _Matches:
    """One image's results for one class: what AP needs, nothing more."""

    scores: np.ndarray  # (D,) float64, highest first, D <= 100
    matched: np.ndarray  # (A, T, D) bool packed along T: the detection took a truth (A size ranges, T IoU thresholds)
    ignored: np.ndarray  # (A, T, D) bool, packed alike: counted neither as a hit nor as a false positive
    truths: np.ndarray  # (A,) int64: truths that count (not crowd, area in the range)


@dataclass(frozen=True)
class DetectionSummary:
    """COCO's numbers. None where COCOeval gives −1 (no object of that size, no truth of that class).

    `stats` is COCOeval's 12 in its order (−1 where None): AP, AP50, AP75, AP small/medium/large, AR@1, AR@10,
    AR@100, AR small/medium/large (AP and size ranges at 100 detections per image)."""

    ap: float | None  # AP@[.5:.95], area all, 100 detections
    ap50: float | None
    ap75: float | None
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    ar1: float | None
    ar10: float | None
    ar100: float | None
    ar_small: float | None
    ar_medium: float | None
    ar_large: float | None
    stats: tuple[float, ...]
    classes: tuple[str, ...]  # the class names, index = the model's label
    class_ap: tuple[float | None, ...]  # per class, AP@[.5:.95]; None: no truth of it
    class_ap50: tuple[float | None, ...]
    truths: tuple[int, ...]  # per class, truths that count (not crowd)
    detections: tuple[int, ...]  # per class, detections kept (≤ 100 per image and class)
    images: int
    recall: np.ndarray  # (101,) the recall points 0:.01:1
    precision50: np.ndarray  # (K, 101) precision at those recalls, IoU .5, area all, 100 detections; NaN: no truth
    precision75: np.ndarray  # (K, 101) the same at IoU .75
    precision: np.ndarray  # (K, 101) the same averaged over the 10 IoU thresholds


class DetectionEval:
    """A streaming COCO bbox evaluation. `classes`: the number of the model's labels, or their names (the model's
    label indices are the classes; a class with no truth simply has no AP, as a COCO category with no annotation).

    `update` takes one image at a time; `merge` joins two (torchrun's ranks); `summary` gives the numbers."""

    def __init__(self, classes: int | Sequence[str]) -> None:
        if isinstance(classes, int):
            if classes < 1:
                raise ValueError(f"at least one class expected, got {classes}")
            classes = [str(k) for k in range(classes)]
        self.classes = tuple(str(c) for c in classes)
        if not self.classes:
            raise ValueError("at least one class expected")
        self._images: dict[Hashable, dict[int, _Matches]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        """Images given so far."""
        return len(self._images)

    def update(self, image_id: Hashable, detections, truths, size: tuple[int, int] | None = None) -> None:
        """Score one image. `detections`: a mapping with `boxes` (n, 4) x0, y0, x1, y1, `scores` (n,) and `labels`
        (n,) (torchvision's output dict) or the tuple (boxes, scores, labels), ALL of them (AP needs the low
        scores too; COCOeval keeps the best 100 per class). `truths`: a mapping with `boxes` (m, 4), `labels`
        (m,), optionally `iscrowd` (m,) and `area` (m,) (default: the box's area). `size` (h, w): when given, a
        truth box outside the image is refused (ReportgenError). `image_id` orders images among equal scores,
        ints in their order, then anything else in the order of its text."""
        if image_id in self._images:
            raise ValueError(f"image {image_id!r} was already given")
        if isinstance(detections, Mapping):
            detections = (detections["boxes"], detections["scores"], detections["labels"])
        d_boxes, d_scores, d_labels = (_array(v) for v in detections)
        d_boxes = _boxes(d_boxes, "detection")
        d_scores = d_scores.astype(np.float64).reshape(-1)
        d_labels = self._labels(d_labels, len(d_boxes), "detection")
        if len(d_scores) != len(d_boxes):
            raise ValueError(f"{len(d_boxes)} detection boxes but {len(d_scores)} scores")
        if not np.isfinite(d_scores).all():
            raise ValueError("detection scores must be finite")
        t_boxes = _boxes(_array(truths["boxes"]), "truth")
        t_labels = self._labels(_array(truths["labels"]), len(t_boxes), "truth")
        crowd = truths.get("iscrowd")
        crowd = np.zeros(len(t_boxes), bool) if crowd is None else _array(crowd).reshape(-1).astype(bool)
        area = truths.get("area")
        area = _xywh(t_boxes)[:, 2] * _xywh(t_boxes)[:, 3] if area is None else _array(area).reshape(-1).astype(np.float64)
        if not len(crowd) == len(area) == len(t_boxes):
            raise ValueError(f"{len(t_boxes)} truth boxes but {len(crowd)} iscrowd and {len(area)} areas")
        if size is not None:
            _inside(t_boxes, size, image_id)
        per_class = {}
        for k in np.union1d(d_labels, t_labels).tolist():
            d, t = d_labels == k, t_labels == k
            per_class[k] = _match(d_boxes[d], d_scores[d], t_boxes[t], crowd[t], area[t])
        self._images[image_id] = per_class

    def merge(self, other: DetectionEval) -> DetectionEval:
        """A new accumulator with the images of both (which must not share an image)."""
        if other.classes != self.classes:
            raise ValueError(f"cannot merge an evaluation of {other.num_classes} classes into one of {self.num_classes}")
        shared = self._images.keys() & other._images.keys()
        if shared:
            raise ValueError(f"both evaluations hold image {next(iter(shared))!r}")
        out = DetectionEval(self.classes)
        out._images = {**self._images, **other._images}
        return out

    __add__ = merge

    def summary(self) -> DetectionSummary:
        """COCO's numbers over the images given so far."""
        precision, recall, truths, kept = self._accumulate()
        stats = _stats(precision, recall)
        by_class = precision[:, :, :, 0, -1]  # (T, R, K): area all, 100 detections
        none = [None if s == -1 else float(s) for s in stats]
        class_ap = tuple(_mean(by_class[:, :, k]) for k in range(self.num_classes))
        class_ap50 = tuple(_mean(by_class[0, :, k]) for k in range(self.num_classes))
        curves = np.where(by_class > -1, by_class, np.nan)
        return DetectionSummary(*none, stats=tuple(float(s) for s in stats), classes=self.classes, class_ap=class_ap,
                                class_ap50=class_ap50, truths=tuple(truths), detections=tuple(kept),
                                images=len(self._images), recall=RECALL_POINTS.copy(),
                                precision50=curves[0].T.copy(), precision75=curves[_AT75].T.copy(),
                                precision=curves.mean(axis=0).T)

    # ------------------------------------------------------------------------ internals

    def _labels(self, labels: np.ndarray, n: int, what: str) -> np.ndarray:
        labels = labels.reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{n} {what} boxes but {len(labels)} labels")
        if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{what} labels must be class indices 0..{self.num_classes - 1}, got {labels[:8].tolist()}")
        return labels.astype(np.int64)

    def _accumulate(self):
        """COCOeval's `accumulate`: precision (T, R, K, A, M) and recall (T, K, A, M), −1 where a class has no
        truth that counts; and per class the truths that count and the detections kept."""
        T, R, K, A, M = len(IOU_THRESHOLDS), len(RECALL_POINTS), self.num_classes, len(AREA_RANGES), len(MAX_DETECTIONS)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        per_class: list[list[_Matches]] = [[] for _ in range(K)]
        for image_id in sorted(self._images, key=_image_order):  # COCOeval's image order (its sorted ids), for ties
            for k, found in self._images[image_id].items():
                per_class[k].append(found)
        for k, found in enumerate(per_class):
            if not found:
                continue
            counts = np.sum([f.truths for f in found], axis=0)  # (A,)
            for a in range(A):
                if counts[a] == 0:
                    continue
                for m, most in enumerate(MAX_DETECTIONS):
                    scores = np.concatenate([f.scores[:most] for f in found])
                    order = np.argsort(-scores, kind="mergesort")
                    matched = _unpack([f.matched[a, :, :most] for f in found])[:, order]
                    ignored = _unpack([f.ignored[a, :, :most] for f in found])[:, order]
                    tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
                    fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
                    rc = tp / counts[a]
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[:, k, a, m] = rc[:, -1] if rc.shape[1] else 0
                    precision[:, :, k, a, m] = _at_recall_points(rc, pr)
        truths = [int(sum(f.truths[0] for f in found)) for found in per_class]
        kept = [int(sum(len(f.scores) for f in found)) for found in per_class]
        return precision, recall, truths, kept


def _image_order(image_id) -> tuple:
    return (0, image_id, "") if isinstance(image_id, (int, np.integer)) else (1, 0, str(image_id))


def _unpack(packed: list[np.ndarray]) -> np.ndarray:
    """(T, D) bool of images' bits packed along T, side by side."""
    return np.unpackbits(np.concatenate(packed, axis=1), axis=0, count=len(IOU_THRESHOLDS)).astype(bool)


def _at_recall_points(rc: np.ndarray, pr: np.ndarray) -> np.ndarray:
    """(T, R) precision at the recall points from (T, N) recall and precision over the ranked detections: made
    monotone from the right, read at the first detection reaching each point, 0 past the last recall reached."""
    out = np.zeros((len(rc), len(RECALL_POINTS)))
    if rc.shape[1] == 0:
        return out
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(len(rc)):
        at = np.searchsorted(rc[t], RECALL_POINTS, side="left")
        inside = at < rc.shape[1]
        out[t, inside] = pr[t, at[inside]]
    return out


def _stats(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """COCOeval's `summarize` for bbox: the 12 numbers, −1 where nothing counts."""
    names = list(AREA_RANGES)

    def ap(iou=None, area="all"):
        s = precision if iou is None else precision[np.where(iou == IOU_THRESHOLDS)[0]]
        return _coco_mean(s[:, :, :, names.index(area), -1])

    def ar(most=100, area="all"):
        return _coco_mean(recall[:, :, names.index(area), MAX_DETECTIONS.index(most)])

    return np.array([ap(), ap(.5), ap(.75), ap(area="small"), ap(area="medium"), ap(area="large"),
                     ar(1), ar(10), ar(100), ar(area="small"), ar(area="medium"), ar(area="large")])


def _coco_mean(s: np.ndarray) -> float:
    return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))


def _mean(s: np.ndarray) -> float | None:
    value = _coco_mean(s)
    return None if value == -1 else value


def _match(d_boxes, d_scores, t_boxes, crowd, area) -> _Matches:
    """COCOeval's `evaluateImg` for one image and class, at every size range and IoU threshold at once."""
    order = np.argsort(-d_scores, kind="mergesort")[:MAX_DETECTIONS[-1]]
    dt, scores = _xywh(d_boxes[order]), d_scores[order]
    gt = _xywh(t_boxes)
    A, T, D, G = len(AREA_RANGES), len(IOU_THRESHOLDS), len(dt), len(gt)
    gt_ignored = crowd[None, :] | (area[None, :] < _LOW[:, None]) | (area[None, :] > _HIGH[:, None])  # (A, G)
    matched = np.zeros((A, T, D), bool)
    ignored = np.zeros((A, T, D), bool)
    if D and G:
        ious = _iou(dt, gt, crowd)  # (D, G)
        start = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # (1, T, 1)
        taken = np.zeros((A, T, G), bool)
        regular = ~gt_ignored[:, None, :]  # (A, 1, G)
        for d in range(D):
            # COCOeval scans the truths with the ignored ones last and stops at the first ignored one once it holds
            # a regular match: the best regular truth wins, an ignored one only when no regular is free
            free = (ious[d][None, None, :] >= start) & ~(taken & ~crowd)  # (A, T, G)
            pick = _last_best(free & regular, ious[d])
            pick = np.where(pick < 0, _last_best(free & ~regular, ious[d]), pick)  # (A, T)
            hit = pick >= 0
            a, t = np.nonzero(hit)
            taken[a, t, pick[hit]] = True
            matched[:, :, d] = hit
            ignored[a, t, d] = gt_ignored[a, pick[hit]]
    d_area = dt[:, 2] * dt[:, 3]
    outside = (d_area[None, :] < _LOW[:, None]) | (d_area[None, :] > _HIGH[:, None])  # (A, D)
    ignored |= ~matched & outside[:, None, :]
    # packed: 24 bytes a detection in all, about 2.4 kB an image of 100 detections
    return _Matches(scores=scores, matched=np.packbits(matched, axis=1), ignored=np.packbits(ignored, axis=1),
                    truths=(~gt_ignored).sum(axis=1))


def _last_best(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(A, T) index of the largest `values` (G,) where `mask` (A, T, G), the last one among equals (COCOeval moves
    to a later truth of equal IoU); −1 where the mask is empty."""
    G = len(values)
    scored = np.where(mask, values[None, None, :], -np.inf)[..., ::-1]
    index = G - 1 - scored.argmax(axis=-1)
    return np.where(mask.any(axis=-1), index, -1)


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of [x, y, w, h] boxes, as pycocotools' `bbIou` (maskApi.c) computes it, operation for
    operation: a crowd truth's union is the detection's area."""
    w = np.minimum(dt[:, None, 2] + dt[:, None, 0], gt[None, :, 2] + gt[None, :, 0]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    h = np.minimum(dt[:, None, 3] + dt[:, None, 1], gt[None, :, 3] + gt[None, :, 1]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = w * h
    d_area = (dt[:, 2] * dt[:, 3])[:, None]
    union = np.where(crowd[None, :], d_area, d_area + (gt[:, 2] * gt[:, 3])[None, :] - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x0, y0, x1, y1 -> COCO's x, y, w, h (float64)."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _array(value) -> np.ndarray:
    """A numpy array of a tensor (any device) or sequence; no torch import."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(boxes: np.ndarray, what: str) -> np.ndarray:
    boxes = boxes.astype(np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} boxes must be (n, 4) x0, y0, x1, y1, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what} boxes must be finite")
    return boxes


def _inside(boxes: np.ndarray, size: tuple[int, int], image_id) -> None:
    """Refuse a truth box outside its (h, w) image or with x1 < x0 or y1 < y0."""
    h, w = size
    bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h) \
        | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        row = int(np.argmax(bad))
        raise ReportgenError(f"image {image_id}: the true box {row} {boxes[row].tolist()} is not inside the image "
                             f"({w}×{h}) with x0 ≤ x1 and y0 ≤ y1: fix the annotation.")


@dataclass(frozen=True)
class BoxMatch:
    """One image's detections against its true boxes at one IoU (`match_boxes`)."""

    truth_of: np.ndarray  # (D,) int64: the true box each detection took, −1 for a false positive
    missed: np.ndarray  # (G,) bool: true boxes no detection took (crowds never count as missed)

    @property
    def false_positive(self) -> np.ndarray:
        return self.truth_of == -1  # a crowd's match (−2) is none


def match_boxes(boxes, scores, labels, truth_boxes, truth_labels, iou: float = 0.5, crowd=None) -> BoxMatch:
    """Which detections are true positives, as COCOeval matches them at one IoU threshold (its rule, one size range:
    all): detections in score order (stable), each taking the free true box of its class of highest IoU ≥ `iou`
    (the later one on ties); a crowd box may be taken again and its match is neither hit nor false positive
    (`truth_of` −2). What a page marks (false positives, misses) and the detail choice counts (misses)."""
    d_boxes, t_boxes = _boxes(_array(boxes), "detected"), _boxes(_array(truth_boxes), "true")
    d_scores, d_labels, t_labels = _array(scores).reshape(-1), _array(labels).reshape(-1), _array(truth_labels).reshape(-1)
    crowd = np.zeros(len(t_boxes), bool) if crowd is None else _array(crowd).astype(bool).reshape(-1)
    truth_of = np.full(len(d_boxes), -1, np.int64)
    taken = np.zeros(len(t_boxes), bool)
    if len(d_boxes) and len(t_boxes):
        ious = _iou(_xywh(d_boxes), _xywh(t_boxes), crowd)
        for d in np.argsort(-d_scores, kind="mergesort"):
            free = (ious[d] >= min(iou, 1 - 1e-10)) & (t_labels == d_labels[d]) & ~(taken & ~crowd)
            best = _last_best(free[None, None, :] & ~crowd[None, None, :], ious[d])[0, 0]
            if best < 0:
                best = _last_best(free[None, None, :], ious[d])[0, 0]
            if best >= 0:
                taken[best] = True
                truth_of[d] = -2 if crowd[best] else best
    return BoxMatch(truth_of=truth_of, missed=~taken & ~crowd)
