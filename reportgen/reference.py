"""The config reference page, docs/config.md, generated from the schema: `python -m reportgen.reference` prints it.

The page walks the `Config` dataclass tree: one section per dataclass (a section of the YAML, or the mapping form
of a list item), one row per YAML key with its type, default, what it accepts (the field's `Rules`: bounds, list
lengths, paths, patterns; a `Literal`'s values) and its description. A description is the field's `doc` metadata
when it has one, else the comments on its lines in the class's source (a comment-only line just above the field
included). A class without source (one made with `dataclasses.make_dataclass`) describes its fields by metadata
only. No torch import.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

from .config import Config, rules_of, yaml_fields
from .config.registered import hints

REGENERATE = "python -m reportgen.reference > docs/config.md"

INTRO = f"""\
# Every config key

Generated from the schema by `{REGENERATE}`; `tests/test_docs.py` checks that this page equals the schema.
A full example config with every key, commented, is [config-example.yaml](config-example.yaml); the keys are
explained by subject in the other pages: [methods](methods.md), [evaluation](evaluation.md),
[transformers](transformers.md), [data sets and scale](datasets.md), [trackers](trackers.md).

Relative paths resolve against the config file's folder (paths given with `--set` or `-o`: against the current
folder). A key left out takes its default. Each key under `analyses` that is present, even empty (`summary:`),
runs that stage. A list of numbers obeys its bounds number by number.
"""


def _is_auto_doc(cls: type) -> bool:
    """dataclasses write `Name(field: type, ...)` as the docstring of a class that has none."""
    doc = cls.__dict__.get("__doc__")
    return not doc or doc.startswith(f"{cls.__name__}(")


def _class_doc(cls: type) -> str:
    """The first docstring along the class's bases that a person wrote, on one line."""
    for base in cls.__mro__:
        if base is not object and not _is_auto_doc(base):
            return " ".join(inspect.cleandoc(base.__doc__).split())
    return ""


@functools.cache
def _source_comments(cls: type) -> dict[str, str]:
    """Field name -> the comments on the field's lines in `cls`'s source (and a comment-only line just above it);
    {} when the class has no source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source).body[0]
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):  # no source, or none that parses alone
        return {}
    lines = source.splitlines()
    out = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            above = node.lineno - 1
            if above in comments and lines[above - 1].lstrip().startswith("#"):
                own.insert(0, comments[above])
            out[node.target.id] = " ".join(own)
    return out


def _description(cls: type, f: dataclasses.Field) -> str:
    """The field's `doc` (or `help`), else the comments on its line in the class that declares it (a field copied
    into a class the registries build names that class as its `owner`); the model sources or methods that take it first."""
    owners = [f.metadata["owner"]] if "owner" in f.metadata else list(cls.__mro__)
    text = f.metadata.get("doc") or f.metadata.get("help") or next(
        (c for c in (_source_comments(o).get(f.name, "") for o in owners) if c), "")
    only = f.metadata.get("only")  # the model sources or methods that take a key the registries added
    return f"{', '.join(f'`{name}`' for name in only)} only. {text}".strip() if only else text


def _hints(cls: type) -> dict[str, Any]:
    return hints(cls)  # the sections the registries give (model, analyses, output.attach) resolved as they are now


def _options(tp: Any) -> tuple:
    origin = typing.get_origin(tp)
    return typing.get_args(tp) if origin in (typing.Union, types.UnionType) else (tp,)


def _type_text(tp: Any, anchors: dict[type, str]) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return "list of " + " or ".join(_type_text(o, anchors) for a in args[:1] for o in _options(a))
    if dataclasses.is_dataclass(tp):
        return f"mapping ([`{anchors[tp]}`](#{_anchor(anchors[tp])}))" if tp in anchors else "mapping"
    names = {bool: "true / false", int: "integer", float: "number", str: "text", Path: "path", dict: "mapping"}
    if tp in names:
        return names[tp]
    if len(_options(tp)) > 1:
        return " or ".join(_type_text(o, anchors) for o in _options(tp))
    return getattr(tp, "__name__", str(tp))


def _value_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "its keys' defaults"
    return f"`{_value_text(value)}`"


def _accepts(f: dataclasses.Field, tp: Any) -> str:
    rules, parts = rules_of(f), []
    listed = any(typing.get_origin(o) in (tuple, list) for o in _options(tp))
    if rules.has_bounds:
        parts.append(("each " if listed else "") + rules.bounds_text())
    if rules.shape:
        parts.append(rules.shape)
    if rules.kind == "path":
        parts.append("a path, resolved against the config's folder")
    elif rules.kind == "patterns":
        parts.append("files, folders or globs, resolved against the config's folder")
    elif rules.kind == "path_text":
        parts.append("a path, unless " + " or ".join(f"`{k}`" for k in rules.keep))
    if rules.methods:
        parts.append(f"ids of `{rules.methods}` methods ([methods](methods.md)); case, `-` and `_` are forgiven")
    if rules.pattern_text:
        parts.append(rules.pattern_text)
    if rules.check is not None and rules.check.__doc__:
        parts.append(" ".join(rules.check.__doc__.split()))
    if rules.null_means_default:
        parts.append("present with no value (or `true`): its keys' defaults; `false`: off, as if absent")
    return "; ".join(parts)


def _anchor(path: str) -> str:
    """GitHub's anchor of a heading that is the code span `path`."""
    return "".join(ch for ch in path.lower() if ch.isalnum() or ch in "-_ ").replace(" ", "-")


