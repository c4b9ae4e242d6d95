"""Training charts: one line chart per tag (runs overlaid), and the weight distributions per run.

matplotlib's object API only (Figure + Agg canvas, no pyplot state); PNGs carry no software tag, so
the same logs give the same bytes.
"""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from ..stages.training import BASIS_POINTS, HistogramSeries, Series, TrainingResult, compute_stats
from .common import Figure

CHART_SIZE = (6.0, 3.2)  # inches at DPI: 600 x 320 pixels
DPI = 100
LOG_DECADES = 2.0  # positive values spanning at least this many decades get a log axis
MAX_DISTRIBUTIONS = 24  # histogram tags per distributions image
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # matplotlib's tab10


def plot(result: TrainingResult, ctx=None) -> dict:
    """The training section's variables: charts with their stats rows, distributions, runs, warnings."""
    colours = {run.name: RUN_COLOURS[i % len(RUN_COLOURS)] for i, run in enumerate(result.runs)}
    charts = []
    for tag in result.selected_tags():
        series = [s for s in result.series if s.tag == tag]
        charts.append({"tag": tag, "figure": plot_curves(tag, series, result.smoothing, colours),
                       "rows": [stats_row(s) for s in series]})
    distributions = []
    for run in result.runs:
        hists = [h for h in result.histograms if h.run == run.name]
        if hists:
            distributions.append(plot_distributions(run.name, hists))
    runs = [{"name": r.name, "folder": r.folder, "files": ", ".join(r.files),
             "tags": sum(1 for s in result.series if s.run == r.name)
             + sum(1 for h in result.histograms if h.run == r.name)} for r in result.runs]
    notes = []
    unselected = [t for t in result.tags if t not in result.selected_tags()]
    if unselected:
        notes.append(f"{len(unselected)} more scalar tags in the logs are not shown (`training.tags`): "
                     + ", ".join(unselected[:20]) + (" ..." if len(unselected) > 20 else ""))
    return {"charts": charts, "distributions": distributions, "runs": runs, "notes": notes,
            "warnings": list(result.warnings), "smoothing": result.smoothing}


def stats_row(series: Series) -> dict:
    stats = compute_stats(series)
    row = {"run": series.run, "points": stats.points, "non_finite": stats.non_finite, "axis": series.axis}
    for key in ("first", "last", "min", "max"):
        value, step = getattr(stats, key), getattr(stats, f"{key}_step")
        row[key] = format_number(value)
        row[f"{key}_step"] = "" if step is None else str(step)
    return row


def format_number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}"


def log_decades(series: list[Series]) -> float | None:
    """Decades spanned by the finite values of all runs when every one is positive, else None."""
    values = np.concatenate([s.values[np.isfinite(s.values)] for s in series]) if series else np.zeros(0)
    if values.size == 0 or values.min() <= 0:
        return None
    return float(math.log10(values.max() / values.min()))


def draw_curves(ax, series: list[Series], smoothing: float, colours: dict[str, str] | None = None) -> None:
    """Each run's logged values bold and on top; with smoothing, TensorBoard's smoothed curve light beneath them
    (as TensorBoard draws it when asked to show the raw data). The smoothed curve lags the values it follows
    (on a 10-point epoch log by several epochs), so it must not be the line a reader takes for the run."""
    colours = colours or {}
    for i, s in enumerate(series):
        colour = colours.get(s.run, RUN_COLOURS[i % len(RUN_COLOURS)])
        few = s.steps.size <= 30
        ax.plot(s.steps, s.values, color=colour, linewidth=2, marker="o" if few else None, markersize=3,
                zorder=3, label=_text(s.run))
        if smoothing > 0:
            ax.plot(s.steps, s.smoothed, color=colour, alpha=0.35, linewidth=1.2, zorder=2)


def plot_curves(tag: str, series: list[Series], smoothing: float, colours: dict[str, str] | None = None) -> Figure:
    """One chart: each run's logged values bold and its smoothed curve light, log scale over >= 2 decades."""
    fig = MplFigure(figsize=CHART_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    draw_curves(ax, series, smoothing, colours)
    decades = log_decades(series)
    log = decades is not None and decades >= LOG_DECADES
    if log:
        ax.set_yscale("log")
    axes = sorted({s.axis for s in series})
    ax.set_xlabel(" / ".join(axes))
    ax.set_title(_text(tag), fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    runs = ", ".join(s.run for s in series)
    caption = f"{tag} by {' / '.join(axes)}, {len(series)} run{'s' if len(series) != 1 else ''} ({runs})"
    if smoothing > 0:
        caption += f": logged values bold, TensorBoard smoothing {smoothing:g} light"
    if log:
        caption += f"; log scale: the values span {decades:.1f} decades"
    alt = f"Training curve of {tag} by {' / '.join(axes)} for {runs}" + (" (log scale)" if log else "")
    return _to_figure(fig, alt, caption)


def plot_distributions(run: str, hists: list[HistogramSeries]) -> Figure:
    """TensorBoard's distributions view for one run: per histogram tag, percentile bands over steps."""
    shown = hists[:MAX_DISTRIBUTIONS]
    ncols = min(3, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = MplFigure(figsize=(3.2 * ncols, 2.4 * nrows), dpi=DPI, layout="constrained")
    half = len(BASIS_POINTS) // 2  # the median's index
    for k, h in enumerate(shown):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        p = h.percentiles  # (T, 9)
        for band in range(half):  # outermost (min..max) band palest
            ax.fill_between(h.steps, p[:, band], p[:, -1 - band], color="#ff7043", alpha=0.15 + 0.15 * band,
                            linewidth=0, step=None)
        ax.plot(h.steps, p[:, half], color="#bf360c", linewidth=1.2)
        if h.steps.size == 1:
            ax.errorbar(h.steps, p[:, half], yerr=[[p[0, half] - p[0, 0]], [p[0, -1] - p[0, half]]],
                        color="#bf360c", capsize=3)
        ax.set_title(_text(h.tag), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    tags = ", ".join(h.tag for h in shown)
    more = f" ({len(hists) - len(shown)} more tags not drawn)" if len(hists) > len(shown) else ""
    caption = (f"Run {run}: distributions over steps of {len(shown)} histograms{more}; bands from outside in: "
               "min to max, 6.68 to 93.32, 15.87 to 84.13 and 30.85 to 69.15 percent; line: median")
    alt = f"Weight distributions over steps for run {run}: {tags}"
    return _to_figure(fig, alt, caption)


def _to_figure(fig: MplFigure, alt: str, caption: str) -> Figure:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (round(v * DPI) for v in fig.get_size_inches())
    return Figure(png=buffer.getvalue(), alt=alt, caption=caption, width=width, height=height)


def _text(text: str) -> str:
    """Text matplotlib draws literally: `$` would start mathtext."""
    return str(text).replace("$", r"\$")
