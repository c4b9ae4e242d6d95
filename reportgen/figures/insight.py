"""The insight section's pictures: per class the eigenvalue spectrum with its eigengap (a small chart), per
cluster its mean map and its exemplars (thumbnail, map over it)."""
from __future__ import annotations


import numpy as np

from ..stages.insight import OUTSIDE, UNLIKE, ClassSpray, InsightResult
from .common import (apply_colormap, make_figure, normalize01, overlay, to_png,
                     upscale_nearest)
from .grid import fit_height

SPECTRUM = (320, 160, 28)  # the spectrum chart's width, height and margin in CSS px
SHOWN = 96  # side in pixels of a mean map or exemplar on the page
MISTAKES = 50  # mistakes listed with their nearest correct images


def spectrum(s: ClassSpray) -> dict:
    """The smallest Laplacian eigenvalues, ascending, the eigengap after the cluster count marked: the points of an
    inline SVG chart (`SPECTRUM` px; no matplotlib: it drew a class's chart in 0.14 s) and its words."""
    width, height, pad = SPECTRUM
    values = np.asarray(s.eigenvalues, dtype=np.float64)
    c, n = len(s.clusters), len(values)
    low, high = float(values.min()), float(values.max())
    span = high - low or 1.0
    x = lambda rank: pad + (rank - 1) * (width - 2 * pad) / max(1, n - 1)  # noqa: E731
    y = lambda v: height - pad - (v - low) / span * (height - 2 * pad)  # noqa: E731
    points = [(round(x(r), 1), round(y(v), 1)) for r, v in enumerate(values, start=1)]
    how = "the largest eigengap" if s.chosen else "`clusters`"
    gap = f"; the gap after eigenvalue {c} shaded ({how})" if c < n else ""
    return {"width": width, "height": height, "points": points, "line": " ".join(f"{px},{py}" for px, py in points),
            "gap": (x(c), x(c + 1) - x(c)) if c < n else None, "low": f"{low:.3g}", "high": f"{high:.3g}",
            "n": n, "pad": pad, "alt": f"Smallest Laplacian eigenvalues of class {s.label}{gap}",
            "caption": f"Spectrum: {c} clusters{gap}"}


def _map(values: np.ndarray) -> np.ndarray:
    return normalize01(np.asarray(values, dtype=np.float32))


def plot(result: InsightResult, ctx=None) -> dict:
    """The section's variables: per analysed class its spectrum and clusters (mean map, exemplars, numbers,
    warnings), the classes skipped, the notes."""
    cmap = "jet"
    classes = []
    for s in result.classes:
        groups = []
        for j, g in enumerate(s.clusters):
            mean = make_figure(upscale_nearest(apply_colormap(_map(g.mean_map), cmap), SHOWN),
                               alt=f"Mean {result.method} map of cluster {j + 1} of class {s.label} ({g.size} images)")
            exemplars = []
            for name, thumb, heat in zip(g.exemplars, g.exemplar_thumbs, g.exemplar_maps):
                image = upscale_nearest(thumb, SHOWN)
                exemplars.append({"name": name, "image": make_figure(image, alt=f"Image {name}"),
                                  "map": make_figure(overlay(image, _map(heat), 0.5, cmap),
                                                     alt=f"{result.method} map of {name} over it")})
            warnings = []
            if "outside" in g.flags:
                warnings.append(f"This group of {g.size} images is explained by pixels outside the object: "
                                f"{100 * g.outside:.0f} % of the maps' mass lies outside the box or mask "
                                f"(above {100 * OUTSIDE:.0f} %).")
            if "unlike" in g.flags:
                warnings.append(f"This group's mean map is unlike the rest of the class: Pearson's r = {g.pearson:.2f} "
                                f"(below {UNLIKE}). Look at what its exemplars share.")
            groups.append({"number": j + 1, "size": g.size, "share": g.size / max(1, s.analysed), "mean": mean,
                           "exemplars": exemplars, "accuracy": g.accuracy, "outside": g.outside, "pearson": g.pearson,
                           "warnings": warnings})
        classes.append({"label": s.label, "index": s.cls, "images": s.images, "analysed": s.analysed,
                        "spectrum": spectrum(s), "chosen": s.chosen, "groups": groups,
                        "flagged": sum(1 for g in s.clusters if g.flags)})
    skipped = [{"label": result.labels.get(c, f"class {c}"), "images": n} for c, n in result.skipped.items()]
    cfg = result.config
    return {"classes": classes, "skipped": skipped, "method": result.method, "layer": result.layer, "by": cfg.by,
            "size": cfg.size, "k": cfg.k, "min_images": cfg.min_images, "max_per_class": cfg.max_per_class,
            "notes": list(result.notes), "concepts": _concepts(result, ctx), "space": _space(result, ctx)}


