"""The YAML config: parsed with `yaml.safe_load`, validated into frozen dataclasses.

The schema validates itself: each dataclass field carries its rules (`setting(...)`: ranges, list lengths,
path handling, method families, patterns), and shorthand YAML forms (`targets: top1`, `normalize: imagenet`,
`preprocess: from_weights`) live beside their class as `_from_yaml`; cross-field rules are a class's small
`_validate` hook. Unknown keys, wrong types, out-of-range values and "Did you mean" hints all derive from it.
Every error names the key path, its line in the file (or "from --set") and, for a misspelled key or value,
the closest valid spelling. No torch import here: `reportgen validate` and `--help` stay fast.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from . import methods as method_registry
from .integrations import TRACKERS
from .errors import ConfigError, did_you_mean

# ---------------------------------------------------------------------------- method ids


def canonical_methods(names: typing.Sequence[str], family: str, path: tuple, ctx: _Ctx) -> tuple[str, ...]:
    """The canonical ids of method `names` of `family` ("cam" or "gradients"), in order, without repeats.
    Case, spaces, `-`, `_` and `++` are forgiven, aliases accepted; an unknown name or an empty list raises
    ConfigError at `path` (the methods key). The one place method names are checked: against the records of
    `reportgen.methods` (which import no torch)."""
    allowed = method_registry.ids(family)
    methods: list[str] = []
    for i, name in enumerate(names):
        canonical = method_registry.canonical(str(name), family)
        if canonical is None:
            raise ctx.error(path + (i,), f"unknown method `{_clean(name)}`.{did_you_mean(name, allowed)}"
                            f" Methods: {', '.join(allowed)}.")
        if canonical not in methods:
            methods.append(canonical)
    if not methods:
        raise ctx.error(path, "needs at least one method.")
    return tuple(methods)


# ---------------------------------------------------------------------------- field rules

INT_LIMIT = 2**63 - 1  # no integer setting may exceed a 64-bit integer


@dataclass(frozen=True)
class Rules:
    """What a field accepts beyond its type. Numbers (or each number of a list) must satisfy the bounds;
    `kind`: "path" (resolved against the config's folder; --set values: the current folder), "patterns"
    (a path, folder or glob, or a list of them, resolved likewise), "path_text" (a string that is a path
    unless it is one of `keep`); `lengths`: allowed list lengths, described as `shape`; `methods`: a method
    family, names canonicalised by `canonical_methods`; `pattern`: a regular expression a string must match
    fully, described as `pattern_text`; `check`: value -> error message or None; `null_means_default`: a
    null value means the type's defaults (`summary:` runs the stage); `yaml`: the YAML key when it differs
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
                return f"between {_num(lo)} and {_num(hi)}"
            opening, closing = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"in {opening}{_num(lo)}, {_num(hi)}{closing}"
        if self.gt == 0:
            return "positive"
        if self.gt is not None:
            return f"more than {_num(self.gt)}"
        if self.ge is not None:
            return f"at least {_num(self.ge)}"
        if self.lt is not None:
            return f"less than {_num(self.lt)}"
        return f"at most {_num(self.le)}"

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


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else str(v)


def _clean(text: Any) -> str:
    """User text inside a one-line message: control characters escaped."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def _colormap(name: str) -> str | None:
    from matplotlib import colormaps  # cheap: no pyplot

    if name in colormaps:
        return None
    return f"unknown colour map `{_clean(name)}`.{did_you_mean(name, list(colormaps))}"


_SEED = dict(ge=0, le=INT_LIMIT)
_COUNT = dict(ge=1)  # a positive integer
_SIZE = dict(ge=1, lengths=(1, 2), shape="a positive size or [height, width]")

# ---------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class TargetSpec:
    """Which classes to explain: the top `k` predictions, or an explicit list (indices or labels)."""

    k: int = setting(1, ge=0, yaml="topk")  # 0 with explicit classes
    classes: tuple[int | str, ...] = setting((), ge=0)

    @property
    def explicit(self) -> bool:
        return bool(self.classes)

    _EXPECTED = "expected top1, {topk: N}, or a list of class indices or labels; got "

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: _Ctx) -> Any:
        """top1 | topN | {topk: N} | {classes: [...]} | an index or a label | a list of them."""
        if value is None:
            return cls(k=1)
        if isinstance(value, str):
            match = re.fullmatch(r"(?i)top[-_ ]?(\d+)", value.strip())
            if match:
                return cls(k=max(1, int(match.group(1))))
            if not value.strip():
                raise ctx.error(path, f"{cls._EXPECTED}{value!r}.")
            return cls(k=0, classes=(value,))  # one label
        if isinstance(value, dict):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (isinstance(value, list) and value
                and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value)):
            return Shorthand("classes", value)
        raise ctx.error(path, f"{cls._EXPECTED}{value!r}.")

    def _validate(self, err: Callable[[str, str], None]) -> TargetSpec:
        if self.classes:
            if self.k not in (0, 1):
                err("topk", "give `topk` or `classes`, not both.")
            return TargetSpec(k=0, classes=self.classes)
        if self.k < 1:
            err("topk", f"must be at least 1, got {self.k}.")
        return self


@dataclass(frozen=True)
class LayerPattern:
    """Select layers by type and/or depth (`{type: Conv2d, depth: 2}`) instead of by name."""

    type: str | None = setting(None, pattern=r"[A-Za-z_]\w*", pattern_text="a module class name like Conv2d")
    depth: int | None = setting(None, **_COUNT)

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a layer name or {{type: Conv2d, depth: 2}}, got {value!r}.")
        return value

    def _validate(self, err: Callable[[str, str], None]) -> None:
        if self.type is None and self.depth is None:
            err("", "a layer pattern needs `type:` and/or `depth:`.")


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = setting((0.229, 0.224, 0.225), gt=0)

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: _Ctx) -> Any:
        """imagenet | none | {mean: [...], std: [...]} (a missing mean is 0, a missing std 1)."""
        if value == "imagenet":
            return cls()
        if value is None or value is False or value == "none":
            return None
        if isinstance(value, dict):
            return {"mean": [0.0], "std": [1.0]} | value
        hint = did_you_mean(value, ["imagenet", "none"]) if isinstance(value, str) else ""
        raise ctx.error(path, f"expected imagenet, none or {{mean: [...], std: [...]}}, got {value!r}.{hint}")


@dataclass(frozen=True)
class Preprocess:
    """resize: shorter side (int) or [h, w]; center_crop: int or [h, w]. Both null: fit to input_size."""

    resize: tuple[int, ...] | None = setting(None, **_SIZE)
    center_crop: tuple[int, ...] | None = setting(None, **_SIZE)
    normalize: Normalize | None = field(default_factory=Normalize)
    from_weights: bool = setting(False, yaml="")  # set by the shorthand `preprocess: from_weights`
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"  # of `resize` (from_weights: theirs)

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: _Ctx) -> Any:
        if value == "from_weights":
            return cls(normalize=None, from_weights=True)
        if value is None:
            return cls()
        if not isinstance(value, dict):
            keys = ", ".join(yaml_fields(cls))
            raise ctx.error(path, f"expected from_weights or a mapping ({keys}), got {value!r}.")
        return value

    def _validate(self, err: Callable[[str, str], None]) -> Preprocess:
        if self.from_weights and self.normalize is not None:  # the weights' own normalisation is used
            return dataclasses.replace(self, normalize=None)
        return self


@dataclass(frozen=True)
class ModelConfig:
    # python: the nn.Module given to reportgen.build(config, model=...)
    source: Literal["torchvision", "module", "torchscript", "timm", "huggingface", "python"] = "torchvision"
    name: str | None = None
    weights: str | None = None
    checkpoint: Path | None = setting(None, kind="path")
    trust_checkpoint: bool = False
    factory: str | None = setting(None, pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*",
                                  pattern_text='"package.module:function"')
    kwargs: dict = field(default_factory=dict)
    path: Path | None = setting(None, kind="path")
    input_size: tuple[int, ...] = setting((3, 224, 224), ge=1, le=16384, lengths=(3,),
                                          shape="[channels, height, width]")
    labels: str | None = setting("imagenet", kind="path_text", keep=("imagenet",))  # "imagenet", a path, None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output: int | str | None = None  # which element of a tuple / dict output holds the logits; None: the output

    def _validate(self, err: Callable[[str, str], None]) -> None:
        if self.source == "torchvision" and not self.name:
            err("name", "source `torchvision` needs a model name (like resnet18).")
        if self.source == "module" and not self.factory:
            err("factory", 'source `module` needs `factory: "package.module:function"`.')
        if self.source == "torchscript" and self.path is None:
            err("path", "source `torchscript` needs `path:` to the saved model.")
        if self.source == "timm" and not self.name:
            err("name", "source `timm` needs a model name (like vit_tiny_patch16_224).")
        if self.source == "huggingface" and self.path is None:
            err("path", "source `huggingface` needs `path:` to a local folder with config.json and the weights.")
        if self.weights is not None and self.source != "torchvision":
            err("weights", f"`weights` names torchvision weights; a `{self.source}` model takes its weights from "
                           "`checkpoint:` (a local .safetensors or state_dict file).")
        for key in self.kwargs:
            if not isinstance(key, str):
                err("kwargs", f"keyword names must be strings, got {key!r}.")


@dataclass(frozen=True)
class SampleConfig:
    """A reproducible subset of labelled inputs: `per_class` images of each class (all of a smaller class)."""

    per_class: int | None = setting(None, **_COUNT)
    seed: int | None = setting(None, **_SEED)  # default: the config's seed

    def _validate(self, err: Callable[[str, str], None]) -> None:
        if self.per_class is None:
            err("per_class", "`inputs.sample` needs `per_class: N` (images per class).")


@dataclass(frozen=True)
class InputsConfig:
    images: tuple[str, ...] = setting((), kind="patterns")  # absolute file, folder or glob patterns
    preprocess: Preprocess = field(default_factory=Preprocess)
    top_k: int = setting(5, **_COUNT)
    batch_size: int = setting(8, **_COUNT)
    alpha: Literal["drop", "white", "black"] = "drop"  # transparent pixels: drop alpha (torchvision's loader)
    max_value: int | None = setting(None, ge=1, le=2**32 - 1)  # full scale of 16-bit images; None: 65535
    limit: int | None = setting(None, **_COUNT)  # the first N images (after sampling), in entry order
    sample: SampleConfig | None = None  # {per_class: N, seed: S}: N images of each class
    strict: bool = False  # false: an image that cannot be read is skipped (the report says so); true: an error


@dataclass(frozen=True)
class SummaryConfig:
    depth: int = setting(3, **_COUNT)


@dataclass(frozen=True)
class DatasetConfig:
    """The data set overview: accuracy, per-class scores, confusion and calibration (or, without ground truth,
    what the model predicts)."""

    bins: int = setting(15, ge=2)  # equal-width confidence bins over [0, 1] (reliability diagram, ECE)
    top_confused: int = setting(20, **_COUNT)  # most-confused pairs listed when the matrix is too big to draw
    max_matrix_classes: int = setting(30, ge=2)  # the confusion matrix is drawn up to this many classes


@dataclass(frozen=True)
class OptimizeConfig:
    """Activation maximisation (filter visualisation) by gradient ascent on the input."""

    layers: tuple[str | LayerPattern, ...] = ()  # default: the kernels stage's layers
    filters: tuple[int, ...] = setting(tuple(range(16)), ge=0)
    steps: int = setting(64, **_COUNT)
    lr: float = setting(0.1, gt=0)
    jitter: int = setting(4, ge=0)
    blur: float = setting(0.5, ge=0)  # gaussian sigma in pixels applied every `blur_every` steps; 0 = off
    blur_every: int = setting(8, **_COUNT)
    tv: float = setting(0.0, ge=0)  # total-variation weight
    weight_decay: float = setting(1e-4, ge=0)
    size: int | None = setting(None, ge=8, le=16384)  # input side; default: model input size
    seed: int | None = setting(None, **_SEED)  # default: the config's seed


@dataclass(frozen=True)
class KernelsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the first conv layer
    max_filters: int = setting(64, **_COUNT)
    max_channels: int = setting(8, **_COUNT)
    optimize: OptimizeConfig | None = None


@dataclass(frozen=True)
class FeatureMapsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the top-level blocks
    max_channels: int = setting(32, **_COUNT)
    order: Literal["index", "mean", "max"] = "index"
    scale: Literal["channel", "shared"] = "channel"


@dataclass(frozen=True)
class CamConfig:
    methods: tuple[str, ...] = setting(("gradcam",), methods="cam")
    target_layers: tuple[str, ...] = ()  # default: last 4-D layer before global pooling
    targets: TargetSpec = field(default_factory=TargetSpec)
    batch_size: int = setting(32, **_COUNT)  # masked forwards of scorecam / ablationcam
    max_channels: int | None = setting(None, **_COUNT)  # scorecam / ablationcam: mask only the most active channels
    alpha: float = setting(0.5, ge=0, le=1)  # heat-map weight in overlays
    colormap: str = setting("jet", check=_colormap)
    detail_images: int = setting(8, ge=0)  # images shown with every class, overlay and heat map


@dataclass(frozen=True)
class GradientsConfig:
    methods: tuple[str, ...] = setting(("saliency",), methods="gradients")
    targets: TargetSpec = field(default_factory=TargetSpec)
    steps: int = setting(50, **_COUNT)  # integrated gradients
    baseline: Literal["zero", "blur", "uniform"] | Path = setting("zero", kind="path")  # or a .npy (C, H, W)
    internal_batch_size: int | None = setting(None, **_COUNT)  # inputs per forward (ig, smoothgrad)
    samples: int = setting(25, **_COUNT)  # smoothgrad
    stdev: float = setting(0.15, ge=0)  # smoothgrad noise, fraction of the input range
    cam_layer: str | None = None  # guided_gradcam; default: the cam stage's layer or the auto-picked one
    sign: Literal["absolute_value", "positive", "all"] = "absolute_value"
    outlier_perc: float = setting(2.0, ge=0, lt=100)
    alpha: float = setting(0.5, ge=0, le=1)
    colormap: str | None = setting(None, check=_colormap)  # default: by sign


EVALUATION_METRICS = ("deletion", "insertion", "road", "confidence_change", "infidelity", "sensitivity", "sanity",
                      "localisation")  # what `analyses.evaluation.metrics` may name (reportgen.stages.evaluation)


@dataclass(frozen=True)
class SubstratesConfig:
    """What deletion replaces pixels with, and what insertion starts from (RISE: zeros, a blurred copy)."""

    deletion: Literal["zero", "blur", "mean"] = "zero"
    insertion: Literal["zero", "blur", "mean"] = "blur"


@dataclass(frozen=True)
class SanityConfig:
    """Cascading parameter randomisation: `blocks` (top-level blocks, head first) or `modules` (every module with
    `reset_parameters`, as Quantus's MPRT), seeded; on the first few detail images."""

    blocks: Literal["blocks", "modules"] = "blocks"
    seed: int | None = setting(None, **_SEED)  # default: the config's seed
    images: int = setting(4, **_COUNT)  # at most this many detail images (those of the first detail image's batch)


@dataclass(frozen=True)
class EvaluationConfig:
    """Scores of every map the cam and gradients stages computed: faithfulness, sanity and localisation."""

    metrics: tuple[str, ...] | None = None  # null: all (localisation where boxes or masks exist); case, `-` forgiven
    images: int = setting(64, **_COUNT)  # a seeded subset of all images scored (the detail images always in)
    batch_size: int = setting(64, **_COUNT)  # perturbed inputs per forward
    step: int | None = setting(None, **_COUNT)  # deletion/insertion pixels per step; null: 224 at 224², by area
    substrates: SubstratesConfig = field(default_factory=SubstratesConfig)
    percentiles: tuple[float, ...] = setting((20.0, 40.0, 60.0, 80.0), gt=0, lt=100)  # ROAD
    infidelity_sd: float = setting(0.1, gt=0)  # infidelity's Gaussian noise, normalised input units
    tolerance: float = setting(0.0, ge=0)  # pointing game: pixels around the box that still count (15: the paper's)
    sanity: SanityConfig = field(default_factory=SanityConfig)

    def _validate(self, err: Callable[[str, str], None]) -> EvaluationConfig:
        if not self.percentiles:
            err("percentiles", "needs at least one percentile (ROAD's default: [20, 40, 60, 80]).")
        if self.metrics is None:
            return self
        if not self.metrics:
            err("metrics", f"needs at least one metric (or null for all): {', '.join(EVALUATION_METRICS)}.")
        names = []
        for name in self.metrics:
            key = re.sub(r"[\s-]+", "_", name.strip().lower())
            if key not in EVALUATION_METRICS:
                err("metrics", f"unknown metric `{_clean(name)}`.{did_you_mean(key, EVALUATION_METRICS)} Metrics: "
                               f"{', '.join(EVALUATION_METRICS)}.")
            names.append(key)
        return dataclasses.replace(self, metrics=tuple(dict.fromkeys(names)))


@dataclass(frozen=True)
class AttentionConfig:
    """A vision transformer's attention: per layer and head the class token's attention, attention rollout and
    gradient-weighted rollout."""

    head_fusion: Literal["mean", "max", "min"] = "mean"  # how rollout fuses each layer's heads
    discard_ratio: float = setting(0.0, ge=0, lt=1)  # rollout: this fraction of each layer's lowest weights set to 0
    gradient_rollout: bool = True  # also the gradient-weighted rollout (Chefer et al. 2021) for the top-1 class
    alpha: float = setting(0.5, ge=0, le=1)  # heat-map weight in overlays
    colormap: str = setting("jet", check=_colormap)


@dataclass(frozen=True)
class TrainingConfig:
    logs: tuple[str, ...] = setting((), kind="patterns")  # absolute file, folder or glob patterns
    tags: tuple[str, ...] = ()  # default: every tag
    smoothing: float = setting(0.6, ge=0, lt=1)


@dataclass(frozen=True)
class AnalysesConfig:
    summary: SummaryConfig | None = setting(None, null_means_default=True)
    dataset: DatasetConfig | None = setting(None, null_means_default=True)
    kernels: KernelsConfig | None = setting(None, null_means_default=True)
    feature_maps: FeatureMapsConfig | None = setting(None, null_means_default=True)
    cam: CamConfig | None = setting(None, null_means_default=True)
    gradients: GradientsConfig | None = setting(None, null_means_default=True)
    attention: AttentionConfig | None = setting(None, null_means_default=True)
    evaluation: EvaluationConfig | None = setting(None, null_means_default=True)  # after cam, gradients: same batches
    training: TrainingConfig | None = setting(None, null_means_default=True)

    def enabled(self) -> list[str]:
        """The stages that run, in report order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


@dataclass(frozen=True)
class DetailConfig:
    """Which images get per-image figures (the rest are rows of the page's images table): the most confident
    mistakes, the least confident correct predictions (without ground truth: the least confident predictions),
    then a seeded sample per class (true class, else predicted), at most `budget` in all. A build over at most
    `budget` images details every image."""

    budget: int = setting(8, ge=1, le=1000)  # images with figures, at most
    mistakes: int = setting(2, ge=0)  # the most confident wrong predictions
    uncertain: int = setting(2, ge=0)  # the least confident correct predictions
    per_class: int = setting(1, ge=0)  # then this many per class, classes in a seeded order, while budget lasts
    seed: int | None = setting(None, **_SEED)  # default: the config's seed


@dataclass(frozen=True)
class ReportConfig:
    detail: DetailConfig = field(default_factory=DetailConfig)


class _Attachments:
    """`output.attach`: the trackers the written report is attached to (`reportgen.integrations`). One field per
    record of `TRACKERS`, holding that tracker's options (null: not attached); a list of names is shorthand for
    each one's defaults: `attach: [mlflow, wandb]`."""

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: _Ctx) -> Any:
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
                raise ctx.error(path + (i,), f"unknown tracker `{_clean(name)}`.{did_you_mean(str(name), names)} "
                                             f"Trackers: {', '.join(names)}.")
        return dict.fromkeys(value)  # null: the tracker's default options

    def items(self) -> list[tuple[str, Any]]:
        """(name, options) of the trackers attached to, in registry order."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __bool__(self) -> bool:
        return bool(self.items())


AttachConfig = dataclasses.make_dataclass(
    "AttachConfig", [(name, tracker.options | None, setting(None, null_means_default=True))
                     for name, tracker in TRACKERS.items()], bases=(_Attachments,), frozen=True)


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = setting(Path("reports/report"), kind="path")
    self_contained: bool = True
    save_arrays: bool = False
    tensorboard: Path | None = setting(None, kind="path")
    site: Path | None = setting(None, kind="path")  # a static site of reports (`reportgen site`) this one joins
    attach: AttachConfig = field(default_factory=AttachConfig)  # trackers: [mlflow, wandb, clearml, tensorboard]


@dataclass(frozen=True)
class Config:
    title: str = "reportgen report"
    seed: int = setting(0, **_SEED)
    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Path | None = setting(None, yaml="")  # the YAML file (not a YAML key)
    lines: _Lines | None = field(default=None, compare=False, repr=False,
                                 metadata={"rules": Rules(yaml="")})  # where each key is (not a YAML key)

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
        "`model.name` (config.yaml, line 7): ..." or "(from --set)". When the key is a section and a value
        the message quotes was given with --set below it, the message names that full key instead."""
        match = re.match(r"`([a-z_]+(?:\.[a-z_0-9]+)*)`", message)
        if self.lines is None or match is None or match.group(1).split(".")[0] not in _TOP_KEYS:
            return message
        path = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
        rest = message[match.end():]
        full = self.lines.overridden_below(path, rest)
        if full is not None:
            return f"`{_dotted(full)}`{self.lines.where(full)}{rest}"
        return message[:match.end()] + self.lines.where(path) + rest


_TOP_KEYS = tuple(yaml_fields(Config))


def _plain(value: Any, base: Path | None = None, patterns: bool = False) -> Any:
    """Dataclasses, tuples and paths as JSON-able data; paths relative to `base` when one is given."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name), base, rules_of(f).kind in ("patterns", "path_text"))
                for f in dataclasses.fields(value) if not (isinstance(value, Config) and f.name in ("source", "lines"))}
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

MAX_NODES = 100_000  # values a document may expand to (aliases counted at every use)
MAX_DEPTH = 64  # nesting levels


class _Lines:
    """Key path -> line number (1-based) in the YAML file, and the keys --set gave."""

    def __init__(self, node: yaml.Node | None, origin: str):
        self.origin = origin
        self.lines: dict[tuple, int] = {}
        self.overridden: set[tuple] = set()
        self.override_values: dict[tuple, Any] = {}  # --set key -> its value, in the order given
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                if sub in self.lines:  # YAML would keep the last one silently
                    raise ConfigError(f"`{_dotted(sub)}` is given twice ({self.origin}, lines "
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


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{_clean(part)}" if out else _clean(part))
    return out or "(top level)"


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read, override (`a.b=value`) and validate a YAML config file."""
    path = Path(path)
    try:
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
        problem = exc.problem or str(exc)
        if "python/" in str(exc):
            problem += " (python tags are refused: reportgen reads YAML with yaml.safe_load)"
        raise ConfigError(f"{origin} is not valid YAML{where}: {_clean(problem)}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {_clean(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{origin} is nested too deeply (more than {MAX_DEPTH} levels).") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{origin} holds a value YAML cannot convert: {_clean(exc)}.") from None
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
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of keys ({', '.join(_TOP_KEYS)}), "
                          f"not a {type(data).__name__}.")
    lines = _Lines(node, origin)
    for item in overrides:
        data = _apply_override(data, item, lines)
    if "model" not in data:
        raise ConfigError(f"{origin} has no `model:` section: every config names the model to explain "
                          "(`reportgen init` writes a commented starter config).")
    config = _convert(data, Config, (), _Ctx(lines, base_dir))
    return dataclasses.replace(config, source=source, lines=lines)


def _apply_override(data: dict, item: str, lines: _Lines) -> dict:
    """`a.b=value` (value in YAML) into a copy of the mappings on its way; returns the new top mapping."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (like model.name=resnet50), got `{_clean(item)}`.")
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise ConfigError(f"--set: `{_clean(key)}` is not a key path (like model.name).")
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


@dataclass
class _Ctx:
    lines: _Lines
    base_dir: Path

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"`{_dotted(path)}`{self.lines.where(path)}: {message}")

    def base_for(self, path: tuple) -> Path:
        """Paths written in the file resolve against its folder; paths given with --set, the current folder."""
        return Path.cwd() if self.lines.is_overridden(path) else self.base_dir


# ---------------------------------------------------------------------------- conversion


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
        if isinstance(value, (dict, list)) or value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            shown = _clean(value) if not isinstance(value, (dict, list)) else repr(value)
            raise ctx.error(path, f"`{shown}` is not one of {', '.join(map(str, choices))}.{hint}")
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
        if abs(value) > INT_LIMIT:
            raise ctx.error(path, f"expected an integer of at most {INT_LIMIT}, got one of {len(str(abs(value)))} "
                                  "digits.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(path, f"expected a number, got {value!r}.")
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


def _resolve(value: str | Path, path: tuple, ctx: _Ctx) -> Path:
    if "\0" in str(value):
        raise ctx.error(path, "a path cannot hold a NUL character.")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user that does not exist
        p = Path(value)
    return Path(os.path.normpath(p if p.is_absolute() else ctx.base_for(path) / p))


def _convert_dataclass(value: Any, tp: type, path: tuple, ctx: _Ctx) -> Any:
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
    hints = typing.get_type_hints(tp)
    fields = yaml_fields(tp)
    kwargs = {}
    for key, raw in value.items():
        sub = path if key == inline else path + (key if isinstance(key, str) else str(key),)
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            names = list(fields)
            raise ConfigError(f"unknown key `{_dotted(sub)}`{ctx.lines.where(sub)}."
                              f"{did_you_mean(str(key), names) or ' Valid keys here: ' + ', '.join(names) + '.'}")
        kwargs[f.name] = _convert_field(raw, hints[f.name], rules_of(f), sub, ctx)
    obj = tp(**kwargs)
    validate = getattr(obj, "_validate", None)
    if validate is not None:
        def err(key: str, message: str) -> typing.NoReturn:
            raise ctx.error(path + ((key,) if key else ()), message)

        obj = validate(err) or obj
    return obj


def _convert_field(raw: Any, tp: Any, rules: Rules, path: tuple, ctx: _Ctx) -> Any:
    """One field's YAML value -> its dataclass value, by its type and rules."""
    if raw is None and rules.null_means_default:
        raw = {}
    if rules.kind == "patterns":
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(i, str) and i.strip() for i in items):
            raise ctx.error(path, "expected a path, a folder or a glob, or a list of them.")
        return tuple(str(_resolve(i, path + (n,), ctx)) for n, i in enumerate(items))
    value = _convert(raw, tp, path, ctx)
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
        raise ctx.error(path, f"expected {rules.pattern_text}, got `{_clean(value)}`.")
    if rules.check is not None:
        problem = rules.check(value)
        if problem:
            raise ctx.error(path, problem)
    return value


