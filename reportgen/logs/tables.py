"""CSV and JSON-lines logs: a step column or key, one tag per other numeric column or key."""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from .data import LogData, Points, listing

STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "epoch")  # preference order
WALL_TIME_COLUMNS = ("wall_time", "walltime", "timestamp")


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


def load_csv_log(path: Path, warnings: list[str]) -> LogData:
    """A CSV log with a header row and a step column; one tag per other numeric column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows, reader, line, broken = [], csv.reader(f), 1, False
            for row in reader:
                if any("\n" in cell or "\r" in cell for cell in row):  # a log's numbers span no lines
                    warnings.append(f"`{path.name}`, line {line}: a quote (\") opened there is never closed, so "
                                    "every line after it reads as one cell: close it or remove it. The lines from "
                                    "there on are skipped.")
                    broken = True
                    break
                rows.append(row)
                line = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        warnings.append(f"cannot read `{path}`: {exc or type(exc).__name__}.")
        return LogData()
    if not rows or not any(cell.strip() for cell in rows[0]):
        if not (broken and not rows):  # a quote that broke the header said so already
            warnings.append(f"`{path.name}` is empty: skipped.")
        return LogData()
    header = [cell.strip() for cell in rows[0]]
    step_name = _step_key(header)
    if step_name is None:
        warnings.append(f"`{path.name}` has no step column ({', '.join(STEP_COLUMNS)}): skipped. "
                        f"Its columns: {listing(header)}.")
        return LogData()
    step_col = header.index(step_name)
    wall_col = next((i for i, h in enumerate(header) if h.lower() in WALL_TIME_COLUMNS), None)
    value_cols = [i for i, h in enumerate(header) if h and not _is_axis(h)]
    out = LogData(axis=step_name.lower())
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
                out.scalars.setdefault(header[i], Points()).add(step, value, wall)
    # keep the header's column order
    out.scalars = {header[i]: out.scalars[header[i]] for i in value_cols if header[i] in out.scalars}
    non_numeric = [name for name, n in numbers.items() if n == 0 and report.bad_cells.get(name)]
    warnings += report.messages(non_numeric)
    return out


def load_jsonl_log(path: Path, warnings: list[str]) -> LogData:
    """JSON lines: wide objects `{"step": s, "loss": v, ...}` or long ones `{"tag": t, "step": s, "value": v}`."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"cannot read `{path}`: {exc}.")
        return LogData()
    out = LogData()
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
            out.scalars.setdefault(tag, Points()).add(step, float(value), wall)
    if axis is None and report.bad_steps:
        warnings.append(f"`{path.name}` has no step key ({', '.join(STEP_COLUMNS)}) in any line: skipped.")
        return LogData()
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