def _label(ctx, c: int) -> str:
    return ctx.label(int(c)) if ctx is not None else f"class {int(c)}"


def _concepts(result: InsightResult, ctx) -> dict | None:
    """Each concept: its top patches (crops of the sample's thumbnails around its strongest positions) and its heat
    map over the first images of the sample; the table of each concept's share per class."""
    found = result.concepts
    if found is None:
        return None
    acts, heat = found.activations, found.heat_maps
    _, k, h, w = heat.shape
    side = acts.thumbs.shape[1]
    cell = max(1, side // max(h, w))
    rows = []
    for j in range(k):
        patches = []
        for row, y, x in found.top[j]:
            y0, x0 = max(0, (y - 1) * side // h), max(0, (x - 1) * side // w)
            crop = acts.thumbs[row][y0:y0 + 3 * cell, x0:x0 + 3 * cell]
            patches.append(make_figure(upscale_nearest(crop, SHOWN // 2), alt=f"Concept {j + 1}: a top patch of "
                                                                                f"{acts.names[row]}"))
        maps = [make_figure(overlay(upscale_nearest(acts.thumbs[i], SHOWN), _map(heat[i, j]), 0.5, "jet"),
                            alt=f"Concept {j + 1} over {acts.names[i]}") for i in range(min(3, len(heat)))]
        rows.append({"number": j + 1, "patches": patches, "maps": maps})
    shares = []
    for c in range(found.shares.shape[0]):
        values = found.shares[c]
        if np.isfinite(values).any():
            sole = int(found.sole[c])
            shares.append({"label": _label(ctx, c), "values": [None if not np.isfinite(v) else float(v) for v in values],
                           "sole": sole + 1 if sole >= 0 else None})
    return {"layer": found.layer, "count": k, "fitted": found.fitted, "sample": len(heat), "concepts": rows,
            "shares": shares}


def _space(result: InsightResult, ctx) -> dict | None:
    """The scatter of the feature space and each mistake's nearest correct images."""
    from .images import anchor
    from .scatter import scatter_payload

    space = result.feature_space
    if space is None:
        return None
    f = space.features
    labels = [_label(ctx, c) for c in range(max(result.num_classes, int(f.predicted.max()) + 1, int(f.truth.max()) + 1))]
    detail = {image.name: image for image in (ctx.images if ctx is not None else [])}
    thumbs = {i: to_png(fit_height(np.ascontiguousarray(detail[name].display[..., :3]), SHOWN))
              for i, name in enumerate(f.names) if name in detail}
    payload = scatter_payload(space.xy, f.truth, f.predicted, list(f.names), labels,
                              [anchor(name) if name in detail else None for name in f.names], thumbs)
    mistakes = [{"name": f.names[i], "truth": labels[f.truth[i]], "predicted": labels[f.predicted[i]],
                 "neighbours": [{"name": f.names[j], "label": labels[f.truth[j]], "distance": float(d)}
                                for j, d in near]} for i, near in space.neighbours[:MISTAKES]]
    return {"layer": space.layer, "projection": space.projection.upper(), "payload": payload, "mistakes": mistakes,
            "more_mistakes": max(0, len(space.neighbours) - MISTAKES)}
