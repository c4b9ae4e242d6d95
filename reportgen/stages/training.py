"""Training curves: scalars (and weight histograms) read from the run's logs.

Log kinds, found in the files, folders (walked recursively) and globs of `training.logs`:

- TensorBoard event files `events.out.tfevents.*`: scalars and histograms, read with the
  `tensorboard` package's protos and compat layers (the optional extra `reportgen[tensorboard]`;
  imported only when event files are found). All event files of one folder are one run, read
  in name order (= time order) as TensorBoard does, nothing sampled away; a restart marker
  (SessionLog START, written by `SummaryWriter(purge_step=...)`) drops the points logged after
  it, as TensorBoard does. A truncated or corrupt file keeps its whole records before the damage.
- CSV with a header and a step column (`step`, `global_step`, `iteration`, `iter` or, failing
  those, `epoch`): PyTorch Lightning's `CSVLogger` `metrics.csv` and plain logs. Every other
  numeric column is a tag; an empty cell or NaN means "not logged at this step".
- JSON lines (`*.jsonl`, `*.ndjson`): one object a line, either wide (`{"step": 3, "loss": 0.7}`,
  nested objects flattened to `train/loss`) or long (`{"tag": "loss", "step": 3, "value": 0.7}`).

Each folder holding logs is a run, named by its path relative to the runs' common parent (the
folder's own name where that is the parent itself). When two files in one folder log the same
tag, each CSV/JSONL file becomes its own run `<folder>/<file name>`.

Problems with single files or tags (nothing matches a glob, a damaged event file, a CSV without
a step column, a tag no run has) are warnings in the result: the section says what was skipped.
When nothing at all can be read, `run` raises ReportgenError (the stage fails, the report is built).
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from ..config import TrainingConfig
from ..errors import ReportgenError, StageSkipped, did_you_mean

TENSORBOARD_MISSING = ("reading TensorBoard event files needs the tensorboard package: "
                       "pip install 'reportgen[tensorboard]'")
STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "epoch")  # preference order
WALL_TIME_COLUMNS = ("wall_time", "walltime", "timestamp")
TEXT_LOG_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
EVENT_FILE_PREFIX = "events.out.tfevents."
# TensorBoard's distributions view: values at these basis points (1/100 of a percent) of each histogram
BASIS_POINTS = (0, 668, 1587, 3085, 5000, 6915, 8413, 9332, 10000)
CRC_CHECK_MAX_BYTES = 1 << 20  # larger records (images, graphs) are checked for framing only: pure-Python CRC is slow


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
    folder: str
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
    config = getattr(ctx, "config", None)  # None: a bare context (tests)
    files = find_log_files(cfg.logs, warnings, shown=config.shown_path if config is not None else str)
    if not files:
        raise StageSkipped("no training logs found: " + " ".join(warnings))
    ctx.log(f"training: reading {_count(len(files), 'log file')}")
    runs = load_runs(files, warnings)
    scalar_tags = list(dict.fromkeys(tag for r in runs for tag in r.scalars))
    histogram_tags = list(dict.fromkeys(tag for r in runs for tag in r.histograms))
    if not scalar_tags and not histogram_tags:
        raise StageSkipped(f"no training data could be read from {_count(len(files), 'log file')}: "
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
    infos = tuple(RunInfo(name=r.name, folder=str(r.folder), files=tuple(r.files)) for r in runs)
    return TrainingResult(runs=infos, series=series, histograms=histograms, tags=tuple(scalar_tags),
                          histogram_tags=tuple(histogram_tags), smoothing=cfg.smoothing, warnings=tuple(warnings))


def arrays(result: TrainingResult) -> dict[str, np.ndarray]:
    """DESIGN.md's arrays.npz has no training keys: the numbers are in the logs themselves."""
    return {}


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
                        f"Tags found: {_listing(available)}.")
    return selected


# ---------------------------------------------------------------------------- finding files


