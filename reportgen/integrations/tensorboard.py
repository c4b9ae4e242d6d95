"""`output.tensorboard` and `output.attach.tensorboard`. The first writes the report's figures, a weight histogram
of every convolution and the summary table in one new event file under its folder (`write_tensorboard_events`);
the tracker writes the same plus a text entry naming the report's path, in one new event file under `dir`.

TensorBoard shows no HTML: the text says where the page is. Needs `pip install 'reportgen[tensorboard]'`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import Tracker

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TensorboardOptions:
    dir: Path | None = None  # the log folder (`tensorboard --logdir`); required in a config

    def _validate(self, err) -> None:
        if self.dir is None:
            err("dir", "the TensorBoard log folder is required (like `dir: runs/exp1`).")


def find_dir(options: TensorboardOptions, config) -> Path:
    """The log folder, which must be writable."""
    from ..owned import check_output_dir

    check_output_dir(options.dir, key="output.attach.tensorboard.dir")
    return options.dir


def attach(report, options: TensorboardOptions, logdir: Path, *, model=None, step: int | None = None) -> str:
    text = f"reportgen report **{report.data.get('title', '')}**: `{report.html_path.resolve()}`"
    written = write_tensorboard_events(Path(logdir), model, report.stages, texts={"reportgen/report": text},
                                       step=step or 0)
    return f"TensorBoard events {written}"


def write_tensorboard_events(logdir: Path, model: nn.Module, runs: list, log: Callable[[str], None] | None = None, *,
                             texts: dict[str, str] | None = None, step: int = 0) -> Path | None:
    """`output.tensorboard` (and `output.attach.tensorboard`, with its `texts`): the report's figures, conv weight
    histograms and the summary table in one new event file under `logdir`; returns its path."""
    try:
        tb = importlib.import_module("reportgen.tensorboard")
    except ImportError:
        return None
    from ..figures.common import flatten
    from ..render import section_figures

    images = {}
    for run in runs:
        if run.section is not None:
            for i, fig in enumerate(section_figures(run.section)):
                images[f"{run.name}/{i:03d} {fig.alt}"[:120]] = flatten(fig)  # overlays composed, as the page shows them
    histograms = {name: p.detach().float().cpu().numpy() for name, p in model.named_parameters()
                  if name.endswith("weight") and p.dim() == 4}
    summary = next((r.result for r in runs if r.name == "summary" and r.status == "ok"), None)
    texts = dict(texts or {})
    if summary is not None:
        head = "| layer | type | output shape | params |\n|---|---|---|---|\n"
        texts["summary"] = head + "\n".join(
            f"| {r.name or r.class_name} | {r.class_name} | {r.output_shape} | {r.num_params:,} |" for r in summary.rows)
    if log is not None:
        log(f"writing TensorBoard events to {logdir}")
    return tb.write_tensorboard(logdir, images=images, histograms=histograms, texts=texts, step=step)


TRACKER = Tracker(name="tensorboard", package="tensorboard", options=TensorboardOptions, find=find_dir, attach=attach,
                  order=40)
