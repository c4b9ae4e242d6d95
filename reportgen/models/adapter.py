"""The model adapter: what the rest of reportgen may know about a model, whatever its source.

A model source (torchvision, timm, the user's factory, TorchScript, a Hugging Face folder, a plug-in's) is a
`Source` record and builds a `ModelAdapter`;
downstream code asks the adapter, never the source, for

- the logits: `forward(x)` runs the model and `pick_logits(out)` unwraps an output that is not a tensor
  (a tuple, a dict, a Hugging Face `ModelOutput`) into what the model's `task` reads: logits (N, K) for
  classification, (N, K, H, W) at the input's resolution for segmentation, a list of `Detections` for detection
  (`pick_output`; `detection.py` says how a detector's inputs and outputs are read); a source that knows
  its task says so (`task`), else it is inferred from the output (`infer_task`) or given in the config;
- the preprocessing: `preprocess(pre)` resolves `inputs.preprocess: from_weights` to what the source
  prescribes, and `normalize(pre)` gives the mean/std the inputs were normalised with;
- the labels the source knows: `categories`;
- whether layers take forward hooks: `hooks`, and `refuse_hooks(...)` for the one message saying why not;
- how a layer's output becomes (N, C, H, W): `layer_view(name)` (None: it already is), from the layouts its
  model family declares (`layouts.py`: tokens, channels-last), and the CAM layer the family recommends.

A source that needs other answers subclasses `ModelAdapter` and overrides the method.
"""
from __future__ import annotations

import dataclasses
import os

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Normalize, Preprocess
from ..errors import ReportgenError, did_you_mean
from .detection import (SIGMOID_OUTPUTS, Detections, field_of, from_queries, from_torchvision, is_query_format,
                        is_torchvision_format, takes_list, takes_unnormalised)
from .layouts import NONE, Layout, Layouts

Output = int | str | None  # `model.output`: an index (tuple/list) or a key (dict, attribute), None: the output itself
SEGMENTATION_KEY = "out"  # torchvision's segmentation models return {"out": (N, K, H, W), "aux": ...}

# the one statement of what a TorchScript model cannot do, and what to do instead
TORCHSCRIPT_LIMITS = ("which a TorchScript model does not take. Load the model from Python "
                      "(`model.source: module`) or leave this out.")


@dataclass(frozen=True)
class Source:
    """A model source, `model.source: <name>`: one record in the module that builds its models (`SOURCE`), or in
    a plug-in's (entry point group `reportgen.sources`). `options` is the dataclass of its own keys of `model`
    (a `_validate(err)` method checks them together); the keys every source takes are in the config's
    `ModelBase`. `load(cfg, base_dir)` gets the model config (the shared keys and the source's own) and the
    config file's folder, and returns the adapter with the model as built, on the CPU; `load_model` does the
    rest (checkpoint, eval mode, device)."""

    name: str
    options: type
    load: Callable[[Any, Path | None], ModelAdapter]
    order: int = 100  # where it is listed
    note: str = ""  # one line for the docs
    runs_code: str = ""  # what code of the config's author loading runs, e.g. "calls `model.factory`" ("": none)


UNTRUSTED = "REPORTGEN_UNTRUSTED"  # set (`--untrusted`): a config, checkpoint or model folder runs no code of theirs


def refuse_code(cfg: Any, source: Source) -> None:
    """Under `--untrusted` ($REPORTGEN_UNTRUSTED=1), a ReportgenError for a config that would run code its
    author wrote: a source that runs code (a factory, a TorchScript program) or `trust_checkpoint` (unpickling)."""
    if os.environ.get(UNTRUSTED, "") in ("", "0"):
        return
    fix = "Check the code yourself, then build without `--untrusted`."
    if source.runs_code:
        raise ReportgenError(f"`model.source: {source.name}` {source.runs_code}, code that came with the config; "
                             f"`--untrusted` runs none. {fix}")
    if getattr(cfg, "trust_checkpoint", False):
        raise ReportgenError("`model.trust_checkpoint: true` unpickles the checkpoint, which can run any code in it; "
                             f"`--untrusted` runs none. {fix}")


def takes_hooks(model: nn.Module) -> bool:
    """Whether forward hooks can be registered on the model's layers: not on a TorchScript model."""
    return not isinstance(model, torch.jit.ScriptModule)