def find_log_files(patterns: Iterable[str], warnings: list[str], shown: Callable[[str], str] = str) -> list[Path]:
    """Log files from paths, folders (walked recursively) and globs, in a stable order, without duplicates.
    Warnings name paths as `shown` writes them (relative to the config's folder in a report)."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        if os.path.exists(pattern):  # a literal path, even where it holds glob characters (`run[1]`)
            matches = [Path(pattern)]
        else:
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        files: list[Path] = []
        for match in matches:
            if match.is_dir():
                files += _walk(match)
            elif _kind(match) is not None:
                files.append(match)
            elif match.exists() and not glob.has_magic(pattern):
                warnings.append(f"`{shown(match)}` is not a log reportgen reads (TensorBoard `events.out.tfevents.*`, "
                                f"`*.csv` or `*.jsonl`): skipped.")
        if not files and not matches:
            warnings.append(f"no log files match `{shown(pattern)}`.")
        elif not files and (glob.has_magic(pattern) or any(m.is_dir() for m in matches)):
            what = "holds" if os.path.isdir(pattern) else f"matches {_count(len(matches), 'path')} but"
            warnings.append(f"`{shown(pattern)}` {what} no TensorBoard event files (`events.out.tfevents.*`), "
                            "CSV or JSON-lines logs.")
        for f in files:
            found.setdefault(f.resolve(), None)
    return list(found)


def _walk(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        files += [Path(root) / n for n in sorted(names) if _kind(Path(n)) is not None]
    return files


def _kind(path: Path) -> str | None:
    if path.name.startswith(EVENT_FILE_PREFIX):
        return "events"
    return TEXT_LOG_SUFFIXES.get(path.suffix.lower())


# ---------------------------------------------------------------------------- runs


@dataclass
class _Points:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)

    def add(self, step: int, value: float, wall_time: float = math.nan) -> None:
        self.steps.append(step)
        self.values.append(value)
        self.wall_times.append(wall_time)


@dataclass
class _LogData:
    """What one source (all event files of a folder, or one CSV/JSONL file) holds."""

    scalars: dict[str, _Points] = field(default_factory=dict)
    histograms: dict[str, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)  # tag -> steps, (9,) rows
    axis: str = "step"

    def tags(self) -> set[str]:
        return set(self.scalars) | set(self.histograms)


@dataclass
class _Run:
    name: str
    folder: Path
    files: list[str] = field(default_factory=list)
    scalars: dict[str, _Points] = field(default_factory=dict)
    histograms: dict[str, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)
    axes: dict[str, str] = field(default_factory=dict)  # tag -> axis name

    def merge(self, data: _LogData, files: Iterable[str]) -> None:
        self.files += list(files)
        self.scalars.update(data.scalars)
        self.histograms.update(data.histograms)
        self.axes.update({tag: data.axis for tag in data.scalars})


def load_runs(files: Sequence[Path], warnings: list[str]) -> list[_Run]:
    """Read every log file, grouped into runs by folder (see the module docstring for the naming)."""
    folders: dict[Path, list[Path]] = {}
    for f in files:
        folders.setdefault(f.parent, []).append(f)
    names = _run_names(list(folders))
    events = [f for f in files if _kind(f) == "events"]
    if events:
        try:
            _tensorboard()
        except ReportgenError as exc:
            warnings.append(f"{exc} ({_count(len(events), 'event file')} skipped)")
            folders = {folder: [p for p in paths if _kind(p) != "events"] for folder, paths in folders.items()}
    runs: list[_Run] = []
    for folder, paths in folders.items():
        sources: list[tuple[list[Path], _LogData]] = []
        events = sorted((p for p in paths if _kind(p) == "events"), key=lambda p: p.name)
        if events:
            sources.append((events, load_event_files(events, warnings)))
        for p in paths:
            kind = _kind(p)
            if kind == "csv":
                sources.append(([p], load_csv_log(p, warnings)))
            elif kind == "jsonl":
                sources.append(([p], load_jsonl_log(p, warnings)))
        sources = [(p, d) for p, d in sources if d.tags()]
        all_tags = [tag for _, d in sources for tag in d.tags()]
        split = len(all_tags) != len(set(all_tags))  # two files in this folder log the same tag
        merged = _Run(name=names[folder], folder=folder)
        for paths_, data in sources:
            if split and _kind(paths_[0]) != "events":
                own = _Run(name=f"{names[folder]}/{paths_[0].name}", folder=folder)
                own.merge(data, [paths_[0].name])
                runs.append(own)
            else:
                merged.merge(data, [p.name for p in paths_])
        if merged.files:
            runs.append(merged)
    return sorted(runs, key=lambda r: r.name)


def _run_names(folders: list[Path]) -> dict[Path, str]:
    if len(folders) == 1:
        return {folders[0]: folders[0].name or str(folders[0])}
    common = Path(os.path.commonpath([str(f) for f in folders]))
    names = {}
    for f in folders:
        rel = f.relative_to(common).as_posix()
        names[f] = common.name if rel == "." else rel
    return names


def _make_series(run: str, tag: str, points: _Points, axis: str, weight: float) -> Series:
    steps = np.asarray(points.steps, dtype=np.int64)
    order = np.argsort(steps, kind="stable")
    values = np.asarray(points.values, dtype=np.float32)[order]  # (P,)
    return Series(run=run, tag=tag, steps=steps[order], values=values,
                  smoothed=smooth(values, weight).astype(np.float32),
                  wall_times=np.asarray(points.wall_times, dtype=np.float64)[order], axis=axis)


# ---------------------------------------------------------------------------- TensorBoard event files


def _tensorboard():
    """The tensorboard modules the event reader needs, or a ReportgenError naming the extra."""
    try:
        from tensorboard import data_compat, dataclass_compat
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
        from tensorboard.util import tensor_util
    except ImportError:
        raise ReportgenError(TENSORBOARD_MISSING) from None
    return data_compat, dataclass_compat, event_pb2, masked_crc32c, tensor_util


def read_records(path: Path, masked_crc32c) -> tuple[list[bytes], str | None]:
    """The whole TFRecord records of an event file, and a message when it ends in a partial or corrupt one.

    A record: uint64 length, uint32 masked CRC-32C of the length, data, uint32 masked CRC-32C of the data.
    """
    records: list[bytes] = []
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return records, None
            damage = None
            if len(header) < 12:
                damage = "ends in a truncated record"
            else:
                length, length_crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != length_crc:
                    damage = f"has a corrupt record at byte {offset} (bad length checksum)"
                else:
                    data, footer = f.read(length), f.read(4)
                    if len(data) < length or len(footer) < 4:
                        damage = "ends in a truncated record"
                    elif length <= CRC_CHECK_MAX_BYTES and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                        damage = f"has a corrupt record at byte {offset} (bad data checksum)"
            if damage:
                size = path.stat().st_size
                return records, (f"TensorBoard event file `{path.name}` {damage}: read its {len(records)} whole "
                                 f"records, skipped the last {size - offset} of {size} bytes.")
            records.append(data)


def load_event_files(paths: Sequence[Path], warnings: list[str]) -> _LogData:
    """Scalars and histograms of one run's event files (name order), nothing sampled away."""
    data_compat, dataclass_compat, event_pb2, masked_crc32c, tensor_util = _tensorboard()
    out = _LogData()
    plugins: dict[str, str] = {}  # tag -> plugin name, from the first value that carries metadata
    initial_metadata: dict = {}  # dataclass_compat's per-run state
    file_version = 0.0
    purged = 0
    for path in paths:
        records, problem = read_records(path, masked_crc32c)
        if problem:
            warnings.append(problem)
        for i, record in enumerate(records):
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:  # protobuf's DecodeError: a record that passed framing but is not an Event
                warnings.append(f"TensorBoard event file `{path.name}`: record {i + 1} is not an event: "
                                f"read the {i} records before it, skipped the rest.")
                break
            if event.HasField("file_version"):
                file_version = _file_version(event.file_version)
            if (file_version >= 2 and event.HasField("session_log")
                    and event.session_log.status == event_pb2.SessionLog.START):
                purged += _purge(out, event.step)
            if not event.HasField("summary"):
                continue
            for migrated in dataclass_compat.migrate_event(data_compat.migrate_event(event), initial_metadata):
                for value in migrated.summary.value:
                    _take_value(out, value, migrated, plugins, tensor_util)
    if purged:
        warnings.append(f"`{paths[0].parent.name}`: a restart marker dropped {purged} points logged after the "
                        "restart step, as TensorBoard does.")
    return out


