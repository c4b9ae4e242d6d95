"""Scores of a semantic segmentation over a data set: per-class IoU, mIoU, pixel accuracy, the confusion matrix.

Inputs are class maps, (H, W) or (N, H, W) integer arrays or tensors of class indices: the prediction (the argmax
of the model's logits over classes) and the truth (a class-index mask, `inputs.read_class_mask`). The rules
(issue 24, as torchmetrics 1.9.0 computes them; `tests/test_metrics_segmentation.py` checks each against it):

- a truth pixel of `ignore_index` (255, VOC's object borders and "void") counts nowhere: neither its truth nor
  the prediction there enters any count;
- the confusion matrix `C` is (K, K) int64, rows truth, columns prediction (`MulticlassConfusionMatrix(K,
  ignore_index=255)`);
- IoU of class k = C[k, k] / (row k + column k - C[k, k]): pixels of k in both over pixels of k in either;
  NaN for a class absent from both truth and prediction (`MulticlassJaccardIndex(average=None,
  ignore_index=255, zero_division="nan")`);
- mIoU = the mean of the IoUs that are not NaN: a class absent from both is left out of the mean, one present in
  either counts even at 0 (`MulticlassJaccardIndex(average="macro", ignore_index=255)`, whose weights drop
  exactly those classes). NaN when no pixel was counted;
- pixel accuracy = the diagonal's sum over all counted pixels (`MulticlassAccuracy(average="micro",
  ignore_index=255)`); class accuracy (recall) = C[k, k] / row k, NaN for a class absent from the truth
  (torchmetrics' `average=None` gives 0 there: equal on the classes present in the truth).

Counts are exact integers, so a stream of batches, in any order and split over torchrun's ranks (`+`), gives the
same matrix as all pixels at once; the floats are computed from it in float64 (torchmetrics: float32).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ReportgenError

IGNORE_INDEX = 255  # Pascal VOC's "void": borders and unlabelled pixels


class Confusion:
    """A streaming (K, K) int64 confusion matrix of class maps, rows truth, columns prediction; constant memory
    whatever the number of images. `update` counts a batch; `a + b` (or `a.merge(b)`) sums two, as torchrun's
    ranks' are summed."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, not {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class of {num_classes}: it would drop that class")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, ignore_index: int = IGNORE_INDEX) -> Confusion:
        """A Confusion holding `matrix` (K, K) counts: one sent between ranks as a plain array."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a (K, K) matrix expected, got shape {matrix.shape}")
        out = cls(matrix.shape[0], ignore_index)
        out.matrix = matrix.astype(np.int64, copy=True)
        return out

    def update(self, pred, truth) -> None:
        """Count a batch: `pred` and `truth` are integer class maps of the same shape, (H, W) or (N, H, W), numpy
        or torch (counted on the tensors' device). Raises ReportgenError for a truth value that is neither a class
        nor `ignore_index` (the caller adds which file), ValueError for shapes that differ or a predicted value
        that is no class (a bug, not bad data)."""
        self.matrix += _counts(pred, truth, self.num_classes, self.ignore_index).sum(axis=0)

    def merge(self, other: Confusion) -> Confusion:
        """A new Confusion with the counts of both."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(f"cannot merge a confusion of {other.num_classes} classes (ignoring {other.ignore_index})"
                             f" into one of {self.num_classes} (ignoring {self.ignore_index})")
        return Confusion.from_matrix(self.matrix + other.matrix, self.ignore_index)

    __add__ = merge

    @property
    def pixels(self) -> int:
        """Pixels counted (ignored ones excluded)."""
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """(K,) float64 IoU per class; NaN for a class absent from both truth and prediction."""
        return iou_of(self.matrix)

    def miou(self) -> float:
        """The mean IoU over the classes present in the truth or the prediction; NaN when none is."""
        return _mean(self.iou())

    def pixel_accuracy(self) -> float:
        """Pixels predicted right over pixels counted; NaN when none was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def class_accuracy(self) -> np.ndarray:
        """(K,) float64 recall per class: its truth pixels predicted right over its truth pixels; NaN for a class
        absent from the truth."""
        rows = self.matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, np.diag(self.matrix) / rows, math.nan)


def image_scores(pred, truth, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(N,) float64, one score per image to choose detail images by (lowest first): the image's own mIoU, the mean
    IoU over the classes present in its truth or its prediction (ignored pixels excluded from both), each
    computed from that image's pixels alone. A class in neither is left out, so an image is not rewarded for
    the classes it does not show, and one missed or hallucinated class scores 0 in the mean. NaN for an image
    whose every pixel is ignored. Equal to torchmetrics' `MulticlassJaccardIndex(average="macro",
    ignore_index=255)` on the image alone, and without ignored pixels to `segmentation.mean_iou(input_format=
    "index")`. (H, W) maps give one score. Errors as `Confusion.update`."""
    return np.array([_mean(iou_of(matrix)) for matrix in _counts(pred, truth, num_classes, ignore_index)])


def iou_of(matrix: np.ndarray) -> np.ndarray:
    """(K,) float64 IoU per class of a (K, K) confusion matrix; NaN where the class is in neither truth nor
    prediction (its union is empty: the diagonal is never larger than its row or column)."""
    hits = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, math.nan)


def _mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN, NaN when all are (np.nanmean would warn)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def _counts(pred, truth, num_classes: int, ignore_index: int) -> np.ndarray:
    """(N, K, K) int64 confusion of each image of a batch ((H, W): N = 1), counted with one bincount on the
    maps' device; ignored pixels fall in an extra bin that is dropped."""
    pred, truth = torch.as_tensor(pred), torch.as_tensor(truth)
    if pred.shape != truth.shape or pred.ndim not in (2, 3):
        raise ValueError(f"pred and truth must be class maps of one shape, (H, W) or (N, H, W); got "
                         f"{tuple(pred.shape)} and {tuple(truth.shape)}")
    if pred.is_floating_point() or truth.is_floating_point() or pred.dtype == torch.bool:
        raise ValueError(f"class maps must be integers, got {pred.dtype} and {truth.dtype}: pass the argmax of "
                         "the logits, not the logits")
    if pred.ndim == 2:
        pred, truth = pred[None], truth[None]
    truth = truth.to(device=pred.device, dtype=torch.int64)
    pred = pred.to(torch.int64)
    k = num_classes
    ignored = truth == ignore_index
    bad = ((truth < 0) | (truth >= k)) & ~ignored
    if bad.any():
        value = int(truth[bad][0])
        raise ReportgenError(f"the mask has the value {value}, but there are {k} classes (0 to {k - 1}); 255 is the "
                             "value of pixels to ignore. A mask holds class indices, one per pixel.")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
        raise ValueError(f"predicted classes must lie in 0..{k - 1}, found {int(pred.min())} to {int(pred.max())}")
    n = pred.shape[0]
    cell = truth * k + pred  # one bin per (truth, prediction) pair of an image
    cell = torch.where(ignored, k * k, cell)  # the extra bin
    image = torch.arange(n, device=pred.device).view(n, 1, 1) * (k * k + 1)
    counts = torch.bincount((cell + image).flatten(), minlength=n * (k * k + 1))
    return counts.view(n, k * k + 1)[:, :-1].reshape(n, k, k).cpu().numpy().astype(np.int64)
