"""The `cam` stage: class activation maps, where did the network look for a class?

The methods are records in `reportgen.methods` (family "cam"), computed by `reportgen.methods.cam`; the
same maps as pytorch-grad-cam 1.5.7 (`grayscale_cam` for `ClassifierOutputTarget`):

- from ONE forward and ONE backward pass per target rank (`ctx.engine.passes`) per chunk of
  `inputs.batch_size` images (so autograd never holds the graph of more images than that):
  `gradcam`, `gradcampp`, `xgradcam`, `layercam`, `hirescam`, `eigengradcam`;
- from the same forwards: `eigencam`, and `cam` (the original CAM: the weights of the linear layer
  after global average pooling; "not applicable" on a layer that does not feed such a head: with
  several target layers, CAM has maps on the layers it applies to and its fused map uses those only);
- from masked forwards in batches of `batch_size`: `scorecam` (input × upsampled channel) and
  `ablationcam` (one channel of the layer removed). Their forwards serve every target class at once.

Every map is post-processed as pytorch-grad-cam does (`methods.cam.postprocess`). Per target layer we
keep the map pytorch-grad-cam gives for that layer alone; with several layers, also the fused map of all
of them (pytorch-grad-cam's multi-layer mode), stored under the layer name `fused`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..config.rules import known_colormap, setting
from ..config.values import TargetSpec
from ..engine import Engine
from ..errors import ReportgenError
from ..hooks import get_layer
from ..layers import AutoLayer, auto_cam_layer, map_view, spatial_shape
from ..methods import REGISTRY
from ..methods.cam import FUSED, not_applicable_notes, project_2d, scale_cams  # noqa: F401
from ..methods.dispatch import Settings, explain
from . import Context, ModelInfo, Stage


@dataclass(frozen=True)
class CamConfig:
    """The CAM section's keys, and (added from the method records) the options of its methods, e.g. Score-CAM's
    `max_channels`."""

    methods: tuple[str, ...] = setting(("gradcam",), methods="cam")
    target_layers: tuple[str, ...] = ()  # default: last 4-D layer before global pooling
    targets: TargetSpec = field(default_factory=TargetSpec)
    alpha: float = setting(0.5, ge=0, le=1)  # heat-map weight in overlays
    colormap: str = setting("jet", check=known_colormap)
    detail_images: int = setting(8, ge=0)  # images shown with every class, overlay and heat map


@dataclass(frozen=True)
class CamResult:
    config: CamConfig  # the stage's options (alpha, colour map, ... for the figures)
    layers: tuple[str, ...]  # target layers, in config order
    layer_auto: bool  # True: picked by layers.auto_cam_layer (no `target_layers` in the config)
    layer_shapes: dict[str, tuple[int, ...]]  # layer -> (C, h, w) of its output
    methods: tuple[str, ...]  # requested, in config order (including not-applicable ones)
    images: tuple[str, ...]  # image names (the `<image>` of arrays.npz keys)
    targets: tuple[tuple[int, ...], ...]  # per image, the explained classes in rank order
    probabilities: tuple[tuple[float, ...], ...]  # per image, softmax probability of each target class
    labels: dict[int, str]  # class index -> display label, for every target class
    input_size: tuple[int, int]  # (H, W) of the maps
    # (method, layer or "fused", image index, class) -> (H, W) float32 in [0, 1]
    maps: dict[tuple[str, str, int, int], np.ndarray] = field(repr=False)
    not_applicable: dict[str, str] = field(default_factory=dict)  # method -> why it has no maps
    # method -> {layer -> why}: layers without the method's maps although other layers have them
    layer_not_applicable: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # facts worth showing (auto-picked layer, shared passes)
    warnings: tuple[str, ...] = ()  # things that may make the maps misleading
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time
    image_count: int = 0  # images explained in every batch (`images` names only those the report shows)

    @property
    def fused(self) -> bool:
        return len(self.layers) > 1

    @property
    def map_layers(self) -> tuple[str, ...]:
        """The layer keys of `maps`: every target layer, then `fused` when there are several."""
        return self.layers + ((FUSED,) if self.fused else ())

    @property
    def main_layer(self) -> str:
        """The map to show first: the fused one with several layers, else the single layer's."""
        return FUSED if self.fused else self.layers[0]

    @property
    def computed_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m not in self.not_applicable)


# ---------------------------------------------------------------------------- stage contract


