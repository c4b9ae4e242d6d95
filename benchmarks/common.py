"""What several benchmarks print the same way."""
from __future__ import annotations

import json
import statistics
from pathlib import Path


def stats(values: list[float]) -> str:
    """Median, min and max, as columns."""
    return f"{statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}"


def print_table(rows: list[tuple[str, list[float]]], width: int = 28) -> None:
    """A table of seconds: one row per (label, values), median, min and max."""
    print(f"\n{'seconds':{width}s} {'median':>7s} {'min':>7s} {'max':>7s}")
    for label, values in rows:
        print(f"{label:{width}s} {stats(values)}")


def record_stages(out: Path, stages: dict[str, list[float]]) -> list[dict]:
    """Add each stage's seconds from a build's `<out>/report.json` to `stages` (name -> values); return the
    stage records."""
    recorded = json.loads((out / "report.json").read_text())["stages"]
    for stage in recorded:
        stages.setdefault(stage["name"], []).append(float(stage["seconds"]))
    return recorded
