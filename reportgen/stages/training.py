"""Training curves: scalars (and weight histograms) read from the run's logs.

The files, folders (walked recursively) and globs of `training.logs` are found and read by
`reportgen.logs` (TensorBoard event files, CSV, JSON lines; one run a folder: the formats and the
run naming are described there). This stage picks the tags of `training.tags`, sorts and smooths
each scalar series as TensorBoard does, and compresses each histogram to the values at
`BASIS_POINTS`, as TensorBoard's distributions view does.

Problems with single files or tags (nothing matches a glob, a damaged event file, a CSV without
a step column, a tag no run has) are warnings in the result: the section says what was skipped.
When no log file is found or nothing at all can be read from them, `run` raises StageSkipped (the
section says why, the report is built); when none of `training.tags` is in the logs, ReportgenError
(the stage fails, the report is still built).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np

from ..config.rules import setting
from ..errors import ReportgenError, StageSkipped, did_you_mean
from ..logs import Points, find_log_files, listing, load_runs, plural
from . import Stage


@dataclass(frozen=True)
class TrainingConfig:
    logs: tuple[str, ...] = setting((), kind="patterns")  # absolute file, folder or glob patterns
    tags: tuple[str, ...] = ()  # default: every tag
    smoothing: float = setting(0.6, ge=0, lt=1)


# TensorBoard's distributions view: values at these basis points (1/100 of a percent) of each histogram
BASIS_POINTS = (0, 668, 1587, 3085, 5000, 6915, 8413, 9332, 10000)


# ---------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Series:
    """One tag of one run, sorted by step (stable: repeated steps keep their logging order)."""

    run: str
    tag: str
    steps: np.ndarray  # (P,) int64
    values: np.ndarray  # (P,) float32, may hold inf/NaN from event files
    smoothed: np.ndarray  # (P,) float32: TensorBoard's debiased exponential moving average
    wall_times: np.ndarray  # (P,) float64 seconds since the epoch; NaN where the log has none
    axis: str = "step"  # what `steps` counts: "step", "epoch", "global_step", ...


@dataclass(frozen=True)
class SeriesStats:
    """First, last, min and max over the finite values, each with its step (None: no finite value)."""

    points: int
    non_finite: int
    first: float | None = None
    first_step: int | None = None
    last: float | None = None
    last_step: int | None = None
    min: float | None = None
    min_step: int | None = None
    max: float | None = None
    max_step: int | None = None


@dataclass(frozen=True)
class HistogramSeries:
    """A histogram tag of one run over time, compressed as TensorBoard's distributions view does."""

    run: str
    tag: str
    steps: np.ndarray  # (T,) int64
    percentiles: np.ndarray  # (T, len(BASIS_POINTS)) float32: values at BASIS_POINTS, ascending


@dataclass(frozen=True)
class RunInfo:
    name: str
    folder: str  # as the report shows it: relative to the config's folder
    files: tuple[str, ...]  # file names (relative to `folder`) that gave data


@dataclass(frozen=True)
class TrainingResult:
    runs: tuple[RunInfo, ...]
    series: tuple[Series, ...]  # the selected scalar tags, grouped by tag (tag order, then run order)
    histograms: tuple[HistogramSeries, ...]  # the selected histogram tags, by run then tag
    tags: tuple[str, ...]  # every scalar tag found, selected or not
    histogram_tags: tuple[str, ...]  # every histogram tag found
    smoothing: float
    warnings: tuple[str, ...] = ()  # what was skipped and why

    def selected_tags(self) -> list[str]:
        return list(dict.fromkeys(s.tag for s in self.series))


# ---------------------------------------------------------------------------- stage API


def check(info, cfg: TrainingConfig) -> None:
    """Only what needs no disk: the files themselves are looked at in `run`, where a missing log is a
    warning in the section (the rest of the report is still built), not a config error."""
    if not cfg.logs:
        raise ReportgenError("`analyses.training.logs` is empty: give TensorBoard log folders, CSV or JSON-lines "
                             "files (paths or globs, relative to the config file).")


def run(ctx, cfg: TrainingConfig) -> TrainingResult:
    warnings: list[str] = []
    shown = ctx.config.shown_path  # no home folders in a published report
    files = find_log_files(cfg.logs, warnings, shown=shown)
    if not files:
        raise StageSkipped("no training logs found: " + " ".join(warnings))
    ctx.log(f"training: reading {plural(len(files), 'log file')}")
    runs = load_runs(files, warnings, summarize=compute_distribution)
    scalar_tags = list(dict.fromkeys(tag for r in runs for tag in r.scalars))
    histogram_tags = list(dict.fromkeys(tag for r in runs for tag in r.histograms))
    if not scalar_tags and not histogram_tags:
        raise StageSkipped(f"no training data could be read from {plural(len(files), 'log file')}: "
                             + " ".join(warnings))

    selected = select_tags(cfg.tags, scalar_tags + histogram_tags, warnings)
    series = tuple(
        _make_series(r.name, tag, r.scalars[tag], r.axes.get(tag, "step"), cfg.smoothing)
        for tag in selected if tag in scalar_tags
        for r in runs if tag in r.scalars
    )
    histograms = tuple(
        HistogramSeries(run=r.name, tag=tag, steps=np.asarray(r.histograms[tag][0], dtype=np.int64),
                        percentiles=np.asarray(r.histograms[tag][1], dtype=np.float32).reshape(-1, len(BASIS_POINTS)))
        for r in runs for tag in selected if tag in r.histograms
    )
    if not series and not histograms:
        raise ReportgenError("none of the tags in `analyses.training.tags` is in the logs: " + " ".join(warnings))
    infos = tuple(RunInfo(name=r.name, folder=shown(str(r.folder)), files=tuple(r.files)) for r in runs)
    return TrainingResult(runs=infos, series=series, histograms=histograms, tags=tuple(scalar_tags),
                          histogram_tags=tuple(histogram_tags), smoothing=cfg.smoothing, warnings=tuple(warnings))