def target_layers(info: ModelInfo, cfg: CamConfig) -> tuple[tuple[str, ...], AutoLayer | None]:
    """The configured target layers (checked: exist, 4-D output), or the auto-picked one: (layers, the
    automatic pick or None when the config names the layers)."""
    if cfg.target_layers:
        layers = tuple(dict.fromkeys(cfg.target_layers))
        auto = None
    else:
        auto = auto_cam_layer(info)
        layers = (auto.name,)
    for name in layers:
        layer = info.layer(name)
        shape = layer.output_shape
        if shape is None:
            raise ReportgenError(f"cam target layer `{name}` ({layer.type}) is not called in the forward pass or "
                                 "does not return a tensor; choose a layer with an (N, C, H, W) output.")
        if spatial_shape(info, name) is None:  # a token layer of the wrong length raises, naming its shape
            raise ReportgenError(f"cam target layer `{name}` ({layer.type}) outputs shape {list(shape)}, which is not "
                                 "a map of the input: a class activation map needs a 4-D (N, C, H, W) output, or "
                                 f"tokens / a channels-last output that the model's family declares. {_spatial_hint(info)}")
    if len(layers) > 1 and FUSED in layers:
        raise ReportgenError(f"a cam target layer is named `{FUSED}`, the name of the fused map of several "
                             "layers; use it as the only target layer.")
    return layers, auto


def check(info: ModelInfo, cfg: CamConfig) -> None:
    """Everything that can fail before running: layers, class indices and labels."""
    target_layers(info, cfg)
    for c in cfg.targets.classes:
        info.class_index(c)
    for method in cfg.methods:  # options that need the input's size or another option (a method's counts)
        options = REGISTRY[method].options_from(cfg)
        if hasattr(options, "check"):
            options.check(tuple(info.config.model.input_size)[-2:])


SMALL_MAP = 4  # a map with a side below this many cells is coarse: warn


def run(ctx: Context, cfg: CamConfig) -> CamResult:
    info = ctx.info
    layers, auto = target_layers(info, cfg)
    asked = ctx.targets(cfg.targets)  # (N, k): a segmenter's images may repeat a class to fill their k
    targets = _targets(ctx, cfg)  # per image, each class once
    n = len(ctx.images)
    k = len(asked[0])
    class_sets = [tuple(int(t[r]) for t in asked) for r in range(k)]
    notes: list[str] = [auto.note()] if auto else []
    share = ctx.engine.input_grad_wanted  # a later stage asked for input gradients: this pass keeps them
    computed = explain(cfg.methods, ctx.engine, class_sets, settings(info, cfg, layers), log=ctx.log).cam
    notes += _masked_channels_notes(cfg, computed.shapes)
    if share and computed.passes is not None:
        notes.append("The gradients section reuses this section's forward and backward pass for "
                     "saliency / input × gradient.")
    notes += not_applicable_notes(computed.layer_not_applicable, layers)
    maps: dict[tuple[str, str, int, int], np.ndarray] = {}
    for layer_key, stack in computed.final.items():
        values = stack.cpu().numpy()  # (M, k, N, H, W) over computed.layer_methods[layer_key]
        for m, method in enumerate(computed.layer_methods[layer_key]):
            for r in range(k):
                for i in range(n):
                    maps[(method, layer_key, i, class_sets[r][i])] = values[m, r, i]
    probs = ctx.probabilities
    warnings = list(computed.warnings)
    for name in layers:
        c, h, w = computed.shapes[name]
        if h * w == 1:
            warnings.append(f"Layer `{name}` has a 1×1 spatial output: its maps are constant. Choose an earlier layer.")
        elif min(h, w) < SMALL_MAP:
            warnings.append(f"Layer `{name}` gives {h}×{w} maps: each cell covers a large part of the image, so the "
                            "maps are coarse. A larger input (`model.input_size`) or an earlier layer gives finer ones.")
    warnings += _in_place_warnings(ctx, layers)
    return CamResult(
        config=cfg,
        layers=layers,
        layer_auto=auto is not None,
        layer_shapes=computed.shapes,
        methods=tuple(cfg.methods),
        images=tuple(image.name for image in ctx.images),
        targets=tuple(tuple(t) for t in targets),
        probabilities=tuple(tuple(float(probs[i, c]) for c in targets[i]) for i in range(n)),
        labels={c: ctx.label(c) for t in targets for c in t},
        input_size=tuple(ctx.batch.shape[-2:]),
        maps=maps,
        not_applicable=computed.not_applicable,
        layer_not_applicable=computed.layer_not_applicable,
        notes=tuple(notes),
        warnings=tuple(warnings),
        seconds=computed.seconds,
        image_count=n,
    )


def recompute(result: CamResult, info: ModelInfo, engine: Engine, targets: np.ndarray
              ) -> dict[tuple[str, str], np.ndarray]:
    """(method, layer or `fused`) -> (n, H, W): `result`'s maps for `targets` (n,) of the engine's model and batch
    (another model: a randomised copy of the build's), computed as `run` computes them."""
    computed = explain(result.computed_methods, engine, [targets.tolist()],
                       settings(info, result.config, result.layers, engine.model)).cam
    return {(method, layer): stack[m, 0].detach().float().cpu().numpy() for layer, stack in computed.final.items()
            for m, method in enumerate(computed.layer_methods[layer])}


