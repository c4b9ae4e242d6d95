"""`ReportCallback`: a report of the live model after validation, attached to the trainer's loggers.

    from reportgen.lightning import ReportCallback

    trainer = Trainer(logger=MLFlowLogger(...), callbacks=[ReportCallback("report.yaml", every_n_epochs=5)])

Works with `lightning` and with `pytorch_lightning` (whichever is installed; `lightning` when both are). Needs
`pip install 'reportgen[lightning]'`.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch

from .api import build, resolve_config
from .errors import ReportgenError
from .integrations import attach, require
from .registry import TRACKERS

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError("reportgen.lightning needs Lightning: pip install 'reportgen[lightning]'") \
            from None

LOGGERS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb", "TensorBoardLogger": "tensorboard"}  # class -> tracker


class ReportCallback(Callback):
    """Builds a report from the LightningModule being trained when validation ends (every `every_n_epochs`-th
    epoch; never in the sanity check before training) into `<output.dir>/epoch-<n>` (n counts from 0, as
    Lightning's epochs do), and attaches it to the trainer's MLFlowLogger (its run; artifacts under
    `epoch-<n>/`), WandbLogger (its run) and TensorBoardLogger (its log_dir), at the trainer's global step.
    The config's own `output.attach` entries for other trackers (ClearML's current task) apply as well.

    config: a path, a dict or a Config, as `reportgen.build` takes it (layer names are the LightningModule's:
    `net.features.3` for a network held as `self.net`). build_kwargs: `images`, `overrides`, `log`, `detail` of
    `reportgen.build`. The model is given back in its modes with its `requires_grad` flags, and training goes
    on with the random numbers it would have drawn (reportgen seeds torch's and numpy's generators). The
    written reports are listed in `reports`."""

    def __init__(self, config, every_n_epochs: int = 1, **build_kwargs):
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ReportgenError(f"ReportCallback: `every_n_epochs` must be a positive integer, "
                                 f"got {every_n_epochs!r}.")
        self.config = resolve_config(config, build_kwargs.pop("overrides", None), given_model=True)
        self.every_n_epochs = every_n_epochs
        self.build_kwargs = build_kwargs
        self._log = build_kwargs.get("log") or (lambda message: None)
        self.reports: list = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before training: one process (reportgen's own torchrun support would join Lightning's process group),
        and every logger's tracker usable."""
        if trainer.world_size > 1:
            raise ReportgenError("ReportCallback builds reports in one process; under a multi-process strategy "
                                 "(DDP) build them after training with `reportgen.build(config, model=model)`.")
        for logger in trainer.loggers:
            if type(logger).__name__ in LOGGERS:
                require(LOGGERS[type(logger).__name__])

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        epoch = trainer.current_epoch
        targets = logger_targets(trainer.loggers)
        output = self.config.output
        others = {name: options for name, options in output.attach.items() if name not in targets}
        config = dataclasses.replace(self.config, output=dataclasses.replace(
            output, dir=output.dir / f"epoch-{epoch}", attach=type(output.attach)(**others)))
        # Lightning validates under torch.inference_mode(): the backward passes need gradients
        with torch.inference_mode(False), torch.enable_grad(), _random_state_kept():
            report = build(config, model=pl_module, **self.build_kwargs)
            for name, target in targets.items():
                options = getattr(output.attach, name) or TRACKERS.get(name).options()
                if name == "mlflow":
                    path = "/".join(p for p in (options.artifact_path, f"epoch-{epoch}") if p)
                    options = dataclasses.replace(options, artifact_path=path)
                attach(report, name, options, target, model=pl_module, step=trainer.global_step, log=self._log)
        self.reports.append(report)


def logger_targets(loggers) -> dict:
    """Tracker name -> what its attach takes, for the trainer's loggers that reportgen attaches to."""
    targets = {}
    for logger in loggers:
        name = LOGGERS.get(type(logger).__name__)
        if name == "mlflow":
            targets[name] = (logger.experiment, logger.run_id)  # its MlflowClient (its tracking URI) and run
        elif name == "wandb":
            targets[name] = logger.experiment
        elif name == "tensorboard":
            targets[name] = logger.log_dir
    return targets


@contextlib.contextmanager
def _random_state_kept():
    """torch's (CPU and initialised CUDA devices) and numpy's global generators as they were."""
    state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(state)


__all__ = ["ReportCallback"]
