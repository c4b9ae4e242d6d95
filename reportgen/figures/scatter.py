"""2-D points (a feature space reduced by PCA or UMAP) -> the compact payload of the page's interactive scatter.

The page draws it itself (templates/partials/scatter.html.jinja2 with templates/scatter.js): no PNG, since a
picture of 50 000 points can neither say which point is which nor link to it. The payload stays small at that
scale (0.87 MB at 50 000 points named like `val/class_name/image_012345.jpg`, tests/test_scatter.py):

- coordinates quantised to uint16 on one common scale (the map's aspect ratio is kept), little-endian, base64;
- classes as uint8 (uint16 beyond 255 classes), base64; the value len(labels) means "truth unknown";
- one colour per class (Tableau 10, then golden-angle hues: mid tones, readable on the light and the dark page)
  and a grey for unknown truth, as RGBA bytes, base64: the script writes them straight into the canvas's pixels;
- mistakes are not stored: a point is one where truth is known and differs from the prediction;
- names sorted and front-coded (how many leading characters each shares with the one before, uint8, and the
  rest, joined by newlines): names of a data set share long prefixes, whatever order the points come in.

The points are stored in name order; the page draws them in a fixed pseudo-random order (so no class is always
drawn over another) and the mistakes last."""
from __future__ import annotations

import base64
import colorsys
import json

import numpy as np

from .common import Figure

LEVELS = 65535  # uint16 coordinates
TABLEAU = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
UNKNOWN = "#8a9096"  # the colour of a point whose truth is unknown
LEGEND_MAX = 24  # more classes than this: no legend (hover a point for its class)


def class_colour(k: int) -> str:
    """The colour of class k, "#rrggbb": Tableau 10, then hues 137.5° apart at the same lightness."""
    if k < len(TABLEAU):
        return TABLEAU[k]
    hue = (k * 137.508) % 360
    rgb = colorsys.hls_to_rgb(hue / 360, 0.55, 0.6)
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgb)


def scatter_payload(xy: np.ndarray, truth: np.ndarray, predicted: np.ndarray, names: list[str], labels: list[str],
                    anchors: list[str | None], thumbs: dict[int, bytes]) -> dict:
    """The data of one scatter for the partial `scatter(payload, id, caption)`.

    xy: (n, 2) float, finite: each image's point. truth: (n,) int, a position in `labels` or -1 (unknown).
    predicted: (n,) int, a position in `labels`. names: the images' names (a newline in one becomes a space).
    anchors: the element id the page links each image to (its card, `figures.images.anchor(name)`), None where
    it has none: clicking such a point filters the table of every image to its name instead.
    thumbs: point index -> PNG, the thumbnail its tooltip shows (detail images only: each one is page weight).

    Returns {"count", "labelled", "mistakes", "unknown", "classes", "legend", "json", "thumbs"}: `json` is compact JSON
    text safe inside <script type="application/json"> ({"n", "x", "y", "extent", "truth", "pred", "size",
    "colours", "labels", "shared", "names", "anchors"}); `legend` [(label, "#rrggbb")] (empty beyond LEGEND_MAX
    classes); `thumbs` a list of (position in the payload, Figure) for the template's `src` filter."""
    xy = np.asarray(xy, dtype=np.float64)
    n = len(names)
    truth, predicted = np.asarray(truth).astype(np.int64).reshape(-1), np.asarray(predicted).astype(np.int64).reshape(-1)
    if xy.shape != (n, 2) or truth.shape != (n,) or predicted.shape != (n,) or len(anchors) != n:
        raise ValueError(f"scatter: {n} names but xy {xy.shape}, truth {truth.shape}, predicted {predicted.shape}, "
                         f"{len(anchors)} anchors")
    if not np.isfinite(xy).all():
        raise ValueError("scatter: the coordinates must be finite")
    k = len(labels)
    if n and (predicted.min() < 0 or predicted.max() >= k or truth.min() < -1 or truth.max() >= k):
        raise ValueError(f"scatter: a class outside the {k} labels")
    if any(not 0 <= i < n for i in thumbs):
        raise ValueError(f"scatter: a thumbnail for a point outside 0..{n - 1}")

    order = sorted(range(n), key=names.__getitem__)  # name order: the front coding's shared prefixes are longest
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    xy, truth, predicted = xy[order], truth[order], predicted[order]

    low = xy.min(axis=0) if n else np.zeros(2)
    span = float((xy.max(axis=0) - low).max()) if n else 0.0
    q = np.zeros((n, 2), dtype="<u2") if span == 0 else np.rint((xy - low) / span * LEVELS).astype("<u2")
    if k >= 65535:
        raise ValueError(f"scatter: {k} classes, at most 65 534")
    size = 1 if k < 256 else 2
    dtype = "u1" if size == 1 else "<u2"
    stored_truth = np.where(truth < 0, k, truth).astype(dtype)  # k: unknown
    colours = [class_colour(c) for c in range(k)]
    rgba = bytes.fromhex("".join(c[1:] + "ff" for c in colours + [UNKNOWN]))

    shared, rest, previous = bytearray(), [], ""
    for i in order:
        name = names[i].replace("\n", " ")
        common = 0
        for a, b in zip(previous, name[:255]):
            if a != b:
                break
            common += 1
        shared.append(common)
        rest.append(name[common:])
        previous = name

    data = {
        "n": n, "x": _b64(q[:, 0]), "y": _b64(q[:, 1]), "extent": [int(q[:, 0].max(initial=0)), int(q[:, 1].max(initial=0))],
        "truth": _b64(stored_truth), "pred": _b64(predicted.astype(dtype)), "size": size,
        "colours": base64.b64encode(rgba).decode("ascii"), "labels": list(labels),
        "shared": base64.b64encode(bytes(shared)).decode("ascii"), "names": "\n".join(rest),
        "anchors": {str(k): a for k, a in sorted((int(where[i]), a) for i, a in enumerate(anchors) if a)},
    }
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # safe inside <script>
    known = truth >= 0
    return {"count": n, "labelled": bool(known.any()), "mistakes": int((known & (truth != predicted)).sum()),
            "unknown": int((~known).sum()), "classes": k, "legend": list(zip(labels, colours)) if k <= LEGEND_MAX else [],
            "json": text, "unknown_colour": UNKNOWN,
            "thumbs": sorted(((int(where[i]), Figure(png=png, alt=f"Thumbnail of {names[i]}")) for i, png in thumbs.items()),
                             key=lambda t: t[0])}


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode("ascii")
