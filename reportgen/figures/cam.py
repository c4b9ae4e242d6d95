"""Class activation maps as pictures: per image and target class, each method's map as an overlay on
the pixels the model sees, then the bare heat map; and a compact grid (per image: the input, then each
method's overlay for the top target). Overlays are `overlay_figure`s: the page lays the heat map over the
image, so the image's pixels are carried once per report, not once per map."""
from __future__ import annotations

import numpy as np

from ..methods import title as method_title
from ..stages.cam import FUSED, CamResult
from ..stages.cam import notes as cam_notes
from .common import (apply_colormap, drawn_in_parallel, make_figure, map_figure, method_picker, overlay_figure,
                     resize_float, to_png, upscale_nearest)
from .grid import colorbar_image, fit_height

MIN_SIDE = 160  # small inputs (64x64) are enlarged (nearest, after drawing) to at least this many pixels
GRID_TILE = 112  # height of a tile in the compact grid


def plot(result: CamResult, ctx) -> dict:
    cfg = result.config
    alpha, cmap = cfg.alpha, cfg.colormap
    titles = [method_title(m) for m in result.methods]

    def figures(i: int) -> tuple[dict | None, dict]:
        image = ctx.images[i]
        base = np.ascontiguousarray(image.display[..., :3])  # (H, W, 3) uint8: the pixels the model sees
        detail = _detail(result, i, image.name, base, alpha, cmap) if i < cfg.detail_images else None
        return detail, _grid_row(result, i, image.name, base, alpha, cmap)

    drawn = drawn_in_parallel(figures, range(len(ctx.images)))
    details = [detail for detail, _ in drawn if detail is not None]
    grid_rows = [row for _, row in drawn]
    small_input = max(ctx.images[0].display.shape[:2]) < MIN_SIDE if ctx.images else False
    layer_rows = [{"name": name, "shape": list(result.layer_shapes[name])} for name in result.layers]
    return {
        "methods": titles,
        "picker": method_picker(result.methods),
        "figure_class": "pixel" if small_input else "",  # enlarged pictures keep hard pixel edges
        "layers": layer_rows,
        "layer_auto": result.layer_auto,
        "fused": result.fused,
        "notes": cam_notes(result),
        "warnings": list(result.warnings),
        "not_applicable": [{"method": method_title(m), "why": why} for m, why in result.not_applicable.items()],
        "colorbar": make_figure(colorbar_image(cmap, 0.0, 1.0, height=120),
                                alt=f"Colour scale of the maps ({cmap}): bottom 0, top 1 (the map's maximum)"),
        "images": details,
        "hidden_images": max(0, len(ctx.images) - cfg.detail_images),
        "grid": grid_rows if len(ctx.images) > 1 else [],
        # what the number beside a class is: a segmenter's classes are regions, not probabilities
        "measure": "share of pixels" if ctx.info.task == "segmentation" else "probability",
        "grid_columns": ", ".join(["the input"] + [method_title(m) for m in result.computed_methods]),
        "timings": [{"step": method_title(step), "seconds": float(s)}
                    for step, s in result.seconds.items()],
    }


def _class_text(result: CamResult, c: int) -> str:
    label = result.labels.get(c, f"class {c}")
    return label if label == f"class {c}" else f"{label} ({c})"


def _heat(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) map in [0, 1] at model-input size -> (h', w') at display size (bilinear)."""
    values = np.asarray(values, dtype=np.float32)
    return values if values.shape == shape else np.clip(resize_float(values, shape), 0.0, 1.0)


def _detail(result: CamResult, i: int, name: str, base: np.ndarray, alpha: float, cmap: str) -> dict:
    shape = base.shape[:2]
    under = to_png(base)
    classes = []
    for c, p in zip(result.targets[i], result.probabilities[i]):
        what = _class_text(result, c)
        rows = []
        for layer in result.map_layers:
            where = "all target layers fused" if layer == FUSED else f"layer {layer}"
            cells = []
            for method in result.methods:
                title = method_title(method)
                why = result.not_applicable.get(method) or result.layer_not_applicable.get(method, {}).get(layer)
                if why:
                    cells.append({"title": title, "figures": [], "why": why, "method": method})
                    continue
                heat = apply_colormap(_heat(result.maps[(method, layer, i, c)], shape), cmap)
                about = f"{title} for image {name}, class {what}, {where}"
                figures = [
                    overlay_figure(under, heat, alpha, alt=f"{about}: the heat map over the image",
                                   caption=title, min_side=MIN_SIDE),
                    map_figure(heat, alt=f"{about}: the heat map alone", caption=f"{title}: heat map",
                               min_side=MIN_SIDE),
                ]
                cells.append({"title": title, "figures": figures, "why": "", "method": method})
            rows.append({"layer": FUSED if layer == FUSED else layer, "fused": layer == FUSED, "cells": cells})
        classes.append({"index": c, "label": what, "probability": p, "rows": rows})
    original = make_figure(upscale_nearest(base, MIN_SIDE), alt=f"Input image {name} as the model sees it", caption=name)
    return {"name": name, "original": original, "classes": classes}


def _grid_row(result: CamResult, i: int, name: str, base: np.ndarray, alpha: float, cmap: str) -> dict:
    """The input, then every computed method's overlay for the image's top target, as small tiles."""
    c = result.targets[i][0]
    small = fit_height(base, GRID_TILE) if base.shape[0] > GRID_TILE else base
    under = to_png(small)
    where = "all target layers fused" if result.fused else f"layer {result.main_layer}"
    tiles = [make_figure(upscale_nearest(small, GRID_TILE), alt=f"Input image {name}", caption="input")]
    for method in result.computed_methods:
        heat = apply_colormap(_heat(result.maps[(method, result.main_layer, i, c)], small.shape[:2]), cmap)
        title = method_title(method)
        tiles.append(overlay_figure(under, heat, alpha, caption=title, min_side=GRID_TILE,
                                    alt=f"{title} for image {name}, class {_class_text(result, c)}, {where}: "
                                        "the heat map over the image"))
    return {"name": name, "label": _class_text(result, c), "probability": result.probabilities[i][0],
            "figures": tiles, "methods": [""] + list(result.computed_methods)}
