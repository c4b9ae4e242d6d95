"""Figures of a segmenter's data-set section and of its image cards.

The section: the headline scores, the per-class IoU table and the confusion matrix with its rows normalised by the
truth (each row: where the pixels of that true class went). A card: the predicted and the true masks over the
image, coloured with the Pascal VOC colour map, with a legend and the image's per-class IoU.

Masks are numpy work (no matplotlib); the matrix is a matplotlib chart (object API, no pyplot state).
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure as MplFigure

from ..metrics.segmentation import IGNORE_INDEX
from ..stages.dataset_segmentation import (ImageSegmentation, SegmentationDatasetResult, class_rows, predicted_classes,
                                          to_json)
from .common import Figure, blend, make_figure, upscale_nearest
from .training import DPI, _text, _to_figure

ALPHA = 0.5  # the masks' opacity over the image
MIN_SIDE = 160  # small inputs (64x64) are enlarged (nearest) to at least this many pixels before the masks are drawn
THUMB_SIDE = 320  # larger masks show a thumbnail inline
MAX_ROWS_OPEN = 30  # per-class rows shown without unfolding
MATRIX_TEXT = 20  # the matrix writes its percentages up to this many classes


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8: the Pascal VOC colour map for classes 0..k-1 (0, the background, black; 1 dark red, 2 dark
    green, 3 olive, ...): the bits of the class index spread over the high bits of red, green and blue."""
    index = np.arange(k)
    colours = np.zeros((k, 3), dtype=np.int64)
    for shift in range(8):  # the index's bits 3j, 3j+1, 3j+2 become bit 7-j of red, green, blue
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


