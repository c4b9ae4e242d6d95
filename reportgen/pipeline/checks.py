"""What is checked before the analysis runs: the output folders, the model (loaded and described), each stage's
options and the images. A problem is a ReportgenError (exit code 2) and nothing is written."""
from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from collections.abc import Callable

import torch

from .. import datasets, tasks
from ..registry import TASKS
from ..config import Config
from ..context import ModelInfo
from ..errors import ConfigWarning, ReportgenError
from ..layers import describe_model
from ..models import hooks_refused, load_labels, load_model, read_labels_file
from ..models import num_classes as detector_classes
from ..models.detection import best_scores, takes_unnormalised
from ..stages import Stage, planned
from ..owned import check_output_dir

Log = Callable[[str], None]


def quiet(message: str) -> None:
    """A log that says nothing."""


def prepare_model(config: Config, log: Log = quiet, *, strict: bool = True,
                  model: torch.nn.Module | None = None) -> tuple[ModelInfo, object]:
    """Load the model (or take `model`, given in Python), describe its layers with one forward of a zero input,
    read its labels. Not `strict` (`reportgen layers`): an output that holds no logits is a note (num_classes 0),
    not an error."""
    loaded = load_model(config.model, base_dir=config.source.parent if config.source else None, model=model,
                        task=config.model.task)
    example = torch.zeros((1, *config.model.input_size), device=loaded.device)
    try:
        layers, out = describe_model(loaded.model, example, hooks=loaded.hooks)
    except Exception as exc:
        raise ReportgenError(f"the model does not run on an input of shape {list(example.shape)} "
                             f"(`model.input_size`): {type(exc).__name__}: {exc}") from None
    try:
        loaded = loaded.with_task(out)  # the config's, the source's, else what the output says
        if loaded.task not in TASKS:  # read, but not explained yet (a detector)
            raise ReportgenError(f"the model is a {loaded.task} model ({loaded.description}); reportgen explains "
                                 f"{' and '.join(TASKS.names())} models so far: `reportgen layers` lists its layers.")
        # (1, K) or (1, K, H, W), a detector's boxes; a clear error for outputs that hold no logits
        logits = loaded.pick_logits(out, size=tuple(example.shape[-2:]))
        tasks.get(loaded.task).refuse(config)
        if loaded.task == "detection":
            logits = _detector_classes(config, loaded.model, logits)
    except ReportgenError as exc:
        if strict:
            raise
        return ModelInfo(model=loaded.model, config=config, labels=None, num_classes=0, layers=layers,
                         description=loaded.description, notes=[str(exc)], adapter=loaded), loaded
    _check_finite(loaded.model, logits)
    explicit = config.lines is not None and config.lines.gave(("model", "labels"))
    labels, note = load_labels(config.model.labels, logits.shape[1], loaded.categories, explicit=explicit)
    if note:  # a default that does not fit: the build goes on, and says so once
        warnings.warn(note, ConfigWarning, stacklevel=2)
    pre = config.inputs.preprocess
    if loaded.task == "detection" and takes_unnormalised(loaded.model) and \
            not (config.lines is not None and config.lines.gave(("inputs", "preprocess", "normalize"))):
        pre = dataclasses.replace(pre, normalize=None)  # torchvision's detectors normalise their 0-1 input themselves
    pre = loaded.preprocess(pre)
    info = ModelInfo(model=loaded.model, config=config, labels=labels, num_classes=logits.shape[1], layers=layers,
                     description=loaded.description, notes=[note] if note else [], adapter=loaded,
                     normalize=pre.normalize, preprocess=pre, task=loaded.task)
    return info, loaded


def _detector_classes(config: Config, model: torch.nn.Module, found: list) -> torch.Tensor:
    """A detector's stand-in for the logits of an input of zeros: (1, K) of its highest score per class, K what
    the model says (`models.detection.num_classes`) or else the lines of `model.labels`."""
    k = detector_classes(model)
    if k is None and config.model.labels not in (None, "imagenet"):
        k = len(read_labels_file(config.model.labels))
    if k is None:
        raise ReportgenError("`model.labels`: the detector does not say how many classes it scores (a factory's own "
                             "detector): give a labels file, one label a line in label-index order (background "
                             "first where the model has one, as torchvision's).")
    return best_scores(found, k)


