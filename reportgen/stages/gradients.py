"""The `gradients` stage: which input pixels move a class score, by the attribution methods of the gradient
family in `reportgen.methods`, equal to Captum 0.9.0's `attribute()` for the same target; the computation is
`reportgen.methods.gradients`.

The maps come from `methods.dispatch.explain` (which plans the passes by each method's `needs`: the input
gradient from the engine, which serves a pass an earlier stage ran for the same classes, ONE forward with
switchable ReLU rules for the methods that have one, own passes for SmoothGrad and integrated gradients). The
stage adds the completeness gap of the attributions measured from a baseline (integrated gradients):
|Σ attributions − (f(x) − f(baseline))| / |f(x) − f(baseline)| per image.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..config.rules import known_colormap, setting
from ..config.values import TargetSpec
from ..engine import Engine
from ..errors import ImageWarning, ReportgenError, did_you_mean
from ..layers import auto_cam_layer, map_view, spatial_shape
from ..methods import REGISTRY
from ..methods.dispatch import Settings, explain
from ..methods.gradients import image_generator, score_difference
from ..metrics.forward import inference_forward
from ..ops import gaussian_blur
from ..segments import load_array
from . import Context, ImageInput, ModelInfo, Stage
from .cam import CamResult
from .evaluation_regions import output_picker


@dataclass(frozen=True)
class GradientsConfig:
    """The gradient section's keys, and (added from the method records) the options of its methods, e.g.
    integrated gradients' `steps` and `baseline`."""

    methods: tuple[str, ...] = setting(("saliency",), methods="gradients")
    targets: TargetSpec = field(default_factory=TargetSpec)
    sign: Literal["absolute_value", "positive", "all"] = "absolute_value"
    outlier_perc: float = setting(2.0, ge=0, lt=100)
    alpha: float = setting(0.8, ge=0, le=1)  # overlays: the strongest attribution's opacity; weaker ones fade out
    colormap: str | None = setting(None, check=known_colormap)  # default: by sign


BASELINES = ("zero", "blur", "uniform")
BLUR_SIGMA = 0.05  # `blur` baseline: gaussian sigma = 5% of the shorter image side (11.2 px at 224x224)
GAP_WARNING = 0.05  # integrated gradients: warn when the completeness gap exceeds 5%
BATCH_ELEMENTS = 64 * 3 * 224 * 224  # default inputs per forward (ig, smoothgrad): 64 at 3x224x224


@dataclass(frozen=True)
class Completeness:
    """Integrated gradients' error, per image and target rank."""

    attribution_sum: np.ndarray  # (N, R) float64: Σ of the attribution map
    delta: np.ndarray  # (N, R) float64: f(x) − f(baseline) for the target logit
    gap: np.ndarray  # (N, R) float64: |sum − delta| / |delta| (nan where delta = 0)


@dataclass(frozen=True)
class GradientsResult:
    config: GradientsConfig
    images: tuple[str, ...]  # image names, in batch order
    classes: np.ndarray  # (N, R) int64: the target class of image i at rank r
    maps: dict[str, np.ndarray]  # method -> (N, R, C, H, W) float32, the raw attribution (Captum's `attribute()`)
    cam_layer: str | None  # guided_gradcam's layer
    completeness: Completeness | None  # integrated_gradients only
    baseline: str  # integrated gradients' baseline, in words
    reused_cam_pass: tuple[bool, ...]  # per rank: saliency/input_x_gradient came from the CAM stage's pass
    seconds: dict[str, float]  # method -> compute time (a shared pass counts for the first method using it)
    warnings: tuple[str | ImageWarning, ...]  # the build merges those about images (one per kind)
    seed: int = 0  # of SmoothGrad's noise and the uniform baseline


# ---------------------------------------------------------------------------- validation


def check(info: ModelInfo, cfg: GradientsConfig) -> None:
    """What needs the model: the CAM layer, the baseline file's shape, class ids."""
    if _needs_layer(cfg):
        cam_layer(info, cfg)
    if isinstance(cfg.baseline, Path):
        load_baseline_file(cfg.baseline, tuple(info.config.model.input_size))
    for target in cfg.targets.classes:
        info.class_index(target)
    for method in cfg.methods:  # options that need the input's size (occlusion's window)
        options = REGISTRY[method].options_from(cfg)
        if hasattr(options, "check"):
            options.check(tuple(info.config.model.input_size)[-2:])
        if hasattr(options, "check_model"):  # LRP: every layer needs a rule
            options.check_model(info.model, method, info.forward, tuple(info.config.model.input_size))


