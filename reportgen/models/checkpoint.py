"""Checkpoint files: loaded with `torch.load(weights_only=True)`; full unpickling only when trusted. A
`.safetensors` file holds tensors only, so it is safe by construction (no `trust_checkpoint` needed).

A file that the safe loader refuses is inspected with `pickletools`, which decodes a pickle's opcodes and
runs nothing, to tell a pickle holding Python objects (a custom class, an `argparse.Namespace`, a whole
`nn.Module`) from a file that is no checkpoint at all.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ReportgenError

TRUST_HINT = ("Save a plain state_dict (`torch.save(model.state_dict(), path)`), or set "
              "`model.trust_checkpoint: true` for a file you trust.")


def first_line(exc: BaseException) -> str:
    """The start of an exception's message on one line (torch's are long and span many lines)."""
    text = " ".join(str(exc).split())
    return (text[:300] + " ...") if len(text) > 300 else (text or type(exc).__name__)


def torch_load(path: Path, *, trust: bool, key: str = "model.checkpoint", hint: str = TRUST_HINT) -> object:
    """The object in a checkpoint file. `torch.load(weights_only=True)` first; a file the safe loader refuses
    is loaded with full unpickling only when `trust` is set, and otherwise named for what it is: a pickle of
    Python objects (nothing in it runs), or not a checkpoint. `key` starts every message; `hint` says what
    to do about a refused pickle."""
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero, a FIFO: read without end
        raise ReportgenError(f"`{key}`: {path} is not a plain file; give a checkpoint file.")
    try:
        with warnings.catch_warnings():  # torch's notes about pickle protocols: the outcome is what we report
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ReportgenError(f"`{key}`: the file {path} does not exist.") from None
    except IsADirectoryError:
        raise ReportgenError(f"`{key}`: {path} is a folder, not a checkpoint file.") from None
    except Exception as exc:  # torch raises many kinds for files that are not checkpoints
        if not trust:
            raise _refusal(path, exc, key, hint) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ReportgenError(f"`{key}`: {path} could not be loaded ({type(exc).__name__}: "
                             f"{first_line(exc)}).") from None


def _refusal(path: Path, exc: Exception, key: str, hint: str) -> ReportgenError:
    """Why the safe loader refused `path`: a pickle that needs full unpickling, or not a checkpoint."""
    message = " ".join(str(exc).split())
    refused = isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in message
    found = pickle_globals(path) if refused else None
    if found is None:  # garbage that the weights-only unpickler stumbled on, a truncated zip, a text file
        if refused:
            why = "neither a zip archive from torch.save nor a pickle"
        elif path.stat().st_size == 0:
            why = "the file is empty"
        else:
            why = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
        return ReportgenError(f"`{key}`: {path} is not a PyTorch checkpoint ({why}).")
    beyond = [name for name in found if not _allowed(name)]
    if beyond:
        more = f" and {len(beyond) - 4} more" if len(beyond) > 4 else ""
        what = (f"holds Python objects beyond tensors ({', '.join(beyond[:4])}{more}), so it needs full "
                "unpickling")
    else:  # tensors only, in pickle opcodes the safe loader does not read (protocol 4 and up, plain pickle)
        reason = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", message)
        what = ("is a Python pickle that the safe loader (`torch.load(weights_only=True)`) cannot read"
                + (f" ({reason.group(1).strip()})" if reason else "") + ", so it needs full unpickling")
    return ReportgenError(f"`{key}`: {path.name} {what}, and loading it would run code from the file. Refused: "
                          f"nothing in it ran. {hint}")


def pickle_globals(path: Path) -> list[str] | None:
    """The globals ("module.name") the pickle in a checkpoint file refers to, in order, without repeats;
    None when the file holds no readable pickle. Reads opcodes only (`pickletools.genops`): runs nothing.

    A zip checkpoint (torch >= 1.6) keeps its pickle in `<archive>/data.pkl`; the legacy format is up to
    four pickles in a row (magic number, protocol, system info, the object)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                return _scan(io.BytesIO(archive.read(names[0])), pickles=1)
        with open(path, "rb") as stream:
            return _scan(stream, pickles=4)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _scan(stream, *, pickles: int) -> list[str] | None:
    found: list[str] = []
    for index in range(pickles):
        recent: list[object] = []  # strings pushed (STACK_GLOBAL takes its module and name from them)
        memo: dict[int, object] = {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in _STRING_OPS:
                    recent.append(arg)
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    recent.append(memo.get(int(arg)))
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = recent[-1] if recent else None
                elif op.name in ("GLOBAL", "INST"):
                    module, _, name = str(arg).partition(" ")
                    found.append(_python3_name(module, name))
                elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                    module, name = recent[-2], recent[-1]
                    if isinstance(module, str) and isinstance(name, str):
                        found.append(_python3_name(module, name))
        except Exception:  # not a pickle (or the end of the legacy format's pickles)
            if index == 0:
                return None
            break
    return list(dict.fromkeys(found))


def _python3_name(module: str, name: str) -> str:
    """"module.name" as Python 3 spells it (pickle protocols 0-2 write `__builtin__.set`, `copy_reg`)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _allowed(name: str) -> bool:
    """Whether the safe loader accepts the global `name` (tensors, storages, dtypes, OrderedDict, ...)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # private: fall back when it moves

        allowed = set(_get_allowed_globals())
    except Exception:
        allowed = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}
        if name.startswith("torch.") and name.endswith("Storage"):
            return True
    allowed |= {f"{getattr(g, '__module__', '')}.{getattr(g, '__name__', '')}"
                for g in getattr(torch.serialization, "get_safe_globals", list)() if not isinstance(g, tuple)}
    return name in allowed


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


