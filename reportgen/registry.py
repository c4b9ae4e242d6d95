"""Registries: the one way reportgen is extended. Methods, stages, model sources, trackers and tasks are each a
table of records; a record names its thing, owns the dataclass of its options, and points at the code that
does the work.

A registry finds its records in two places, once, on first use:

- built in: the records of reportgen's own modules (`scan`: every module of a package that defines the
  record attribute, e.g. `SPEC` in `reportgen.stages.<name>`; or a function returning them);
- plug-ins: the Python entry points of its group (`reportgen.methods`, `reportgen.stages`,
  `reportgen.sources`, `reportgen.trackers`, `reportgen.tasks`) of every installed distribution. An entry
  point names a record or a list of records, e.g. in a plug-in's pyproject.toml:

      [project.entry-points."reportgen.stages"]
      histogram = "my_plugin.histogram:SPEC"

`register()` adds one at run time (a test, a notebook). This module imports no torch: the config schema is
assembled from these tables, and `reportgen --help` stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from .errors import ReportgenError, did_you_mean


class Registry:
    """The records of one kind, by name, in order (`order` attribute of a record, then registration order)."""

    def __init__(self, kind: str, group: str, builtins: Callable[[], Iterable[Any]], key: str = "name",
                 check: Callable[[Any], None] | None = None):
        self.kind = kind  # what a record is, in messages: "stage", "model source", ...
        self.group = group  # the entry point group of plug-ins
        self.key = key  # the record attribute that names it
        self._builtins = builtins
        self._check = check  # raises ReportgenError for a record that cannot work (a stage without its template)
        self._records: dict[str, Any] = {}
        self._loaded = False
        self._loading = False
        self.version = 0  # grows with every change: what is built from the table knows when to rebuild

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        self._records = {}
        try:
            for record in self._builtins():
                self._records.setdefault(self._name(record), record)
            for point in sorted(entry_points(group=self.group), key=lambda p: p.name):
                self._add_plugin(point)
            if self._check is not None:
                for record in self._records.values():
                    self._check(record)
            self._loaded = True
            self.version += 1
        finally:
            self._loading = False

    def _add_plugin(self, point) -> None:
        where = f"plug-in `{point.value}` (entry point `{point.name}` of group `{self.group}`"
        where += f", from {point.dist.name})" if getattr(point, "dist", None) is not None else ")"
        try:
            loaded = point.load()
        except Exception as exc:  # a broken plug-in is the user's environment: say which, do not crash
            raise ReportgenError(f"{where} does not load: {type(exc).__name__}: {exc}. Fix or uninstall it.") from None
        records = list(loaded) if isinstance(loaded, (list, tuple)) else [loaded]
        for record in records:
            name = getattr(record, self.key, None)
            if not isinstance(name, str) or not name:
                raise ReportgenError(f"{where} gives {record!r}, not a {self.kind} record.")
            if name in self._records:
                raise ReportgenError(f"{where} adds the {self.kind} `{name}`, which is already registered: "
                                     "rename it in the plug-in.")
            self._records[name] = record

    @property
    def loaded(self) -> bool:
        """Whether the records have been looked for (a command that read a config has: the schema needs them)."""
        return self._loaded

    def _name(self, record: Any) -> str:
        return getattr(record, self.key)

    def register(self, record: Any) -> Any:
        """Add a record (or replace the one of the same name). Returns it."""
        self._load()
        if self._check is not None:
            self._check(record)
        self._records[self._name(record)] = record
        self.version += 1
        return record

    def unregister(self, name: str) -> None:
        self._load()
        if self._records.pop(name, None) is not None:
            self.version += 1

    def records(self) -> list[Any]:
        """Every record, in order."""
        self._load()
        ranked = list(self._records.values())
        return sorted(ranked, key=lambda r: getattr(r, "order", 0))  # stable: registration order among equals

    def names(self) -> tuple[str, ...]:
        return tuple(self._name(r) for r in self.records())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.records())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._records

    def __getitem__(self, name: str) -> Any:
        record = self.find(name)
        if record is None:
            raise KeyError(name)
        return record

    def __setitem__(self, name: str, record: Any) -> None:
        """`registry[name] = record`: register it (its name must be `name`); with `del`, what pytest's
        `monkeypatch.setitem` needs to swap a record for a test and put the old one back."""
        if self._name(record) != name:
            raise ValueError(f"the {self.kind} record {self._name(record)!r} registered as {name!r}")
        self.register(record)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def find(self, name: str) -> Any | None:
        self._load()
        return self._records.get(name)

    def spelled(self, name: str, where: Callable[[Any], bool] = lambda record: True) -> Any | None:
        """The record (of those `where` keeps) whose name or one of whose `aliases` `name` spells: case, spaces and
        punctuation forgiven, `++` read as `pp` (`Grad-CAM++` is `gradcampp`); None if none."""
        wanted = spelling(name)
        for record in self.records():
            if where(record) and wanted in {spelling(self._name(record)), *map(spelling, getattr(record, "aliases", ()))}:
                return record
        return None

    def get(self, name: str, key: str | None = None) -> Any:
        """The record `name`; a ReportgenError naming the closest one and every one (at config key `key`) if none."""
        record = self.find(name)
        if record is None:
            where = f"`{key}`: " if key else ""
            raise ReportgenError(f"{where}`{name}` is not a {self.kind}.{did_you_mean(name, self.names())} "
                                 f"Valid: {', '.join(self.names())}.")
        return record


def spelling(name: str) -> str:
    """How names are compared: lower case, `++` as `pp`, `+` as `p`, only letters and digits."""
    return "".join(ch for ch in str(name).lower().replace("++", "pp").replace("+", "p") if ch.isalnum())


def scan(package: str, attribute: str) -> Callable[[], list[Any]]:
    """Built-in records: the `attribute` of every module of `package` that defines one, in module-name order."""

    def found() -> list[Any]:
        records = []
        for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda i: i.name):
            record = getattr(importlib.import_module(f"{package}.{info.name}"), attribute, None)
            if record is not None:
                records.append(record)
        return records

    return found


def _methods() -> list[Any]:
    return list(importlib.import_module("reportgen.methods").BUILT_IN)


METHODS = Registry("method", "reportgen.methods", _methods, key="id")
STAGES = Registry("stage", "reportgen.stages", scan("reportgen.stages", "SPEC"), check=lambda r: r.check_files())
SOURCES = Registry("model source", "reportgen.sources", scan("reportgen.models", "SOURCE"))
TRACKERS = Registry("tracker", "reportgen.trackers", scan("reportgen.integrations", "TRACKER"))
TASKS = Registry("task", "reportgen.tasks", lambda: list(importlib.import_module("reportgen.tasks").BUILT_IN))


def version() -> tuple[int, ...]:
    """Changes whenever a table does: the config schema is rebuilt then."""
    return tuple(r.version for r in (METHODS, STAGES, SOURCES, TRACKERS, TASKS))
