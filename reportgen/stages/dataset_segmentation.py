"""What `analyses.dataset` computes for a segmenter: per-class IoU, mIoU, pixel accuracy and the confusion matrix
over every labelled pixel, the per-image scores that choose the detail images, and what the model predicts.

Not a stage of its own (no `SPEC`): `stages/dataset.py` hands a segmenter's batches here, with the same contract.

Streamed with flat memory: `run` counts a batch into a (K, K) confusion matrix (`metrics.segmentation.Confusion`,
rows truth, columns prediction, ignored pixels (255) nowhere) and keeps per image a few numbers (its name, whether
it has a truth mask, its mIoU and pixel accuracy); `reduce` sums the matrices (exact integers, so any batching or
torchrun split gives the same numbers) and joins those numbers. Masks are kept only for the detail images
(`select`), for their cards.

- The prediction of a pixel is the argmax of its logits over the classes; `ctx.logits` is (B, K, H, W) at the
  display resolution, and a truth mask (`ImageInput.segmentation`) must be (H, W).
- An image's score is its own mIoU: the mean IoU over the classes in its truth or its prediction, from its pixels
  alone, computed from the image's own confusion (the number `metrics.segmentation.image_scores` gives); detail
  images are chosen lowest first. NaN without truth, or with every pixel ignored.
- Images without a truth mask count only in what the model predicts (`predicted`: pixels per predicted class over
  every image); the scores are over the labelled images, and the result says how many there are.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ReportgenError
from ..metrics.segmentation import IGNORE_INDEX, Confusion, iou_of
from ..progress import plural
from . import Context, LabelledImages


@dataclass(frozen=True)
class ImageSegmentation:
    """One image's masks and scores, kept for the detail images only (their cards)."""

    name: str
    pred: np.ndarray  # (H, W) uint8 predicted class per pixel
    truth: np.ndarray | None  # (H, W) uint8 true class per pixel, 255 ignored; None without a truth mask
    matrix: np.ndarray | None  # (K, K) int64 the image's own confusion (rows truth); None without a truth mask

    @property
    def iou(self) -> np.ndarray | None:
        """(K,) float64 IoU per class over this image; NaN for a class in neither its truth nor its prediction."""
        return None if self.matrix is None else iou_of(self.matrix)

    def present(self) -> list[int]:
        """The classes in this image's truth or prediction (all pixels predicted when there is no truth)."""
        if self.matrix is None:
            return np.flatnonzero(np.bincount(self.pred.ravel())).tolist()
        return np.flatnonzero(self.matrix.sum(axis=0) + self.matrix.sum(axis=1)).tolist()


@dataclass(frozen=True)
class SegmentationDatasetResult(LabelledImages):
    images: tuple[str, ...]  # (N,) image names
    labelled: np.ndarray  # (N,) bool: the image has a truth mask
    score: np.ndarray  # (N,) float64 the image's mIoU (NaN without truth, or with every pixel ignored)
    accuracy: np.ndarray  # (N,) float64 the image's pixel accuracy (NaN likewise)
    labels: tuple[str, ...]  # (K,) the class names
    confusion: np.ndarray  # (K, K) int64 pixels of the labelled images, rows truth, columns prediction
    predicted: np.ndarray  # (K,) int64 pixels predicted per class, over every image (labelled or not)
    max_matrix_classes: int  # the matrix is drawn up to this many classes
    details: tuple[ImageSegmentation, ...] = ()  # the masks of the images kept (a batch: all; after `select`: detail)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def scores(self) -> Confusion:
        """The confusion of every labelled pixel, with its IoU, mIoU and accuracies."""
        return Confusion.from_matrix(self.confusion, self.ignore_index)

    def detail(self, name: str) -> ImageSegmentation | None:
        return next((d for d in self.details if d.name == name), None)


# ---------------------------------------------------------------------------- compute