def _file_version(text: str) -> float:
    try:
        return float(text.rpartition(":")[2])
    except ValueError:
        return 0.0


def _purge(out: _LogData, step: int) -> int:
    """Drop every point at `step` or later (a restart makes them orphans). Returns how many."""
    dropped = 0
    for tag, points in out.scalars.items():
        keep = [i for i, s in enumerate(points.steps) if s < step]
        dropped += len(points.steps) - len(keep)
        out.scalars[tag] = _Points([points.steps[i] for i in keep], [points.values[i] for i in keep],
                                   [points.wall_times[i] for i in keep])
    for tag, (steps, rows) in out.histograms.items():
        keep = [i for i, s in enumerate(steps) if s < step]
        dropped += len(steps) - len(keep)
        out.histograms[tag] = ([steps[i] for i in keep], [rows[i] for i in keep])
    return dropped


def _take_value(out: _LogData, value, event, plugins: dict[str, str], tensor_util) -> None:
    if value.metadata.plugin_data.plugin_name:
        plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
    plugin = plugins.get(value.tag)
    if value.WhichOneof("value") != "tensor" or plugin not in ("scalars", "histograms"):
        return
    array = tensor_util.make_ndarray(value.tensor)
    if plugin == "scalars" and array.size == 1:
        out.scalars.setdefault(value.tag, _Points()).add(int(event.step), float(array.reshape(())), event.wall_time)
    elif plugin == "histograms" and array.ndim == 2 and array.shape[1] == 3:
        steps, rows = out.histograms.setdefault(value.tag, ([], []))
        steps.append(int(event.step))
        rows.append(compute_distribution(array))


