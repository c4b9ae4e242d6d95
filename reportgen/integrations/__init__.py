"""Attaching a written report to experiment trackers: `output.attach` and the Lightning callback.

One module per tracker, holding its record `TRACKER = Tracker(...)`: the package it needs, the dataclass of its
`output.attach.<name>` options, how it finds what to attach to (the active run, the current task, a folder:
checked before any work) and how it attaches a written report. The registry (`reportgen.registry.TRACKERS`)
finds the records here and in plug-ins (entry point group `reportgen.trackers`); the config's `output.attach`
is assembled from them. The trackers' packages are imported only when a report is attached.
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ReportgenError
from ..registry import TRACKERS


@dataclass(frozen=True)
class Tracker:
    name: str  # the key under `output.attach`
    package: str  # the module that must be importable; `pip install 'reportgen[<name>]'` brings it
    options: type  # the dataclass of `output.attach.<name>`
    find: Callable[[Any, Any], Any]  # (options, config) -> the run, task or folder; ReportgenError when none
    attach: Callable[..., str]  # (report, options, target, *, model, step) -> what was attached, for the log
    page_only: str | None = None  # the tracker's name when it takes the page file alone, without assets/
    order: int = 100  # where it is listed


def require(name: str) -> Tracker:
    """The record of tracker `name`, whose package is installed (else ReportgenError naming the extra)."""
    tracker = TRACKERS.get(name, key="output.attach")
    try:
        importlib.import_module(tracker.package)
    except ImportError as exc:
        broken = "" if isinstance(exc, ModuleNotFoundError) and exc.name == tracker.package else f" ({exc})"
        raise ReportgenError(f"`output.attach.{name}` needs the {tracker.package} package{broken}: "
                             f"pip install 'reportgen[{name}]' (or remove `{name}` from `output.attach`).") from None
    return tracker


def find_targets(config) -> dict[str, Any]:
    """Before any work: each attachment's package is installed and its run, task or folder exists.
    Returns name -> target."""
    return {name: require(name).find(options, config) for name, options in config.output.attach.items()}


def attach(report, name: str, options, target, *, model=None, step: int | None = None, log=print) -> None:
    """Attach the written `report` to tracker `name` (`target`: what its `find` returned, or a Lightning
    logger's run). A tracker's failure is a ReportgenError that says the report itself is written."""
    tracker = require(name)
    if tracker.page_only and not report.config.output.self_contained:
        warnings.warn(f"{tracker.page_only} shows the page without its pictures: assets/ is not uploaded with it. "
                      "Set `output.self_contained: true` for a page that shows whole.", UserWarning, stacklevel=2)
    try:
        what = tracker.attach(report, options, target, model=model, step=step)
    except ReportgenError:
        raise
    except Exception as exc:  # the tracker's own errors (a store that cannot be written, a closed run, ...)
        raise ReportgenError(f"`output.attach.{name}`: the report is written to {report.out_dir}, but attaching it "
                             f"failed: {type(exc).__name__}: {exc}") from None
    log(f"attached the report to {what}")


def attach_all(report, model=None, log=print) -> None:
    """`output.attach`: the written `report` attached to every tracker the config names."""
    for name, target in find_targets(report.config).items():
        attach(report, name, getattr(report.config.output.attach, name), target, model=model, log=log)


__all__ = ["Tracker", "attach", "attach_all", "find_targets", "require"]
