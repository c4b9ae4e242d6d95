"""`output.attach.wandb`: the report as a `wandb.Html` panel of the active W&B run, its headline numbers as
metrics of the same step (and so in the run's summary).

`inject=False` leaves the page as it is (W&B would otherwise add a stylesheet link from the network). Needs
`pip install 'reportgen[wandb]'`.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import Tracker


@dataclass(frozen=True)
class WandbOptions:
    key: str = "report"  # the key the page is logged under


def find_run(options: WandbOptions, config):
    """The active run (`wandb.init()`)."""
    import wandb

    from ..errors import ReportgenError

    if wandb.run is None:
        raise ReportgenError("`output.attach.wandb`: there is no active W&B run: call reportgen.build after "
                             "`wandb.init()` (and before `run.finish()`).")
    return wandb.run


def attach(report, options: WandbOptions, run, *, model=None, step: int | None = None) -> str:
    import wandb

    page = wandb.Html(report.html_path.read_text(encoding="utf-8"), inject=False)
    data = {options.key: page, **report.metrics()}
    if step is not None:  # from the Lightning callback: WandbLogger's x-axis
        data["trainer/global_step"] = step
    run.log(data)
    return f"W&B run {run.id} (`{options.key}` and {len(data) - 1} metrics)"


TRACKER = Tracker(name="wandb", package="wandb", options=WandbOptions, find=find_run, attach=attach, page_only="W&B",
                  order=20)