def hooks_refused(what: str, *, plural: bool = False, key: str | None = None) -> ReportgenError:
    """The error for something that reads layers of a model that takes no hooks (TorchScript):
    "`{key}`: {what} need(s) hooks on the model's layers, which a TorchScript model does not take. ..."."""
    prefix = f"`{key}`: " if key else ""
    return ReportgenError(f"{prefix}{what} need{'' if plural else 's'} hooks on the model's layers, "
                          f"{TORCHSCRIPT_LIMITS}")


@dataclass(frozen=True, eq=False)
class ModelAdapter:
    """A loaded model and what reportgen needs to know about it.

    model: in eval mode, on `device`. source: the `model.source` that built it. description: one line for
    the report header. output: `model.output` (see `pick_logits`). categories: class labels the source knows
    (torchvision weights' meta["categories"]), in class-index order, or None. prescribed: the preprocessing
    the source prescribes for `inputs.preprocess: from_weights` (torchvision weights' transforms), or None.
    task: what the model does, as its source knows it ("classification", "segmentation", "detection"), or None:
    not known,
    inferred from its output (`infer_task`) or given in the config (`load_model(..., task=...)`).
    """

    model: nn.Module
    device: torch.device = torch.device("cpu")
    source: str = "module"
    description: str = ""
    output: Output = None
    categories: list[str] | None = None
    prescribed: Preprocess | None = None
    layouts: Layouts = NONE  # the layouts its model family declares (`layouts.declare_layouts`), set by load_model
    task: str | None = None

    # ---- logits

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[Detections]:
        """What the task reads for inputs x (N, C, H, W) already on `device`: logits (N, K) for classification,
        (N, K, H, W) at x's (H, W) for segmentation, one `Detections` per image for detection (boxes in x's
        pixels, every box the model returned); `model(x)` unwrapped by `pick_logits`. torchvision's detectors are
        given `list(x)`, their documented input (they take the tensor too)."""
        return self.pick_logits(self.model(self.model_input(x)), size=tuple(x.shape[-2:]))

    __call__ = forward

    def model_input(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """What the model is called with for the batch x (N, C, H, W): x, or for torchvision's detectors
        `list(x)`."""
        return list(x) if takes_list(self.model) else x

    def pick_logits(self, out: object, size: tuple[int, int] | None = None,
                    threshold: float | None = None) -> torch.Tensor | list[Detections]:
        """The logits inside an output `model(x)` already returned (for callers that run the model themselves,
        with hooks): (N, K), or for segmentation (N, K, H, W), upsampled to `size` (the input's (H, W)) when
        given, or for detection one `Detections` per image (scoring more than `threshold`; None: all). See the
        module function `pick_output`."""
        return pick_output(out, self.output, self.task, size=size, threshold=threshold)

    def with_task(self, out: object) -> ModelAdapter:
        """This adapter with `task` known: its own, else inferred from an output `model(x)` returned; an error
        that says what the model returned when its output reads as no task (see `resolve_task`)."""
        task = resolve_task(out, self.output, self.task)
        return self if task == self.task else dataclasses.replace(self, task=task)

    # ---- preprocessing

    def preprocess(self, pre: Preprocess) -> Preprocess:
        """The preprocessing to apply: for `pre.from_weights` the one the source prescribes (torchvision
        weights: their resize, crop, interpolation, mean and std); otherwise `pre` unchanged."""
        if pre.normalize is not None and self.task == "detection" and takes_unnormalised(self.model):
            raise ReportgenError("`inputs.preprocess.normalize`: torchvision's detectors take unnormalised 0-1 "
                                 "images and normalise them themselves (their transform's `image_mean` and "
                                 "`image_std`); set `normalize: null`.")
        if not pre.from_weights:
            return pre
        if self.prescribed is None:
            if self.source == "huggingface":
                raise ReportgenError("`inputs.preprocess: from_weights` needs the model folder's "
                                     "preprocessor_config.json (`processor.save_pretrained(folder)` writes it). Give "
                                     "`resize`, `center_crop` and `normalize` instead.")
            raise ReportgenError("`inputs.preprocess: from_weights` needs torchvision weights (`model.weights`)"
                                 + ("." if self.source == "torchvision" else
                                    f": a `{self.source}` model prescribes no preprocessing. Give `resize`, "
                                    "`center_crop` and `normalize` instead."))
        return self.prescribed

    def normalize(self, pre: Preprocess) -> Normalize | None:
        """The mean/std (one value or one per channel) the inputs are normalised with after `preprocess(pre)`,
        or None when they are not: what an input made from scratch (activation maximisation) must match."""
        return self.preprocess(pre).normalize

    # ---- hooks and layers

    @property
    def hooks(self) -> bool:
        """Whether forward hooks can be taken on the model's layers (False for TorchScript)."""
        return takes_hooks(self.model)

    def refuse_hooks(self, what: str, *, plural: bool = False, key: str | None = None) -> ReportgenError:
        """The error to raise when `what` (a stage, methods) needs hooks that this model does not take."""
        return hooks_refused(what, plural=plural, key=key)

    def layout(self, name: str) -> Layout | None:
        """The declared layout of layer `name`'s output, or None: undeclared (a CNN's (N, C, H, W) layers, or,
        in a transformer whose family declares its maps (`layouts.only`), a layer whose output is no map)."""
        return self.layouts.layers.get(name)

    def is_map(self, name: str) -> bool | None:
        """Whether layer `name`'s output can be shown as a map: True (declared), False (the family declares its
        maps and this is not one), None (undeclared: judge by its shape, as for a CNN)."""
        if name in self.layouts.layers:
            return True
        return False if self.layouts.only else None

    def layer_view(self, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How the output of layer `name` becomes (N, C, H, W), or None when it already is (CNNs): tokens are
        folded into their grid, channels-last outputs permuted (a view, no copy)."""
        layout = self.layout(name)
        return None if layout is None or layout.kind == "channels_first" else layout.view(name)


TASKS = ("classification", "segmentation", "detection")  # the tasks whose outputs `pick_output` reads


def infer_task(out: object, output: Output = None) -> str | None:
    """The task a model's output `out` says, or None when it says none for sure.

    A logits tensor (N, K) (itself, `out[output]`, or a `ModelOutput`'s `.logits`) is classification; a dict
    with an "out" tensor (N, K, H, W) (torchvision's segmentation models) or a `.logits` (N, K, H, W) (Hugging
    Face's `SemanticSegmenterOutput`) is segmentation; a list of dicts with "boxes" (torchvision's detection
    models) or `logits` (N, Q, K) with `pred_boxes` (N, Q, 4) (Hugging Face's DETR, YOLOS) is detection (also
    as `out[output]`). A bare (N, K, H, W) tensor says nothing sure (a segmenter's logits or a feature map): None,
    and the config must give `model.task`.
    """
    if output is not None:
        try:
            out = _select(out, output)
        except ReportgenError:
            return None
        if is_torchvision_format(out) or is_query_format(out):
            return "detection"
        return "classification" if torch.is_tensor(out) and out.dim() == 2 else None
    if torch.is_tensor(out):
        return "classification" if out.dim() == 2 else None
    if isinstance(out, Mapping) and torch.is_tensor(out.get(SEGMENTATION_KEY)) and out[SEGMENTATION_KEY].dim() == 4:
        return "segmentation"
    if is_query_format(out) or is_torchvision_format(out):
        return "detection"
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits) and logits.dim() in (2, 4):
        return "classification" if logits.dim() == 2 else "segmentation"
    return None


def resolve_task(out: object, output: Output = None, task: str | None = None) -> str:
    """The task of a model that returned `out`: `task` when known (the source's or the config's), else
    `infer_task(out, output)`; checked by reading `out` as that task, so a model whose output matches no task
    is an error that says what it returned."""
    task = task or infer_task(out, output)
    pick_output(out, output, task)  # raises when `out` does not read as `task` (or as any, for None)
    return task or "classification"  # not reached: an output that infers no task reads as none


def pick_output(out: object, output: Output = None, task: str | None = None,
                size: tuple[int, int] | None = None, threshold: float | None = None) -> torch.Tensor | list[Detections]:
    """What `task` reads in a model's output: classification's logits (N, K) (`pick_logits`), segmentation's
    (N, K, H, W) (`pick_segmentation`, upsampled to `size` when given), detection's `Detections` per image
    (`pick_detections`, boxes in the pixels of `size`, scoring more than `threshold`). `task` None (not known):
    segmentation or detection when the output says so (`infer_task`), else classification, whose error for an
    (N, K, H, W) tensor says to set `model.task: segmentation`."""
    if task is None:
        inferred = infer_task(out, output)
        task = inferred if inferred in ("segmentation", "detection") else None
    if task == "segmentation":
        return pick_segmentation(out, output, size)
    if task == "detection":
        return pick_detections(out, output, size, threshold)
    if task not in (None, "classification"):
        raise ReportgenError(f"`model.task` is {task}; reportgen reads the outputs of "
                             f"{', '.join(TASKS[:-1])} and {TASKS[-1]} models.")
    return pick_logits(out, output)


def pick_segmentation(out: object, output: Output = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A segmenter's logits (N, K, H, W) in its output, upsampled to `size` (the input's (H, W)) when they are
    smaller or larger, bilinearly with align_corners=False, as Hugging Face's image processors do in
    `post_process_semantic_segmentation` (SegFormer's logits are at 1/4 of the input).

    output None: a tensor is the logits; a dict gives its "out" (torchvision); an object with a `.logits`
    tensor (Hugging Face's `SemanticSegmenterOutput`) gives that; anything else is an error that lists what
    `model.output` can pick. output an index or key: as in `pick_logits`.
    """
    if output is None and isinstance(out, Mapping) and torch.is_tensor(out.get(SEGMENTATION_KEY)):
        return _resized(_check_masks(out[SEGMENTATION_KEY], SEGMENTATION_KEY), size)
    return _resized(_picked(out, output, _check_masks, "segmentation logits of shape (N, num_classes, H, W) (a "
                                                      f"tensor, or a dict with `{SEGMENTATION_KEY}`)"), size)


DETECTIONS = ("detections: per image a dict with `boxes` (n, 4), `labels` and `scores` (torchvision's detectors), "
              "or `logits` (N, queries, classes + 1) with `pred_boxes` (N, queries, 4) (Hugging Face's DETR, YOLOS)")


def pick_detections(out: object, output: Output = None, size: tuple[int, int] | None = None,
                    threshold: float | None = None) -> list[Detections]:
    """A detector's `Detections`, one per image, scoring more than `threshold` (None: every box the model returned;
    every query of a DETR or YOLOS), from `out` (or `out[output]`, `output` an index or key): torchvision's list
    of {"boxes", "labels", "scores"} (boxes already in the input's pixels), or DETR's, YOLOS's and RT-DETR's
    `logits` and `pred_boxes`, read as their image processors' `post_process_object_detection` with `target_sizes`
    = `size`
    (None: boxes left normalised). Anything else is an error that says what the model returned."""
    picked = out if output is None else _select(out, output)
    if is_torchvision_format(picked):
        return from_torchvision(picked, threshold)
    if is_query_format(picked):
        return from_queries(field_of(picked, "logits"), field_of(picked, "pred_boxes"), size, threshold,
                            sigmoid=type(picked).__name__ in SIGMOID_OUTPUTS)
    if isinstance(picked, (list, tuple)) and not picked:
        raise ReportgenError(f"the model returns an empty {type(picked).__name__}, not {DETECTIONS}.")
    which = "the model returns" if output is None else f"`model.output`: {output!r} picks"
    hint = "" if output is not None or not _choices(out) else \
        " Set `model.output: <index or key>` to the one that holds them, or return torchvision's format."
    raise ReportgenError(f"{which} {describe_output(picked)}, not {DETECTIONS}.{hint}")


def _check_masks(logits: torch.Tensor, output: Output) -> torch.Tensor:
    if logits.dim() != 4:
        which = f"output `{output}`" if output is not None else "output"
        raise ReportgenError(f"the model's {which} is {list(logits.shape)}; a segmentation model (`model.task: "
                             "segmentation`) returns logits of shape (N, num_classes, H, W).")
    return logits


def _resized(logits: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(N, K, h, w) logits at (H, W) = `size` (None: as they are)."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pick_logits(out: object, output: Output = None) -> torch.Tensor:
    """The logits (N, K) in a model's output.

    output None: a tensor is the logits; an object with a `.logits` tensor (Hugging Face `ModelOutput`)
    gives that; anything else (a tuple, a dict, ...) is an error that lists what `model.output` can pick.
    output an int: `out[output]` of a tuple or list; a str: `out[output]` of a mapping, else the attribute
    `out.output` (named tuples, `ModelOutput`). The result must be a tensor of shape (N, K).
    """
    return _picked(out, output, _check_logits, "a logits tensor of shape (N, num_classes)")


def _picked(out: object, output: Output, check: Callable[[torch.Tensor, Output], torch.Tensor],
            what: str) -> torch.Tensor:
    """The tensor of `out` that `output` names (None: `out` itself, else its `.logits`), checked by `check`; an
    error naming what the model returns and what `model.output` can pick when there is none."""
    if output is None:
        if torch.is_tensor(out):
            return check(out, None)
        logits = getattr(out, "logits", None)
        if torch.is_tensor(logits):
            return check(logits, "logits")
        choices = _choices(out)
        hint = (f" Set `model.output: <index or key>` to the one that holds the logits: "
                f"{' or '.join(f'`{c}`' for c in choices[:8])}{' or ...' if len(choices) > 8 else ''}."
                if choices else "")
        raise ReportgenError(f"the model returns {describe_output(out)}, not {what}.{hint}")
    if torch.is_tensor(out):
        raise ReportgenError(f"`model.output` is {output!r}, but the model returns a tensor "
                             f"{list(out.shape)}: leave `model.output` out.")
    picked = _select(out, output)
    if not torch.is_tensor(picked):
        raise ReportgenError(f"`model.output`: {output!r} picks {describe_output(picked)} from the model's "
                             f"output, not {what.split(' of shape')[0]}." + _also(out))
    return check(picked, output)


def _select(out: object, output: int | str) -> object:
    if isinstance(output, str) and output.lstrip("-").isdigit() and isinstance(out, (tuple, list)):
        output = int(output)  # `--set model.output=1` may arrive as text
    if isinstance(out, (tuple, list)):
        if isinstance(output, int) and not isinstance(output, bool) and -len(out) <= output < len(out):
            return out[output]
        if isinstance(output, str) and output in getattr(out, "_fields", ()):  # a named tuple
            return getattr(out, output)
    elif isinstance(out, Mapping):
        if output in out:
            return out[output]
        to_tuple = getattr(out, "to_tuple", None)  # a Hugging Face ModelOutput also takes an index
        if isinstance(output, int) and callable(to_tuple) and -len(out) <= output < len(out):
            return to_tuple()[output]
    elif isinstance(output, str) and hasattr(out, output) and not output.startswith("_"):
        return getattr(out, output)
    choices = _choices(out)
    raise ReportgenError(f"`model.output`: {output!r} is not in the model's output, {describe_output(out)}."
                         f"{did_you_mean(str(output), [str(c) for c in choices])}"
                         + (f" Valid: {', '.join(map(str, choices))}." if choices else ""))


def _also(out: object) -> str:
    choices = _choices(out)
    return f" The output is {describe_output(out)}." if choices else ""


def _check_logits(logits: torch.Tensor, output: Output) -> torch.Tensor:
    if logits.dim() != 2:
        which = f"output `{output}`" if output is not None else "output"
        raise ReportgenError(f"the model's {which} is {list(logits.shape)}; reportgen explains classifiers with "
                             "logits of shape (N, num_classes)." + (
                                 " If it is a segmenter and these are its per-pixel logits (N, num_classes, H, W), "
                                 "set `model.task: segmentation`." if logits.dim() == 4 else ""))
    return logits


def _choices(out: object) -> list[int | str]:
    """What `model.output` can pick from `out`: indices, keys or tensor-valued attribute names."""
    if isinstance(out, (tuple, list)):
        return list(getattr(out, "_fields", ())) or list(range(len(out)))
    if isinstance(out, Mapping):
        return list(out.keys())
    attributes = getattr(out, "__dict__", None)
    if isinstance(attributes, dict):
        return [k for k, v in attributes.items() if not k.startswith("_") and torch.is_tensor(v)]
    return []


def describe_output(out: object) -> str:
    """A model output in words, with shapes: "a tuple of 2: [0] Tensor (1, 10), [1] Tensor (1, 8)"."""
    if torch.is_tensor(out):
        return f"a tensor {list(out.shape)}"
    kind = type(out).__name__
    if isinstance(out, (tuple, list)):
        names = getattr(out, "_fields", None)
        items = [f"{names[i] if names else f'[{i}]'} {_brief(v)}" for i, v in enumerate(out)]
        return f"a {kind} of {len(out)}" + (f": {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
                                           if items else "")
    if isinstance(out, Mapping):
        items = [f"{k!r} {_brief(v)}" for k, v in out.items()]
        return f"a {kind}" + (f" with keys {', '.join(items[:8])}{', ...' if len(items) > 8 else ''}"
                              if items else " with no keys")
    choices = _choices(out)
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if choices:
        return f"{article} {kind} with tensors {', '.join(f'`{c}` {_brief(getattr(out, c))}' for c in choices[:8])}"
    return "None" if out is None else f"{article} {kind}"


def _brief(value: object) -> str:
    return f"Tensor {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
