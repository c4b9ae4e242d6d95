"""Class activation maps: where did the network look for a class?

Ten methods, the same maps as pytorch-grad-cam 1.5.7 (`grayscale_cam` for `ClassifierOutputTarget`):

- from ONE forward and ONE backward pass per target rank (`engine.forward_backward_many`) per chunk of
  `inputs.batch_size` images (so autograd never holds the graph of more images than that):
  `gradcam`, `gradcampp`, `xgradcam`, `layercam`, `hirescam`, `eigengradcam`;
- from the same forwards: `eigencam`, and `cam` (the original CAM: the weights of the linear layer
  after global average pooling; "not applicable" on a layer that does not feed such a head: with
  several target layers, CAM has maps on the layers it applies to and its fused map uses those only);
- from masked forwards in batches of `batch_size`: `scorecam` (input × upsampled channel) and
  `ablationcam` (one channel of the layer removed). Their forwards serve every target class at once.

Every map is post-processed as pytorch-grad-cam does: per layer ReLU, min-max
(`(m - min) / (1e-7 + max)`), bilinear resize to the input size; then across layers ReLU, mean and
min-max again. Per target layer we keep the map pytorch-grad-cam gives for that layer alone (so with
one layer, the stored map is that final, twice min-max'd map); with several layers, also the fused
map of all of them (pytorch-grad-cam's multi-layer mode), stored under the layer name `fused`.

`eigencam` / `eigengradcam` project on the first principal component, whose sign is arbitrary
(pytorch-grad-cam keeps whatever LAPACK returns). We fix it: the component's channel loadings sum
to a positive number, so the map is high where the channels are jointly high.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import CamConfig
from ..engine import GradPass, forward_activations, forward_backward_many, forward_replacing
from ..errors import ReportgenError
from ..hooks import get_layer
from . import Context, ModelInfo, default_cam_layer

FUSED = "fused"
GRADIENT_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam")
FORWARD_METHODS = ("scorecam", "ablationcam")
METHOD_TITLES = {
    "cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM", "hirescam": "HiResCAM", "eigencam": "Eigen-CAM", "eigengradcam": "EigenGrad-CAM",
    "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM",
}


@dataclass(frozen=True)
class CamResult:
    config: CamConfig  # the stage's options (alpha, colour map, ... for the figures)
    layers: tuple[str, ...]  # target layers, in config order
    layer_auto: bool  # True: picked by default_cam_layer (no `target_layers` in the config)
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


def target_layers(info: ModelInfo, cfg: CamConfig) -> tuple[tuple[str, ...], bool]:
    """The configured target layers (checked: exist, 4-D output), or the auto-picked one: (layers, auto)."""
    if cfg.target_layers:
        layers = tuple(dict.fromkeys(cfg.target_layers))
        auto = False
    else:
        layers = (default_cam_layer(info),)
        auto = True
    for name in layers:
        layer = info.layer(name)
        shape = layer.output_shape
        if shape is None:
            raise ReportgenError(f"cam target layer `{name}` ({layer.type}) is not called in the forward pass or "
                                 "does not return a tensor; choose a layer with an (N, C, H, W) output.")
        if len(shape) != 4:
            raise ReportgenError(f"cam target layer `{name}` ({layer.type}) outputs shape {list(shape)}, but a class "
                                 f"activation map needs a 4-D (N, C, H, W) output. {_spatial_hint(info)}")
    if len(layers) > 1 and FUSED in layers:
        raise ReportgenError(f"a cam target layer is named `{FUSED}`, the name of the fused map of several "
                             "layers; use it as the only target layer.")
    return layers, auto


def check(info: ModelInfo, cfg: CamConfig) -> None:
    """Everything that can fail before running: layers, class indices and labels."""
    target_layers(info, cfg)
    for c in cfg.targets.classes:
        info.class_index(c)


def run(ctx: Context, cfg: CamConfig) -> CamResult:
    info = ctx.info
    layers, auto = target_layers(info, cfg)
    targets = _targets(ctx, cfg)  # (N, k)
    n = len(ctx.images)
    k = len(targets[0])
    class_sets = [tuple(t[r] for t in targets) for r in range(k)]
    notes: list[str] = []
    if auto:
        shape = info.layers[layers[0]].output_shape
        notes.append(f"Target layer `{layers[0]}` was picked automatically: the last layer with a spatial "
                     f"output ({shape[1]}×{shape[2]}×{shape[3]}) before global pooling. "
                     "Set `analyses.cam.target_layers` to choose others.")
    gradients_cfg = ctx.config.analyses.gradients
    share = bool(gradients_cfg is not None and {"saliency", "input_x_gradient"} & set(gradients_cfg.methods))
    head = _linear_head(info)

    computed = compute_maps(ctx.model, ctx.batch, layers, cfg.methods, class_sets, batch_size=cfg.batch_size,
                            chunk=ctx.config.inputs.batch_size, input_grad=share, head=head, log=ctx.log)
    if share and computed.passes is not None:
        for grad_pass in computed.passes:
            ctx.shared[("grad_pass", grad_pass.classes)] = grad_pass
        notes.append("The gradients section reuses this section's forward and backward pass for "
                     "saliency / input × gradient.")

    for method, skipped in computed.layer_not_applicable.items():
        kept = [f"`{name}`" for name in layers if name not in skipped]
        fused = f" The fused {METHOD_TITLES[method]} map uses {', '.join(kept)} only." if len(layers) > 1 else ""
        notes.append(f"{METHOD_TITLES[method]} is not applicable {_on_layers(skipped)} Its maps are shown for "
                     f"{', '.join(kept)}.{fused}")
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
    return CamResult(
        config=cfg,
        layers=layers,
        layer_auto=auto,
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
    )


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
        "notes": list(result.notes),
        "warnings": list(result.warnings),
        "seconds": dict(result.seconds),
    }


# ---------------------------------------------------------------------------- computation


@dataclass(frozen=True)
class ComputedMaps:
    methods: tuple[str, ...]  # computed on at least one layer, in request order
    final: dict[str, torch.Tensor]  # layer or "fused" -> (M, k, N, H, W) float32 in [0, 1], M = layer_methods[key]
    layer_methods: dict[str, tuple[str, ...]]  # layer or "fused" -> the methods stacked in final[key], request order
    shapes: dict[str, tuple[int, ...]]  # layer -> (C, h, w)
    passes: list[GradPass] | None  # the engine's passes (one per rank, all images) when gradient methods ran
    not_applicable: dict[str, str]  # method -> why it has no maps on any layer
    layer_not_applicable: dict[str, dict[str, str]]  # method -> {layer -> why} where other layers have its maps
    warnings: tuple[str, ...]
    seconds: dict[str, float]


def compute_maps(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    class_sets: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    chunk: int | None = None,
    input_grad: bool = False,
    head: nn.Linear | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> ComputedMaps:
    """Every requested method's maps for `class_sets[r][i]` (rank r, image i), on each layer.

    batch: (N, C, H, W) preprocessed. One engine pass per rank covers all gradient methods, per `chunk`
    images (None: all at once); score and ablation forwards (`batch_size` masks each) are shared by all
    ranks. `head`: the linear layer after global average pooling (for `cam`).
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter
    layers = list(layers)
    n = batch.shape[0]
    size = tuple(batch.shape[-2:])
    class_sets = [tuple(int(c) for c in classes) for classes in class_sets]
    per_image = [tuple(classes[i] for classes in class_sets) for i in range(n)]  # (N, k)
    warnings: list[str] = []
    step = max(1, chunk or n)
    starts = range(0, n, step)

    start = clock()
    passes = None
    if any(m in GRADIENT_METHODS for m in methods) or input_grad:
        log(f"cam: {len(starts)} forward + {len(starts) * len(class_sets)} backward on {', '.join(layers)}")
        passes = _concat_passes([
            forward_backward_many(model, batch[s:s + step], layers, [c[s:s + step] for c in class_sets],
                                  input_grad=input_grad) for s in starts])
        logits, activations = passes[0].logits, passes[0].activations
    else:
        parts = [forward_activations(model, batch[s:s + step], layers) for s in starts]
        logits = torch.cat([p[0] for p in parts])
        activations = {name: torch.cat([p[1][name] for p in parts]) for name in layers}
    seconds["forward_backward" if passes else "forward"] = clock() - start
    shapes = {name: tuple(activations[name].shape[1:]) for name in layers}

    raw: dict[str, dict[str, torch.Tensor]] = {name: {} for name in layers}  # layer -> method -> (k, N, h, w)
    skipped: dict[str, dict[str, str]] = {}  # method -> layer -> why it does not apply there
    for method in methods:
        start = clock()
        for name in layers:
            a = activations[name].float()  # (N, C, h, w)
            if method in GRADIENT_METHODS:
                raw[name][method] = torch.stack([GRADIENT_CAMS[method](a, p.gradients[name].float()) for p in passes])
            elif method == "eigencam":
                raw[name][method] = project_2d(a).expand(len(class_sets), -1, -1, -1)
            elif method == "cam":
                why = _cam_not_applicable(head, a, logits)
                if why:
                    skipped.setdefault(method, {})[name] = why
                    continue
                weights = head.weight.detach().float()[torch.as_tensor(class_sets, device=a.device)]  # (k, N, C)
                raw[name][method] = torch.einsum("knc,nchw->knhw", weights, a)
            elif method == "scorecam":
                weights = score_cam_weights(model, batch, a, per_image, batch_size=batch_size)  # (N, k, C)
                raw[name][method] = torch.einsum("nkc,nchw->knhw", weights, a)
            elif method == "ablationcam":
                weights, warning = ablation_cam_weights(model, batch, name, activations[name], logits, per_image,
                                                        batch_size=batch_size)
                if warning:
                    warnings.append(warning)
                raw[name][method] = torch.einsum("nkc,nchw->knhw", weights, a)
            else:
                raise ValueError(f"unknown CAM method {method!r}")
        seconds[method] = seconds.get(method, 0.0) + clock() - start
    not_applicable = {m: _on_layers(why) for m, why in skipped.items() if len(why) == len(layers)}
    layer_not_applicable = {m: why for m, why in skipped.items() if m not in not_applicable}

    start = clock()
    done = tuple(m for m in methods if m not in not_applicable)
    layer_methods = {name: tuple(m for m in done if m in raw[name]) for name in layers}
    empty = batch.new_zeros((0, len(class_sets), n, *size), dtype=torch.float32)
    per_layer = {name: scale_cams(torch.stack([raw[name][m] for m in layer_methods[name]]).clamp_min(0), size)
                 if layer_methods[name] else empty for name in layers}  # (M, k, N, H, W)
    final = {name: scale_cams(stage.clamp_min(0)) for name, stage in per_layer.items()}
    if len(layers) > 1:
        fused = []
        for method in done:  # the mean over the layers that have the method
            have = [per_layer[name][layer_methods[name].index(method)] for name in layers if method in raw[name]]
            fused.append(scale_cams(torch.stack(have).clamp_min(0).mean(0)))
        final[FUSED] = torch.stack(fused) if fused else empty
        layer_methods[FUSED] = done
    seconds["postprocess"] = clock() - start
    return ComputedMaps(methods=done, final=final, layer_methods=layer_methods, shapes=shapes, passes=passes,
                        not_applicable=not_applicable, layer_not_applicable=layer_not_applicable,
                        warnings=tuple(warnings), seconds=seconds)