def sections(root: type = Config) -> dict[type, str]:
    """Every dataclass reachable from `root` -> the YAML path of its first use (`[]`: a list item), in walk order."""
    out: dict[type, str] = {}
    _sections(root, "", out)
    return out


def _sections(cls: type, path: str, out: dict[type, str]) -> None:
    out.setdefault(cls, path)
    hints = _hints(cls)
    for key, f in yaml_fields(cls).items():
        for option in _options(hints[f.name]):
            listed = typing.get_origin(option) in (tuple, list)
            for inner in (_options(a) for a in typing.get_args(option)) if listed else [(option,)]:
                for tp in inner:
                    if dataclasses.is_dataclass(tp) and tp not in out:
                        _sections(tp, f"{path}.{key}".lstrip(".") + ("[]" if listed else ""), out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(cls: type, anchors: dict[type, str]) -> list[str]:
    hints = _hints(cls)
    rows = ["| key | type | default | accepts | description |", "|---|---|---|---|---|"]
    for key, f in yaml_fields(cls).items():
        tp = hints[f.name]
        cells = (f"`{key}`", _type_text(tp, anchors), _default_text(f), _accepts(f, tp), _description(cls, f))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def render(root: type = Config) -> str:
    """The reference page of the schema rooted at dataclass `root`, as Markdown."""
    anchors = sections(root)
    lines = [INTRO]
    for cls, path in anchors.items():
        fields = yaml_fields(cls)
        lines.append(f"## `{path}`" if path else "## The top level")
        doc = _class_doc(cls) if cls is not root else ""
        shorthand = getattr(getattr(cls, "_from_yaml", None), "__doc__", None)  # the schema's shorthand forms
        if shorthand:
            doc = f"{doc} Also written as: {' '.join(shorthand.split())}".strip()
        lines += ["", doc] if doc else []
        lines += [""] + _table(cls, anchors) + [""] if fields else ["", "No keys.", ""]
    if root is Config:
        lines += _tasks()
    return "\n".join(lines).rstrip("\n") + "\n"


def _tasks() -> list[str]:
    """The tasks `model.task` names (the task registry, plug-ins included): what each reads, what applies to it,
    and the keys that belong to another task."""
    from . import registry

    lines = ["## Tasks (`model.task`)", "",
             "What a model does decides what its output is read as and what applies to it. A key, stage or method that "
             "does not apply is refused before any work (exit code 2), naming it and what applies.", ""]
    for task in registry.TASKS:
        stages = "every stage" if task.stages is None else ", ".join(f"`{s}`" for s in sorted(task.stages))
        lines += [f"### `{task.name}`: {task.title}", "", f"{task.note[:1].upper()}{task.note[1:]}. Output read as "
                  f"{task.outputs}; stages: {stages}.", ""]
        refused = [(f"`analyses.*.methods: {m}`", why) for m, why in task.methods_refused.items()] + \
                  [(f"`{key}`", instead) for key, instead in task.settings_refused.items()]
        if refused:
            lines += ["| does not apply | instead |", "|---|---|"]
            lines += [f"| {_cell(what)} | {_cell(why)} |" for what, why in refused] + [""]
    return lines


METHODS_BEGIN = "<!-- method table: generated by `python -m reportgen.reference methods`, checked by tests/test_docs.py -->"
METHODS_END = "<!-- end of the method table -->"


def method_table() -> str:
    """The README's method table, from the method registry (reportgen's own records): per stage and group (the
    page's picker groups them alike), each method's id, name, what it computes and its option keys."""
    from .methods import BUILT_IN, grouped

    lines = [METHODS_BEGIN, "", "| stage | group | id | method | what it computes | options |", "|---|---|---|---|---|---|"]
    for family in dict.fromkeys(m.family for m in BUILT_IN):
        for group, members in grouped([m.id for m in BUILT_IN if m.family == family]):
            for m in members:
                keys = [f.name for f in dataclasses.fields(m.options)] if m.options is not None else []
                options = ", ".join(f"`{k}`" for k in keys if k != "internal_batch_size")
                lines.append(f"| `{family}` | {group} | `{m.id}` | {_cell(m.title)} | {_cell(m.note or '')} | "
                             f"{options or '–'} |")
    return "\n".join(lines + ["", METHODS_END]) + "\n"


def leaf_keys(root: type = Config, prefix: tuple = ()) -> list[tuple[str, ...]]:
    """Every YAML key path of the schema that holds a value, through nested sections (not through the mapping form
    of list items)."""
    out = []
    hints = _hints(root)
    for key, f in yaml_fields(root).items():
        sections = [o for o in _options(hints[f.name]) if dataclasses.is_dataclass(o) and yaml_fields(o)]
        out += leaf_keys(sections[0], prefix + (key,)) if sections else [prefix + (key,)]
    return out


if __name__ == "__main__":
    import sys

    print(method_table() if sys.argv[1:] == ["methods"] else render(), end="")
