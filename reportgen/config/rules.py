"""What a config field accepts beyond its type: `setting(...)` puts `Rules` (bounds, list lengths, path handling,
method families, patterns, checks) on a dataclass field; the helpers every schema module shares."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import did_you_mean

INT_LIMIT = 2**63 - 1  # no integer setting may exceed a 64-bit integer


@dataclass(frozen=True)
class Rules:
    """What a field accepts beyond its type. Numbers (or each number of a list) must satisfy the bounds;
    `kind`: "path" (resolved against the config's folder; --set values: the current folder), "patterns"
    (a path, folder or glob, or a list of them, resolved likewise), "path_text" (a string that is a path
    unless it is one of `keep`); `lengths`: allowed list lengths, described as `shape`; `methods`: a method
    family, names canonicalised by `canonical_methods`; `pattern`: a regular expression a string must match
    fully, described as `pattern_text`; `check`: value -> error message or None; `null_means_default`: a
    null value means the type's defaults (`summary:` runs the stage), and so does true, while false means None
    (`--set analyses.evaluation=false` switches a stage off); `yaml`: the YAML key when it differs
    from the field name ("" = not a YAML key)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    kind: Literal["path", "patterns", "path_text"] | None = None
    keep: tuple = ()
    lengths: tuple[int, ...] = ()
    shape: str = ""
    methods: str | None = None
    pattern: str | None = None
    pattern_text: str = ""
    check: Callable[[Any], str | None] | None = None
    null_means_default: bool = False
    yaml: str | None = None

    def bounds_text(self, value: float | None = None) -> str:
        """"between 0 and 1", "in [0, 100)", "positive", "at least 1", ...; with a huge upper bound, the side
        `value` breaks."""
        if value is not None and not (self.le is None and self.lt is None):
            hi = self.le if self.le is not None else self.lt
            if abs(hi) >= 2**31:
                broken_high = value > hi if self.le is not None else value >= hi
                return (Rules(le=self.le, lt=self.lt) if broken_high else Rules(ge=self.ge, gt=self.gt)).bounds_text()
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if lo is not None and hi is not None and abs(hi) < 2**31:
            if self.ge is not None and self.le is not None:
                return f"between {num(lo)} and {num(hi)}"
            opening, closing = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"in {opening}{num(lo)}, {num(hi)}{closing}"
        if self.gt == 0:
            return "positive"
        if self.gt is not None:
            return f"more than {num(self.gt)}"
        if self.ge is not None:
            return f"at least {num(self.ge)}"
        if self.lt is not None:
            return f"less than {num(self.lt)}"
        return f"at most {num(self.le)}"

    @property
    def has_bounds(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def in_bounds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))


_NO_RULES = Rules()


@dataclass(frozen=True)
class Shorthand:
    """What a `_from_yaml` returns when the YAML value stands for one field (`targets: [3, cat]` is
    `classes`): that field is converted with its rules, and errors name the key as written."""

    field: str
    value: Any


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with its rules (see `Rules`)."""
    return field(default=default, default_factory=factory, metadata={"rules": Rules(**rules)})


def rules_of(f: dataclasses.Field) -> Rules:
    return f.metadata.get("rules", _NO_RULES)


def yaml_fields(tp: type) -> dict[str, dataclasses.Field]:
    """YAML key -> field, for every field of dataclass `tp` that is a YAML key."""
    out = {}
    for f in dataclasses.fields(tp):
        key = rules_of(f).yaml
        if key != "":
            out[key or f.name] = f
    return out


def num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else str(v)


def clean(text: Any, most: int = 300) -> str:
    """User text inside a one-line message: control characters escaped, at most `most` characters (a 200 kB
    value is not echoed whole)."""
    text = str(text)
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= most else f"{text[:most - 22]}... ({len(text):,} characters)"


def known_colormap(name: str) -> str | None:
    from matplotlib import colormaps  # cheap: no pyplot

    if name in colormaps:
        return None
    return f"unknown colour map `{clean(name)}`.{did_you_mean(name, list(colormaps))}"


SEED = dict(ge=0, le=INT_LIMIT)
COUNT = dict(ge=1)  # a positive integer
SIZE = dict(ge=1, le=16384, lengths=(1, 2), shape="a positive size or [height, width]")  # as model.input_size


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{clean(part)}" if out else clean(part))
    return out or "(top level)"


def string_keys(mapping: dict) -> str | None:
    """every key a string"""
    bad = next((key for key in mapping if not isinstance(key, str)), None)
    return None if bad is None else f"keyword names must be strings, got {bad!r}."