def image_result(name: str, pred: torch.Tensor, truth: np.ndarray | None, num_classes: int) -> ImageSegmentation:
    """One image: `pred` (H, W) int64, `truth` (H, W) class indices or None. A truth mask of another size is a
    ValueError and a value that is no class a ReportgenError, both naming the image."""
    pred_map = pred.to(torch.uint8).numpy()  # K <= 255: 255 is no class (Confusion refuses it)
    if truth is None:
        return ImageSegmentation(name=name, pred=pred_map, truth=None, matrix=None)
    truth = np.asarray(truth)
    if truth.shape != tuple(pred.shape):
        raise ValueError(f"image {name}: its truth mask is {_size(truth.shape)} but the model's output is "
                         f"{_size(tuple(pred.shape))}; a segmentation mask must cover the image as the model sees it")
    confusion = Confusion(num_classes)
    try:
        confusion.update(pred, torch.from_numpy(truth.astype(np.int64, copy=False)))
    except ReportgenError as exc:
        raise ReportgenError(f"image {name}: {exc}") from None
    return ImageSegmentation(name=name, pred=pred_map, truth=truth.astype(np.uint8), matrix=confusion.matrix)


def _size(shape: tuple) -> str:
    return "×".join(str(v) for v in shape)


def _mean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def _accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def summarize(details: list[ImageSegmentation], labels: tuple[str, ...], max_matrix_classes: int,
              ignore_index: int = IGNORE_INDEX) -> SegmentationDatasetResult:
    """The result of these images, from each one's masks."""
    k = len(labels)
    matrices = [d.matrix for d in details if d.matrix is not None]
    predicted = np.zeros(k, dtype=np.int64)
    for d in details:
        predicted += np.bincount(d.pred.ravel(), minlength=k)[:k]
    return SegmentationDatasetResult(
        images=tuple(d.name for d in details),
        labelled=np.array([d.matrix is not None for d in details], dtype=bool),
        score=np.array([math.nan if d.matrix is None else _mean(iou_of(d.matrix)) for d in details], np.float64),
        accuracy=np.array([math.nan if d.matrix is None else _accuracy(d.matrix) for d in details], np.float64),
        labels=tuple(labels),
        confusion=np.sum(matrices, axis=0, dtype=np.int64) if matrices else np.zeros((k, k), np.int64),
        predicted=predicted, max_matrix_classes=max_matrix_classes, details=tuple(details), ignore_index=ignore_index)


# ---------------------------------------------------------------------------- the stage contract

def run(ctx: Context, cfg) -> SegmentationDatasetResult:
    """One batch: `ctx.logits` (B, K, H, W), each image's `segmentation` (H, W) or None. `cfg`: the dataset options
    (`max_matrix_classes`)."""
    logits = torch.as_tensor(ctx.outputs if ctx.outputs is not None else ctx.logits)
    if logits.ndim != 4:
        raise ValueError(f"a segmenter's logits are (B, K, H, W), got shape {tuple(logits.shape)}")
    k = logits.shape[1]
    if k > IGNORE_INDEX:
        raise ValueError(f"{k} classes: a class-index mask holds at most {IGNORE_INDEX} (255 is the ignored value)")
    pred = logits.argmax(dim=1).cpu()  # (B, H, W) int64
    details = [image_result(im.name, pred[i], im.segmentation, k) for i, im in enumerate(ctx.images)]
    labels = tuple(ctx.label(i) for i in range(k))
    result = summarize(details, labels, cfg.max_matrix_classes)
    ctx.log(f"dataset: {plural(len(details), 'image')}, {result.count} with a truth mask, "
            f"{plural(result.scores.pixels, 'pixel')} counted")
    return result


def select(result: SegmentationDatasetResult, rows: list[int]) -> SegmentationDatasetResult:
    """A batch's result keeping the masks of the images `rows` (positions in the batch) only; every image's
    numbers and the confusion stay."""
    return dataclasses.replace(result, details=tuple(result.details[i] for i in rows))


def reduce(results: list[SegmentationDatasetResult]) -> SegmentationDatasetResult:
    """All images from consecutive batches' (or ranks') results: confusions and predicted pixels summed, the
    per-image numbers and kept masks joined."""
    first = results[0]
    if len(results) == 1:
        return first
    return dataclasses.replace(
        first,
        images=tuple(name for r in results for name in r.images),
        labelled=np.concatenate([r.labelled for r in results]),
        score=np.concatenate([r.score for r in results]),
        accuracy=np.concatenate([r.accuracy for r in results]),
        confusion=np.sum([r.confusion for r in results], axis=0, dtype=np.int64),
        predicted=np.sum([r.predicted for r in results], axis=0, dtype=np.int64),
        details=tuple(d for r in results for d in r.details))


