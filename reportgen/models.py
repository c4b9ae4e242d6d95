"""Load the model a config names: torchvision by name, the user's own factory, or TorchScript.

Weights come only from local files: a torchvision weights enum from the local torch hub cache,
or a `checkpoint` state_dict loaded with `torch.load(weights_only=True)`. Nothing is downloaded.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from unittest import mock
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import ReportgenError, did_you_mean


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # in eval mode, on `device`
    device: torch.device
    weights: object | None  # the torchvision weights enum member, when one was loaded
    description: str  # one line for the report header


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ReportgenError("`model.device` is cuda, but no CUDA device is available here."
                                 " Use `device: auto` or `device: cpu`.")
        return torch.device("cuda")
    if choice == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(cfg: ModelConfig, base_dir: Path | None = None) -> LoadedModel:
    device = resolve_device(cfg.device)
    weights = None
    if cfg.source == "torchvision":
        model, weights = _torchvision_model(cfg)
        description = f"torchvision {cfg.name}" + (f" ({weights})" if weights is not None else " (random weights)")
    elif cfg.source == "module":
        model = _factory_model(cfg, base_dir)
        description = f"{cfg.factory}({', '.join(f'{k}={v!r}' for k, v in cfg.kwargs.items())})"
    else:
        model = _torchscript_model(cfg)
        description = f"TorchScript {cfg.path.name}"
    if cfg.checkpoint is not None:
        load_checkpoint(model, cfg.checkpoint, trust=cfg.trust_checkpoint)
        description += f", checkpoint {cfg.checkpoint.name}"
    model.eval().to(device)
    return LoadedModel(model=model, device=device, weights=weights, description=description)


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision_model(cfg: ModelConfig) -> tuple[nn.Module, object | None]:
    import torchvision.models as tvm

    names = torchvision_names()
    if cfg.name not in names:
        raise ReportgenError(f"`model.name`: `{cfg.name}` is not a torchvision classification model."
                             f"{did_you_mean(cfg.name, names)} See `torchvision.models.list_models()`.")
    if cfg.weights is None:
        return tvm.get_model(cfg.name, weights=None), None
    enum = tvm.get_model_weights(cfg.name)
    choices = [w.name for w in enum] + ["DEFAULT"]
    if cfg.weights not in choices:
        raise ReportgenError(f"`model.weights`: `{cfg.weights}` is not a weights name of {cfg.name}."
                             f"{did_you_mean(cfg.weights, choices)} Valid: {', '.join(choices)}.")
    weights = enum[cfg.weights] if cfg.weights != "DEFAULT" else enum.DEFAULT
    path = weights_cache_path(weights)
    if not path.is_file():
        raise ReportgenError(
            f"the weights {weights} are not in the local torch cache: expected the file {path}. reportgen never "
            f"downloads. Copy the file there (it comes from {weights.url}), or set `model.weights: null` for "
            "random weights, or give a `checkpoint:`."
        )
    state = _torch_load(path, trust=False, key="model.weights")
    # torchvision's own builder, fed the state dict we loaded safely: it renames old keys (DenseNet) and sets
    # what the weights imply (GoogLeNet's and Inception's transform_input, the class count); nothing is fetched
    try:
        with mock.patch.object(type(weights), "get_state_dict", lambda self, *args, **kwargs: state):
            model = tvm.get_model(cfg.name, weights=weights)
    except Exception as exc:
        raise ReportgenError(f"`model.weights`: the file {path} does not fit {cfg.name} "
                             f"({type(exc).__name__}: {_first_line(exc)}). Replace it with the file from "
                             f"{weights.url}.") from None
    return model, weights


def _first_line(exc: BaseException) -> str:
    """The start of an exception's message on one line (torch's are long and span many lines)."""
    text = " ".join(str(exc).split())
    return (text[:300] + " ...") if len(text) > 300 else (text or type(exc).__name__)


def weights_cache_path(weights: object) -> Path:
    """Where torchvision would keep a weights file: <torch hub dir>/checkpoints/<file name of the URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _factory_model(cfg: ModelConfig, base_dir: Path | None) -> nn.Module:
    module_name, _, function_name = cfg.factory.partition(":")
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))  # the user's module may sit beside the config
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReportgenError(f"`model.factory`: cannot import `{module_name}`: {exc}.") from None
    except Exception as exc:  # a SyntaxError or an error raised while the user's module runs
        raise ReportgenError(f"`model.factory`: importing `{module_name}` failed: {type(exc).__name__}: "
                             f"{_first_line(exc)}.") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    function = getattr(module, function_name, None)
    if not callable(function):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ReportgenError(f"`model.factory`: `{module_name}` has no function `{function_name}`."
                             f"{did_you_mean(function_name, public)}")
    try:
        model = function(**cfg.kwargs)
    except TypeError as exc:
        raise ReportgenError(f"`model.kwargs`: calling {cfg.factory} failed: {exc}.") from None
    except Exception as exc:
        raise ReportgenError(f"`model.factory`: {cfg.factory}({', '.join(cfg.kwargs)}) raised "
                             f"{type(exc).__name__}: {_first_line(exc)}.") from None
    if not isinstance(model, nn.Module):
        raise ReportgenError(f"`model.factory`: {cfg.factory} returned a {type(model).__name__}, not an nn.Module.")
    return model