def _needs_layer(cfg: GradientsConfig) -> bool:
    return any("activations" in REGISTRY[m].needs for m in cfg.methods)


def cam_layer(info: ModelInfo, cfg: GradientsConfig, cam: CamResult | None = None) -> str:
    """guided_gradcam's layer: `cam_layer`, else the CAM section's first target layer (when it ran), else the
    automatic CAM layer. It must give a spatial (N, C, h, w) output."""
    if cfg.cam_layer is not None:
        name, origin = cfg.cam_layer, "`analyses.gradients.cam_layer`"
    elif cam is not None:
        name, origin = cam.layers[0], "the CAM section's target layer"
    else:
        try:
            name = auto_cam_layer(info).name
        except ReportgenError as exc:
            raise ReportgenError(f"guided_gradcam needs a convolutional layer: {exc} "
                                 "Set `analyses.gradients.cam_layer` or drop guided_gradcam.") from None
        origin = "the automatic CAM layer"
    layer = info.layer(name)
    shape = layer.output_shape
    if spatial_shape(info, name) is None:  # a transformer's token layer counts once viewed as its grid
        got = "no tensor output" if shape is None else f"output shape {list(shape)}"
        raise ReportgenError(f"guided_gradcam needs a layer with a spatial (N, C, H, W) output; {origin} "
                             f"`{name}` has {got}. Pick a convolutional layer (`reportgen layers CONFIG`).")
    return name


def load_baseline_file(path: Path, input_size: tuple[int, ...]) -> np.ndarray:
    """A baseline saved with `np.save`: (C, H, W) or (1, C, H, W) in the model's (preprocessed) input space."""
    if not path.is_file():
        hint = did_you_mean(path.name, BASELINES)
        raise ReportgenError(f"`analyses.gradients.baseline`: `{path}` is neither {', '.join(BASELINES)} nor an "
                             f"existing .npy file.{hint}")
    # float64 and a header: more is not this array
    array = load_array(path, 8 * math.prod(input_size) + 4096, f"`analyses.gradients.baseline` (`{path}`)",
                       f"a baseline is one array of the model's input size {list(input_size)}, saved with np.save")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) != tuple(input_size):
        raise ReportgenError(f"`analyses.gradients.baseline`: `{path.name}` has shape {list(array.shape)}; the model "
                             f"input is {list(input_size)} (channels, height, width).")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ReportgenError(f"`analyses.gradients.baseline`: `{path.name}` must hold finite numbers.")
    return array.astype(np.float32)


# ---------------------------------------------------------------------------- the stage