def arrays(result: CamResult) -> dict[str, np.ndarray]:
    """`cam/<method>/<layer>/<image>/<class>` (H, W) float32 in [0, 1]; `<layer>` is `fused` for the
    fused map of several layers."""
    return {f"cam/{method}/{layer}/{result.images[i]}/{c}": np.asarray(values, dtype=np.float32)
            for (method, layer, i, c), values in result.maps.items()}


def to_json(result: CamResult) -> dict:
    return {
        "layers": list(result.layers),
        "layer_auto": result.layer_auto,
        "layer_shapes": {name: list(shape) for name, shape in result.layer_shapes.items()},
        "methods": list(result.methods),
        "not_applicable": dict(result.not_applicable),
        "not_applicable_layers": {method: dict(why) for method, why in result.layer_not_applicable.items()},
        "fused": result.fused,
        "images": [
            {"name": name, "targets": [{"index": c, "label": result.labels[c], "probability": p}
                                       for c, p in zip(result.targets[i], result.probabilities[i])]}
            for i, name in enumerate(result.images)
        ],
        "notes": notes(result),
        "warnings": list(result.warnings),
        "seconds": dict(result.seconds),
    }


MANY_MASKED_FORWARDS = 1024  # a method's masked forwards in a build above which the report says what they cost
SUGGESTED_MAX_CHANNELS = 64  # the `cam.max_channels` the report suggests for a layer with more channels


def notes(result: CamResult) -> list[str]:
    """The result's notes and what the masked forwards of every batch cost (`masked_forwards_notes`)."""
    return list(result.notes) + masked_forwards_notes(result.config, result.layer_shapes, result.image_count)


def _masked_methods(cfg: CamConfig) -> list[str]:
    return [m for m in cfg.methods if "masked_forwards" in REGISTRY[m].needs]  # one forward per image and channel


