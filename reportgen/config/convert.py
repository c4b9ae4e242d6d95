"""Conversion of YAML data into the schema's frozen dataclasses: types, rules, shorthands, `_validate` hooks.
Every error names the key path and where it is written (`Ctx.error`)."""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from ..errors import ConfigError, ConfigWarning, did_you_mean
from ..registry import METHODS
from . import registered
from .rules import INT_LIMIT, Rules, Shorthand, clean, dotted, rules_of, yaml_fields

if TYPE_CHECKING:
    from .yamlfile import Lines


@dataclass
class Ctx:
    lines: Lines
    base_dir: Path

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"`{dotted(path)}`{self.lines.where(path)}: {message}")

    def base_for(self, path: tuple) -> Path:
        """Paths written in the file resolve against its folder; paths given with --set, the current folder."""
        return Path.cwd() if self.lines.is_overridden(path) else self.base_dir


def canonical_methods(names: typing.Sequence[str], family: str, path: tuple, ctx: Ctx) -> tuple[str, ...]:
    """The canonical ids of method `names` of `family` ("cam" or "gradients"), in order, without repeats.
    Case, spaces, `-`, `_` and `++` are forgiven, aliases accepted; an unknown name or an empty list raises
    ConfigError at `path` (the methods key). The one place method names are checked: against the records of
    the method registry (`reportgen.methods`' records, which import no torch, and plug-ins')."""
    allowed = tuple(m.id for m in METHODS if m.family == family)
    methods: list[str] = []
    for i, name in enumerate(names):
        record = METHODS.spelled(str(name), lambda m: m.family == family)
        if record is None:
            raise ctx.error(path + (i,), f"unknown method `{clean(name)}`.{did_you_mean(name, allowed)}"
                            f" Methods: {', '.join(allowed)}.")
        if record.id not in methods:
            methods.append(record.id)
    if not methods:
        raise ctx.error(path, "needs at least one method.")
    return tuple(methods)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, path: tuple, ctx: Ctx) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, ctx)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, (dict, list)) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            shown = clean(value) if not isinstance(value, (dict, list)) else repr(value)
            raise ctx.error(path, f"`{shown}` is not one of {', '.join(map(str, choices))}.{hint}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ctx.error(path, f"a value is required ({type_name(tp)}).")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, path, ctx)
            except ConfigError as exc:
                # a mapping is meant for the dataclass option: its error is the useful one
                errors.append((dataclasses.is_dataclass(option) and isinstance(value, dict), exc))
        errors.sort(key=lambda e: not e[0])
        if len(errors) == 1 or errors[0][0]:
            raise errors[0][1]
        raise ctx.error(path, f"expected {type_name(tp)}, got {value!r}.")
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(convert(v, item_tp, path + (i,), ctx) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(path, f"expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(path, f"expected an integer, got {value!r}.")
        if abs(value) > INT_LIMIT:
            raise ctx.error(path, f"expected an integer of at most {INT_LIMIT}, got one of {len(str(abs(value)))} "
                                  "digits.")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            value = float(value)  # `1e-3`: a number everywhere but in YAML 1.1, which wants `1.0e-3`
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(path, f"expected a number, got {clean(repr(value))}.")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            shown = "a huge integer" if isinstance(value, int) else value
            raise ctx.error(path, f"expected a finite number, got {shown}.")
        return number
    if tp is str:
        if isinstance(value, (dict, list, set)) or value is None:
            raise ctx.error(path, f"expected a string, got {value!r}.")
        return str(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a mapping, got {value!r}.")
        return dict(value)
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ctx.error(path, f"expected a path, got {value!r}.")
        return _resolve(value, path, ctx)
    raise TypeError(f"no converter for {tp}")  # a schema bug, not a user error


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # what YAML 1.2 and Python read as a float

NAME_MAX, PATH_MAX = 255, 4096  # bytes of one name and of a whole path (Linux, macOS and Windows allow no more)


def _resolve(value: str | Path, path: tuple, ctx: Ctx) -> Path:
    if "\0" in str(value):
        raise ctx.error(path, "a path cannot hold a NUL character.")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user that does not exist
        p = Path(value)
    resolved = Path(os.path.normpath(p if p.is_absolute() else ctx.base_for(path) / p))
    longest = max(resolved.parts, key=lambda part: len(os.fsencode(part)), default="")
    if len(os.fsencode(longest)) > NAME_MAX or len(os.fsencode(str(resolved))) > PATH_MAX:
        raise ctx.error(path, f"the path `{clean(str(value))}` is longer than a file system allows (a name at most "
                              f"{NAME_MAX} bytes, the whole path {PATH_MAX}).")
    return resolved


def _convert_dataclass(value: Any, tp: type, path: tuple, ctx: Ctx) -> Any:
    shorthand = getattr(tp, "_from_yaml", None)
    inline = None
    if shorthand is not None:
        value = shorthand(value, path, ctx)
        if isinstance(value, Shorthand):
            inline, value = value.field, {value.field: value.value}
        elif not isinstance(value, dict):
            return value  # a shorthand that stands for a whole value (or None)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping of keys, got {value!r}.")
    hints = registered.hints(tp)
    fields = yaml_fields(tp)
    kwargs = {}
    for key, raw in value.items():
        sub = path if key == inline else path + (key if isinstance(key, str) else str(key),)
        f = fields.get(key) if isinstance(key, str) else None
        if f is None and not path and isinstance(key, str) and key.startswith("x-"):
            continue  # a top-level `x-...` key holds YAML anchors for merge keys (`<<: *defaults`), as in Compose
        if f is None:
            names = list(fields)
            raise ConfigError(f"unknown key `{dotted(sub)}`{ctx.lines.where(sub)}."
                              f"{did_you_mean(str(key), names) or ' Valid keys here: ' + ', '.join(names) + '.'}")
        kwargs[f.name] = _convert_field(raw, hints[f.name], rules_of(f), sub, ctx)
    obj = tp(**kwargs)
    validate = getattr(obj, "_validate", None)
    if validate is not None:
        def err(key: str, message: str) -> typing.NoReturn:
            raise ctx.error(path + ((key,) if key else ()), message)

        def warn(key: str, message: str) -> None:
            warnings.warn(str(ctx.error(path + ((key,) if key else ()), message)), ConfigWarning, stacklevel=2)

        if "given" in inspect.signature(validate).parameters:  # it also hears which keys the YAML gave
            obj = validate(err, given=frozenset(kwargs), warn=warn) or obj
        else:
            obj = validate(err) or obj
    return obj


def _convert_field(raw: Any, tp: Any, rules: Rules, path: tuple, ctx: Ctx) -> Any:
    """One field's YAML value -> its dataclass value, by its type and rules."""
    if rules.null_means_default and (raw is None or isinstance(raw, bool)):
        if raw is False:  # the one way to switch a stage off from --set or overrides, where a key cannot be removed
            return None
        raw = {}
    if rules.kind == "patterns":
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(i, str) and i.strip() for i in items):
            raise ctx.error(path, "expected a path, a folder or a glob, or a list of them.")
        return tuple(str(_resolve(i, path + (n,), ctx)) for n, i in enumerate(items))
    value = convert(raw, tp, path, ctx)
    if value is None:
        return None
    if rules.kind == "path_text" and isinstance(value, str) and value not in rules.keep:
        value = str(_resolve(value, path, ctx))
    if rules.lengths and isinstance(value, tuple) and len(value) not in rules.lengths:
        raise ctx.error(path, f"expected {rules.shape}, got {list(value)}.")
    if rules.has_bounds:
        items = value if isinstance(value, tuple) else (value,)
        for i, v in enumerate(items):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not rules.in_bounds(v):
                where = path + (i,) if isinstance(value, tuple) else path
                raise ctx.error(where, f"must be {rules.bounds_text(v)}, got {v}.")
    if rules.methods is not None:
        value = canonical_methods(value, rules.methods, path, ctx)
    if rules.pattern is not None and isinstance(value, str) and not re.fullmatch(rules.pattern, value):
        raise ctx.error(path, f"expected {rules.pattern_text}, got `{clean(value)}`.")
    if rules.check is not None:
        problem = rules.check(value)
        if problem:
            raise ctx.error(path, problem)
    return value

