"""The schema: frozen dataclasses, one per section of the YAML config, each field with its rules."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import did_you_mean
from ..integrations import TRACKERS
from .rules import COUNT, SEED, Rules, clean, dotted, known_colormap, rules_of, setting, yaml_fields
from .values import LayerPattern, Preprocess, TargetSpec

if TYPE_CHECKING:
    from .convert import Ctx

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

    per_class: int | None = setting(None, **COUNT)
    seed: int | None = setting(None, **SEED)  # default: the config's seed

    def _validate(self, err: Callable[[str, str], None]) -> None:
        if self.per_class is None:
            err("per_class", "`inputs.sample` needs `per_class: N` (images per class).")


@dataclass(frozen=True)
class InputsConfig:
    images: tuple[str, ...] = setting((), kind="patterns")  # absolute file, folder or glob patterns
    preprocess: Preprocess = field(default_factory=Preprocess)
    top_k: int = setting(5, **COUNT)
    batch_size: int = setting(8, **COUNT)
    alpha: Literal["drop", "white", "black"] = "drop"  # transparent pixels: drop alpha (torchvision's loader)
    max_value: int | None = setting(None, ge=1, le=2**32 - 1)  # full scale of 16-bit images; None: 65535
    limit: int | None = setting(None, **COUNT)  # the first N images (after sampling), in entry order
    sample: SampleConfig | None = None  # {per_class: N, seed: S}: N images of each class
    strict: bool = False  # false: an image that cannot be read is skipped (the report says so); true: an error


@dataclass(frozen=True)
class SummaryConfig:
    depth: int = setting(3, **COUNT)


@dataclass(frozen=True)
class DatasetConfig:
    """The data set overview: accuracy, per-class scores, confusion and calibration (or, without ground truth,
    what the model predicts)."""

    bins: int = setting(15, ge=2)  # equal-width confidence bins over [0, 1] (reliability diagram, ECE)
    top_confused: int = setting(20, **COUNT)  # most-confused pairs listed when the matrix is too big to draw
    max_matrix_classes: int = setting(30, ge=2)  # the confusion matrix is drawn up to this many classes


@dataclass(frozen=True)
class OptimizeConfig:
    """Activation maximisation (filter visualisation) by gradient ascent on the input."""

    layers: tuple[str | LayerPattern, ...] = ()  # default: the kernels stage's layers
    filters: tuple[int, ...] = setting(tuple(range(16)), ge=0)
    steps: int = setting(64, **COUNT)
    lr: float = setting(0.1, gt=0)
    jitter: int = setting(4, ge=0)
    blur: float = setting(0.5, ge=0)  # gaussian sigma in pixels applied every `blur_every` steps; 0 = off
    blur_every: int = setting(8, **COUNT)
    tv: float = setting(0.0, ge=0)  # total-variation weight
    weight_decay: float = setting(1e-4, ge=0)
    size: int | None = setting(None, ge=8, le=16384)  # input side; default: model input size
    seed: int | None = setting(None, **SEED)  # default: the config's seed


@dataclass(frozen=True)
class KernelsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the first conv layer
    max_filters: int = setting(64, **COUNT)
    max_channels: int = setting(8, **COUNT)
    optimize: OptimizeConfig | None = None


@dataclass(frozen=True)
class FeatureMapsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the top-level blocks
    max_channels: int = setting(32, **COUNT)
    order: Literal["index", "mean", "max"] = "index"
    scale: Literal["channel", "shared"] = "channel"


@dataclass(frozen=True)
class CamConfig:
    methods: tuple[str, ...] = setting(("gradcam",), methods="cam")
    target_layers: tuple[str, ...] = ()  # default: last 4-D layer before global pooling
    targets: TargetSpec = field(default_factory=TargetSpec)
    batch_size: int = setting(32, **COUNT)  # masked forwards of scorecam / ablationcam
    max_channels: int | None = setting(None, **COUNT)  # scorecam / ablationcam: mask only the most active channels
    alpha: float = setting(0.5, ge=0, le=1)  # heat-map weight in overlays
    colormap: str = setting("jet", check=known_colormap)
    detail_images: int = setting(8, ge=0)  # images shown with every class, overlay and heat map


@dataclass(frozen=True)
class GradientsConfig:
    methods: tuple[str, ...] = setting(("saliency",), methods="gradients")
    targets: TargetSpec = field(default_factory=TargetSpec)
    steps: int = setting(50, **COUNT)  # integrated gradients
    baseline: Literal["zero", "blur", "uniform"] | Path = setting("zero", kind="path")  # or a .npy (C, H, W)
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)
    samples: int = setting(25, **COUNT)  # smoothgrad
    stdev: float = setting(0.15, ge=0)  # smoothgrad noise, fraction of the input range
    cam_layer: str | None = None  # guided_gradcam; default: the cam stage's layer or the auto-picked one
    sign: Literal["absolute_value", "positive", "all"] = "absolute_value"
    outlier_perc: float = setting(2.0, ge=0, lt=100)
    alpha: float = setting(0.5, ge=0, le=1)
    colormap: str | None = setting(None, check=known_colormap)  # default: by sign


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
    seed: int | None = setting(None, **SEED)  # default: the config's seed
    images: int = setting(4, **COUNT)  # at most this many detail images (those of the first detail image's batch)


@dataclass(frozen=True)
class EvaluationConfig:
    """Scores of every map the cam and gradients stages computed: faithfulness, sanity and localisation."""

    metrics: tuple[str, ...] | None = None  # null: all (localisation where boxes or masks exist); case, `-` forgiven
    images: int = setting(64, **COUNT)  # a seeded subset of all images scored (the detail images always in)
    batch_size: int = setting(64, **COUNT)  # perturbed inputs per forward
    step: int | None = setting(None, **COUNT)  # deletion/insertion pixels per step; null: 224 at 224², by area
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
                err("metrics", f"unknown metric `{clean(name)}`.{did_you_mean(key, EVALUATION_METRICS)} Metrics: "
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
    colormap: str = setting("jet", check=known_colormap)


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
    seed: int | None = setting(None, **SEED)  # default: the config's seed


@dataclass(frozen=True)
class ReportConfig:
    detail: DetailConfig = field(default_factory=DetailConfig)


class _Attachments:
    """`output.attach`: the trackers the written report is attached to (`reportgen.integrations`). One field per
    record of `TRACKERS`, holding that tracker's options (null: not attached); a list of names is shorthand for
    each one's defaults: `attach: [mlflow, wandb]`."""

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
    seed: int = setting(0, **SEED)
    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Path | None = setting(None, yaml="")  # the YAML file (not a YAML key)
    lines: Any = field(default=None, compare=False, repr=False,
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
        if self.lines is None or match is None or match.group(1).split(".")[0] not in TOP_KEYS:
            return message
        path = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
        rest = message[match.end():]
        full = self.lines.overridden_below(path, rest)
        if full is not None:
            return f"`{dotted(full)}`{self.lines.where(full)}{rest}"
        return message[:match.end()] + self.lines.where(path) + rest


TOP_KEYS = tuple(yaml_fields(Config))


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

