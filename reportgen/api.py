"""The Python API: `reportgen.build(config, *, model=None, images=None, overrides=None) -> Report`.

The CLI's `build` is a thin layer over it: both resolve the config the same way and raise (the CLI: print) the
same `ReportgenError` messages.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

from .config import Config, load_config, parse_data
from .errors import ReportgenError

Log = Callable[[str], None]


def resolve_config(config: Config | Mapping | str | os.PathLike, overrides: Mapping | Sequence[str] | None = None,
                   *, given_model: bool = False) -> Config:
    """A checked Config from a path to a YAML file, a dict of the same keys (paths relative to the current
    folder) or a Config, with `overrides` applied as `--set` does: "key.path=value" strings, or a mapping
    {"key.path": value}. With `given_model` the config's model is the one given in Python (`model.source:
    python`); its other `model` keys (input_size, labels, output) still apply."""
    sets = _override_strings(overrides) + (["model.source=python"] if given_model else [])
    if isinstance(config, Config):
        if overrides:
            raise ReportgenError("overrides apply to a config given as a path or a dict; change a Config with "
                                 "dataclasses.replace, or pass its file's path.")
        if given_model:
            return dataclasses.replace(config, model=dataclasses.replace(config.model, source="python"))
        return config
    if isinstance(config, Mapping):
        data = dict(config)
        if given_model:
            data.setdefault("model", {})
        return parse_data(data, base_dir=Path.cwd(), origin="the config dict", overrides=sets)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, sets)
    raise ReportgenError(f"config is a {type(config).__name__}: give a path to a YAML file, a dict or a "
                         "reportgen Config.")


def _override_strings(overrides: Mapping | Sequence[str] | None) -> list[str]:
    """`overrides` as --set strings: a mapping {"key.path": value} (a value YAML can write: text, numbers,
    booleans, None, lists and dicts of them), one "key.path=value" string, or a sequence of them."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        strings = []
        for key, value in overrides.items():
            try:
                text = yaml.safe_dump(value, default_flow_style=True, width=2**31)
            except yaml.YAMLError:
                raise ReportgenError(f"overrides[{str(key)[:60]!r}] is a {type(value).__name__}, which a config "
                                     "cannot hold: give text, a number, a boolean, None, or a list or dict of "
                                     "those.") from None
            strings.append(f"{key}={text.strip().removesuffix('...').strip()}")
        return strings
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Sequence) and all(isinstance(item, str) for item in overrides):
        return list(overrides)
    raise ReportgenError(f"overrides is a {type(overrides).__name__}: give a dict {{\"key.path\": value}} or "
                         "\"key.path=value\" strings.")


def build(config, *, model=None, images=None, overrides=None, log: Log | None = None, detail: Log | None = None):
    """Build a report and return it (`pipeline.Report`: paths, stage statuses, `metrics()`).

    config: a path to a YAML config, a dict of the same keys, or a Config. model: an nn.Module, used as it is
    (not reloaded; given back in its training mode with its `requires_grad` flags). images: PIL images or raw
    pixels (uint8 H×W×C, or float C×H×W in [0, 1]; a list, or one N×... array or tensor) that the config's
    preprocessing prepares, instead of `inputs.images`. overrides: {"key.path": value} or "key.path=value"
    strings, as `--set`. Raises ReportgenError (the CLI's messages) for bad input."""
    from . import datasets
    from .pipeline import build as run

    cfg = resolve_config(config, overrides, given_model=model is not None)
    entries = datasets.given(images, cfg) if images is not None else None
    quiet = lambda message: None  # noqa: E731
    return run(cfg, log=log or quiet, detail=detail or quiet, model=model, images=entries)


__all__ = ["build", "resolve_config"]
