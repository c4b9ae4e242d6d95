"""The raw data the log readers hand back: points of a scalar tag, what one log source holds, a run.

Also a small helper their messages share (a backticked listing of names).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Points:
    """One scalar tag of one source, in logging order (not sorted); wall time NaN where the log has none."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)

    def add(self, step: int, value: float, wall_time: float = math.nan) -> None:
        self.steps.append(step)
        self.values.append(value)
        self.wall_times.append(wall_time)


@dataclass
class LogData:
    """What one source (all event files of a folder, or one CSV/JSONL file) holds."""

    scalars: dict[str, Points] = field(default_factory=dict)
    # tag -> steps, one row a step: the histogram's (k, 3) buckets or what `load_runs(summarize=...)` made of them
    histograms: dict[str, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)
    axis: str = "step"

    def tags(self) -> set[str]:
        return set(self.scalars) | set(self.histograms)


@dataclass
class Run:
    """One run: its folder's sources merged (tags of a later source replace the same tags of an earlier one)."""

    name: str
    folder: Path
    files: list[str] = field(default_factory=list)
    scalars: dict[str, Points] = field(default_factory=dict)
    histograms: dict[str, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)
    axes: dict[str, str] = field(default_factory=dict)  # tag -> axis name

    def merge(self, data: LogData, files: Iterable[str]) -> None:
        self.files += list(files)
        self.scalars.update(data.scalars)
        self.histograms.update(data.histograms)
        self.axes.update({tag: data.axis for tag in data.scalars})


def listing(names: Sequence[str], limit: int = 30) -> str:
    """`a`, `b` and 3 more: names for a message."""
    names = [f"`{n}`" for n in names]
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


