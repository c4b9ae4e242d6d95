"""The insight section's pictures: per class the eigenvalue spectrum with its eigengap (a small chart), per
cluster its mean map and its exemplars (thumbnail, map over it)."""
from __future__ import annotations

import io

import numpy as np

from ..stages.insight import OUTSIDE, UNLIKE, ClassSpray, InsightResult
from .common import Figure, apply_colormap, make_figure, matplotlib_classes, normalize01, overlay, upscale_nearest

SPECTRUM_SIZE = (3.2, 2.0)  # inches at DPI
DPI = 100
SHOWN = 96  # side in pixels of a mean map or exemplar on the page


def spectrum(s: ClassSpray) -> Figure:
    """The smallest Laplacian eigenvalues, ascending, the eigengap after the cluster count marked."""
    MplFigure, FigureCanvasAgg = matplotlib_classes()
    fig = MplFigure(figsize=SPECTRUM_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = np.asarray(s.eigenvalues, dtype=np.float64)
    c = len(s.clusters)
    ranks = np.arange(1, len(values) + 1)
    ax.plot(ranks, values, "o-", color="#455a64", markersize=3, linewidth=1)
    if c < len(values):
        ax.axvspan(c + 0.1, c + 0.9, color="#ff7043", alpha=0.25, linewidth=0)
    ax.set_xlabel("eigenvalue rank", fontsize=8)
    ax.set_ylabel("λ", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    how = "the largest eigengap" if s.chosen else "`clusters`"
    gap = f"; the gap after eigenvalue {c} shaded ({how})" if c < len(values) else ""
    label = _plain(s.label)
    return Figure(png=buffer.getvalue(), alt=f"Smallest Laplacian eigenvalues of class {label}{gap}",
                  caption=f"Spectrum: {c} clusters{gap}", width=round(SPECTRUM_SIZE[0] * DPI),
                  height=round(SPECTRUM_SIZE[1] * DPI))


def _plain(text: str) -> str:
    return str(text).replace("$", r"\$")


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
            "notes": list(result.notes)}
