"""The YAML config: parsed with `yaml.safe_load`, validated into frozen dataclasses.

Every error names the key path, its line in the file and, for a misspelled key or value,
the closest valid spelling. No torch import here: `reportgen validate` and `--help` stay fast.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError, did_you_mean

# ---------------------------------------------------------------------------- schema

CAM_METHODS = (
    "cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam",
    "eigencam", "eigengradcam", "scorecam", "ablationcam",
)
GRADIENT_METHODS = (
    "saliency", "input_x_gradient", "guided_backprop", "deconvnet",
    "guided_gradcam", "smoothgrad", "integrated_gradients",
)
STAGE_ORDER = ("summary", "kernels", "feature_maps", "cam", "gradients", "training")


def _alias_key(name: str) -> str:
    return "".join(ch for ch in name.lower().replace("++", "pp").replace("+", "p") if ch.isalnum())


METHOD_ALIASES = {_alias_key(m): m for m in CAM_METHODS + GRADIENT_METHODS} | {
    "gradcamplusplus": "gradcampp",
    "layerwisecam": "layercam",
    "ig": "integrated_gradients",
    "inputxgradient": "input_x_gradient",
    "guidedbackpropagation": "guided_backprop",
    "deconvolution": "deconvnet",
    "vanillagradient": "saliency",
    "noisetunnel": "smoothgrad",
}


@dataclass(frozen=True)
class TargetSpec:
    """Which classes to explain: the top `k` predictions, or an explicit list (indices or labels)."""

    k: int = 1
    classes: tuple[int | str, ...] = ()

    @property
    def explicit(self) -> bool:
        return bool(self.classes)


@dataclass(frozen=True)
class LayerPattern:
    """Select layers by type and/or depth (`{type: Conv2d, depth: 2}`) instead of by name."""

    type: str | None = None
    depth: int | None = None


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """resize: shorter side (int) or [h, w]; center_crop: int or [h, w]. Both null: fit to input_size."""

    resize: tuple[int, ...] | None = None
    center_crop: tuple[int, ...] | None = None
    normalize: Normalize | None = field(default_factory=Normalize)
    from_weights: bool = False
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"  # of `resize` (from_weights: theirs)


@dataclass(frozen=True)
class ModelConfig:
    source: Literal["torchvision", "module", "torchscript"] = "torchvision"
    name: str | None = None
    weights: str | None = None
    checkpoint: Path | None = None
    trust_checkpoint: bool = False
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)
    path: Path | None = None
    input_size: tuple[int, ...] = (3, 224, 224)
    labels: str | None = "imagenet"  # "imagenet", an absolute path to a labels file, or None
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class InputsConfig:
    images: tuple[str, ...] = ()  # absolute file, folder or glob patterns
    preprocess: Preprocess = field(default_factory=Preprocess)
    top_k: int = 5
    batch_size: int = 8


@dataclass(frozen=True)
class SummaryConfig:
    depth: int = 3


@dataclass(frozen=True)
class OptimizeConfig:
    """Activation maximisation (filter visualisation) by gradient ascent on the input."""

    layers: tuple[str | LayerPattern, ...] = ()  # default: the kernels stage's layers
    filters: tuple[int, ...] = tuple(range(16))
    steps: int = 64
    lr: float = 0.1
    jitter: int = 4
    blur: float = 0.5  # gaussian sigma in pixels applied every `blur_every` steps; 0 = off
    blur_every: int = 8
    tv: float = 0.0  # total-variation weight
    weight_decay: float = 1e-4
    size: int | None = None  # input side; default: model input size
    seed: int | None = None  # default: the config's seed


@dataclass(frozen=True)
class KernelsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the first conv layer
    max_filters: int = 64
    max_channels: int = 8
    optimize: OptimizeConfig | None = None


@dataclass(frozen=True)
class FeatureMapsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the top-level blocks
    max_channels: int = 32
    order: Literal["index", "mean", "max"] = "index"
    scale: Literal["channel", "shared"] = "channel"


@dataclass(frozen=True)
class CamConfig:
    methods: tuple[str, ...] = ("gradcam",)
    target_layers: tuple[str, ...] = ()  # default: last 4-D layer before global pooling
    targets: TargetSpec = field(default_factory=TargetSpec)
    batch_size: int = 32  # masked forwards of scorecam / ablationcam
    alpha: float = 0.5  # heat-map weight in overlays
    colormap: str = "jet"
    detail_images: int = 8  # images shown with every class, overlay and heat map; the compact grid shows all


@dataclass(frozen=True)
class GradientsConfig:
    methods: tuple[str, ...] = ("saliency",)
    targets: TargetSpec = field(default_factory=TargetSpec)
    steps: int = 50  # integrated gradients
    baseline: Literal["zero", "blur", "uniform"] | Path = "zero"  # or a .npy file (C, H, W) in model-input space
    internal_batch_size: int | None = None  # inputs per forward (ig, smoothgrad); default: about 64 at 224x224
    samples: int = 25  # smoothgrad
    stdev: float = 0.15  # smoothgrad noise, fraction of the input range
    cam_layer: str | None = None  # guided_gradcam; default: the cam stage's layer or the auto-picked one
    sign: Literal["absolute_value", "positive", "all"] = "absolute_value"
    outlier_perc: float = 2.0
    alpha: float = 0.5
    colormap: str | None = None  # default: by sign


@dataclass(frozen=True)
class TrainingConfig:
    logs: tuple[str, ...] = ()  # absolute file, folder or glob patterns
    tags: tuple[str, ...] = ()  # default: every tag
    smoothing: float = 0.6


@dataclass(frozen=True)
class AnalysesConfig:
    summary: SummaryConfig | None = None
    kernels: KernelsConfig | None = None
    feature_maps: FeatureMapsConfig | None = None
    cam: CamConfig | None = None
    gradients: GradientsConfig | None = None
    training: TrainingConfig | None = None

    def enabled(self) -> list[str]:
        """The stages that run, in report order."""
        return [name for name in STAGE_ORDER if getattr(self, name) is not None]


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = Path("reports/report")
    self_contained: bool = True
    save_arrays: bool = False
    tensorboard: Path | None = None


@dataclass(frozen=True)
class Config:
    title: str = "reportgen report"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Path | None = None  # the YAML file (not a YAML key)
    lines: _Lines | None = field(default=None, compare=False, repr=False)  # where each key is (not a YAML key)

    def to_dict(self, relative: bool = False) -> dict:
        """The resolved config as plain JSON-able data. With `relative`, file paths and path patterns are
        written relative to the config's folder (what a published report shows: no home folders)."""
        base = self.source.parent if relative and self.source is not None else None
        return _plain(self, base)

    def shown_path(self, path: str | Path) -> str:
        """A path as a published report shows it: relative to the config's folder (no home folders)."""
        return _relative(str(path), self.source.parent if self.source is not None else None)

    def locate(self, message: str) -> str:
        """A message that starts with a key path ("`model.name`: ...") gains where that key is written:
        "`model.name` (config.yaml, line 7): ..." or "(from --set)"."""
        match = re.match(r"`([a-z_]+(?:\.[a-z_0-9]+)*)`", message)
        if self.lines is None or match is None or match.group(1).split(".")[0] not in _TOP_KEYS:
            return message
        path = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
        return message[:match.end()] + self.lines.where(path) + message[match.end():]


