"""Figures of the `evaluation` stage: the ranking table's cells, the mean deletion / insertion curves, the sanity
cascade (correlation per randomised block, and one image's maps at each step) and the pointing game drawn on the
detail images. matplotlib's object API only (no pyplot state), as the training charts."""
from __future__ import annotations

import numpy as np

from ..methods import title as method_title
from ..methods.cam import FUSED
from ..metrics import baselines
from ..metrics.columns import CENTRE, family, row_key
from ..metrics.scoring import COLUMN
from ..stages.evaluation import SANITY_LIMIT, EvaluationResult, mean_curves, sanity_verdicts, summarize
from ..stages.evaluation import wanted as wanted_metrics
from .common import matplotlib_classes, normalize01
from .training import DPI, RUN_COLOURS, _text, _to_figure

MAX_LOCALISED = 8  # detail images drawn with their pointing-game hits


def row_title(method: str, layer: str | None) -> str:
    if method == CENTRE:
        return baselines.TITLE
    return method_title(method) + (f" ({'all layers, fused' if layer == FUSED else layer})" if layer else "")


def key_title(result: EvaluationResult, key: str) -> str:
    for method, layer in result.rows:
        if row_key((method, layer)) == key:
            return row_title(method, layer)
    return key


def plot(result: EvaluationResult, ctx=None) -> dict:
    table = summarize(result)
    colours = {row_key(r): RUN_COLOURS[i % len(RUN_COLOURS)] for i, r in enumerate(result.rows)}
    verdicts = sanity_verdicts(result)
    columns = [{"id": c, "label": COLUMN[c].label, "better": COLUMN[c].better,
                "definition": COLUMN[c].definition} for c in result.columns]
    rows = []
    for row in table:
        cells = []
        for c in result.columns:
            s = row["scores"][c]
            beaten = ", ".join(key_title(result, k) for k in row["not_better"].get(c, ()))  # '' when better
            cells.append({"text": "–", "interval": "", "sort": "", "best": False, "n": 0, "not_better": ""}
                         if s is None else
                         {"text": f"{s['mean']:.3f}", "interval": f"{s['low']:.3f}–{s['high']:.3f}",
                          "sort": f"{s['mean']:.6g}", "best": c in row["best"], "n": s["n"], "not_better": beaten})
        rows.append({"title": row_title(row["method"], row["layer"]), "family": row["family"], "cells": cells,
                     "verdict": verdicts.get(row["key"]), "baseline": row["baseline"]})
    section: dict = {
        "images": len(result.indices), "step": result.step, "seed": result.seed, "columns": columns, "rows": rows,
        "unit": "box" if result.task == "detection" else "image",  # what `images` counts (a detector: its boxes)
        "config": result.config, "notes": list(result.notes) + _absent(result), "warnings": list(result.warnings),
        "curves": None, "sanity": None, "localisation": [], "sanity_limit": SANITY_LIMIT,
        "sigma": baselines.SIGMA_FRACTION,
    }
    if result.fraction is not None and result.curve_sums:
        section["curves"] = plot_curves(result, colours)
    if result.sanity is not None:
        s = result.sanity
        section["sanity"] = {
            "chart": plot_cascade(result, colours), "maps": plot_cascade_maps(result),
            "images": list(s.images), "image": s.image, "blocks": list(s.cascade.blocks), "mode": s.mode,
            "seed": s.seed,
            "verdicts": [{"title": key_title(result, k), "spearman": v} for k, v in verdicts.items()],
            "final": [{"title": key_title(result, k), "spearman": float(s.cascade.mean_spearman(k)[-1]),
                       "ssim": float(s.cascade.mean_ssim(k)[-1])} for k in s.cascade.spearman
                      if len(s.cascade.blocks)],
        }
    if ctx is not None and result.boxes:
        section["localisation"] = plot_hits(result, ctx, colours)
    return section


def _absent(result: EvaluationResult) -> list[str]:
    """What was asked for (or is in the default set) but could not be scored."""
    notes = []
    wanted = wanted_metrics(result.config)
    if ("localisation" in wanted and not any(COLUMN[c].metric == "localisation" for c in result.columns)
            and result.task != "detection"):  # a detector's result says why itself (its true boxes)
        notes.append("No scored image comes with a box or mask, so there is no localisation score: a manifest "
                     "(.csv / .jsonl with x0, y0, x1, y1 or mask) adds the pointing game and its kin.")
    return notes