def to_json(result: TrainingResult) -> list[dict]:
    """report.json `training`: one entry per run and tag: run, tag, points, first, last, min, max."""
    entries = []
    for s in result.series:
        stats = compute_stats(s)
        entries.append({"run": s.run, "tag": s.tag, "points": stats.points, "first": stats.first,
                        "last": stats.last, "min": stats.min, "max": stats.max})
    return entries


# ---------------------------------------------------------------------------- computations


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing (vz_line_chart2 `resmoothDataset`): a debiased exponential moving average.

    last = last * w + (1 - w) * v;  smoothed = last / (1 - w ** n)  with n the number of finite values so
    far. Non-finite values pass through unchanged and are skipped; a constant series is left as it is.
    """
    values = np.asarray(values, dtype=np.float64)  # (P,)
    out = values.copy()
    if values.size == 0 or np.all(values == values[0]):
        return out
    last, count = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        last = last * weight + (1.0 - weight) * v
        count += 1
        out[i] = last / (1.0 - weight ** count) if weight != 1 else last
    return out


def compute_stats(series: Series) -> SeriesStats:
    values = series.values
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return SeriesStats(points=int(values.size), non_finite=int(values.size))
    lo = finite[np.argmin(values[finite])]  # first occurrence of the minimum
    hi = finite[np.argmax(values[finite])]
    first, last = finite[0], finite[-1]

    def num(i: int) -> float:
        return float(str(values[i]))  # the shortest decimal that is this float32 (0.3, not 0.30000001192...)

    return SeriesStats(points=int(values.size), non_finite=int(values.size - finite.size),
                       first=num(first), first_step=int(series.steps[first]),
                       last=num(last), last_step=int(series.steps[last]),
                       min=num(lo), min_step=int(series.steps[lo]),
                       max=num(hi), max_step=int(series.steps[hi]))


def compute_distribution(buckets: np.ndarray, basis_points: Sequence[int] = BASIS_POINTS) -> np.ndarray:
    """Values at `basis_points` of a histogram: TensorBoard's `compress_histogram`, as its distributions view.

    buckets: (k, 3) [left edge, right edge, count]. Linear interpolation of the cumulative weight inside
    each bucket; the first non-empty bucket starts at the histogram's minimum. Returns (len(basis_points),).
    """
    buckets = np.asarray(buckets, dtype=np.float64).reshape(-1, 3)
    if buckets.size == 0:
        return np.zeros(len(basis_points))
    lowest, highest = buckets[0, 0], buckets[-1, 1]
    right = buckets[:, 1]
    cumulative = (buckets[:, 2] * basis_points[-1] / (buckets[:, 2].sum() or 1.0)).cumsum()
    out = np.full(len(basis_points), highest)
    for j, bp in enumerate(basis_points):
        i = int(np.searchsorted(cumulative, bp, side="right"))
        while i < len(cumulative):
            prev = cumulative[i - 1] if i > 0 else 0.0
            if cumulative[i] == prev:  # an empty bucket
                i += 1
                continue
            lhs = lowest if (i == 0 or prev == 0) else max(right[i - 1], lowest)
            rhs = min(right[i], highest)
            out[j] = lhs + (bp - prev) * (rhs - lhs) / (cumulative[i] - prev)
            break
        else:
            break  # past the last bucket: this and the remaining points are the maximum
    return out


def select_tags(patterns: Sequence[str], available: Sequence[str], warnings: list[str]) -> list[str]:
    """The tags to show: every one when `patterns` is empty, else those matching a name or glob (`train/*`)."""
    if not patterns:
        return list(available)
    selected: list[str] = []
    missing = []
    for pattern in patterns:
        matches = [t for t in available if t == pattern or fnmatchcase(t, pattern)]
        if not matches:
            missing.append(pattern)
        selected += [t for t in matches if t not in selected]
    for pattern in missing:
        warnings.append(f"tag `{pattern}` is in no run.{did_you_mean(pattern, available)} "
                        f"Tags found: {listing(available)}.")
    return selected


def _make_series(run: str, tag: str, points: Points, axis: str, weight: float) -> Series:
    steps = np.asarray(points.steps, dtype=np.int64)
    order = np.argsort(steps, kind="stable")
    values = np.asarray(points.values, dtype=np.float32)[order]  # (P,)
    return Series(run=run, tag=tag, steps=steps[order], values=values,
                  smoothed=smooth(values, weight).astype(np.float32),
                  wall_times=np.asarray(points.wall_times, dtype=np.float64)[order], axis=axis)


# no arrays.npz entries: the numbers are in the logs themselves
SPEC = Stage(name="training", title="Training curves", order=90, options=TrainingConfig, run=run, check=check,
             to_json=to_json)