_TOP_KEYS = ("title", "seed", "model", "inputs", "analyses", "output")


def _plain(value: Any, base: Path | None = None, patterns: bool = False) -> Any:
    """Dataclasses, tuples and paths as JSON-able data; paths relative to `base` when one is given."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name), base, (type(value).__name__, f.name) in _PATH_TEXT_FIELDS)
                for f in dataclasses.fields(value)
                if not (isinstance(value, Config) and f.name in ("source", "lines"))}
    if isinstance(value, (tuple, list)):
        return [_plain(v, base, patterns) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, base) for k, v in value.items()}
    if isinstance(value, Path) or (patterns and isinstance(value, str)):
        return _relative(str(value), base)
    return value


def _relative(path: str, base: Path | None) -> str:
    if base is None or not os.path.isabs(path):
        return path
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive
        return path


# ---------------------------------------------------------------------------- loading

class _Lines:
    """Key path -> line number (1-based) in the YAML file."""

    def __init__(self, node: yaml.Node | None, origin: str):
        self.origin = origin
        self.lines: dict[tuple, int] = {}
        self.overridden: set[tuple] = set()
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                if sub in self.lines:  # YAML would keep the last one silently
                    raise ConfigError(f"`{'.'.join(map(str, sub))}` is given twice ({self.origin}, lines "
                                      f"{self.lines[sub]} and {key.start_mark.line + 1}): keep one.")
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def where(self, path: tuple) -> str:
        if any(path[: len(o)] == o for o in self.overridden):
            return " (from --set)"
        p = path
        while p and p not in self.lines:
            p = p[:-1]
        line = self.lines.get(p)
        return f" ({self.origin}, line {line})" if line else f" ({self.origin})"


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read, override (`a.b=value`) and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file `{path}` does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file `{path}`: {exc}") from None
    return parse_config(text, base_dir=path.resolve().parent, origin=path.name, overrides=overrides,
                        source=path.resolve())


def parse_config(
    text: str,
    *,
    base_dir: Path,
    origin: str = "config",
    overrides: typing.Sequence[str] = (),
    source: Path | None = None,
) -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or str(exc)
        if "python/" in str(exc):
            problem += " (python tags are refused: reportgen reads YAML with yaml.safe_load)"
        raise ConfigError(f"{origin} is not valid YAML{where}: {problem}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    lines = _Lines(node, origin)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of keys (title, model, inputs, analyses, output), "
                          f"not a {type(data).__name__}.")
    for item in overrides:
        _apply_override(data, item, lines)
    if "model" not in data:
        raise ConfigError(f"{origin} has no `model:` section: every config names the model to explain "
                          "(`reportgen init` writes a commented starter config).")
    config = _convert(data, Config, (), _Ctx(lines, base_dir))
    return dataclasses.replace(config, source=source, lines=lines)


def _apply_override(data: dict, item: str, lines: _Lines) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (like model.name=resnet50), got `{item}`.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = tuple(key.split("."))
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value
    lines.overridden.add(parts)


@dataclass
class _Ctx:
    lines: _Lines
    base_dir: Path

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"`{_dotted(path)}`{self.lines.where(path)}: {message}")


# Fields whose YAML form is not the dataclass form get a converter here: (owner, field) -> fn.
_PATH_FIELDS = {("ModelConfig", "checkpoint"), ("ModelConfig", "path"), ("OutputConfig", "dir"),
                ("OutputConfig", "tensorboard")}
_PATTERN_FIELDS = {("InputsConfig", "images"), ("TrainingConfig", "logs")}
_PATH_TEXT_FIELDS = _PATTERN_FIELDS | {("ModelConfig", "labels")}  # strings that hold paths
_POSITIVE = {"depth", "max_filters", "max_channels", "batch_size", "steps", "samples", "top_k", "k",
             "internal_batch_size"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: tuple, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, ctx)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            raise ctx.error(path, f"`{value}` is not one of {', '.join(map(str, choices))}.{hint}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ctx.error(path, f"a value is required ({_type_name(tp)}).")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path, ctx)
            except ConfigError as exc:
                # a mapping is meant for the dataclass option: its error is the useful one
                errors.append((dataclasses.is_dataclass(option) and isinstance(value, dict), exc))
        errors.sort(key=lambda e: not e[0])
        if len(errors) == 1 or errors[0][0]:
            raise errors[0][1]
        raise ctx.error(path, f"expected {_type_name(tp)}, got {value!r}.")
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_convert(v, item_tp, path + (i,), ctx) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(path, f"expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(path, f"expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(path, f"expected a number, got {value!r}.")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ctx.error(path, f"expected a string, got {value!r}.")
        return str(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a mapping, got {value!r}.")
        return dict(value)
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ctx.error(path, f"expected a path, got {value!r}.")
        return _resolve(value, ctx)
    raise TypeError(f"no converter for {tp}")  # a schema bug, not a user error


def _resolve(value: str | Path, ctx: _Ctx) -> Path:
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else ctx.base_dir / p))


def _convert_dataclass(value: Any, tp: type, path: tuple, ctx: _Ctx) -> Any:
    special = _SPECIAL.get(tp)
    if special is not None:
        return special(value, path, ctx)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping of keys, got {value!r}.")
    hints = typing.get_type_hints(tp)
    names = [f.name for f in dataclasses.fields(tp) if not (tp is Config and f.name in ("source", "lines"))]
    kwargs = {}
    for key, raw in value.items():
        sub = path + (str(key),)
        if key not in names:
            raise ConfigError(f"unknown key `{_dotted(sub)}`{ctx.lines.where(sub)}."
                              f"{did_you_mean(str(key), names) or ' Valid keys here: ' + ', '.join(names) + '.'}")
        owner_field = (tp.__name__, key)
        if owner_field in _PATTERN_FIELDS:
            items = raw if isinstance(raw, list) else [raw]
            if not all(isinstance(i, str) for i in items):
                raise ctx.error(sub, "expected a path, a folder or a glob, or a list of them.")
            kwargs[key] = tuple(str(_resolve(i, ctx)) for i in items)
            continue
        if tp is AnalysesConfig and raw is None:
            raw = {}
        converted = _convert(raw, hints[key], sub, ctx)
        if owner_field in _PATH_FIELDS and isinstance(converted, str):
            converted = _resolve(converted, ctx)
        _check_value(key, converted, sub, ctx)
        kwargs[key] = converted
    obj = tp(**kwargs)
    _check_object(obj, path, ctx)
    return obj


def _check_value(key: str, value: Any, path: tuple, ctx: _Ctx) -> None:
    if key in _POSITIVE and isinstance(value, int) and value < 1:
        raise ctx.error(path, f"must be at least 1, got {value}.")


def _check_object(obj: Any, path: tuple, ctx: _Ctx) -> None:
    if isinstance(obj, ModelConfig):
        if obj.source == "torchvision" and not obj.name:
            raise ctx.error(path + ("name",), "source `torchvision` needs a model name (like resnet18).")
        if obj.source == "module" and not obj.factory:
            raise ctx.error(path + ("factory",), 'source `module` needs `factory: "package.module:function"`.')
        if obj.source == "module" and ":" not in obj.factory:
            raise ctx.error(path + ("factory",), f'expected "package.module:function", got `{obj.factory}`.')
        if obj.source == "torchscript" and obj.path is None:
            raise ctx.error(path + ("path",), "source `torchscript` needs `path:` to the saved model.")
        if len(obj.input_size) != 3 or min(obj.input_size) < 1:
            raise ctx.error(path + ("input_size",), f"expected [channels, height, width], got {list(obj.input_size)}.")
        if obj.labels not in (None, "imagenet"):
            object.__setattr__(obj, "labels", str(_resolve(obj.labels, ctx)))
    if isinstance(obj, (CamConfig, GradientsConfig)):
        allowed = CAM_METHODS if isinstance(obj, CamConfig) else GRADIENT_METHODS
        methods = []
        for i, m in enumerate(obj.methods):
            canonical = METHOD_ALIASES.get(_alias_key(m))
            if canonical not in allowed:
                raise ctx.error(path + ("methods", i), f"unknown method `{m}`.{did_you_mean(m, allowed)}"
                                f" Methods: {', '.join(allowed)}.")
            if canonical not in methods:
                methods.append(canonical)
        object.__setattr__(obj, "methods", tuple(methods))
    if isinstance(obj, (CamConfig, GradientsConfig)) and not obj.methods:
        raise ctx.error(path + ("methods",), "needs at least one method.")
    if isinstance(obj, (CamConfig, GradientsConfig)) and not 0.0 <= obj.alpha <= 1.0:
        raise ctx.error(path + ("alpha",), f"must be between 0 and 1, got {obj.alpha}.")
    if isinstance(obj, GradientsConfig):
        if obj.stdev < 0:
            raise ctx.error(path + ("stdev",), f"must be at least 0, got {obj.stdev}.")
        if not 0 <= obj.outlier_perc < 100:
            raise ctx.error(path + ("outlier_perc",), f"must be in [0, 100), got {obj.outlier_perc}.")
    if isinstance(obj, TrainingConfig) and not 0.0 <= obj.smoothing < 1.0:
        raise ctx.error(path + ("smoothing",), f"must be in [0, 1), got {obj.smoothing}.")
    if isinstance(obj, OptimizeConfig) and obj.lr <= 0:
        raise ctx.error(path + ("lr",), f"must be positive, got {obj.lr}.")
    if isinstance(obj, (CamConfig, GradientsConfig)) and obj.colormap is not None:
        from matplotlib import colormaps  # cheap: no pyplot

        if obj.colormap not in colormaps:
            raise ctx.error(path + ("colormap",), f"unknown colour map `{obj.colormap}`."
                            f"{did_you_mean(obj.colormap, list(colormaps))}")


# -- fields with a YAML shorthand


def _targets(value: Any, path: tuple, ctx: _Ctx) -> TargetSpec:
    if value is None or value == "top1":
        return TargetSpec(k=1)
    if isinstance(value, str) and value.startswith("top") and value[3:].isdigit():
        return TargetSpec(k=max(1, int(value[3:])))
    if isinstance(value, dict) and set(value) == {"topk"}:
        k = value["topk"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ctx.error(path + ("topk",), f"expected a positive integer, got {k!r}.")
        return TargetSpec(k=k)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        for i, v in enumerate(value):
            if isinstance(v, int) and v < 0:
                raise ctx.error(path + (i,), f"class index must be at least 0, got {v}.")
        return TargetSpec(k=0, classes=tuple(value))
    raise ctx.error(path, f"expected top1, {{topk: N}}, or a list of class indices or labels; got {value!r}.")


def _layer_pattern(value: Any, path: tuple, ctx: _Ctx) -> LayerPattern:
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a layer name or {{type: Conv2d, depth: 2}}, got {value!r}.")
    unknown = set(value) - {"type", "depth"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown key `{_dotted(path + (key,))}`{ctx.lines.where(path + (key,))}."
                          f"{did_you_mean(key, ['type', 'depth'])}")
    t, d = value.get("type"), value.get("depth")
    if t is not None and not isinstance(t, str):
        raise ctx.error(path + ("type",), f"expected a module class name like Conv2d, got {t!r}.")
    if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
        raise ctx.error(path + ("depth",), f"expected a positive integer, got {d!r}.")
    if t is None and d is None:
        raise ctx.error(path, "a layer pattern needs `type:` and/or `depth:`.")
    return LayerPattern(type=t, depth=d)


def _normalize(value: Any, path: tuple, ctx: _Ctx) -> Normalize:
    if value == "imagenet":
        return Normalize()
    if isinstance(value, dict):
        unknown = set(value) - {"mean", "std"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"unknown key `{_dotted(path + (key,))}`{ctx.lines.where(path + (key,))}."
                              f"{did_you_mean(key, ['mean', 'std'])}")
        mean = _convert(value.get("mean", [0.0]), tuple[float, ...], path + ("mean",), ctx)
        std = _convert(value.get("std", [1.0]), tuple[float, ...], path + ("std",), ctx)
        if any(s <= 0 for s in std):
            raise ctx.error(path + ("std",), "every std must be positive.")
        return Normalize(mean=mean, std=std)
    hint = did_you_mean(value, ["imagenet", "none"]) if isinstance(value, str) else ""
    raise ctx.error(path, f"expected imagenet, none or {{mean: [...], std: [...]}}, got {value!r}.{hint}")


def _preprocess(value: Any, path: tuple, ctx: _Ctx) -> Preprocess:
    if value == "from_weights":
        return Preprocess(normalize=None, from_weights=True)
    if value is None:
        return Preprocess()
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected from_weights or a mapping (resize, center_crop, normalize), got {value!r}.")
    names = ["resize", "center_crop", "normalize"]
    kwargs: dict[str, Any] = {}
    for key, raw in value.items():
        sub = path + (str(key),)
        if key not in names:
            raise ConfigError(f"unknown key `{_dotted(sub)}`{ctx.lines.where(sub)}.{did_you_mean(str(key), names)}")
        if key == "normalize":
            kwargs[key] = None if raw in (None, "none", False) else _normalize(raw, sub, ctx)
        elif raw is not None:
            size = _convert(raw, tuple[int, ...], sub, ctx)
            if len(size) not in (1, 2) or min(size) < 1:
                raise ctx.error(sub, f"expected a positive size or [height, width], got {raw!r}.")
            kwargs[key] = size
    return Preprocess(**kwargs)


_SPECIAL = {TargetSpec: _targets, LayerPattern: _layer_pattern, Normalize: _normalize, Preprocess: _preprocess}


# ---------------------------------------------------------------------------- starter config

STARTER = """\
# reportgen config: `reportgen build this.yaml` writes a self-contained HTML report.
# Relative paths resolve against this file's folder. Remove an analysis to skip it.
title: My model, explained
seed: 0

