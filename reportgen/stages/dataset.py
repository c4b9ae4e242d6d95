"""The `dataset` stage: an overview of the model on all the images.

Streamed: `run` keeps a few numbers per image of its batch (true class or -1, predicted class, whether the
true class is among the top 5, the confidence = the largest softmax probability); `reduce` joins the batches
and computes everything from those numbers, so any batching gives the same result.

With ground truth (`ImageInput.label`; images without one are left out of these numbers, and counted):
  - top-1 accuracy and top-k accuracy, k = min(5, classes);
  - per class precision, recall, F1 and support as scikit-learn's `precision_recall_fscore_support` with
    `zero_division=0` and its default labels: the classes that occur as truth or prediction (sorted), and
    their macro and support-weighted averages;
  - the confusion matrix (rows truth, columns prediction, counts) as sklearn's `confusion_matrix` with
    labels 0..K-1, kept when K <= `max_matrix_classes`; above that, the `top_confused` most frequent
    (truth, prediction) pairs with truth != prediction, most frequent first (ties: lower truth, then lower
    prediction first), each with its share of the truth class's images;
  - calibration: `bins` equal-width bins over [0, 1], bin b = (b/B, (b+1)/B] with the first bin also holding
    confidence 0 (edges from `np.linspace(0, 1, B + 1)`, confidences compared in float64);
    ECE = sum_b (n_b / N) * |acc_b - conf_b| (Guo et al. 2017, "On calibration of modern neural networks"),
    acc_b and conf_b the accuracy and mean confidence of the n_b images in bin b; MCE = max_b |acc_b - conf_b|
    over non-empty bins.
Without ground truth: how often each class is predicted and the confidences.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config.rules import COUNT, setting
from ..progress import plural
from . import Context, Stage


@dataclass(frozen=True)
class DatasetConfig:
    """The data set overview: accuracy, per-class scores, confusion and calibration (or, without ground truth,
    what the model predicts)."""

    bins: int = setting(15, ge=2)  # equal-width confidence bins over [0, 1] (reliability diagram, ECE)
    top_confused: int = setting(20, **COUNT)  # most-confused pairs listed when the matrix is too big to draw
    max_matrix_classes: int = setting(30, ge=2)  # the confusion matrix is drawn up to this many classes


TOP_K = 5


@dataclass(frozen=True)
class Calibration:
    edges: np.ndarray  # (B + 1,) float64 bin edges over [0, 1]
    counts: np.ndarray  # (B,) int64 images per bin
    confidence: np.ndarray  # (B,) float64 mean confidence per bin (0 where empty)
    accuracy: np.ndarray  # (B,) float64 accuracy per bin (0 where empty)
    correct: np.ndarray  # (B,) int64 correct predictions per bin
    ece: float
    mce: float


@dataclass(frozen=True)
class ClassScores:
    classes: np.ndarray  # (L,) int64: the classes that occur as truth or prediction, sorted
    precision: np.ndarray  # (L,) float64
    recall: np.ndarray  # (L,) float64
    f1: np.ndarray  # (L,) float64
    support: np.ndarray  # (L,) int64: images of that true class


@dataclass(frozen=True)
class Metrics:
    """The numbers over the labelled images."""

    count: int  # labelled images
    correct: int
    accuracy: float
    top_k: int  # k of the top-k accuracy: min(5, classes)
    top_k_accuracy: float
    scores: ClassScores
    macro: dict  # precision, recall, f1: unweighted means over `scores.classes`
    weighted: dict  # the same, weighted by support
    confusion: np.ndarray | None  # (K, K) int64 when K <= max_matrix_classes, else None
    confused: tuple[tuple[int, int, int, float], ...]  # (truth, prediction, count, share of truth) when K is larger
    calibration: Calibration


@dataclass(frozen=True)
class DatasetResult:
    images: tuple[str, ...]  # (N,) image names
    truth: np.ndarray  # (N,) int64 true class, -1 where unknown
    pred: np.ndarray  # (N,) int64 predicted class (argmax of the logits)
    top_hit: np.ndarray  # (N,) bool: the true class is among the top-k classes (False where unknown)
    confidence: np.ndarray  # (N,) float32: the largest softmax probability
    labels: tuple[str, ...]  # (K,) the class names, as the report writes them
    bins: int
    top_confused: int
    max_matrix_classes: int
    metrics: Metrics | None  # None without any labelled image
    predicted: np.ndarray  # (K,) int64: how often each class is predicted (all images)
    confidence_counts: np.ndarray  # (B,) int64: all images' confidences in the calibration bins

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> int:
        return int((self.truth >= 0).sum())

    @property
    def unlabelled(self) -> int:
        return len(self.truth) - self.labelled


# ---------------------------------------------------------------------------- compute

def per_image(logits: torch.Tensor | np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) logits and (N,) truth (-1 = unknown) -> (prediction (N,) int64, top-k hit (N,) bool,
    confidence (N,) float32); k = min(5, K)."""
    logits = torch.as_tensor(logits).float()
    probs = torch.softmax(logits, dim=1)
    confidence, pred = probs.max(dim=1)
    k = min(TOP_K, logits.shape[1])
    top = logits.topk(k, dim=1).indices.numpy()
    truth = np.asarray(truth, dtype=np.int64)
    hit = (top == truth[:, None]).any(axis=1) & (truth >= 0)
    return pred.numpy().astype(np.int64), hit, confidence.numpy().astype(np.float32)


