"""What a build exports beside its report: TensorBoard events (`output.tensorboard`, `output.attach.tensorboard`)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .assemble import StageRun
from .checks import Log, quiet


def write_tensorboard_events(logdir: Path, model: torch.nn.Module, runs: list[StageRun], log: Log = quiet, *,
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
    log(f"writing TensorBoard events to {logdir}")
    return tb.write_tensorboard(logdir, images=images, histograms=histograms, texts=texts, step=step)