# ---------------------------------------------------------------------------- CSV and JSON lines


def _step_key(names: Iterable[str]) -> str | None:
    lowered = {str(n).strip().lower(): n for n in names}
    for candidate in STEP_COLUMNS:
        if candidate in lowered:
            return lowered[candidate]
    return None


def _is_axis(name: str) -> bool:
    return str(name).strip().lower() in STEP_COLUMNS + WALL_TIME_COLUMNS


def _parse_step(text) -> int | None:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _parse_value(text: str) -> float | None:
    """A cell as a float; None for an empty cell or NaN (not logged at this step); raises ValueError."""
    text = text.strip()
    if not text:
        return None
    number = float(text)
    return None if math.isnan(number) else number


class _RowReport:
    """Counts of skipped cells and rows, turned into one warning per file."""

    def __init__(self, name: str):
        self.name = name
        self.bad_steps = 0
        self.bad_cells: dict[str, int] = {}

    def messages(self, non_numeric: Sequence[str] = ()) -> list[str]:
        out = []
        if self.bad_steps:
            out.append(f"`{self.name}`: {self.bad_steps} rows without an integer step skipped.")
        bad = {k: v for k, v in self.bad_cells.items() if k not in non_numeric}
        if bad:
            out.append(f"`{self.name}`: cells that are not numbers skipped: "
                       + ", ".join(f"{count} in `{name}`" for name, count in bad.items()) + ".")
        if non_numeric:
            out.append(f"`{self.name}`: columns without numbers skipped: "
                       + ", ".join(f"`{c}`" for c in non_numeric) + ".")
        return out