def _torchscript_model(cfg: ModelConfig) -> nn.Module:
    if not cfg.path.is_file():
        raise ReportgenError(f"`model.path`: the TorchScript file {cfg.path} does not exist.")
    try:
        return torch.jit.load(str(cfg.path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
        raise ReportgenError(f"`model.path`: {cfg.path} is not a TorchScript model ({type(exc).__name__}).") from None


def _torch_load(path: Path, *, trust: bool, key: str = "model.checkpoint") -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ReportgenError(f"`{key}`: the file {path} does not exist.") from None
    except IsADirectoryError:
        raise ReportgenError(f"`{key}`: {path} is a folder, not a checkpoint file.") from None
    except Exception as exc:  # torch raises many kinds for files that are not checkpoints
        if not trust:
            looks_unsafe = "Unsupported global" in str(exc)  # a pickled object, not garbage
            if looks_unsafe:
                raise ReportgenError(
                    f"`{key}`: {path.name} holds Python objects beyond tensors and needs full unpickling, "
                    "which can run arbitrary code. Refused. Save a plain state_dict "
                    "(torch.save(model.state_dict(), path)), or set `model.trust_checkpoint: true` if you trust "
                    "the file."
                ) from None
            raise ReportgenError(f"`{key}`: {path} is not a PyTorch checkpoint "
                                 f"({type(exc).__name__}: {_first_line(exc)}).") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ReportgenError(f"`{key}`: {path} could not be loaded ({type(exc).__name__}: {_first_line(exc)}).") from None


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """The state_dict inside the common wrappers: {"state_dict": ...}, {"model": ...}, a whole module, DataParallel."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model_state_dict", "model", "net", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], (dict, nn.Module)):
            inner = obj[key]
            obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ReportgenError("`model.checkpoint` does not hold a state_dict (a mapping of names to tensors).")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model: nn.Module, path: Path, *, trust: bool = False) -> None:
    state = unwrap_state_dict(_torch_load(path, trust=trust))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong)):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{title}: {', '.join(items[:5])}{more}")
        raise ReportgenError(f"`model.checkpoint`: {path.name} does not match the model: " + "; ".join(parts) + ".")
    model.load_state_dict(state)


def load_labels(choice: str | None, num_classes: int, weights: object | None = None) -> tuple[list[str] | None, str]:
    """(labels or None, a note for the report). `choice` is imagenet, a file path, or None."""
    if choice is None:
        return None, ""
    if choice == "imagenet":
        if weights is not None and "categories" in getattr(weights, "meta", {}):
            labels = list(weights.meta["categories"])
        else:
            from torchvision.models._meta import _IMAGENET_CATEGORIES

            labels = list(_IMAGENET_CATEGORIES)
        if len(labels) != num_classes:
            return None, (f"ImageNet labels ({len(labels)}) do not fit the model's {num_classes} outputs; "
                          "classes are shown by index. Set `model.labels` to a labels file.")
        return labels, ""
    path = Path(choice)
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ReportgenError(f"`model.labels`: cannot read the labels file {path}: {exc.strerror or exc}.") from None
    if len(labels) != num_classes:
        raise ReportgenError(f"`model.labels`: {path.name} has {len(labels)} labels, but the model has "
                             f"{num_classes} outputs: one label a line, in class-index order.")
    return labels, ""