model:
  source: torchvision            # torchvision | module | torchscript
  name: resnet18                 # any classification model in torchvision.models
  weights: null                  # e.g. IMAGENET1K_V1: only from the local torch cache, never downloaded
  checkpoint: null               # a state_dict file, loaded with torch.load(weights_only=True)
  # source: module               # your own network:
  # factory: "mypackage.models:build"
  # kwargs: {num_classes: 10}
  input_size: [3, 224, 224]
  labels: imagenet               # imagenet | path to a text file, one label a line | null
  device: auto                   # auto | cpu | cuda

inputs:
  images: [images/]              # files, folders, globs
  preprocess: {resize: 256, center_crop: 224, normalize: imagenet}
  top_k: 5

analyses:                        # each key present = that stage runs
  summary: {depth: 3}
  kernels: {}                    # default: the first conv layer
  feature_maps: {max_channels: 32}
  cam: {methods: [gradcam, gradcampp, scorecam], targets: top1}
  gradients: {methods: [saliency, integrated_gradients]}
  # training: {logs: [runs/exp1]}  # TensorBoard event files or CSV / JSONL metric logs

output:
  dir: reports/my-model
  self_contained: true           # one HTML file, images embedded
  save_arrays: false             # also write arrays.npz with the numbers behind every figure
"""
