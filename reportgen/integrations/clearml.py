"""`output.attach.clearml`: the report as a debug-sample media file of the current ClearML task, its headline
numbers as scalars (`dataset/top1_accuracy`: title `dataset`, series `top1_accuracy`).

Needs `pip install 'reportgen[clearml]'`.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import Tracker


@dataclass(frozen=True)
class ClearmlOptions:
    title: str = "reportgen"  # the media's title and series in the task's debug samples
    series: str = "report"


def find_task(options: ClearmlOptions, config):
    """The current task (`Task.init()`)."""
    from clearml import Task

    from ..errors import ReportgenError

    task = Task.current_task()
    if task is None:
        raise ReportgenError("`output.attach.clearml`: there is no current ClearML task: call reportgen.build "
                             "after `Task.init()`.")
    return task


def attach(report, options: ClearmlOptions, task, *, model=None, step: int | None = None) -> str:
    logger = task.get_logger()
    iteration = step or 0
    logger.report_media(title=options.title, series=options.series, local_path=str(report.html_path),
                        iteration=iteration)
    metrics = report.metrics()
    for key, value in metrics.items():
        title, _, series = key.partition("/")
        logger.report_scalar(title=title, series=series or title, value=value, iteration=iteration)
    logger.flush()  # hands the reports to ClearML's sender (it does not wait for them)
    return f"ClearML task {task.id} ({options.title}/{options.series} and {len(metrics)} scalars)"


TRACKER = Tracker(name="clearml", package="clearml", options=ClearmlOptions, find=find_task, attach=attach,
                  page_only="ClearML", order=30)