def plot_curves(result: EvaluationResult, colours: dict[str, str]):
    MplFigure, _ = matplotlib_classes()
    fig = MplFigure(figsize=(9.0, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    means = mean_curves(result)
    for ax, (k, name) in zip(axes, enumerate(("deletion", "insertion"))):
        for key, pair in means.items():
            ax.plot(result.fraction, pair[k], color=colours[key], linewidth=1.4, label=_text(key_title(result, key)))
        ax.set_title(f"{name} ({'lower' if k == 0 else 'higher'} area is better)", fontsize=10)
        ax.set_xlabel("fraction of pixels " + ("deleted" if k == 0 else "restored"))
        ax.set_xlim(0, 1)
        ax.grid(True, alpha=0.3)
    region = result.task == "segmentation"  # the class's mean probability in its predicted region
    boxes = result.task == "detection"  # a box's score: IoU + score of its best-matching detection
    axes[0].set_ylabel("box score (IoU + score), mean over boxes" if boxes else
                       "p(target in its region), mean over images" if region else "p(target), mean over images")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, frameon=False, loc="outside right center")
    n, units = len(result.indices), "boxes" if boxes else "images"
    what = ("explained box's score (IoU + score of the detection of its class that matches it best)" if boxes else
            "class's mean probability over its predicted region" if region else "class's probability")
    return _to_figure(fig, f"Mean deletion and insertion curves over {n} {units}, one line per method: the target "
                           f"{what} against the fraction of pixels changed, most salient first",
                      f"Deletion and insertion, mean over {n} {units}")


def plot_cascade(result: EvaluationResult, colours: dict[str, str]):
    MplFigure, _ = matplotlib_classes()
    s = result.sanity
    blocks = list(s.cascade.blocks)
    fig = MplFigure(figsize=(7.0, 3.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(blocks) + 1)
    for key in s.cascade.spearman:
        ax.plot(x, np.r_[1.0, s.cascade.mean_spearman(key)], marker="o", markersize=3, linewidth=1.4,
                color=colours.get(key, "#555555"), label=_text(key_title(result, key)))
    ax.axhline(SANITY_LIMIT, color="#555555", linestyle="--", linewidth=1)
    ax.set_xticks(x, ["trained"] + [_text(b) for b in blocks], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Spearman of |map| with the trained model's")
    ax.set_xlabel("randomised, cumulatively, from the logits back")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(True, alpha=0.3)
    fig.legend(fontsize=8, frameon=False, loc="outside right center")
    return _to_figure(fig, f"Sanity check: mean Spearman correlation of each method's maps with the trained model's "
                           f"after each of {len(blocks)} randomised blocks, over {len(s.images)} images",
                      "Cascading randomisation: correlation per block")


def plot_cascade_maps(result: EvaluationResult):
    """The sanity image's maps at each step: one row per method (a CAM at its main layer only), one column per
    step. Each map min-max scaled on its own."""
    MplFigure, _ = matplotlib_classes()
    s = result.sanity
    main = {}
    for method, layer in result.rows:  # a CAM's last map layer: the fused map with several layers
        if family((method, layer)) == "cam":
            main[method] = row_key((method, layer))
        else:
            main[method] = method
    keys = [k for k in dict.fromkeys(main.values()) if k in s.maps]
    steps = ["trained"] + list(s.cascade.blocks)
    fig = MplFigure(figsize=(1.25 * len(steps) + 1.6, 1.25 * len(keys) + 0.4), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(keys), len(steps), squeeze=False))
    for r, key in enumerate(keys):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            ax.imshow(normalize01(s.maps[key][c].astype(np.float32)), cmap="jet", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_text(step), fontsize=8)
        axes[r, 0].set_ylabel(_text(key_title(result, key)), fontsize=8, rotation=0, ha="right", va="center")
    return _to_figure(fig, f"Maps of image {s.image} for each method (rows) on the trained model and after each "
                           "randomised block (columns)", f"{s.image}: maps at each step of the cascade")


def plot_hits(result: EvaluationResult, ctx, colours: dict[str, str]) -> list:
    """Per detail image with a box or mask: the image, the object, each method's map maximum (a dot where it hits,
    a cross where it misses)."""
    MplFigure, _ = matplotlib_classes()
    by_name = {image.name: image for image in ctx.images}
    figures = []
    names = list(dict.fromkeys(h.name for h in result.hits))[:MAX_LOCALISED]
    for name in names:
        image = by_name.get(name)
        if image is None:
            continue
        hits = [h for h in result.hits if h.name == name]
        fig = MplFigure(figsize=(5.4, 3.0), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(image.display[..., :3], interpolation="nearest")
        if image.mask is not None:
            ax.contour(image.mask.astype(float), levels=[0.5], colors="white", linewidths=1.2)
        if image.box is not None:
            from matplotlib.patches import Rectangle

            x0, y0, x1, y1 = image.box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                   linewidth=1.5))
        for h in hits:
            ax.plot(h.peak[1], h.peak[0], marker="o" if h.hit else "X", markersize=7, markeredgecolor="black",
                    color=colours.get(h.row, "#555555"), linestyle="none",
                    label=_text(f"{key_title(result, h.row)}: {'hit' if h.hit else 'miss'}"))
        ax.set_xticks([])
        ax.set_yticks([])
        fig.legend(fontsize=7, frameon=False, loc="outside right center")
        count = sum(h.hit for h in hits)
        figures.append(_to_figure(fig, f"Pointing game on {name}: the object's outline and each map's maximum, "
                                       f"{count} of {len(hits)} inside", f"{name}: {count} of {len(hits)} hits"))
    return figures