def read_checkpoint(path: Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict in the checkpoint file `path` (unwrapped from the common wrappers; a `.safetensors` file
    as it is)."""
    if Path(path).suffix == ".safetensors":
        return load_safetensors(Path(path))
    return unwrap_state_dict(torch_load(path, trust=trust))


SAFETENSORS_HINT = "pip install safetensors"


def load_safetensors(path: Path, key: str = "model.checkpoint") -> dict[str, torch.Tensor]:
    """The tensors in a `.safetensors` file, on the CPU."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ReportgenError(f"`{key}`: {path.name} is a .safetensors file, which needs the safetensors package: "
                             f"{SAFETENSORS_HINT}") from None
    if not path.is_file():
        raise ReportgenError(f"`{key}`: the file {path} does not exist.")
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ReportgenError(f"`{key}`: {path} is not a readable .safetensors file ({first_line(exc)}).") from None


def load_checkpoint(model: nn.Module, path: Path, *, trust: bool = False,
                    state: dict[str, torch.Tensor] | None = None, assign: bool = False) -> None:
    """Load the state_dict in `path` into `model`, or say which keys are missing, unexpected or misshapen.
    `state`: the file's state_dict, already read (`read_checkpoint`). `assign`: the model was built on the meta
    device; its parameters and buffers become the file's tensors (`load_state_dict(assign=True)`), cast to the
    model's dtypes as a copying load would."""
    if state is None:
        state = read_checkpoint(path, trust=trust)
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
    if assign:  # what a copying load does to the values: the model's dtype, a tensor of its own
        metadata = getattr(state, "_metadata", None)  # the layers' versions (MNASNet's layout depends on it)
        state = collections.OrderedDict((k, v.to(dtype=expected[k].dtype, copy=v.dtype != expected[k].dtype or
                                                 _shared(v))) for k, v in state.items())
        if metadata is not None:
            state._metadata = metadata
    model.load_state_dict(state, assign=assign)


def _shared(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a view into a storage larger than itself (a slice of another tensor, say): assigned
    as it is, it would keep the whole storage alive; a copying load gives each parameter its own memory."""
    return tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size()
