"""`output.attach.tensorboard`: what `output.tensorboard` writes (the report's figures, a weight histogram of every
convolution, the summary table) plus a text entry naming the report's path, in one new event file under `dir`.

TensorBoard shows no HTML: the text says where the page is. Needs `pip install 'reportgen[tensorboard]'`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import Tracker


@dataclass(frozen=True)
class TensorboardOptions:
    dir: Path | None = None  # the log folder (`tensorboard --logdir`); required in a config

    def _validate(self, err) -> None:
        if self.dir is None:
            err("dir", "the TensorBoard log folder is required (like `dir: runs/exp1`).")


def find_dir(options: TensorboardOptions, config) -> Path:
    """The log folder, which must be writable."""
    from ..pipeline.checks import check_output_dir

    check_output_dir(options.dir, key="output.attach.tensorboard.dir")
    return options.dir


def attach(report, options: TensorboardOptions, logdir: Path, *, model=None, step: int | None = None) -> str:
    from ..pipeline.exporters import write_tensorboard_events

    text = f"reportgen report **{report.data.get('title', '')}**: `{report.html_path.resolve()}`"
    written = write_tensorboard_events(Path(logdir), model, report.stages, texts={"reportgen/report": text},
                                       step=step or 0)
    return f"TensorBoard events {written}"


TRACKER = Tracker(name="tensorboard", package="tensorboard", options=TensorboardOptions, find=find_dir, attach=attach, order=40)
