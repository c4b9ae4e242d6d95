"""Figures of a detector's data-set section: COCO's AP and AR tables (None: "n/a"), the per-class AP table and the
precision-recall curves per class at IoU .50 and .75 (matplotlib, object API, no pyplot state).

Numbers are shown ×100, as COCO's papers and leaderboards print them (pycocotools prints 0.374 for 37.4).
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure as MplFigure

from ..stages.dataset_detection import AP_ROWS, DetectionDatasetResult, class_rows, count_totals, to_json
from .common import Figure
from .training import DPI, RUN_COLOURS, _text, _to_figure

MAX_ROWS_OPEN = 30  # per-class rows shown without unfolding
COLOURED = 10  # the classes with the most true boxes get a colour and a legend entry; the others a grey line
SIZES = ("small", "medium", "large")


def _scaled(value: float | None) -> float | None:
    return None if value is None else value * 100.0


def plot(result: DetectionDatasetResult, ctx=None) -> dict:
    """The data-set section of a detector (`sections/dataset_detection.html.jinja2`)."""
    section: dict = {
        **{key: value for key, value in to_json(result).items() if key in (
            "task", "images", "labelled", "unlabelled", "detections", "score_threshold", "iou_threshold")},
        "metrics": None,
        "figures": [],
    }
    if not result.count:
        return section
    s = result.summary
    values = {key: _scaled(getattr(s, key)) for key, _ in AP_ROWS}
    rows = [dict(row, ap=_scaled(row["ap"]), ap50=_scaled(row["ap50"])) for row in class_rows(result)]
    section["metrics"] = {
        # two tables as COCOeval's summary groups them: AP at IoUs and sizes, AR at detections per image and sizes
        "ap": [{"name": name, "head": name.split(" ", 1)[1], "value": values[key]} for key, name in AP_ROWS[:6]],
        "ar": [{"name": name, "head": name.split(" ", 1)[1], "value": values[key]} for key, name in AP_ROWS[6:]],
        "empty_sizes": [size for size in SIZES if getattr(s, f"ap_{size}") is None],
        "rows": rows,
        "fold": len(rows) > MAX_ROWS_OPEN,
        "without_truth": [row["label"] for row in rows if row["truths"] == 0],
        "at_threshold": count_totals(result),
    }
    if any(s.truths):
        section["figures"] = [plot_pr_curves(result)]
    return section


def plot_pr_curves(result: DetectionDatasetResult) -> Figure:
    """Precision against recall per class with a true box, at IoU .50 and at .75 side by side, with the mean over
    those classes (whose area is AP50, AP75)."""
    s = result.summary
    present = [k for k in range(len(s.classes)) if s.truths[k]]
    coloured = sorted(present, key=lambda k: (-s.truths[k], k))[:COLOURED]
    fig = MplFigure(figsize=(8.0, 3.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, curves, name, ap in ((axes[0], s.precision50, ".50", s.ap50), (axes[1], s.precision75, ".75", s.ap75)):
        for k in present:
            if k not in coloured:
                ax.plot(s.recall, curves[k], color="#bbbbbb", linewidth=0.8)
        for n, k in enumerate(coloured):
            ax.plot(s.recall, curves[k], color=RUN_COLOURS[n % len(RUN_COLOURS)], linewidth=1.3,
                    label=_text(f"{s.classes[k]} ({s.truths[k]})") if ax is axes[0] else None)
        ax.plot(s.recall, np.mean(curves[present], axis=0), color="black", linewidth=2.0, linestyle="--",
                label="mean over classes" if ax is axes[0] else None)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_title(f"IoU {name}: AP {_number(ap)}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("precision")
    fig.legend(loc="outside right upper", fontsize=7, frameon=False)
    others = len(present) - len(coloured)
    rest = f", {others} more in grey" if others else ""
    return _to_figure(fig, f"Precision-recall curves of {len(present)} classes with true boxes at IoU .50 (left) and "
                           f".75 (right), COCOeval's interpolated precision at 101 recall points{rest}; the dashed "
                           f"black line is their mean, whose area is AP50 (AP75)",
                      f"Precision-recall per class (true boxes in brackets){rest}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"