def settings(info: ModelInfo, cfg: GradientsConfig, batch: torch.Tensor, seed: int, offset: int = 0,
             layer: str | None = None, segments: torch.Tensor | None = None,
             fast: FastForwards | None = None) -> Settings:
    """What the methods of `cfg` need from `dispatch.explain` for `batch` (the batch's first image is image
    `offset` among all images); `layer`: guided Grad-CAM's (`cam_layer`); `segments`: the rows' own feature masks
    (`image_segments`); `fast`: the build's fast forwards (else one made for this batch)."""
    return Settings(cam_layer=layer, views={layer: map_view(info, layer)} if layer is not None else {},
                    segments=segments,
                    batch_size=cfg.internal_batch_size or max(1, BATCH_ELEMENTS // batch[0].numel()), seed=seed,
                    offset=offset, baseline=lambda: make_baseline(cfg.baseline, batch, seed, offset=offset)[0],
                    options=cfg,  # a classifier's logits: the fast forward (a segmenter's or detector's scores: not)
                    inference=(fast or FastForwards(info)) if info.task == "classification" else None,
                    input_range=input_range(info, batch.shape[1]))


def input_range(info: ModelInfo, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel, the lowest and highest value the model's input takes: pixels 0 and 1 after the normalisation
    (`inputs.preprocess.normalize`, or the weights'), [0, 1] without one."""
    norm = info.normalize
    if norm is None:
        return (0.0,) * channels, (1.0,) * channels
    mean, std = (list(v) * (channels if len(v) == 1 else 1) for v in (norm.mean, norm.std))
    return tuple(-m / s for m, s in zip(mean, std)), tuple((1 - m) / s for m, s in zip(mean, std))


def image_segments(images: list[ImageInput], batch: torch.Tensor) -> torch.Tensor | None:
    """The images' own feature masks (`ImageInput.segments`, a manifest's `segments` column) for the batch's rows:
    (N, H, W) long on its device, a row of −1 for an image without; None when no image has one."""
    if all(image.segments is None for image in images):
        return None
    h, w = batch.shape[-2:]
    return torch.stack([torch.from_numpy(image.segments.astype(np.int64)) if image.segments is not None
                        else torch.full((h, w), -1, dtype=torch.long) for image in images]).to(batch.device)


class FastForwards:
    """`fast_forward` of the build's model per input shape, made once per build and shared by the stages
    (`fast_forwards`): the perturbation methods and the evaluation's metrics of a streamed build do not copy and
    check the model again on every batch, nor each for itself. Another model (the sanity cascade's randomised copy)
    gets one of its own each time."""

    def __init__(self, info: ModelInfo):
        self.info = info
        self.made: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}

    def __call__(self, model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if model is not self.info.model:
            return fast_forward(self.info, model, example)
        key = (tuple(example.shape[1:]), example.dtype, example.device)
        if key not in self.made:
            self.made[key] = fast_forward(self.info, model, example)
        return self.made[key]


def fast_forwards(ctx: Context) -> FastForwards:
    """The build's `FastForwards`: one for every stage and batch (`ctx.prepared` is the build's)."""
    return ctx.prepared.setdefault("fast forwards", FastForwards(ctx.info))


def fast_forward(info: ModelInfo, model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The checked fast no-grad forward x -> logits of `model` (the build's or a randomised copy) for inputs like
    `example` (`metrics.forward`), which the perturbation methods (RISE, occlusion) and the evaluation's metrics send
    their inputs through; the adapter picks the logits (a segmenter's at the input's size)."""
    return inference_forward(model, example[:1], logits=output_picker(info, tuple(example.shape[-2:])))


def run(ctx: Context, cfg: GradientsConfig) -> GradientsResult:
    model, batch = ctx.model, ctx.batch  # batch (N, C, H, W), never modified
    targets = ctx.targets(cfg.targets)  # per image, R classes
    class_sets = [tuple(int(t[r]) for t in targets) for r in range(len(targets[0]))]  # per rank, one class per image
    layer = cam_layer(ctx.info, cfg, ctx.results.get(CamResult)) if _needs_layer(cfg) else None
    warnings: list[str | ImageWarning] = []
    if any(REGISTRY[m].relu_rule for m in cfg.methods) and not any(isinstance(m, nn.ReLU) for m in model.modules()):
        warnings.append("The model has no nn.ReLU modules (it may call F.relu): guided backprop, deconvnet and "
                        "guided Grad-CAM then use plain gradients, as Captum does.")
    explained = explain(cfg.methods, ctx.engine, class_sets,
                        settings(ctx.info, cfg, batch, ctx.config.seed, ctx.offset, layer,
                                 image_segments(ctx.images, batch), fast_forwards(ctx)), log=ctx.log)
    seconds = dict(explained.seconds)

    completeness, baseline_text = None, ""
    if explained.from_baseline:  # attributions that should sum to f(x) − f(baseline): how far they are from it
        method = explained.from_baseline[0]
        start = time.perf_counter()
        sums = torch.stack([a.double().sum(dim=(1, 2, 3)) for a in explained.gradients[method]], dim=1)
        deltas = score_difference(ctx.engine.forward, ctx.logits, explained.baseline, class_sets)
        completeness = _completeness(sums.cpu().numpy(), deltas)
        seconds[method] += time.perf_counter() - start
        warnings += _gap_warnings(completeness, targets, ctx, cfg.steps)
        baseline_text = describe_baseline(cfg.baseline, batch, ctx.config.seed)

    maps = {m: torch.stack(explained.gradients[m], dim=1).detach().float().cpu().numpy()
            for m in cfg.methods}  # (N, R, C, H, W)
    return GradientsResult(
        config=cfg, images=tuple(img.name for img in ctx.images), classes=np.asarray(targets, dtype=np.int64),
        maps=maps, cam_layer=layer, completeness=completeness, baseline=baseline_text,
        reused_cam_pass=explained.reused_input_grad, seconds=seconds, warnings=tuple(warnings), seed=ctx.config.seed,
    )


def recompute(result: GradientsResult, info: ModelInfo, engine: Engine, targets: np.ndarray, methods: list[str],
              seed: int, offset: int = 0, segments: torch.Tensor | None = None,
              fast: FastForwards | None = None) -> dict[str, torch.Tensor]:
    """Method -> (n, C, H, W): the raw attributions of `methods` of `result` for `targets` (n,) of the engine's model
    and batch (perturbed inputs, a randomised copy of the model), computed as `run` computes them; `segments`: the
    feature masks of the images the rows are (copies of), as `image_segments` gives them; `fast`: the build's fast
    forwards (`fast_forwards`), else made for this call."""
    found = explain(methods, engine, [[int(t) for t in targets]],
                    settings(info, result.config, engine.batch, seed, offset, result.cam_layer, segments,
                             fast)).gradients
    return {m: a[0].detach() for m, a in found.items()}


def distinct(classes) -> list[int]:
    """The ranks of an image's explained classes, each class once: a segmenter's image holding fewer classes than
    the batch's image with the most repeats its largest to fill the ranks (`Context.targets`)."""
    seen: set[int] = set()
    return [r for r, c in enumerate(classes) if not (int(c) in seen or seen.add(int(c)))]


def arrays(result: GradientsResult) -> dict[str, np.ndarray]:
    """`gradients/<method>/<image>/<class>`: (C, H, W) float32, the raw attribution."""
    out = {}
    for method, values in result.maps.items():
        for i, image in enumerate(result.images):
            for r, cls in enumerate(result.classes[i]):
                out[f"gradients/{method}/{image}/{int(cls)}"] = values[i, r].astype(np.float32)
    return out


def to_json(result: GradientsResult) -> dict:
    cfg = result.config
    entry: dict = {
        "methods": list(result.maps),
        "targets": [{"image": name, "classes": [int(result.classes[i, r]) for r in distinct(result.classes[i])]}
                    for i, name in enumerate(result.images)],
        "cam_layer": result.cam_layer,
        "reused_cam_pass": list(result.reused_cam_pass),
        "seconds": {m: round(s, 4) for m, s in result.seconds.items()},
        "warnings": list(result.warnings),
    }
    if "smoothgrad" in result.maps:
        entry["smoothgrad"] = {"samples": cfg.samples, "stdev": cfg.stdev}
    if result.completeness is not None:
        c = result.completeness
        entry["integrated_gradients"] = {
            "steps": cfg.steps, "baseline": result.baseline,
            "completeness": [
                {"image": name, "class": int(result.classes[i, r]), "attribution_sum": float(c.attribution_sum[i, r]),
                 "score_difference": float(c.delta[i, r]),
                 "gap": None if math.isnan(c.gap[i, r]) else float(c.gap[i, r])}
                for i, name in enumerate(result.images) for r in distinct(result.classes[i])
            ],
        }
    return entry


def records(result: GradientsResult) -> list[dict]:
    """Per image, the explained classes and, with integrated gradients, the completeness gap per class."""
    out = []
    for i in range(len(result.images)):
        ranks = distinct(result.classes[i])
        entry: dict = {"classes": [int(result.classes[i, r]) for r in ranks]}
        if result.completeness is not None:
            gaps = result.completeness.gap[i, ranks]
            entry["integrated_gradients_gap"] = [None if math.isnan(g) else float(g) for g in gaps]
        out.append(entry)
    return out


def make_baseline(kind: str | Path, batch: torch.Tensor, seed: int,
                  offset: int = 0) -> tuple[torch.Tensor, str]:
    """The IG baseline (N, C, H, W) and a description of it: zeros, each image blurred, uniform noise over
    each image's range (image i's drawn from a generator seeded with seed + offset + i, `offset` the batch's
    first image among all images), or a .npy file for every image."""
    n, c, h, w = batch.shape
    text = describe_baseline(kind, batch, seed)
    if isinstance(kind, Path):
        array = load_baseline_file(kind, (c, h, w))
        return torch.from_numpy(array).to(batch).expand_as(batch).clone(), text
    if kind == "zero":
        return torch.zeros_like(batch), text
    if kind == "blur":
        return gaussian_blur(batch, BLUR_SIGMA * min(h, w)), text
    if kind == "uniform":
        noise = torch.stack([torch.rand(batch.shape[1:], generator=image_generator(seed, offset + i))
                             for i in range(n)]).to(batch)
        lo = batch.amin(dim=(1, 2, 3), keepdim=True)
        hi = batch.amax(dim=(1, 2, 3), keepdim=True)
        return lo + noise * (hi - lo), text
    raise ReportgenError(f"unknown baseline `{kind}`.{did_you_mean(str(kind), BASELINES)}")


def describe_baseline(kind: str | Path, batch: torch.Tensor, seed: int) -> str:
    """`make_baseline`'s baseline in words."""
    if isinstance(kind, Path):
        return f"from {kind.name}"
    if kind == "blur":
        return f"gaussian blur, sigma {BLUR_SIGMA * min(batch.shape[-2:]):.1f} px"
    if kind == "uniform":
        return f"uniform noise over each image's range, seed {seed}"
    return str(kind)


def _completeness(sums: np.ndarray, deltas: np.ndarray) -> Completeness:
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(deltas != 0, np.abs(sums - deltas) / np.abs(deltas), np.nan)
    return Completeness(attribution_sum=sums, delta=deltas, gap=gap)


def _gap_warnings(c: Completeness, targets: list[list[int]], ctx: Context, steps: int) -> list[ImageWarning]:
    """Per image whose completeness gap is undefined or over GAP_WARNING for a target: one warning, naming its classes
    (the build gives each kind once, counting the images)."""
    out = []
    for i, image in enumerate(ctx.images):
        undefined, missed = [], []
        for r, cls in enumerate(targets[i]):
            label = ctx.label(cls)
            what = f"class {cls}" + ("" if label == f"class {cls}" else f" ({label})")
            if math.isnan(c.gap[i, r]):
                undefined.append(what)
            elif c.gap[i, r] > GAP_WARNING:
                missed.append(f"{what} {100 * c.gap[i, r]:.1f}%")
        if undefined:
            out.append(ImageWarning("Integrated gradients: f(x) equals f(baseline), so the completeness gap is "
                                    "undefined,", f"{image.name}: {', '.join(undefined)}", "try another baseline."))
        if missed:
            out.append(ImageWarning(f"Integrated gradients: the attributions miss f(x) − f(baseline) by over "
                                    f"{100 * GAP_WARNING:.0f}%", f"{image.name}: {', '.join(missed)}",
                                    f"raise `steps` (now {steps})."))
    return out


def reduce(results: list[GradientsResult]) -> GradientsResult:
    """The result of all images from those of consecutive batches."""
    first = results[0]
    if len(results) == 1:
        return first
    completeness = None
    if first.completeness is not None:
        completeness = Completeness(**{f: np.concatenate([getattr(r.completeness, f) for r in results])
                                       for f in ("attribution_sum", "delta", "gap")})
    return dataclasses.replace(
        first,
        images=tuple(name for r in results for name in r.images),
        classes=np.concatenate([r.classes for r in results]),
        maps={m: np.concatenate([r.maps[m] for r in results]) for m in first.maps},
        completeness=completeness,
        reused_cam_pass=tuple(all(flags) for flags in zip(*(r.reused_cam_pass for r in results))),
        seconds={m: sum(r.seconds[m] for r in results) for m in first.seconds},
        warnings=tuple(dict.fromkeys(w for r in results for w in r.warnings)),
    )


def select(result: GradientsResult, rows: list[int]) -> GradientsResult:
    """The result of the images `rows` only."""
    completeness = None
    if result.completeness is not None:
        completeness = Completeness(**{f: getattr(result.completeness, f)[rows]
                                       for f in ("attribution_sum", "delta", "gap")})
    return dataclasses.replace(result, images=tuple(result.images[i] for i in rows), classes=result.classes[rows],
                               maps={m: v[rows] for m, v in result.maps.items()}, completeness=completeness)


SPEC = Stage(
    name="gradients", title="Gradient saliency", order=60, options=GradientsConfig, run=run, check=check, reduce=reduce,
    select=select, records=records,
    arrays=arrays, to_json=to_json,
    needs_hooks=lambda cfg: tuple(m for m in cfg.methods if REGISTRY[m].hooks),
    wants_input_grad=lambda cfg: any("input_grad" in REGISTRY[m].needs for m in cfg.methods),
    wants_relu_rules=lambda cfg: tuple(REGISTRY[m].relu_rule for m in cfg.methods if REGISTRY[m].relu_rule),
)