def _masked_channels_notes(cfg: CamConfig, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """What `cam.max_channels` did to Score-CAM / Ablation-CAM."""
    masked = _masked_methods(cfg)
    if not masked or cfg.max_channels is None:
        return []
    capped = [f"`{name}` ({shape[0]})" for name, shape in shapes.items() if shape[0] > cfg.max_channels]
    if not capped:
        return []
    return [f"{' and '.join(REGISTRY[m].title for m in masked)} masked, per image, only the {cfg.max_channels} "
            f"channels of highest mean activation of {', '.join(capped)} (`analyses.cam.max_channels`); the other "
            "channels weigh 0."]


def masked_forwards_notes(cfg: CamConfig, shapes: dict[str, tuple[int, ...]], images: int) -> list[str]:
    """How many forwards Score-CAM / Ablation-CAM ran over `images` images (the whole build, every batch), when
    they masked every channel and that was many, and what would make them fewer: `cam.max_channels` where it
    is below a layer's channel count, else a method or an image count that costs less."""
    masked = _masked_methods(cfg)
    channels = {name: shape[0] for name, shape in shapes.items()}
    forwards = sum(channels.values()) * images  # per method
    if not masked or cfg.max_channels is not None or forwards <= MANY_MASKED_FORWARDS:
        return []
    each = " each" if len(masked) > 1 else ""
    layers = ", ".join(f"`{name}`: {c} channels" for name, c in channels.items())
    text = (f"{' and '.join(REGISTRY[m].title for m in masked)}{each} ran one forward per channel and image: "
            f"{forwards:,} forwards{each} for {images:,} images ({layers}).")
    if max(channels.values()) > SUGGESTED_MAX_CHANNELS:
        fewer = sum(min(c, SUGGESTED_MAX_CHANNELS) for c in channels.values()) * images
        return [text + f" Setting `analyses.cam.max_channels` (say {SUGGESTED_MAX_CHANNELS}) masks only each "
                f"image's {SUGGESTED_MAX_CHANNELS} most active channels ({fewer:,} forwards): faster, at the cost of "
                "exact parity with pytorch-grad-cam."]
    per_image = f"{sum(channels.values())} forwards{' a method' if each else ''}"
    return [text + f" An image needs only {per_image}: what costs is the number of images. A gradient CAM such as "
            "Grad-CAM (one forward and backward per batch), or fewer images (`inputs.limit`), is faster."]


def settings(info: ModelInfo, cfg: CamConfig, layers: tuple[str, ...], model: nn.Module | None = None) -> Settings:
    """What the methods of `cfg` need from `dispatch.explain` at `layers`, for `model` (the build's model, or a
    copy of it: its own head)."""
    return Settings(layers=layers, views={name: map_view(info, name) for name in layers},
                    head=_linear_head(info, model or info.model), masked_batch_size=cfg.batch_size,
                    max_channels=cfg.max_channels, options=cfg)


def _targets(ctx: Context, cfg: CamConfig) -> list[list[int]]:
    """Per image the classes to explain, duplicates dropped (the same count for every image, but a segmenter's)."""
    return [list(dict.fromkeys(int(c) for c in classes)) for classes in ctx.targets(cfg.targets)]


def _linear_head(info: ModelInfo, model: nn.Module) -> nn.Linear | None:
    """`model`'s module where the build's model calls its last nn.Linear in the forward pass (the classifier), if
    any (`model`: the build's model or a copy of it)."""
    linears = [layer for layer in info.layers.values() if layer.order is not None and layer.type == "Linear"]
    if not linears:
        return None
    module = get_layer(model, max(linears, key=lambda layer: layer.order).name)
    return module if isinstance(module, nn.Linear) else None


def _spatial_hint(info: ModelInfo) -> str:
    try:
        return f"For example `{auto_cam_layer(info).name}`; `reportgen layers CONFIG` lists every layer's output shape."
    except ReportgenError:
        return "This model has no layer with a spatial output."


def _in_place_warnings(ctx: Context, layers: tuple[str, ...]) -> list[str]:
    """A target layer whose output an in-place op changes after the layer returned (`h = conv(x); h += x;
    relu_(h)`): CAM reads the tensor as it is after the forward (as pytorch-grad-cam does), the feature maps
    section shows it as the layer returned it. Say so, naming the layer."""
    changed = ctx.engine.modified_in_place(layers)
    return [f"Layer `{name}`'s output is changed in place after the layer returns (an in-place op such as "
            f"`+=` or `relu_` later in the forward): its CAMs use the changed tensor, as pytorch-grad-cam does "
            f"(its activations hook keeps the same tensor object), while the feature maps section shows the "
            f"output as `{name}` returned it. Target the op's own module, if it has one, to explain that tensor."
            for name in changed]


def reduce(results: list[CamResult]) -> CamResult:
    """The result of all images from those of consecutive batches (maps re-keyed by the image's index among
    all images; notes and warnings once; times and image counts added up)."""
    first = results[0]
    if len(results) == 1:
        return first
    maps: dict[tuple[str, str, int, int], np.ndarray] = {}
    offset = 0
    for r in results:
        maps.update({(method, layer, offset + i, c): values for (method, layer, i, c), values in r.maps.items()})
        offset += len(r.images)
    seconds: dict[str, float] = {}
    for r in results:
        for step, s in r.seconds.items():
            seconds[step] = seconds.get(step, 0.0) + s
    layer_not_applicable: dict[str, dict[str, str]] = {}
    for r in results:
        for method, why in r.layer_not_applicable.items():
            layer_not_applicable.setdefault(method, {}).update(why)
    return dataclasses.replace(
        first,
        images=tuple(name for r in results for name in r.images),
        targets=tuple(t for r in results for t in r.targets),
        probabilities=tuple(p for r in results for p in r.probabilities),
        labels={c: label for r in results for c, label in r.labels.items()},
        maps=maps,
        layer_not_applicable=layer_not_applicable,
        notes=tuple(dict.fromkeys(note for r in results for note in r.notes)),
        warnings=tuple(dict.fromkeys(w for r in results for w in r.warnings)),
        seconds=seconds,
        image_count=sum(r.image_count for r in results),
    )


def select(result: CamResult, rows: list[int]) -> CamResult:
    """The result of the images `rows` only (maps re-keyed by position among them)."""
    where = {i: j for j, i in enumerate(rows)}
    return dataclasses.replace(
        result, images=tuple(result.images[i] for i in rows), targets=tuple(result.targets[i] for i in rows),
        probabilities=tuple(result.probabilities[i] for i in rows),
        maps={(m, layer, where[i], c): v for (m, layer, i, c), v in result.maps.items() if i in where})


def first_pass(info: ModelInfo, cfg: CamConfig) -> tuple[tuple[str, ...], bool]:
    """The engine pass `run` asks for first: the target layers, with gradients when a method needs them."""
    return target_layers(info, cfg)[0], any("gradients" in REGISTRY[m].needs for m in cfg.methods)


SPEC = Stage(
    name="cam", title="Class activation maps", order=50, options=CamConfig, run=run, check=check, reduce=reduce, select=select,
    arrays=arrays, to_json=to_json, needs_hooks=True, first_pass=first_pass,
)
