"""Figures of the `dataset` stage: the confusion matrix, the confidence histogram (correct against wrong),
the reliability diagram; without ground truth, the predicted classes and the confidences.

matplotlib's object API only (Figure + Agg canvas, no pyplot state), as the training charts.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure as MplFigure

from ..stages.dataset import DatasetResult, bin_index
from .training import DPI, _text, _to_figure

TOP_PREDICTED = 20  # classes in the bar chart of predictions
MAX_ROWS_OPEN = 30  # per-class rows shown without unfolding
CORRECT, WRONG, GAP = "#2ca02c", "#d62728", "#ff7f0e"


def plot(result: DatasetResult, ctx=None) -> dict:
    m = result.metrics
    section: dict = {
        "images": len(result.images),
        "labelled": result.labelled,
        "unlabelled": result.unlabelled,
        "num_classes": result.num_classes,
        "bins": result.bins,
        "metrics": None,
        "figures": [],
    }
    if m is None:
        section["figures"] = [plot_predicted(result), plot_confidence(result)]
        return section
    s = m.scores
    rows = [{"index": int(c), "label": result.labels[c], "precision": float(s.precision[i]),
             "recall": float(s.recall[i]), "f1": float(s.f1[i]), "support": int(s.support[i])}
            for i, c in enumerate(s.classes)]
    section["metrics"] = {
        "count": m.count,
        "correct": m.correct,
        "accuracy": m.accuracy * 100.0,
        "top_k": m.top_k,
        "top_k_accuracy": m.top_k_accuracy * 100.0,
        "ece": m.calibration.ece * 100.0,
        "mce": m.calibration.mce * 100.0,
        "macro": m.macro,
        "weighted": m.weighted,
        "rows": rows,
        "fold": len(rows) > MAX_ROWS_OPEN,
        "confused": [{"truth": result.labels[t], "truth_index": t, "predicted": result.labels[p],
                      "predicted_index": p, "count": n, "share": share * 100.0} for t, p, n, share in m.confused],
        "matrix_shown": m.confusion is not None,
        "top_confused": result.top_confused,
        "max_matrix_classes": result.max_matrix_classes,
    }
    figures = []
    if m.confusion is not None:
        figures.append(plot_confusion(m.confusion, result.labels))
    figures += [plot_confidence(result), plot_reliability(result)]
    section["figures"] = figures
    return section


def plot_confusion(matrix: np.ndarray, labels: tuple[str, ...]):
    k = matrix.shape[0]
    # a cell of about 0.55 inch (55 px) keeps its count readable: the figure grows with the classes (1.9 inch
    # for the tick labels), up to 30 classes (beyond that the stage lists the most confused pairs instead)
    side = min(18.0, max(4.5, 0.55 * k + 1.9))
    fig = MplFigure(figsize=(side + 0.8, side), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    names = [_text(label) for label in labels]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7 if k > 12 else 8)
    ax.set_yticks(range(k), names, fontsize=7 if k > 12 else 8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        top = matrix.max() if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8 if k > 15 else 10,
                        color="white" if value > top / 2 else "black")
    total = int(matrix.sum())
    return _to_figure(fig, f"Confusion matrix of {k} classes over {total} labelled images: rows true class, "
                           "columns predicted class, counts", f"Confusion matrix ({total} images): rows truth, "
                           "columns prediction")


def plot_confidence(result: DatasetResult):
    """A histogram of the confidences in the calibration bins: correct and wrong stacked where the truth is
    known, all images otherwise."""
    edges = np.linspace(0.0, 1.0, result.bins + 1)
    fig = MplFigure(figsize=(6.0, 3.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    width = np.diff(edges)
    m = result.metrics
    if m is None:
        ax.bar(edges[:-1], result.confidence_counts, width=width, align="edge", color="#1f77b4", edgecolor="white")
        what = f"all {len(result.images)} images"
    else:
        known = result.truth >= 0
        right = result.truth[known] == result.pred[known]
        index = bin_index(result.confidence[known], result.bins)[1]
        good = np.bincount(index[right], minlength=result.bins)
        bad = np.bincount(index[~right], minlength=result.bins)
        ax.bar(edges[:-1], good, width=width, align="edge", color=CORRECT, edgecolor="white", label="correct")
        ax.bar(edges[:-1], bad, width=width, align="edge", bottom=good, color=WRONG, edgecolor="white",
               label="wrong")
        ax.legend(fontsize=8, frameon=False, loc="upper left")
        what = f"{m.count} labelled images, correct and wrong stacked"
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence (largest softmax probability)")
    ax.set_ylabel("images")
    ax.grid(True, axis="y", alpha=0.3)
    return _to_figure(fig, f"Histogram of the confidences of {what}, {result.bins} bins over 0 to 1",
                      f"Confidence ({what})")


def plot_reliability(result: DatasetResult):
    cal = result.metrics.calibration
    edges = cal.edges
    width = np.diff(edges)
    filled = cal.counts > 0
    fig = MplFigure(figsize=(4.2, 4.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(edges[:-1][filled], cal.accuracy[filled], width=width[filled], align="edge", color="#1f77b4",
           edgecolor="white", label="accuracy")
    lo, hi = np.minimum(cal.accuracy, cal.confidence), np.maximum(cal.accuracy, cal.confidence)
    ax.bar(edges[:-1][filled], (hi - lo)[filled], bottom=lo[filled], width=width[filled], align="edge",
           color=GAP, alpha=0.45, edgecolor=GAP, hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], color="#555555", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {cal.ece * 100:.2f} %", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    ax.grid(True, alpha=0.3)
    return _to_figure(fig, f"Reliability diagram: accuracy per confidence bin ({result.bins} bins) against the "
                           f"diagonal; expected calibration error {cal.ece * 100:.2f} %",
                      f"Reliability diagram, ECE {cal.ece * 100:.2f} %")


def plot_predicted(result: DatasetResult):
    counts = result.predicted
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0][:TOP_PREDICTED]
    fig = MplFigure(figsize=(6.0, max(2.0, 0.6 + 0.25 * len(order))), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(order)), counts[order], color="#1f77b4")
    ax.set_yticks(range(len(order)), [_text(result.labels[c]) for c in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images predicted")
    ax.grid(True, axis="x", alpha=0.3)
    used = int((counts > 0).sum())
    shown = f"the {len(order)} most frequent of {used} predicted classes" if used > len(order) else \
        f"all {used} predicted classes"
    return _to_figure(fig, f"Bar chart of how often each class is predicted over {len(result.images)} images: {shown}",
                      f"Predicted classes: {shown}")