def load_csv_log(path: Path, warnings: list[str]) -> _LogData:
    """A CSV log with a header row and a step column; one tag per other numeric column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        warnings.append(f"cannot read `{path}`: {exc}.")
        return _LogData()
    if not rows or not any(cell.strip() for cell in rows[0]):
        warnings.append(f"`{path.name}` is empty: skipped.")
        return _LogData()
    header = [cell.strip() for cell in rows[0]]
    step_name = _step_key(header)
    if step_name is None:
        warnings.append(f"`{path.name}` has no step column ({', '.join(STEP_COLUMNS)}): skipped. "
                        f"Its columns: {_listing(header)}.")
        return _LogData()
    step_col = header.index(step_name)
    wall_col = next((i for i, h in enumerate(header) if h.lower() in WALL_TIME_COLUMNS), None)
    value_cols = [i for i, h in enumerate(header) if h and not _is_axis(h)]
    out = _LogData(axis=step_name.lower())
    report = _RowReport(path.name)
    numbers = {header[i]: 0 for i in value_cols}
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        step = _parse_step(row[step_col]) if step_col < len(row) else None
        if step is None:
            report.bad_steps += 1
            continue
        wall = math.nan
        if wall_col is not None and wall_col < len(row):
            try:
                wall = float(row[wall_col])
            except ValueError:
                pass
        for i in value_cols:
            if i >= len(row):
                continue
            try:
                value = _parse_value(row[i])
            except ValueError:
                report.bad_cells[header[i]] = report.bad_cells.get(header[i], 0) + 1
                continue
            if value is not None:
                numbers[header[i]] += 1
                out.scalars.setdefault(header[i], _Points()).add(step, value, wall)
    # keep the header's column order
    out.scalars = {header[i]: out.scalars[header[i]] for i in value_cols if header[i] in out.scalars}
    non_numeric = [name for name, n in numbers.items() if n == 0 and report.bad_cells.get(name)]
    warnings += report.messages(non_numeric)
    return out


def load_jsonl_log(path: Path, warnings: list[str]) -> _LogData:
    """JSON lines: wide objects `{"step": s, "loss": v, ...}` or long ones `{"tag": t, "step": s, "value": v}`."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"cannot read `{path}`: {exc}.")
        return _LogData()
    out = _LogData()
    report = _RowReport(path.name)
    axis = None
    bad_lines = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad_lines.append(number)
            continue
        if not isinstance(record, dict):
            bad_lines.append(number)
            continue
        flat = _flatten(record)
        key = axis or _step_key(flat)
        step = _parse_step(flat.get(key)) if key is not None and not isinstance(flat.get(key), bool) else None
        if step is None:
            report.bad_steps += 1
            continue
        axis = key
        wall = next((float(flat[k]) for k in flat if k.lower() in WALL_TIME_COLUMNS and _is_number(flat[k])), math.nan)
        if "tag" in flat and "value" in flat and isinstance(flat["tag"], str):
            items = [(flat["tag"], flat["value"])]
        else:
            items = [(k, v) for k, v in flat.items() if not _is_axis(k)]
        for tag, value in items:
            if value is None or (_is_number(value) and math.isnan(value)):
                continue
            if not _is_number(value):
                report.bad_cells[tag] = report.bad_cells.get(tag, 0) + 1
                continue
            out.scalars.setdefault(tag, _Points()).add(step, float(value), wall)
    if axis is None and report.bad_steps:
        warnings.append(f"`{path.name}` has no step key ({', '.join(STEP_COLUMNS)}) in any line: skipped.")
        return _LogData()
    out.axis = (axis or "step").lower()
    if bad_lines:
        shown = ", ".join(map(str, bad_lines[:5])) + (" ..." if len(bad_lines) > 5 else "")
        warnings.append(f"`{path.name}`: {len(bad_lines)} lines are not JSON objects (line {shown}): skipped.")
    non_numeric = [t for t in report.bad_cells if t not in out.scalars]
    warnings += report.messages(non_numeric)
    return out


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _listing(names: Sequence[str], limit: int = 30) -> str:
    names = [f"`{n}`" for n in names]
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