def bin_index(confidence: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges (B + 1,), bin of each confidence (N,)): bin b = (edges[b], edges[b + 1]], the first also holding 0."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges, np.asarray(confidence, dtype=np.float64), side="left") - 1
    return edges, np.clip(index, 0, bins - 1)


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int) -> Calibration:
    """Reliability diagram and expected / maximum calibration error (see the module docstring)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges, index = bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    right = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    filled = counts > 0
    mean_conf = np.where(filled, conf_sum / np.maximum(counts, 1), 0.0)
    accuracy = np.where(filled, right / np.maximum(counts, 1), 0.0)
    gaps = np.abs(accuracy - mean_conf)
    n = max(int(counts.sum()), 1)
    ece = float((counts / n * gaps).sum())
    mce = float(gaps[filled].max()) if filled.any() else 0.0
    return Calibration(edges=edges, counts=counts, confidence=mean_conf, accuracy=accuracy,
                       correct=right.round().astype(np.int64), ece=ece, mce=mce)


def class_scores(truth: np.ndarray, pred: np.ndarray) -> ClassScores:
    """Precision, recall, F1 and support per class as sklearn's `precision_recall_fscore_support(truth, pred,
    zero_division=0)`: the classes that occur as truth or prediction, sorted."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    classes = np.union1d(truth, pred).astype(np.int64)
    size = int(classes.max()) + 1 if classes.size else 0
    support = np.bincount(truth, minlength=size)[classes]
    predicted = np.bincount(pred, minlength=size)[classes]
    tp = np.bincount(truth[truth == pred], minlength=size)[classes]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)

    return ClassScores(classes=classes, precision=ratio(tp, predicted), recall=ratio(tp, support),
                       f1=ratio(2 * tp, predicted + support), support=support.astype(np.int64))


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows truth, columns prediction (sklearn's `confusion_matrix(labels=range(K))`)."""
    flat = np.asarray(truth, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confused(truth: np.ndarray, pred: np.ndarray, top: int) -> tuple[tuple[int, int, int, float], ...]:
    """The `top` most frequent (truth, prediction, count, share of the truth class) with truth != prediction,
    most frequent first, ties by truth then prediction. No (K, K) matrix is made."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    wrong = truth != pred
    if not wrong.any():
        return ()
    pairs, counts = np.unique(np.stack([truth[wrong], pred[wrong]], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))[:top]  # np.unique sorts pairs already: stable
    classes, support = np.unique(truth, return_counts=True)
    support_of = dict(zip(classes.tolist(), support.tolist()))
    return tuple((int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i]), int(counts[i]) / support_of[int(pairs[i, 0])])
                 for i in order)


def metrics(truth: np.ndarray, pred: np.ndarray, top_hit: np.ndarray, confidence: np.ndarray, num_classes: int,
            bins: int, top_confused: int, max_matrix_classes: int) -> Metrics:
    """The numbers over labelled images (all arrays already restricted to them, N >= 1)."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    right = truth == pred
    scores = class_scores(truth, pred)
    weights = scores.support / max(int(scores.support.sum()), 1)
    small = num_classes <= max_matrix_classes
    return Metrics(
        count=int(truth.size),
        correct=int(right.sum()),
        accuracy=float(right.mean()),
        top_k=min(TOP_K, num_classes),
        top_k_accuracy=float(np.asarray(top_hit, dtype=bool).mean()),
        scores=scores,
        macro={key: float(getattr(scores, key).mean()) for key in ("precision", "recall", "f1")},
        weighted={key: float((getattr(scores, key) * weights).sum()) for key in ("precision", "recall", "f1")},
        confusion=confusion_matrix(truth, pred, num_classes) if small else None,
        confused=() if small else most_confused(truth, pred, top_confused),
        calibration=calibration(confidence, right, bins),
    )


def summarize(images: tuple[str, ...], truth: np.ndarray, pred: np.ndarray, top_hit: np.ndarray,
              confidence: np.ndarray, labels: tuple[str, ...], cfg: DatasetConfig) -> DatasetResult:
    """The result of these images: per-image numbers plus everything computed from them."""
    known = truth >= 0
    found = None
    if known.any():
        found = metrics(truth[known], pred[known], top_hit[known], confidence[known], len(labels), cfg.bins,
                        cfg.top_confused, cfg.max_matrix_classes)
    return DatasetResult(
        images=tuple(images), truth=truth, pred=pred, top_hit=top_hit, confidence=confidence, labels=tuple(labels),
        bins=cfg.bins, top_confused=cfg.top_confused, max_matrix_classes=cfg.max_matrix_classes, metrics=found,
        predicted=np.bincount(pred, minlength=len(labels)).astype(np.int64),
        confidence_counts=np.bincount(bin_index(confidence, cfg.bins)[1], minlength=cfg.bins).astype(np.int64))


# ---------------------------------------------------------------------------- stage contract

def run(ctx: Context, cfg: DatasetConfig) -> DatasetResult:
    truth = np.array([-1 if im.label is None else int(im.label) for im in ctx.images], dtype=np.int64)
    k = ctx.logits.shape[1]
    bad = [im.name for im in ctx.images if im.label is not None and not 0 <= int(im.label) < k]
    if bad:
        raise ValueError(f"the true class of {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} is outside the "
                         f"model's {k} outputs (0 to {k - 1})")
    pred, hit, confidence = per_image(ctx.logits, truth)
    labels = tuple(ctx.label(i) for i in range(k))
    ctx.log(f"dataset: {plural(len(ctx.images), 'image')}, {int((truth >= 0).sum())} with a true class")
    return summarize(tuple(im.name for im in ctx.images), truth, pred, hit, confidence, labels,
                     DatasetConfig(bins=cfg.bins, top_confused=cfg.top_confused,
                                   max_matrix_classes=cfg.max_matrix_classes))


def reduce(results: list[DatasetResult]) -> DatasetResult:
    """All images from the results of consecutive batches: the per-image numbers joined, the rest recomputed."""
    first = results[0]
    if len(results) == 1:
        return first
    cfg = DatasetConfig(bins=first.bins, top_confused=first.top_confused, max_matrix_classes=first.max_matrix_classes)
    return summarize(tuple(name for r in results for name in r.images),
                     np.concatenate([r.truth for r in results]), np.concatenate([r.pred for r in results]),
                     np.concatenate([r.top_hit for r in results]), np.concatenate([r.confidence for r in results]),
                     first.labels, cfg)


def arrays(result: DatasetResult) -> dict[str, np.ndarray]:
    """`dataset/confusion` (K, K) float32 counts (rows truth, columns prediction) when some image has a label."""
    known = result.truth >= 0
    if not known.any():
        return {}
    m = result.metrics
    matrix = m.confusion if m.confusion is not None else confusion_matrix(result.truth[known], result.pred[known],
                                                                          result.num_classes)
    return {"dataset/confusion": matrix.astype(np.float32)}


def to_json(result: DatasetResult) -> dict:
    data: dict = {
        "images": len(result.images),
        "labelled": result.labelled,
        "unlabelled": result.unlabelled,
        "num_classes": result.num_classes,
        "predicted": [{"index": int(c), "label": result.labels[c], "count": int(result.predicted[c])}
                      for c in np.argsort(-result.predicted, kind="stable") if result.predicted[c] > 0],
        "confidence": {"mean": float(result.confidence.mean(dtype=np.float64)) if result.confidence.size else None,
                       "bins": [float(e) for e in np.linspace(0.0, 1.0, result.bins + 1)],
                       "counts": result.confidence_counts.tolist()},
    }
    m = result.metrics
    if m is None:
        return data
    cal = m.calibration
    s = m.scores
    data.update({
        "accuracy": m.accuracy,
        "correct": m.correct,
        "top5": m.top_k_accuracy,
        "top5_k": m.top_k,
        "ece": cal.ece,
        "mce": cal.mce,
        "calibration": {"bin_rule": "(lo, hi], the first bin includes 0", "edges": cal.edges.tolist(),
                        "counts": cal.counts.tolist(), "accuracy": cal.accuracy.tolist(),
                        "confidence": cal.confidence.tolist()},
        "per_class": [{"index": int(c), "label": result.labels[c], "precision": float(s.precision[i]),
                       "recall": float(s.recall[i]), "f1": float(s.f1[i]), "support": int(s.support[i])}
                      for i, c in enumerate(s.classes)],
        "macro_avg": m.macro,
        "weighted_avg": m.weighted,
    })
    if m.confusion is not None:
        data["confusion"] = {"labels": list(result.labels), "matrix": m.confusion.tolist()}
    else:
        data["confused_pairs"] = [{"truth": t, "truth_label": result.labels[t], "predicted": p,
                                   "predicted_label": result.labels[p], "count": n, "share": share}
                                  for t, p, n, share in m.confused]
    return data


def headline(result: DatasetResult) -> dict[str, float]:
    """Accuracy, calibration and the mean confidence (the labelled ones only with ground truth)."""
    out = {"images": float(len(result.images))}
    if result.confidence.size:
        out["mean_confidence"] = float(result.confidence.mean(dtype=np.float64))
    m = result.metrics
    if m is not None:
        out |= {"top1_accuracy": m.accuracy, f"top{m.top_k}_accuracy": m.top_k_accuracy, "ece": m.calibration.ece,
                "mce": m.calibration.mce, "macro_f1": float(m.macro["f1"])}
    return out


SPEC = Stage(name="dataset", title="Data set overview", order=20, options=DatasetConfig, run=run, reduce=reduce,
             totals=arrays,
             to_json=to_json, metrics=headline)