def arrays(result: SegmentationDatasetResult) -> dict[str, np.ndarray]:
    """`dataset/confusion` (K, K) float32 pixel counts (rows truth, columns prediction) when an image has a mask."""
    return {"dataset/confusion": result.confusion.astype(np.float32)} if result.count else {}


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    return None if math.isnan(value) else float(value)


def class_rows(result: SegmentationDatasetResult) -> list[dict]:
    """Per class: IoU and accuracy (recall) (None where undefined), truth and predicted pixels of the labelled
    images, and whether it is absent from both (left out of the mean)."""
    scores = result.scores
    iou, recall = scores.iou(), scores.class_accuracy()
    truth, predicted = result.confusion.sum(axis=1), result.confusion.sum(axis=0)
    return [{"index": c, "label": result.labels[c], "iou": _number(iou[c]), "accuracy": _number(recall[c]),
             "truth_pixels": int(truth[c]), "predicted_pixels": int(predicted[c]), "absent": bool(np.isnan(iou[c]))}
            for c in range(result.num_classes)]


def predicted_classes(result: SegmentationDatasetResult) -> list[dict]:
    """The classes predicted anywhere, most pixels first: index, label, pixels and their share of all pixels."""
    total = int(result.predicted.sum())
    return [{"index": int(c), "label": result.labels[c], "pixels": int(result.predicted[c]),
             "share": int(result.predicted[c]) / total}
            for c in np.argsort(-result.predicted, kind="stable") if result.predicted[c] > 0]


def to_json(result: SegmentationDatasetResult) -> dict:
    data: dict = {
        "task": "segmentation",
        "images": len(result.images),
        "labelled": result.count,
        "unlabelled": result.unlabelled,
        "num_classes": result.num_classes,
        "ignore_index": result.ignore_index,
        "predicted": predicted_classes(result),
    }
    if not result.count:
        return data
    scores = result.scores
    data.update({
        "miou": _number(scores.miou()),
        "pixel_accuracy": _number(scores.pixel_accuracy()),
        "pixels": scores.pixels,
        "mean_rule": "mIoU: the mean IoU over the classes present in the truth or the prediction",
        "per_class": class_rows(result),
    })
    if result.num_classes <= result.max_matrix_classes:
        data["confusion"] = {"labels": list(result.labels), "matrix": result.confusion.tolist()}
    return data


def headline(result: SegmentationDatasetResult) -> dict[str, float]:
    """mIoU and pixel accuracy over the labelled pixels (when a pixel of a truth mask is not ignored), and the
    images."""
    out = {"images": float(len(result.images))}
    if result.confusion.any():
        scores = result.scores
        out |= {"miou": scores.miou(), "pixel_accuracy": scores.pixel_accuracy()}
    return out


def records(result: SegmentationDatasetResult) -> list[dict]:
    """Per image of a batch's result (before `select`, which drops masks): its images.jsonl entry, {"miou",
    "pixel_accuracy", "iou": [{"index", "label", "iou"} for each class in its truth or prediction]} (scores null
    where every pixel is ignored), or {"truth": None} without a truth mask."""
    if len(result.details) != len(result.images):
        raise ValueError("records need a batch's result with every image's masks (before `select`)")
    out: list[dict] = []
    for i, d in enumerate(result.details):
        if d.matrix is None:
            out.append({"truth": None})
            continue
        iou = d.iou
        out.append({"miou": _number(result.score[i]), "pixel_accuracy": _number(result.accuracy[i]),
                    "iou": [{"index": c, "label": result.labels[c], "iou": float(iou[c])} for c in d.present()]})
    return out


# what `analyses.dataset` runs for a segmenter (`tasks.Task.variants`): the classifier's record, its functions these
def _variant():
    from . import dataset

    return dataset.SPEC.variant("dataset_segmentation", run=run, reduce=reduce, select=select, totals=arrays,
                                to_json=to_json, metrics=headline, records=records)


VARIANT = _variant()
