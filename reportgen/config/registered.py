"""The parts of the schema the registries give (`reportgen.registry`):

- `model`: the keys every model source shares (`ModelBase`) plus each source's own options (its record's
  dataclass). A key of another source is refused when set to anything but its default, and warned about when
  set to its default;
- `analyses`: one key per stage, holding the stage record's options;
- `output.attach`: one key per tracker, holding the tracker record's options.

Built on first use and again whenever a registry changes (a plug-in, or a record registered at run time). The
classes are also reachable as `reportgen.config.ModelConfig`, `AnalysesConfig`, `AttachConfig`, and every
options class by its name (`reportgen.config.CamConfig`).
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from .. import registry
from ..errors import did_you_mean
from .rules import Rules, clean, rules_of, setting, yaml_fields

if TYPE_CHECKING:
    from .convert import Ctx


def _known_task(name: str | None) -> str | None:
    """a task's name (classification, segmentation, a plug-in's), or null"""
    if name is None or name in registry.TASKS:
        return None
    names = registry.TASKS.names()
    return f"`{clean(name)}` is not a task.{did_you_mean(name, names)} Tasks: {', '.join(names)}."


def _known_source(name: str) -> str | None:
    """the name of a model source (see the keys below), a plug-in's included"""
    if name in registry.SOURCES:
        return None
    names = registry.SOURCES.names()
    return f"`{clean(name)}` is not a model source.{did_you_mean(name, names)} Sources: {', '.join(names)}."


@dataclass(frozen=True)
class ModelBase:
    """The keys of `model` that every model source takes; each source adds its own (marked with the sources
    that take it). A key of another source is an error, or a warning when it is set to its default."""

    source: str = setting("torchvision", check=_known_source)  # where the model comes from: a model source's name
    checkpoint: Path | None = setting(None, kind="path")  # a .safetensors or state_dict file loaded into the model
    trust_checkpoint: bool = False  # allow a pickled checkpoint's own classes (runs its code: only your own files)
    input_size: tuple[int, ...] = setting((3, 224, 224), ge=1, le=16384, lengths=(3,),
                                          shape="[channels, height, width]")
    # "imagenet" (1000 outputs; a default left on another model gives `class N` and a warning), a file, or None
    labels: str | None = setting("imagenet", kind="path_text", keep=("imagenet",))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output: int | str | None = None  # which element of a tuple / dict output holds the logits; None: the output
    # what the model does; null: what it says (a segmenter of torchvision or Hugging Face, an output {"out": ...})
    task: str | None = setting(None, check=_known_task)

    @property
    def options(self) -> Any:
        """The chosen source's options, as its record's dataclass."""
        record = registry.SOURCES.get(self.source, key="model.source")
        return record.options(**{f.name: getattr(self, f.name) for f in dataclasses.fields(record.options)})

    def _validate(self, err, given: frozenset[str] = frozenset(), warn=None) -> None:
        if self.source == "python":  # the model given in Python replaces the one the other keys describe
            return
        record = registry.SOURCES.get(self.source, key="model.source")
        own = [f.name for f in dataclasses.fields(record.options)]
        common = [f.name for f in dataclasses.fields(ModelBase)]
        keys = f"its keys: {', '.join(own)}; every source's: {', '.join(common)}" if own else \
            f"it takes only the keys every source takes: {', '.join(common)}"
        for f in dataclasses.fields(self):
            if f.name in own or f.name in common:
                continue
            if getattr(self, f.name) != _default(f):
                hint = getattr(f.metadata.get("owner"), "_ELSEWHERE", {}).get(f.name)  # what its own source says
                err(f.name, hint.format(source=self.source) if hint else
                    f"does not apply to source `{self.source}` ({keys}).")
            elif f.name in given and warn is not None:
                warn(f.name, f"does not apply to source `{self.source}` and is ignored ({keys}).")
        options = self.options
        check = getattr(options, "_validate", None)
        if check is not None:
            check(err)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


