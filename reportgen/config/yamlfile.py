"""Reading a YAML config: `yaml.safe_load` with bounds (alias bombs, nesting), `--set` overrides, and where
each key is written (`Lines`: line numbers for messages)."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .convert import Ctx, convert
from .rules import clean, dotted
from .schema import TOP_KEYS, Config

# ---------------------------------------------------------------------------- loading

MAX_NODES = 100_000  # values a document may expand to (aliases counted at every use)
MAX_DEPTH = 64  # nesting levels


class Lines:
    """Key path -> line number (1-based) in the YAML file, and the keys --set gave."""

    def __init__(self, node: yaml.Node | None, origin: str):
        self.origin = origin
        self.lines: dict[tuple, int] = {}
        self.overridden: set[tuple] = set()
        self.override_values: dict[tuple, Any] = {}  # --set key -> its value, in the order given
        self.keys: set[tuple] = set()  # every key path the config gives (file, dict or --set), set by parse_data
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                if sub in self.lines:  # YAML would keep the last one silently
                    raise ConfigError(f"`{dotted(sub)}` is given twice ({self.origin}, lines "
                                      f"{self.lines[sub]} and {key.start_mark.line + 1}): keep one.")
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def override(self, path: tuple, value: Any) -> None:
        self.overridden.add(path)
        self.override_values.pop(path, None)
        self.override_values[path] = value

    def gave(self, path: tuple) -> bool:
        """Whether the config gives key `path` (a default it leaves alone may be guessed at; one it gives may not)."""
        return path in self.keys

    def is_overridden(self, path: tuple) -> bool:
        return any(path[: len(o)] == o for o in self.overridden)

    def where(self, path: tuple) -> str:
        if self.is_overridden(path):
            return " (from --set)"
        p = path
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p)
        return f" ({self.origin}, line {line})" if line else f" ({self.origin})"

    def overridden_below(self, path: tuple, message: str) -> tuple | None:
        """The full key, below section `path`, of a --set value that `message` quotes (a later --set wins):
        `--set analyses.cam.targets=[Cat]` and "`analyses.cam`: class `Cat` ..." give analyses.cam.targets."""
        for key, value in reversed(list(self.override_values.items())):
            if key[: len(path)] != path and path[: len(key)] != key:
                continue
            for sub, text in _scalars(value):
                full = key + sub
                if (len(full) > len(path) and full[: len(path)] == path
                        and re.search(rf"(?<![\w.-]){re.escape(text)}(?![\w-])", message)):
                    return full
        return None


def _scalars(value: Any, sub: tuple = ()) -> list[tuple[tuple, str]]:
    """(key path inside the value, text) of the scalars in an override value: strings and numbers, not
    true / false / null; list items count for the list's key."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _scalars(v, sub + (str(k),))]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _scalars(v, sub)]
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        return []
    return [(sub, str(value))]


CONFIG_LIMIT = 2**20  # bytes


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read, override (`a.b=value`) and validate a YAML config file."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a folder, /dev/zero, a FIFO
            raise ConfigError(f"config file `{path}` is not a plain file: give a YAML file.")
        if path.is_file() and path.stat().st_size > CONFIG_LIMIT:
            raise ConfigError(f"config file `{path}` is {path.stat().st_size:,} bytes; a config is a few kB "
                              f"(at most {CONFIG_LIMIT:,}).")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file `{path}` does not exist.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file `{path}`: it is not UTF-8 text (byte {exc.start}).") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config file `{path}`: {exc}") from None
    return parse_config(text, base_dir=path.resolve().parent, origin=path.name, overrides=overrides,
                        source=path.resolve())