# ---------------------------------------------------------------------------- starter config

STARTER = """\
# reportgen config: `reportgen build this.yaml` writes a self-contained HTML report.
# Relative paths resolve against this file's folder. Remove an analysis to skip it.
title: My model, explained
seed: 0

model:
  source: torchvision            # torchvision | module | torchscript | timm | huggingface
  name: resnet18                 # any classification model in torchvision.models (timm: in timm.list_models())
  weights: null                  # e.g. IMAGENET1K_V1: only from the local torch cache, never downloaded
  checkpoint: null               # a .safetensors or state_dict file (torch.load(weights_only=True))
  # source: huggingface          # a local folder with config.json and weights:
  # path: my-vit/
  # source: module               # your own network:
  # factory: "mypackage.models:build"
  # kwargs: {num_classes: 10}
  input_size: [3, 224, 224]
  labels: imagenet               # imagenet | path to a text file, one label a line | null
  device: auto                   # auto | cpu | cuda
  # output: logits               # a tuple / dict output: the element holding the logits (0, logits, ...)

inputs:
  images: [images/]              # files, folders (class sub-folders give the truth), globs, .csv/.jsonl manifests
  preprocess: {resize: 256, center_crop: 224, normalize: imagenet}
  top_k: 5
  alpha: drop                    # transparent images: drop (as torchvision's loader) | white | black
  # max_value: 4095              # 16-bit images holding 12-bit data (default: 65535)

analyses:                        # each key present = that stage runs
  summary: {depth: 3}
  # dataset: {}                  # accuracy, per-class scores, confusion matrix, calibration (labelled images)
  kernels: {}                    # default: the first conv layer
  feature_maps: {max_channels: 32}
  cam: {methods: [gradcam, gradcampp, scorecam], targets: top1}
  gradients: {methods: [saliency, integrated_gradients]}
  # evaluation:                  # scores every cam / gradients map: deletion, insertion, ROAD, confidence change,
  #   images: 64                 # infidelity, sensitivity, sanity check (+ localisation with boxes or masks);
  #   step: null                 # costly: ~460 forwards per image and map at the default step (224 px at 224²);
  #   metrics: null              # raise `step` (e.g. 2240) or lower `images` for a quick look
  # training: {logs: [runs/exp1]}  # TensorBoard event files or CSV / JSONL metric logs

# report:                        # a data set: per-image figures for a few, every image a row of the table
#   detail: {budget: 8, mistakes: 2, uncertain: 2, per_class: 1}

output:
  dir: reports/my-model
  self_contained: true           # one HTML file, images embedded
  save_arrays: false             # also write arrays.npz with the numbers behind every figure
  # attach: [mlflow]             # also attach it to the active run: mlflow, wandb, clearml, {tensorboard: {dir: runs}}
"""
