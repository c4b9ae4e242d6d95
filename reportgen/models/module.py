"""`model.source: module`: the user's own factory, `package.module:function`, called with `model.kwargs`.

The module may sit beside the config file: the config's folder is on `sys.path` while it is imported.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..config.rules import setting, string_keys
from ..errors import ReportgenError, did_you_mean
from .adapter import ModelAdapter, Source
from .checkpoint import first_line

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class ModuleOptions:
    factory: str | None = setting(None, pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*",
                                  pattern_text='"package.module:function"')  # your function that builds the model
    kwargs: dict = setting(factory=dict, check=string_keys)  # keyword arguments of the factory

    def _validate(self, err) -> None:
        if not self.factory:
            err("factory", 'source `module` needs `factory: "package.module:function"`.')


def load(cfg: ModelConfig, base_dir: Path | None = None) -> ModelAdapter:
    """The nn.Module that `cfg.factory(**cfg.kwargs)` returns."""
    module_name, _, function_name = cfg.factory.partition(":")
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))  # the user's module may sit beside the config
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReportgenError(f"`model.factory`: cannot import `{module_name}`: {exc}.") from None
    except (Exception, SystemExit) as exc:  # a SyntaxError, an error or exit() while the user's module runs
        raise ReportgenError(f"`model.factory`: importing `{module_name}` failed: {type(exc).__name__}: "
                             f"{first_line(exc)}.") from None
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
    except (Exception, SystemExit) as exc:  # `builtins:exit` would end the process with no word
        raise ReportgenError(f"`model.factory`: {cfg.factory}({', '.join(cfg.kwargs)}) raised "
                             f"{type(exc).__name__}: {first_line(exc)}.") from None
    if not isinstance(model, nn.Module):
        raise ReportgenError(f"`model.factory`: {cfg.factory} returned a {type(model).__name__}, not an nn.Module: "
                             "name a function that returns the model.")
    description = f"{cfg.factory}({', '.join(f'{k}={v!r}' for k, v in cfg.kwargs.items())})"
    return ModelAdapter(model=model, source="module", description=description)


SOURCE = Source(name="module", options=ModuleOptions, load=load, order=30,
                note="your own function `package.module:function` that returns the nn.Module",
                runs_code="imports and calls `model.factory`")