def mask_overlay(display: np.ndarray, classes: np.ndarray, colours: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The class map `classes` (H, W) int over the image `display` (H, W, 3) uint8 -> (H, W, 3) uint8: each class's
    colour (`colours`, (K, 3) uint8 from `palette`) laid with opacity `alpha`, its boundary pixels (a 4-neighbour of
    another class) in the full colour so that regions stay apart; ignored pixels (255) are left as they are."""
    classes = np.asarray(classes)
    image = np.ascontiguousarray(display[..., :3])
    if classes.shape != image.shape[:2]:
        raise ValueError(f"a class map of {classes.shape} cannot cover an image of {image.shape[:2]}")
    kept = classes != IGNORE_INDEX
    colour = colours[np.where(kept, classes, 0)]
    out = np.where(kept[..., None], blend(colour, image, alpha), image)
    edge = np.zeros_like(kept)
    edge[:-1] |= classes[:-1] != classes[1:]
    edge[1:] |= classes[1:] != classes[:-1]
    edge[:, :-1] |= classes[:, :-1] != classes[:, 1:]
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge &= kept
    out[edge] = colour[edge]
    return out


def legend(classes, labels, colours: np.ndarray) -> list[dict]:
    """An HTML legend of the classes in `classes` (a class map or a list of indices; 255 left out), sorted:
    [{"index", "label", "colour": "#rrggbb"}]."""
    shown = [int(c) for c in np.unique(np.asarray(classes)) if c != IGNORE_INDEX]
    return [{"index": c, "label": labels[c], "colour": "#{:02x}{:02x}{:02x}".format(*colours[c].tolist())}
            for c in shown]


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100.0


def plot(result: SegmentationDatasetResult, ctx=None) -> dict:
    """The data-set section of a segmenter (`sections/dataset_segmentation.html.jinja2`) and, in `cards`, the
    card of each detail image that `ctx.images` shows, by name (`partials/segmentation_card.html.jinja2`)."""
    section: dict = {
        **{key: value for key, value in to_json(result).items() if key in (
            "task", "images", "labelled", "unlabelled", "num_classes", "ignore_index")},
        "predicted": [dict(row, share=100.0 * row["share"]) for row in predicted_classes(result)],
        "metrics": None,
        "figures": [],
        "cards": cards(result, ctx),
    }
    if not result.count:
        return section
    scores = result.scores
    rows = [dict(row, iou=_pct(row["iou"]), accuracy=_pct(row["accuracy"])) for row in class_rows(result)]
    shown = result.num_classes <= result.max_matrix_classes
    section["metrics"] = {
        "miou": _pct(None if np.isnan(scores.miou()) else scores.miou()),
        "pixel_accuracy": _pct(None if not scores.pixels else scores.pixel_accuracy()),
        "pixels": scores.pixels,
        "rows": rows,
        "absent": [row["label"] for row in rows if row["absent"]],
        "present": sum(not row["absent"] for row in rows),
        "fold": len(rows) > MAX_ROWS_OPEN,
        "matrix_shown": shown,
        "max_matrix_classes": result.max_matrix_classes,
    }
    if shown and scores.pixels:
        section["figures"] = [plot_confusion(result.confusion, result.labels)]
    return section


def plot_confusion(matrix: np.ndarray, labels: tuple[str, ...]) -> Figure:
    """The (K, K) pixel confusion with each row divided by its truth pixels (a class never true: an empty row),
    laid out as the classification matrix (`figures.dataset.plot_confusion`)."""
    k = matrix.shape[0]
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, matrix / rows, np.nan)
    side = min(18.0, max(4.5, 0.55 * k + 1.9))
    fig = MplFigure(figsize=(side + 0.8, side), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share * 100.0, cmap="Blues", interpolation="nearest", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the true class's pixels")
    names = [_text(label) for label in labels]
    ax.set_xticks(range(k), names, rotation=90, fontsize=7 if k > 12 else 8)
    ax.set_yticks(range(k), names, fontsize=7 if k > 12 else 8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= MATRIX_TEXT:
        for (i, j), value in np.ndenumerate(share):
            if value >= 0.005:  # NaN (a class never true) compares False
                ax.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=8 if k > 12 else 10,
                        color="white" if value > 0.5 else "black")
    total = int(matrix.sum())
    return _to_figure(fig, f"Confusion matrix of {k} classes over {total} labelled pixels: rows true class, columns "
                           "predicted class, each row in per cent of that class's true pixels",
                      f"Pixel confusion ({total} pixels): rows truth, columns prediction, % of each row")


def cards(result: SegmentationDatasetResult, ctx) -> dict[str, dict]:
    """{image name: its card} for the detail images of `result` whose pixels `ctx.images` holds."""
    if ctx is None:
        return {}
    colours = palette(result.num_classes)
    found = {}
    for image in ctx.images:
        detail = result.detail(image.name)
        if detail is not None:
            found[image.name] = card(detail, image.display, result.labels, colours)
    return found


def card(detail: ImageSegmentation, display: np.ndarray, labels: tuple[str, ...], colours: np.ndarray) -> dict:
    """One image's masks and scores: {"name", "predicted": Figure, "truth": Figure | None, "legend" (the classes
    the masks show), "rows" (the same classes, each with its "colour", "iou" % (None where undefined: no truth,
    or a class only on ignored pixels), "truth_pixels" (None without truth) and "predicted_pixels", of the pixels
    counted: those not ignored), "miou", "pixel_accuracy" (%, None where undefined), "figure_class"}."""
    base = np.ascontiguousarray(display[..., :3])
    small = min(base.shape[:2]) < MIN_SIDE
    big = upscale_nearest(base, MIN_SIDE)

    def draw(classes: np.ndarray, what: str) -> Figure:
        pixels = mask_overlay(big, upscale_nearest(classes, MIN_SIDE), colours)
        return make_figure(pixels, alt=f"{what} of {detail.name} over the image", caption=what, thumb_side=THUMB_SIDE)

    shown = detail.pred if detail.truth is None else np.concatenate([detail.pred.ravel(), detail.truth.ravel()])
    out = {"name": detail.name, "predicted": draw(detail.pred, "Predicted classes"), "truth": None,
           "legend": legend(shown, labels, colours), "rows": [], "miou": None, "pixel_accuracy": None,
           "figure_class": "pixel" if small else ""}
    if detail.truth is None:
        counts = np.bincount(detail.pred.ravel(), minlength=len(labels))
        out["rows"] = [dict(item, iou=None, truth_pixels=None, predicted_pixels=int(counts[item["index"]]))
                       for item in out["legend"]]
        return out
    out["truth"] = draw(detail.truth, "True classes")
    matrix, iou = detail.matrix, detail.iou
    truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    out["rows"] = [dict(item, iou=None if np.isnan(iou[c]) else float(iou[c]) * 100.0, truth_pixels=int(truth[c]),
                        predicted_pixels=int(predicted[c]))
                   for item in out["legend"] for c in [item["index"]]]
    kept = ~np.isnan(iou)
    if kept.any():
        out["miou"] = float(iou[kept].mean()) * 100.0
        out["pixel_accuracy"] = float(np.trace(matrix) / matrix.sum()) * 100.0
    return out
