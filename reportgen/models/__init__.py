"""Load the model a config names, as a `ModelAdapter`: torchvision or timm by name, the user's own factory,
TorchScript, or a Hugging Face folder.

Weights come only from local files: a torchvision weights enum from the local torch hub cache, a Hugging Face
folder, or a `checkpoint` (a `.safetensors` file, or a state_dict loaded with `torch.load(weights_only=True)`).
Nothing is downloaded.

Adding a model source is one module with its options dataclass, a `load(cfg, base_dir) -> ModelAdapter`
function (the model as built, on the CPU; a subclass of `ModelAdapter` where the source needs other answers) and
its record `SOURCE = Source(...)` (see `adapter.Source`; the registry finds it); `load_model` does what every
source shares: the checkpoint, eval mode, the device, `model.output`, the layouts of the model's layers
(`layouts.declare_layouts`).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ReportgenError
from ..registry import SOURCES
from . import torchvision as _torchvision
from .adapter import (TASKS, TORCHSCRIPT_LIMITS, ModelAdapter, describe_output, hooks_refused, infer_task,
                      pick_detections, pick_logits, pick_output, pick_segmentation, refuse_code, resolve_task,
                      takes_hooks)
from .detection import Detections, internal_size, num_classes
from .checkpoint import load_checkpoint, pickle_globals, read_checkpoint, torch_load, unwrap_state_dict
from .labels import load_labels, read_labels_file
from .layouts import Layout, Layouts, declare_layouts
from .torchvision import preprocess_from_weights, torchvision_names, weights_cache_path

if TYPE_CHECKING:
    from ..config import ModelConfig

Loader = Callable[["ModelConfig", "Path | None"], ModelAdapter]

__all__ = [
    "TASKS", "TORCHSCRIPT_LIMITS", "Detections", "Layout", "Layouts", "ModelAdapter", "describe_output",
    "hooks_refused", "infer_task", "internal_size", "load_checkpoint", "load_labels", "load_model", "num_classes",
    "pick_detections", "pick_logits", "pick_output", "pick_segmentation",
    "pickle_globals", "preprocess_from_weights", "read_checkpoint", "read_labels_file",
    "resolve_device", "resolve_task", "takes_hooks",
    "torch_load", "torchvision_names", "unwrap_state_dict", "weights_cache_path",
]


def resolve_device(choice: str) -> torch.device:
    """`model.device` (auto | cpu | cuda) as a torch.device; auto takes CUDA when there is one."""
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ReportgenError("`model.device` is cuda, but no CUDA device is available here."
                                 " Use `device: auto` or `device: cpu`.")
        return torch.device("cuda")
    if choice == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(cfg: ModelConfig, base_dir: Path | None = None, model: nn.Module | None = None,
               task: str | None = None) -> ModelAdapter:
    """The model `cfg` names, as an adapter: built by its source's loader, the `checkpoint` loaded into it,
    in eval mode, on the device, with `model.output` saying where its logits are. `base_dir` is the config
    file's folder (a factory's module may sit there). `model` (source `python`): the nn.Module given to
    `reportgen.build(config, model=...)`, used as it is (`given_model`). `task`: `model.task` when the config
    gives it (None: the source's, else inferred from the first output, `ModelAdapter.with_task`); a task the
    source knows otherwise is an error."""
    if cfg.source == "python" or model is not None:
        return _given_task(given_model(model, cfg), task)
    source = SOURCES.get(cfg.source, key="model.source")
    refuse_code(cfg, source)
    device = resolve_device(cfg.device)
    loader = source.load
    adapter = _load_skipping_init(cfg, loader, base_dir) if _overwritten(cfg) else None
    if adapter is None:
        adapter = loader(cfg, base_dir)
        if cfg.checkpoint is not None:
            load_checkpoint(adapter.model, cfg.checkpoint, trust=cfg.trust_checkpoint)
    description = adapter.description
    if cfg.checkpoint is not None:
        description += f", checkpoint {cfg.checkpoint.name}"
    adapter.model.eval().to(device)
    output = getattr(cfg, "output", None)  # `model.output`, once ModelConfig has it
    return _given_task(dataclasses.replace(adapter, device=device, description=description,
                                           output=adapter.output if output is None else output,
                                           layouts=declare_layouts(adapter.model, cfg.input_size)), task)


def _given_task(adapter: ModelAdapter, task: str | None) -> ModelAdapter:
    """The adapter with the config's `task`: the one the source knows must be it."""
    if task is None or task == adapter.task:
        return adapter
    if adapter.task is not None:
        raise ReportgenError(f"`model.task` is {task}, but the model is a {adapter.task} model "
                             f"({adapter.description}). Set `model.task: {adapter.task}` or leave it out.")
    return dataclasses.replace(adapter, task=task)


def given_model(model: nn.Module | None, cfg: ModelConfig) -> ModelAdapter:
    """The nn.Module given in Python, as it is: not rebuilt, no checkpoint loaded, not moved (its device is that
    of its parameters), put in eval mode (`reportgen.build` gives it back in the modes it came in)."""
    if not isinstance(model, nn.Module):
        raise ReportgenError("`model.source: python` is the model given in Python, `reportgen.build(config, "
                             "model=...)`" + (f"; got a {type(model).__name__}, not a torch.nn.Module." if model is not None
                                              else ": a config file names a model of another source."))
    device = next((t.device for t in itertools.chain(model.parameters(), model.buffers())), torch.device("cpu"))
    model.eval()
    return ModelAdapter(model=model, device=device, source="python", output=cfg.output,
                        description=f"{type(model).__name__}, given in Python",
                        layouts=declare_layouts(model, cfg.input_size))


def _overwritten(cfg: ModelConfig) -> bool:
    """Whether one state dict overwrites the whole model as the source builds it, so that the source may build
    it on the meta device (no random initialisation, no memory) and the state dict's tensors become its
    parameters: a torchvision model with a `checkpoint` or with cached `weights` (not both: the weights would be
    loaded, then overwritten). A user's factory may do anything (read files, tie or freeze parameters, build on a
    device of its own): it is built as it says."""
    return cfg.source == "torchvision" and (cfg.checkpoint is None) != (cfg.weights is None)


def _load_skipping_init(cfg: ModelConfig, loader: Loader, base_dir: Path | None) -> ModelAdapter | None:
    """The adapter with the model built on the meta device and the state dict's tensors assigned to it (the
    checkpoint's here; cached weights' by the torchvision source, which assigns them to a model it finds on the
    meta device); None when that cannot give what the ordinary path gives (a buffer or parameter the state dict
    does not hold, a parameter shared by two layers, a model that does not build on meta): then the caller builds
    it normally. A checkpoint that does not match the model raises the ordinary path's error."""
    _torchvision.import_models()  # imported outside the meta context: its module-level tensors are real

    state = None if cfg.checkpoint is None else read_checkpoint(cfg.checkpoint, trust=cfg.trust_checkpoint)
    try:
        with torch.device("meta"), _NoFillsOnMeta():
            adapter = loader(cfg, base_dir)
    except ReportgenError:
        return None  # the ordinary path says it again, as it always has
    model = adapter.model
    params = list(model.named_parameters(remove_duplicate=False))
    if len(params) != len({id(p) for _, p in params}):
        return None  # shared parameters: assigning would part them
    if state is not None:
        tensors = params + list(model.named_buffers(remove_duplicate=False))
        if not all(t.is_meta for _, t in tensors) or {name for name, _ in tensors} - set(model.state_dict()):
            return None  # tensors made elsewhere, buffers outside the state dict
        load_checkpoint(model, cfg.checkpoint, state=state, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return adapter


class _NoFillsOnMeta(TorchFunctionMode):
    """While active, in this thread only (torch keeps its function modes per thread), the ops that fill a
    tensor's values in place, and `torch.nn.init`'s functions, do nothing to a tensor on the meta device: it has
    no values. Layers' `reset_parameters` and models' init loops call them; torch runs some on meta
    (normal_, erfinv_, clamp_) through its Python reference kernels, whose first call imports torch._dynamo
    (1-2 s). Ops that change a tensor's shape or flags (`requires_grad_`) still run."""

    FILLS = frozenset({"uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_",
                       "cauchy_", "fill_", "zero_", "fill_diagonal_", "copy_", "erfinv_", "clamp_", "clamp_min_",
                       "clamp_max_", "mul_", "div_", "add_", "sub_", "sqrt_", "exp_", "abs_", "neg_", "sign_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and (name in self.FILLS or getattr(func, "__module__", None) == "torch.nn.init"):
            target = args[0] if args else kwargs.get("tensor")  # `torch.nn.init.normal_(tensor=...)` comes here so
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target  # in place: the op returns its tensor
        return func(*args, **kwargs)