def _read_yaml(text: str, origin: str) -> tuple[yaml.Node | None, Any]:
    """(node, data) of one YAML document with yaml's safe loader; a document that expands (through aliases)
    to more than MAX_NODES values or nests deeper than MAX_DEPTH is refused before it is built."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, origin)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = clean(exc.problem or str(exc), most=300)
        if "python/" in str(exc):
            problem += " (python tags are refused: reportgen reads YAML with yaml.safe_load)"
        raise ConfigError(f"{origin} is not valid YAML{where}: {problem}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {clean(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{origin} is nested too deeply (more than {MAX_DEPTH} levels).") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{origin} holds a value YAML cannot convert: {clean(exc)}.") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_expansion(root: yaml.Node, origin: str) -> None:
    """Count the values `root` expands to, each alias use counted in full, without expanding anything."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    entered: set[int] = set()
    aliased = False
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[id(node)] > MAX_NODES:
                if aliased:
                    raise ConfigError(f"{origin} uses YAML aliases that expand to more than {MAX_NODES:,} values "
                                      "(an alias bomb?): refused. Write the values out, or use fewer aliases.")
                raise ConfigError(f"{origin} holds more than {MAX_NODES:,} values: refused.")
            if depth[id(node)] > MAX_DEPTH:
                raise ConfigError(f"{origin} is nested too deeply (more than {MAX_DEPTH} levels).")
            continue
        if id(node) in size:
            aliased = True  # seen before: an alias
            continue
        if id(node) in entered:
            raise ConfigError(f"{origin} uses a YAML alias inside its own anchor (a value that contains "
                              f"itself): refused.")
        entered.add(id(node))
        stack.append((node, True))
        for kid in kids:
            if id(kid) in entered and id(kid) not in size:
                raise ConfigError(f"{origin} uses a YAML alias inside its own anchor (a value that contains "
                                  f"itself): refused.")
            if id(kid) in size:
                aliased = True
            stack.append((kid, False))


def parse_config(
    text: str,
    *,
    base_dir: Path,
    origin: str = "config",
    overrides: typing.Sequence[str] = (),
    source: Path | None = None,
) -> Config:
    node, data = _read_yaml(text, origin)
    return parse_data({} if data is None else data, base_dir=base_dir, origin=origin, overrides=overrides,
                      source=source, lines=Lines(node, origin))


def parse_data(data: Any, *, base_dir: Path, origin: str = "the config dict", overrides: typing.Sequence[str] = (),
               source: Path | None = None, lines: Lines | None = None) -> Config:
    """A config given as data (a dict of the YAML's keys, as the Python API takes it), validated as a file's is;
    `lines`: where each key is written, for a file's messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of keys ({', '.join(TOP_KEYS)}), "
                          f"not a {type(data).__name__}.")
    lines = Lines(None, origin) if lines is None else lines
    for item in overrides:
        data = _apply_override(data, item, lines)
    if "model" not in data:
        raise ConfigError(f"{origin} has no `model:` section: every config names the model to explain "
                          "(`reportgen init` writes a commented starter config).")
    lines.keys = set(_key_paths(data))
    config = convert(data, Config, (), Ctx(lines, base_dir))
    return dataclasses.replace(config, source=source, lines=lines)


def _key_paths(data: dict, path: tuple = ()) -> typing.Iterator[tuple]:
    for key, value in data.items():
        yield path + (key,)
        if isinstance(value, dict):
            yield from _key_paths(value, path + (key,))


def _apply_override(data: dict, item: str, lines: Lines) -> dict:
    """`a.b=value` (value in YAML) into a copy of the mappings on its way; returns the new top mapping."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (like model.name=resnet50), got `{clean(item)}`.")
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise ConfigError(f"--set: `{clean(key)}` is not a key path (like model.name).")
    try:
        value = _read_yaml(raw, f"--set {parts[-1]}")[1] if raw.strip() else None
    except ConfigError as exc:
        if "not valid YAML" not in str(exc):
            raise
        value = raw
    top = dict(data)
    node = top
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}  # copies: an anchor's other uses stay as written
        node[part] = child
        node = child
    node[parts[-1]] = value
    lines.override(parts, value)
    return top

