"""The build's record: each stage's run (`StageRun`), the `Report` that `build` returns, and report.json.

report.json is assembled once, after the page is drawn: `describe` gives what the page shows of the build (title,
time, versions, config, model, the detail images), and `report_json` adds the stages' outcomes, their numbers and
the page's own record (`page`: what `reportgen site` needs of it).
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..version import __version__
from ..collection import Collection
from ..config import Config
from ..context import Context
from ..errors import ReportgenError
from ..stages import Stage


@dataclass
class StageRun:
    name: str
    title: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    error: str | None = None
    result: object = None
    section: dict | None = None  # what figures.<name>.plot returned
    stage: Stage | None = field(default=None, repr=False)  # its record, set when its result was computed


@dataclass
class Report:
    config: Config
    out_dir: Path
    html_path: Path
    json_path: Path
    stages: list[StageRun] = field(default_factory=list)
    size_bytes: int = 0
    data: dict = field(default_factory=dict)  # report.json content

    @property
    def exit_code(self) -> int:
        return 1 if any(s.status == "failed" for s in self.stages) else 0

    def metrics(self) -> dict[str, float]:
        """The headline numbers of the stages that computed a result, flat: `<stage>/<name>` -> float
        (`Stage.metrics`), e.g. `dataset/top1_accuracy`, `summary/total_params`; valid MLflow and W&B metric
        names. report.json's `metrics`."""
        return stage_metrics(self.stages)


def stage_metrics(runs: list[StageRun]) -> dict[str, float]:
    """See `Report.metrics`. A stage whose section could not be drawn (failed after its result was computed)
    keeps its numbers."""
    return {f"{run.name}/{name}": float(value) for run in runs
            if run.stage is not None and run.stage.metrics is not None
            for name, value in run.stage.metrics(run.result).items()}


def mark_undrawn(runs: list[StageRun], failed: dict[str, str]) -> None:
    """A section that could not be drawn (`failed`: stage name -> why) fails its stage: report.json and the exit
    code say so. Its result stays (`stage_metrics`, its report.json entry)."""
    for run in runs:
        if run.name in failed:
            run.status, run.error = "failed", failed[run.name]


def _versions(config: Config | None = None) -> dict:
    """The versions behind the numbers: ours, torch's, torchvision's, Python's, and the model source's package."""
    from importlib.metadata import PackageNotFoundError, version  # not `import torchvision`: faster

    found = {"reportgen": __version__, "torch": torch.__version__, "torchvision": version("torchvision"),
             "python": platform.python_version()}
    package = {"timm": "timm", "huggingface": "transformers"}.get(config.model.source if config else "")
    if package is not None:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


LAST_EPOCH = 253402300799  # 9999-12-31 23:59:59 UTC: the last time a date can say


def source_date_epoch() -> int | None:
    """`SOURCE_DATE_EPOCH` (reproducible-builds.org), when set: the report's creation time, in seconds since
    1970; the report then leaves out every timing (`_untimed`), so two builds of one config give the same bytes."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    digits = value.strip()
    if not digits.isdigit() or len(digits) > 12 or int(digits) > LAST_EPOCH:
        raise ReportgenError(f"SOURCE_DATE_EPOCH is `{value[:40]}`: it must be a whole number of seconds since "
                             "1970-01-01 UTC up to 253402300799 (the last second of the year 9999; e.g. "
                             "`$(git log -1 --format=%ct)`), or unset.")
    return int(digits)


def _untimed(data):
    """`data` without its timings: every key named `seconds`, at any depth (stages, steps, methods)."""
    if isinstance(data, dict):
        return {key: _untimed(value) for key, value in data.items() if key != "seconds"}
    if isinstance(data, list):
        return [_untimed(value) for value in data]
    return data


def describe(config: Config, ctx: Context, images: Collection, records: list[dict], epoch: int | None) -> dict:
    """What the page shows of the build, before any stage's outcome: the first keys of report.json (`epoch`:
    `source_date_epoch()`)."""
    created = datetime.now(timezone.utc) if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)
    return {
        "title": config.title,
        "created": created.isoformat(timespec="seconds"),
        "versions": _versions(config),
        "config": config.to_dict(relative=True),  # no home folders in a published report
        "model": {"description": ctx.info.description, "task": ctx.info.task, "num_classes": ctx.info.num_classes,
                  "input_size": list(config.model.input_size), "device": str(ctx.device)},
        "inputs": {"images": len(images), "detail": len(images.detail.indices), "records": "images.jsonl"},
        # the images shown in detail; images.jsonl beside this file has every image's record
        "images": [{key: records[i][key] for key in ("name", "source", "top_k", "truth")}
                   for i in images.detail.indices],
    }


def report_json(described: dict, runs: list[StageRun], page: dict, epoch: int | None) -> dict:
    """report.json: `described` (see `describe`), the page's record (`render.Rendered.record`), each stage's
    outcome, the headline numbers and each stage's entry (`Stage.to_json`); without timings under
    SOURCE_DATE_EPOCH (`epoch`)."""
    data = described | {
        "page": page,
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 3), "error": r.error}
                   for r in runs],
        "metrics": stage_metrics(runs),  # the headline numbers, as `Report.metrics()` gives them
    }
    for run in runs:
        if run.stage is not None and run.stage.to_json is not None:
            entry = run.stage.to_json(run.result)
            if entry is not None:
                data[run.name] = entry
    if epoch is not None:
        data = _untimed(data) | {"source_date_epoch": epoch}
    return data