def _check_finite(model: torch.nn.Module, logits: torch.Tensor) -> None:
    """A model whose weights hold NaN or inf (a diverged training run, a broken checkpoint) gives no map or
    score worth drawing: said once, before any stage fails on it in its own words."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    bad = sum(int((~torch.isfinite(t.detach())).any()) for t in tensors)
    if bad:
        raise ReportgenError(f"the model's weights are not finite: {bad} of its {len(tensors)} parameter and buffer "
                             "tensors hold NaN or inf (a training run that diverged, or a broken checkpoint). Load "
                             "weights from before it diverged.")
    if not torch.isfinite(logits).all():
        raise ReportgenError("the model's outputs are not finite (NaN or inf) on an input of zeros: no map or score "
                             "can be computed from them. Check its weights and its forward.")


def check_stages(info: ModelInfo) -> list[Stage]:
    """The stages to run, in order, each checked (`check`: bad layer names, class indices, ... raise
    ReportgenError naming the stage's key). A stage that needs hooks on a model that takes none is refused."""
    stages = planned(info.config, info.task)
    for stage in stages:
        cfg = getattr(info.config.analyses, stage.name)
        _check_hooks_possible(info, stage, cfg)
        if stage.check is not None:
            try:
                stage.check(info, cfg)
            except ReportgenError as exc:  # every message names the stage's key, so the CLI can add its line
                message = str(exc)
                if not message.startswith("`"):  # one that names its own key (`inputs.images`: a manifest) keeps it
                    raise ReportgenError(f"`analyses.{stage.name}`: {message}") from None
                raise
    return stages


def _check_hooks_possible(info: ModelInfo, stage: Stage, cfg) -> None:
    """A model that takes no hooks (TorchScript) cannot run what reads its layers."""
    hooked = stage.hooked(cfg)
    if info.hooks or not hooked:
        return
    what = f"the {stage.name} section" if hooked is True else ", ".join(hooked)
    raise hooks_refused(what, plural=hooked is not True and len(hooked) > 1, key=f"analyses.{stage.name}")


def validate(config: Config, log: Log = quiet) -> tuple[ModelInfo, list[str]]:
    """What `reportgen validate` checks: config, files, model construction, layer names, stage options.
    Returns the model's info and warnings (training logs that match nothing would skip that stage)."""
    check_outputs(config)
    info, loaded = prepare_model(config, log)
    check_stages(info)
    found = datasets.Scan()
    for _ in datasets.scan(config, info.preprocess, datasets.select(config, info.labels, info.num_classes), found):
        pass  # every image read and prepared, one batch at a time
    warnings: list[str] = list(found.notes)
    if "training" in config.analyses.enabled():
        from ..logs import find_log_files

        if not find_log_files(config.analyses.training.logs, warnings, shown=config.shown_path):
            warnings.append("the training stage would be skipped: no log files found.")
    return info, warnings


def check_outputs(config: Config) -> None:
    """Before anything runs: the output folders can be written, and `output.dir` holds no file of the user's
    that the build would replace (only what an earlier build recorded in its manifest is ours to replace)."""
    from .. import owned

    check_output_dir(config.output.dir)
    owned.check_out_dir(config.output.dir, owned.planned_files(self_contained=config.output.self_contained,
                                                               save_arrays=config.output.save_arrays))
    if config.output.tensorboard is not None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ReportgenError("`output.tensorboard` needs the tensorboard package: "
                                 "pip install 'reportgen[tensorboard]' (or remove the key).")
        check_output_dir(config.output.tensorboard, key="output.tensorboard")
    if config.output.site is not None:
        from ..site import check_site

        check_output_dir(config.output.site, key="output.site")
        check_site(config.output.site)
    if config.output.attach:  # each tracker's package is installed and its run (task, folder) exists
        from ..integrations import find_targets

        find_targets(config)
