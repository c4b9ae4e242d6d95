"""A detector's per-box maps as pictures, and the geometry of the card where the page draws the boxes.

Per detail image: the image (enlarged by whole pixels) and, per explained box and method, the box's heat map (the
colour map alone: the page lays it over the image with the overlay's opacity, `cam.alpha`). The boxes are not drawn
into pixels: the card (`sections/cam_detection.html.jinja2`) is one inline SVG whose user units are CSS pixels at
full size (`VIEW` wide), so it scales as one picture on a phone: the image, the true boxes (dashed; a miss in the
warning colour), the explained detections (solid, label and score; a false positive marked), and below the image a
strip with one box's maps, one per method: the best box's until a box is hovered, focused or tapped.
"""
from __future__ import annotations

import math

import numpy as np

from ..methods import title as method_title
from ..stages.cam_detection import BoxMapsResult, box_rows, truth_rows
from .common import apply_colormap, drawn_in_parallel, make_figure, resize_float, upscale_nearest
from .grid import colorbar_image

VIEW = 288  # the card's width in CSS pixels at full size (fits a 360 px phone; narrower screens scale it)
PER_ROW = 3  # maps per row of the strip
GAP = 8  # between the strip's maps
FONT = 12  # text size in the card's units
HEADER = 22  # the strip's first line: which box
CAPTION = 18  # below each map: the method
# the boxes' colours, with white text on them (contrast ≥ 4.5); the words say the same (FP, missed)
COLOURS = {"tp": "#1e7a34", "fp": "#b3261e", "crowd": "#5c6166", None: "#1f5fbf"}
MISSED = "#e8710a"
MATCH_TEXT = {"tp": "true positive", "fp": "false positive", "crowd": "matched a crowd region", None: ""}


def plot(result: BoxMapsResult, ctx) -> dict:
    cfg = result.config
    by_name = {image.name: image for image in ctx.images}
    shown = [(i, by_name[name]) for i, name in enumerate(result.images) if name in by_name][:cfg.detail_images]
    cards = drawn_in_parallel(lambda item: card(result, item[0], item[1].display), shown)
    return {
        "methods": [method_title(m) for m in result.methods],
        "layers": [{"method": method_title(m), "layer": layer} for m, layer in result.layers.items()],
        "iou_threshold": result.iou_threshold,
        "notes": list(result.notes),
        "warnings": list(result.warnings),
        "not_applicable": [{"method": method_title(m), "why": why} for m, why in result.not_applicable.items()],
        "colorbar": make_figure(colorbar_image(cfg.colormap, 0.0, 1.0, height=120),
                                alt=f"Colour scale of the maps ({cfg.colormap}): bottom 0, top 1 (the map's maximum)"),
        "images": cards,
        "boxes": result.box_count(),
        "hidden_images": max(0, len(result.images) - len(cards)),
        "timings": [{"step": method_title(step), "seconds": float(s)} for step, s in result.seconds.items()],
    }


def _label(row: dict) -> str:
    score = "" if row["score"] is None else f" {row['score']:.2f}"
    return f"{row['index'] + 1} {row['name']}{score}" + (" FP" if row["match"] == "fp" else "")


def _rect(box, scale: float) -> dict:
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    return {"x": round(x0, 2), "y": round(y0, 2), "w": round(max(x1 - x0, 0.0), 2), "h": round(max(y1 - y0, 0.0), 2)}


def _tab(rect: dict, text: str, limit: float, below: float | None = None) -> dict:
    """A label's filled tab: above the box where there is room, else inside its top; with `below` (the picture's
    height), under the box where there is room, else inside its bottom. Within the picture's width `limit`."""
    width = min(0.62 * FONT * len(text) + 6, limit)
    tall = FONT + 4
    if below is None:
        y = rect["y"] - tall if rect["y"] >= tall else rect["y"]
    else:
        bottom = rect["y"] + rect["h"]
        y = bottom if bottom + tall <= below else bottom - tall
    x = min(max(rect["x"], 0.0), max(limit - width, 0.0))
    return {"x": round(x, 2), "y": round(y, 2), "w": round(width, 2), "h": FONT + 4,
            "tx": round(x + 3, 2), "ty": round(y + FONT, 2)}


def card(result: BoxMapsResult, i: int, display: np.ndarray) -> dict:
    """Image i's card: its picture, boxes and per-box maps, in the card's units (see the module)."""
    cfg = result.config
    base = np.ascontiguousarray(display[..., :3])
    h, w = base.shape[:2]
    scale = VIEW / max(h, w)
    width, height = round(w * scale, 2), round(h * scale, 2)
    name = result.images[i]
    picture = make_figure(upscale_nearest(base, VIEW), alt=f"Image {name} as the model sees it")
    rows = box_rows(result, i)
    truths = truth_rows(result, i)
    tile = (width - GAP * (PER_ROW - 1)) / PER_ROW
    tile_h = tile * h / w
    methods = list(result.methods)
    lines = math.ceil(len(methods) / PER_ROW) if methods else 0
    strip = (HEADER + lines * (tile_h + CAPTION)) if rows and methods else 0
    top = height + GAP  # the strip's top
    boxes = []
    for row in rows:
        rect = _rect(row["box"], scale)
        text = _label(row)
        tiles = []
        for m, method in enumerate(methods):
            values = np.asarray(result.maps[method][i][row["index"]], dtype=np.float32)
            if values.shape != (h, w):
                values = np.clip(resize_float(values, (h, w)), 0.0, 1.0)
            title = method_title(method)
            heat = make_figure(apply_colormap(values, cfg.colormap),
                               alt=f"{title} for box {row['index'] + 1} ({text}) of image {name}")
            col, line = m % PER_ROW, m // PER_ROW
            x, y = col * (tile + GAP), top + HEADER + line * (tile_h + CAPTION)
            tiles.append({"title": title, "heat": heat, "x": round(x, 2), "y": round(y, 2), "w": round(tile, 2),
                          "h": round(tile_h, 2), "tx": round(x + tile / 2, 2), "ty": round(y + tile_h + FONT + 2, 2)})
        what = MATCH_TEXT[row["match"]]
        boxes.append({**row, **rect, "text": text, "tab": _tab(rect, text, width), "colour": COLOURS[row["match"]],
                      "about": f"Box {row['index'] + 1}: {row['name']}"
                               + ("" if row["score"] is None else f", score {row['score']:.2f}")
                               + (f", {what}" if what else ""),
                      "tiles": tiles, "area": rect["w"] * rect["h"]})
    # the largest first: a small box drawn later lies on top, so that it can be hovered inside a large one
    drawn = sorted(boxes, key=lambda b: -b["area"])
    truth = []
    for row in truths or ():
        rect = _rect(row["box"], scale)
        text = f"missed: {row['name']}" if row["missed"] else ""  # a found box's label would repeat its detection's
        truth.append({**row, **rect, "text": text, "colour": MISSED if row["missed"] else "#ffffff",
                      "tab": _tab(rect, text, width, below=height)})
    return {
        "name": name, "picture": picture, "width": width, "height": height, "view_height": round(top + strip, 2)
        if strip else height, "strip_top": round(top, 2), "header_y": round(top + FONT + 2, 2), "font": FONT,
        "boxes": boxes, "drawn": drawn, "truth": truth, "has_truth": truths is not None,
        "missed": sum(t["missed"] for t in truth), "false_positives": sum(b["match"] == "fp" for b in boxes),
        "alpha": float(cfg.alpha),
    }