def _concat_passes(chunks: Sequence[list[GradPass]]) -> list[GradPass]:
    """Per rank, one GradPass for all images from the passes of consecutive chunks of images
    (activations and logits are shared by the ranks, as the engine's passes are)."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0][0]
    logits = torch.cat([c[0].logits for c in chunks])
    activations = {name: torch.cat([c[0].activations[name] for c in chunks]) for name in first.activations}
    return [GradPass(
        classes=tuple(cls for c in chunks for cls in c[r].classes),
        logits=logits,
        activations=activations,
        gradients={name: torch.cat([c[r].gradients[name] for c in chunks]) for name in first.gradients},
        input_grad=None if first.input_grad is None else torch.cat([c[r].input_grad for c in chunks]),
    ) for r in range(len(chunks[0]))]


def _on_layers(reasons: dict[str, str]) -> str:
    """{layer: why} -> "on layer `a`: why" (layers with the same reason share it)."""
    by_why: dict[str, list[str]] = {}
    for name, why in reasons.items():
        by_why.setdefault(why, []).append(f"`{name}`")
    return " ".join(f"on layer{'s' if len(names) > 1 else ''} {', '.join(names)}: {why}" for why, names in by_why.items())


def scale_cams(cams: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """pytorch-grad-cam's `scale_cam_image` on every map of (..., h, w): min-max per map
    (`(m - min) / (1e-7 + max)`), then, with `size`, bilinear resize to (H, W) (align_corners=False)."""
    lead, (h, w) = cams.shape[:-2], cams.shape[-2:]
    flat = cams.reshape(-1, h, w)
    flat = flat - flat.amin(dim=(1, 2), keepdim=True)
    flat = flat / (1e-7 + flat.amax(dim=(1, 2), keepdim=True))
    if size is not None:
        flat = F.interpolate(flat[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return flat.reshape(*lead, *flat.shape[-2:])


def _weighted(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # weights (N, C), a (N, C, h, w) -> (N, h, w)
    return torch.einsum("nc,nchw->nhw", weights, a)


def _gradcampp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return _weighted((g.clamp_min(0) * alpha).sum(dim=(2, 3)), a)


def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    return _weighted((g * a / (sum_a + 1e-7)).sum(dim=(2, 3)), a)


# activations (N, C, h, w), gradients (N, C, h, w) -> raw map (N, h, w), before ReLU and scaling
GRADIENT_CAMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": lambda a, g: _weighted(g.mean(dim=(2, 3)), a),
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": lambda a, g: (g.clamp_min(0) * a).sum(dim=1),
    "hirescam": lambda a, g: (g * a).sum(dim=1),
    "eigengradcam": lambda a, g: project_2d(g * a),
}


def project_2d(values: torch.Tensor, *, fix_sign: bool = True) -> torch.Tensor:
    """(N, C, h, w) -> (N, h, w): each image's centred (h·w, C) matrix projected on its first right
    singular vector (pytorch-grad-cam's `get_2d_projection`; NaN -> 0). With `fix_sign`, the vector's
    loadings sum to a positive number; otherwise the sign is whatever the SVD returns."""
    n, c, h, w = values.shape
    x = torch.nan_to_num(values, nan=0.0, posinf=math.inf, neginf=-math.inf)
    x = x.reshape(n, c, h * w).transpose(1, 2).double()  # (N, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:, 0, :]  # (N, C)
    if fix_sign:
        v = v * torch.where(v.sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(v)
    return (x @ v[:, :, None])[..., 0].reshape(n, h, w).float()


def score_cam_weights(
    model: nn.Module, batch: torch.Tensor, activations: torch.Tensor, classes: Sequence[Sequence[int]],
    *, batch_size: int = 32,
) -> torch.Tensor:
    """Score-CAM channel weights (N, k, C): softmax over channels of the target logits of
    input × (channel upsampled with align_corners=True, min-max'd with eps 1e-8), as pytorch-grad-cam.

    One masked forward per image and channel, in batches; all k target classes read the same outputs."""
    n, c = activations.shape[:2]
    size = tuple(batch.shape[-2:])
    weights = []
    with torch.no_grad():
        for i in range(n):
            index = torch.as_tensor(classes[i], device=batch.device)
            scores = []
            for start in range(0, c, batch_size):
                up = F.interpolate(activations[i:i + 1, start:start + batch_size].float(), size=size,
                                   mode="bilinear", align_corners=True)[0]  # (b, H, W)
                lo = up.amin(dim=(1, 2), keepdim=True)
                hi = up.amax(dim=(1, 2), keepdim=True)
                masks = (up - lo) / (hi - lo + 1e-8)
                scores.append(model(batch[i:i + 1] * masks[:, None]).float()[:, index])  # (b, k)
            weights.append(torch.softmax(torch.cat(scores), dim=0).T)  # (k, C)
    return torch.stack(weights)


ABLATION_VALUE = 1e7


def ablation_cam_weights(
    model: nn.Module, batch: torch.Tensor, layer: str, activations: torch.Tensor, logits: torch.Tensor,
    classes: Sequence[Sequence[int]], *, batch_size: int = 32,
) -> tuple[torch.Tensor, str | None]:
    """Ablation-CAM channel weights (N, k, C) = (score - ablated score) / score, as pytorch-grad-cam.

    A channel is ablated by setting it to 0 when the image's activations have minimum 0, else to a
    very negative value: in each batch of `batch_size` ablations the j-th one (0-based) gets
    `min - (j + 1)·1e7` (pytorch-grad-cam's AblationLayer lowers the minimum as it goes). Only the
    model after `layer` needs to see the ablated batch: the input runs once (batch of 1) and the
    layer hands on the ablated copies, when the rest of the model broadcasts; otherwise the image is
    repeated like pytorch-grad-cam does. Returns the weights and a warning, if any."""
    n, c = activations.shape[:2]
    weights = []
    broadcast: bool | None = None
    warning = None
    with torch.no_grad():
        for i in range(n):
            a = activations[i]  # (C, h, w)
            index = torch.as_tensor(classes[i], device=batch.device)
            if broadcast is None:
                broadcast = _broadcasts(model, batch[i:i + 1], layer, a, logits[i])
            values = _ablation_values(a, min(batch_size, c))  # (b,) or None for zeros
            scores = []
            for start in range(0, c, batch_size):
                b = min(batch_size, c - start)
                ablated = a.unsqueeze(0).repeat(b, 1, 1, 1)
                rows = torch.arange(b, device=a.device)
                ablated[rows, start + rows] = 0.0 if values is None else values[:b, None, None]
                inputs = batch[i:i + 1] if broadcast else batch[i:i + 1].expand(b, -1, -1, -1)
                out = forward_replacing(model, inputs, layer, ablated)
                scores.append(out.float()[:, index])  # (b, k)
            original = logits[i, index].float()  # (k,)
            ablated_scores = torch.cat(scores).T  # (k, C)
            weights.append((original[:, None] - ablated_scores) / original[:, None])
    if broadcast is False:
        warning = (f"Ablation-CAM on `{layer}` repeats each image {batch_size} times per batch (the model does not "
                   "accept one input with a batch of ablated activations); it is slower, not different.")
    return torch.stack(weights), warning


def _ablation_values(a: torch.Tensor, count: int) -> torch.Tensor | None:
    """None when the minimum is 0 (ablate to zero), else the float32 sequence min - 1e7, (min - 1e7) - 1e7, ..."""
    low = a.float().min()
    if low.item() == 0:
        return None
    values = []
    current = low
    for _ in range(count):
        current = current - torch.tensor(ABLATION_VALUE, dtype=torch.float32, device=a.device)
        values.append(current)
    return torch.stack(values).to(a.dtype)


def _broadcasts(model: nn.Module, image: torch.Tensor, layer: str, a: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether feeding one image while `layer` returns a batch of 2 copies of its own output gives the image's logits twice."""
    try:
        out = forward_replacing(model, image, layer, a.unsqueeze(0).repeat(2, 1, 1, 1).clone())
    except RuntimeError:
        return False
    if out.shape != (2, logits.shape[0]):
        return False
    scale = float(logits.abs().max()) + 1e-6
    return bool(torch.allclose(out.float(), logits.float().expand(2, -1), rtol=1e-4, atol=1e-4 * scale))


def _targets(ctx: Context, cfg: CamConfig) -> list[list[int]]:
    """Per image the classes to explain, duplicates dropped (same count for every image)."""
    return [list(dict.fromkeys(int(c) for c in classes)) for classes in ctx.targets(cfg.targets)]


def _linear_head(info: ModelInfo) -> nn.Linear | None:
    """The last nn.Linear called in the forward pass (the classifier), if any."""
    linears = [layer for layer in info.layers.values() if layer.order is not None and layer.type == "Linear"]
    if not linears:
        return None
    module = get_layer(info.model, max(linears, key=lambda layer: layer.order).name)
    return module if isinstance(module, nn.Linear) else None


def _cam_not_applicable(head: nn.Linear | None, a: torch.Tensor, logits: torch.Tensor) -> str | None:
    """Why the original CAM does not apply to this layer (None when it does): the logits must be
    exactly a linear layer of the layer's spatial mean (global average pooling + one nn.Linear)."""
    c = a.shape[1]
    if head is None:
        return "CAM needs a model ending in global average pooling and one linear layer; this model has no nn.Linear."
    if head.in_features != c:
        return (f"CAM needs the target layer to feed global average pooling and then the last linear layer "
                f"directly; the layer has {c} channels but the last linear layer takes {head.in_features} inputs.")
    bias = head.bias.detach().float() if head.bias is not None else 0.0
    predicted = a.mean(dim=(2, 3)) @ head.weight.detach().float().T + bias  # (N, K)
    scale = float(logits.abs().max()) + 1e-6
    if predicted.shape != logits.shape or not torch.allclose(predicted, logits.float(), rtol=1e-3, atol=1e-4 * scale):
        return ("CAM needs the scores to be the last linear layer applied to the global average of the target "
                "layer; between them this model does more (another layer, or a different pooling).")
    return None


def _spatial_hint(info: ModelInfo) -> str:
    try:
        return f"For example `{default_cam_layer(info)}`; `reportgen layers CONFIG` lists every layer's output shape."
    except ReportgenError:
        return "This model has no layer with a spatial output."