class _Stages:
    """`analyses`: one key per stage record; a key present runs that stage, with its defaults when it has no value
    (or `true`). `false` switches it off, as if absent: `--set analyses.evaluation=false` or, in Python,
    `overrides={"analyses.evaluation": False}` (a null or empty `--set` value turns a stage on, as in YAML)."""

    def enabled(self) -> list[str]:
        """The stages that run, in report order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


class _Attachments:
    """`output.attach`: the trackers the written report is attached to. One key per tracker record, holding its
    options (null: not attached); a list of names is shorthand for each one's defaults: `attach: [mlflow, wandb]`."""

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: Ctx) -> Any:
        names = list(yaml_fields(cls))
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        if not isinstance(value, (list, str)):
            raise ctx.error(path, f"expected a list of trackers ({', '.join(names)}) or a mapping of tracker to "
                                  f"options, got {value!r}.")
        value = [value] if isinstance(value, str) else value
        for i, name in enumerate(value):
            if not isinstance(name, str) or name not in names:
                raise ctx.error(path + (i,), f"unknown tracker `{clean(name)}`.{did_you_mean(str(name), names)} "
                                             f"Trackers: {', '.join(names)}.")
        return dict.fromkeys(value)  # null: the tracker's default options

    def items(self) -> list[tuple[str, Any]]:
        """(name, options) of the trackers attached to, in registry order."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __bool__(self) -> bool:
        return bool(self.items())


def _copy(f: dataclasses.Field, tp: Any, metadata: dict) -> tuple[str, Any, dataclasses.Field]:
    """A field of another dataclass, for a new one: same type, default and rules, and `metadata` added."""
    metadata = {**f.metadata, **metadata}
    if f.default_factory is not dataclasses.MISSING:
        return f.name, tp, field(default_factory=f.default_factory, metadata=metadata)
    return f.name, tp, field(default=f.default, metadata=metadata)


# The classes are made once for each set of records they are made from: a registry change that does not touch a
# class (a method of another family, a stage added) leaves it the same object, so the configs made before it still
# compare equal to those made after it.
@functools.cache
def _merged(name: str, bases: tuple[type, ...], parts: tuple[tuple[str, type], ...], taken: frozenset[str],
            kind: str) -> type:
    """A dataclass of `bases` (the last one a dataclass) with the fields of the option classes `parts` ((their
    record's name, the class)) added: a key several records have is one field, which must have one type and default;
    each field says which records take it."""
    found: dict[str, tuple[dataclasses.Field, Any, type]] = {}  # key -> (its field, type, the options class)
    owners: dict[str, list[str]] = {}  # key -> the records that take it
    for owner, options in parts:
        hints = typing.get_type_hints(options)
        for f in dataclasses.fields(options):
            if f.name in taken:
                raise TypeError(f"{kind} `{owner}`: `{f.name}` is a key of {bases[-1].__name__} already")
            if f.name in found:
                if hints[f.name] != found[f.name][1] or _default(f) != _default(found[f.name][0]):
                    raise TypeError(f"{kind}s `{owners[f.name][0]}` and `{owner}` give `{f.name}` different types or "
                                    "defaults")
                if owner not in owners[f.name]:
                    owners[f.name].append(owner)
                continue
            found[f.name], owners[f.name] = (f, hints[f.name], options), [owner]
    made = [_copy(f, tp, {"owner": options, "only": tuple(owners[key])}) for key, (f, tp, options) in found.items()]
    cls = dataclasses.make_dataclass(name, made, bases=bases, frozen=True)
    cls.__doc__ = bases[-1].__doc__  # what the section is: its dataclass's words, not a mixin's
    return cls


def _model_class() -> type:
    return _merged("ModelConfig", (ModelBase,), tuple((r.name, r.options) for r in registry.SOURCES),
                   frozenset(f.name for f in dataclasses.fields(ModelBase)), "model source")


class _MethodKeys:
    """A stage section with its methods' options: a method's key given while `methods` names none of the methods
    that take it is one warning (it changes nothing)."""

    def _validate(self, err, given: frozenset[str] = frozenset(), warn=None):
        own = getattr(super(), "_validate", None)
        checked = own(err) if own is not None else None
        for f in dataclasses.fields(self):
            only = f.metadata.get("only")
            if warn is not None and only and f.name in given and not set(only) & set(self.methods):
                warn(f.name, f"applies to {', '.join(only)}, which `methods` does not name: it changes nothing.")
        return checked


def _with_method_options(options: type) -> type:
    """A stage's options with its methods' options added (a stage with a `methods` key of a method family)."""
    family = next((rules_of(f).methods for f in dataclasses.fields(options) if rules_of(f).methods), None)
    parts = tuple((m.id, m.options) for m in registry.METHODS if m.family == family and m.options is not None)
    if not parts:
        return options
    return _merged(options.__name__, (_MethodKeys, options), parts,
                   frozenset(f.name for f in dataclasses.fields(options)), "method")


def _keyed(name: str, base: type, records, options: dict[str, type] | None = None) -> type:
    """A dataclass with one optional key per record (its options, or `options[name]`; null or absent: off)."""
    options = options or {}
    return _keys(name, base, tuple((r.name, options.get(r.name, r.options), getattr(r, "title", "")) for r in records))


@functools.cache
def _keys(name: str, base: type, keys: tuple[tuple[str, type, str], ...]) -> type:
    return dataclasses.make_dataclass(
        name, [(key, options | None, field(default=None, metadata={"rules": Rules(null_means_default=True), "doc": doc}))
               for key, options, doc in keys], bases=(base,), frozen=True)


_built: dict[str, Any] = {}
_building = False


def classes() -> SimpleNamespace:
    """ModelConfig, AnalysesConfig and AttachConfig as the registries are now."""
    global _building
    if _building:
        raise RuntimeError("the config schema was asked for while it is being built: a module that defines a "
                           "record imports a class of the schema at import time (import it where it is used)")
    _building = True
    try:
        for table in (registry.METHODS, registry.STAGES, registry.SOURCES, registry.TRACKERS):
            table.records()  # loaded (plug-ins included) before the version is read
        version = registry.version()
        if _built.get("version") != version:
            stages = {r.name: _with_method_options(r.options) for r in registry.STAGES}
            built = SimpleNamespace(ModelConfig=_model_class(),
                                    AnalysesConfig=_keyed("AnalysesConfig", _Stages, registry.STAGES, stages),
                                    AttachConfig=_keyed("AttachConfig", _Attachments, registry.TRACKERS),
                                    **{cls.__name__: cls for name, cls in stages.items()
                                       if cls is not registry.STAGES[name].options})
            for cls in vars(built).values():
                cls.__module__ = "reportgen.config"
            _built.update(version=version, classes=built)
        return _built["classes"]
    finally:
        _building = False


def hints(cls: type) -> dict[str, Any]:
    """The types of a schema class's fields, the names of the classes built here resolved (Config's `model` is
    a ModelConfig as the registries are now)."""
    return typing.get_type_hints(cls, localns=vars(classes()))


def options_class(name: str) -> type | None:
    """The options dataclass called `name` of any record (nested ones included: `OptimizeConfig`), or None."""
    built = classes()
    if hasattr(built, name):
        return getattr(built, name)
    seen: set[type] = set()
    todo = [r.options for table in (registry.STAGES, registry.SOURCES, registry.TRACKERS, registry.METHODS)
            for r in table if getattr(r, "options", None) is not None]
    while todo:
        cls = todo.pop()
        if cls in seen or not dataclasses.is_dataclass(cls):
            continue
        seen.add(cls)
        if cls.__name__ == name:
            return cls
        for tp in typing.get_type_hints(cls).values():
            todo.extend(a for a in (typing.get_args(tp) or (tp,)) if isinstance(a, type))
    return None
