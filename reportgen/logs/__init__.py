"""Reading training logs: finding the files, reading them, grouping them into runs. No torch here.

Log kinds, found in the files, folders (walked recursively) and globs given to `find_log_files`:

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

Problems with single files (nothing matches a glob, a damaged event file, a CSV without a step
column) are appended to the caller's `warnings` list as sentences for the reader, and the rest is
still read. Modules: `events` (TensorBoard event files), `tables` (CSV and JSON lines), `data`
(the raw types handed back: `Run`, `LogData`, `Points`).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ReportgenError
from ..progress import plural
from .data import LogData, Points, Run, listing
from .events import load_event_files, tensorboard_modules
from .tables import load_csv_log, load_jsonl_log

__all__ = ["find_log_files", "load_runs", "Run", "LogData", "Points", "listing", "plural"]

TEXT_LOG_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
EVENT_FILE_PREFIX = "events.out.tfevents."


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
            what = "holds" if os.path.isdir(pattern) else f"matches {plural(len(matches), 'path')} but"
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


def load_runs(files: Sequence[Path], warnings: list[str],
              summarize: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Run]:
    """Read every log file, grouped into runs by folder (see the module docstring for the naming).

    summarize: applied to each histogram's (k, 3) [left edge, right edge, count] buckets as it is read,
    so a long run's buckets are not all held; None keeps the buckets as they are."""
    folders: dict[Path, list[Path]] = {}
    for f in files:
        folders.setdefault(f.parent, []).append(f)
    names = _run_names(list(folders))
    events = [f for f in files if _kind(f) == "events"]
    if events:
        try:
            tensorboard_modules()
        except ReportgenError as exc:
            warnings.append(f"{exc} ({plural(len(events), 'event file')} skipped)")
            folders = {folder: [p for p in paths if _kind(p) != "events"] for folder, paths in folders.items()}
    runs: list[Run] = []
    for folder, paths in folders.items():
        sources: list[tuple[list[Path], LogData]] = []
        events = sorted((p for p in paths if _kind(p) == "events"), key=lambda p: p.name)
        if events:
            sources.append((events, load_event_files(events, warnings, summarize)))
        for p in paths:
            kind = _kind(p)
            if kind == "csv":
                sources.append(([p], load_csv_log(p, warnings)))
            elif kind == "jsonl":
                sources.append(([p], load_jsonl_log(p, warnings)))
        sources = [(p, d) for p, d in sources if d.tags()]
        all_tags = [tag for _, d in sources for tag in d.tags()]
        split = len(all_tags) != len(set(all_tags))  # two files in this folder log the same tag
        merged = Run(name=names[folder], folder=folder)
        for paths_, data in sources:
            if split and _kind(paths_[0]) != "events":
                own = Run(name=f"{names[folder]}/{paths_[0].name}", folder=folder)
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
