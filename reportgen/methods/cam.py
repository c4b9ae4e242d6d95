"""The CAM family's computation: per method a function (named by its record in `reportgen.methods`),
the passes they share, and pytorch-grad-cam 1.5.7's post-processing.

`compute_maps` runs in three steps:

1. `engine_passes`: the passes every requested method needs: ONE forward and ONE backward per target
   rank (`engine.Engine.passes`: activations and gradients of every target layer) when a method needs
   gradients, else one forward for the activations;
2. `run_methods`: each method's raw map per layer (`Method.needs` says what its function receives);
3. `postprocess`: per layer ReLU, min-max (`(m - min) / (1e-7 + max)`), bilinear resize to the input
   size; then across layers ReLU, mean and min-max again (pytorch-grad-cam's multi-layer mode). Per target
   layer we keep the map pytorch-grad-cam gives for that layer alone; with several layers, also the fused
   map of all of them, under the layer name `fused`.

`eigencam` / `eigengradcam` project on the first principal component, whose sign is arbitrary
(pytorch-grad-cam keeps whatever LAPACK returns). We fix it: the component's channel loadings sum
to a positive number, so the map is high where the channels are jointly high.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Engine, GradPass, for_rows, forward_replacing
from ..ops import batches
from ..progress import track
from . import REGISTRY, Method, title

FUSED = "fused"


class NotApplicable(Exception):
    """Raised by a method's function for a layer it does not apply to; the message says why."""


@dataclass(frozen=True)
class CamJob:
    """What a CAM method that is not a function of (activations, gradients) gets, for one target layer."""

    model: nn.Module
    # input -> logits (N, K); rows other than the batch's images in order go through `engine.for_rows(forward, owner)`
    forward: Callable[[torch.Tensor], torch.Tensor]
    batch: torch.Tensor  # (N, C, H, W) preprocessed, never modified
    layer: str
    activations: torch.Tensor  # (N, C', h, w) float32: the layer's output
    raw_activations: torch.Tensor  # the same as the layer returned it (its dtype)
    logits: torch.Tensor  # (N, K)
    class_sets: list[tuple[int, ...]]  # (k, N): per rank, one class per image
    per_image: list[tuple[int, ...]]  # (N, k): per image, its k classes
    batch_size: int  # masked forwards per batch
    head: nn.Linear | None  # the linear layer after global average pooling, if any
    warnings: list[str] = field(default_factory=list)  # the method may add some
    channels_last: bool = False  # raw_activations hold the channels last (tokens, (N, H, W, C)): a viewed layer
    keep: torch.Tensor | None = None  # (N, M) per image, the channels to mask (`cam.max_channels`); None: all
    options: Any = None  # the method's options (its record's `options` dataclass), or None for a method without


# ---------------------------------------------------------------------------- the methods

def gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _weighted(g.mean(dim=(2, 3)), a)


def gradcampp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return _weighted((g.clamp_min(0) * alpha).sum(dim=(2, 3)), a)


def xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    return _weighted((g * a / (sum_a + 1e-7)).sum(dim=(2, 3)), a)


def layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.clamp_min(0) * a).sum(dim=1)


def hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).sum(dim=1)


def eigengradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return project_2d(g * a)


def eigencam(job: CamJob) -> torch.Tensor:
    return project_2d(job.activations).expand(len(job.class_sets), -1, -1, -1)


def original_cam(job: CamJob) -> torch.Tensor:
    """The original CAM: the head's weights of each class over the layer's channels."""
    scored = getattr(job.forward, "score_kind", None)  # a segmenter's or a detector's scores (regions, boxes)
    if scored:
        raise NotApplicable("CAM weighs the layer's channels by a classifier's last linear layer after global "
                            f"average pooling; {scored} is not such a layer.")
    why = _cam_not_applicable(job.head, job.activations, job.logits)
    if why:
        raise NotApplicable(why)
    a = job.activations
    weights = job.head.weight.detach().float()[torch.as_tensor(job.class_sets, device=a.device)]  # (k, N, C)
    return torch.einsum("knc,nchw->knhw", weights, a)


def scorecam(job: CamJob) -> torch.Tensor:
    weights = score_cam_weights(job.model, job.batch, job.activations, job.per_image, batch_size=job.batch_size,
                                forward=job.forward, keep=job.keep)  # (N, k, C)
    return torch.einsum("nkc,nchw->knhw", weights, job.activations)


def ablationcam(job: CamJob) -> torch.Tensor:
    weights, warning = ablation_cam_weights(job.model, job.batch, job.layer, job.raw_activations, job.logits,
                                            job.per_image, batch_size=job.batch_size, forward=job.forward,
                                            channels_last=job.channels_last, keep=job.keep)
    if warning:
        job.warnings.append(warning)
    return torch.einsum("nkc,nchw->knhw", weights, job.activations)


# ---------------------------------------------------------------------------- helpers


def _weighted(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # weights (N, C), a (N, C, h, w) -> (N, h, w)
    return torch.einsum("nc,nchw->nhw", weights, a)


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
    *, batch_size: int = 32, forward: Callable | None = None, keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score-CAM channel weights (N, k, C): softmax over channels of the target logits of
    input × (channel upsampled with align_corners=True, min-max'd with eps 1e-8), as pytorch-grad-cam.

    One masked forward per image and channel, in batches; all k target classes read the same outputs. `keep`
    (N, M): per image only those channels are masked (the softmax runs over them; the others weigh 0)."""
    forward = forward or model
    n, c = activations.shape[:2]
    size = tuple(batch.shape[-2:])
    weights = []
    with torch.no_grad():
        for i in track(range(n), total=n, desc="Score-CAM", unit="image"):
            index = torch.as_tensor(classes[i], device=batch.device)
            chosen = torch.arange(c, device=activations.device) if keep is None else keep[i]
            scores = []
            for rows in batches(len(chosen), batch_size):
                up = F.interpolate(activations[i:i + 1, chosen[rows]].float(), size=size,
                                   mode="bilinear", align_corners=True)[0]  # (b, H, W)
                lo = up.amin(dim=(1, 2), keepdim=True)
                hi = up.amax(dim=(1, 2), keepdim=True)
                masks = (up - lo) / (hi - lo + 1e-8)
                rows_forward = for_rows(forward, torch.full((len(masks),), i))  # copies of image i
                scores.append(rows_forward(batch[i:i + 1] * masks[:, None]).float()[:, index])  # (b, k)
            w = torch.zeros(len(index), c, device=activations.device)
            w[:, chosen] = torch.softmax(torch.cat(scores), dim=0).T.to(w)  # (k, M) into (k, C)
            weights.append(w)
    return torch.stack(weights)


ABLATION_VALUE = 1e7


def ablation_cam_weights(
    model: nn.Module, batch: torch.Tensor, layer: str, activations: torch.Tensor, logits: torch.Tensor,
    classes: Sequence[Sequence[int]], *, batch_size: int = 32, forward: Callable | None = None,
    channels_last: bool = False, keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Ablation-CAM channel weights (N, k, C) = (score - ablated score) / score, as pytorch-grad-cam.

    A channel is ablated by setting it to 0 when the image's activations have minimum 0, else to a
    very negative value: in each batch of `batch_size` ablations the j-th one (0-based) gets
    `min - (j + 1)·1e7` (pytorch-grad-cam's AblationLayer lowers the minimum as it goes). Only the
    model after `layer` needs to see the ablated batch: the input runs once (batch of 1) and the
    layer hands on the ablated copies, when the rest of the model broadcasts; otherwise the image is
    repeated like pytorch-grad-cam does. Returns the weights and a warning, if any.

    `activations` are the layer's output as it returned it; `channels_last`: its channels are its last axis
    (tokens (N, L, C) or (N, H, W, C)), and ablating a channel sets it in every token, the class token
    included, as pytorch-grad-cam's `AblationLayerVit` does. `keep` (N, M): per image only those channels are
    ablated; the others weigh 0."""
    forward = forward or model
    c = activations.shape[-1] if channels_last else activations.shape[1]
    n = activations.shape[0]
    weights = []
    broadcast: bool | None = None
    warning = None
    with torch.no_grad():
        for i in track(range(n), total=n, desc="Ablation-CAM", unit="image"):
            a = activations[i]  # (C, h, w), or channels last
            index = torch.as_tensor(classes[i], device=batch.device)
            chosen = torch.arange(c, device=a.device) if keep is None else keep[i].to(a.device)
            if broadcast is None:
                broadcast = _broadcasts(model, batch[i:i + 1], layer, a, logits[i], for_rows(forward, [i, i]))
            values = _ablation_values(a, min(batch_size, len(chosen)))  # (b,) or None for zeros
            scores = []
            for part in batches(len(chosen), batch_size):
                b = part.stop - part.start
                ablated = a.unsqueeze(0).repeat(b, *([1] * a.dim()))
                channels_first = ablated.movedim(-1, 1) if channels_last else ablated  # a view: writes go through
                rows = torch.arange(b, device=a.device)
                value = 0.0 if values is None else values[:b].view(b, *([1] * (a.dim() - 1)))
                channels_first[rows, chosen[part]] = value
                inputs = batch[i:i + 1] if broadcast else batch[i:i + 1].expand(b, -1, -1, -1)
                out = forward_replacing(model, inputs, layer, ablated, forward=for_rows(forward, [i] * b))
                scores.append(out.float()[:, index])  # (b, k)
            original = logits[i, index].float()  # (k,)
            ablated_scores = torch.cat(scores).T  # (k, M)
            w = torch.zeros(len(index), c, device=original.device)
            w[:, chosen.to(w.device)] = (original[:, None] - ablated_scores) / original[:, None]
            weights.append(w)
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


def _broadcasts(model: nn.Module, image: torch.Tensor, layer: str, a: torch.Tensor, logits: torch.Tensor,
                forward: Callable | None = None) -> bool:
    """Whether feeding one image while `layer` returns a batch of 2 copies of its own output gives the image's logits twice."""
    try:
        out = forward_replacing(model, image, layer, a.unsqueeze(0).repeat(2, *([1] * a.dim())), forward=forward)
    except (RuntimeError, ValueError):  # ValueError: a segmenter's scores of 2 rows got another count
        return False
    if out.shape != (2, logits.shape[0]):
        return False
    scale = float(logits.abs().max()) + 1e-6
    return bool(torch.allclose(out.float(), logits.float().expand(2, -1), rtol=1e-4, atol=1e-4 * scale))


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


# ---------------------------------------------------------------------------- the three steps


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
    engine: Engine | None = None,
    log: Callable[[str], None] = lambda message: None,
    views: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] | None = None,
    max_channels: int | None = None,
    options: Any = None,
) -> ComputedMaps:
    """Every requested method's maps for `class_sets[r][i]` (rank r, image i), on each layer.

    batch: (N, C, H, W) preprocessed. One engine pass per rank covers all gradient methods, per `chunk`
    images (None: all at once); score and ablation forwards (`batch_size` masks each) are shared by all
    ranks. `head`: the linear layer after global average pooling (for `cam`). `engine`: the build's engine
    (its cache serves the passes to later stages); a private one over `model` and `batch` otherwise.
    `views`: layer -> how its output becomes (N, C, h, w) (a transformer's tokens; `ModelAdapter.layer_view`),
    applied to its activations and gradients alike (pytorch-grad-cam's `reshape_transform`). `max_channels`:
    Score-CAM and Ablation-CAM mask only each image's channels of highest spatial mean, at most this many.
    `options`: what holds the methods' options as attributes (the stage's options; None: their defaults).
    """
    engine = engine or Engine(model, batch, chunk=chunk)
    records = [REGISTRY[m] for m in methods]
    class_sets = [tuple(int(c) for c in classes) for classes in class_sets]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    logits, activations, passes = engine_passes(engine, layers, records, class_sets, input_grad=input_grad, log=log)
    seconds["forward_backward" if passes else "forward"] = time.perf_counter() - start
    raw, skipped, warnings = run_methods(engine, layers, records, class_sets, logits, activations, passes,
                                         batch_size=batch_size, head=head, seconds=seconds, views=views or {},
                                         max_channels=max_channels, options=options)
    start = time.perf_counter()
    done, final, layer_methods, not_applicable, layer_not_applicable = postprocess(
        raw, skipped, list(layers), [m.id for m in records], len(class_sets), batch)
    seconds["postprocess"] = time.perf_counter() - start
    return ComputedMaps(methods=done, final=final, layer_methods=layer_methods,
                        shapes={name: tuple(_viewed(views or {}, name, activations[name]).shape[1:])
                                for name in layers}, passes=passes,
                        not_applicable=not_applicable, layer_not_applicable=layer_not_applicable,
                        warnings=tuple(warnings), seconds=seconds)


def engine_passes(engine: Engine, layers: Sequence[str], records: Sequence[Method],
                  class_sets: Sequence[tuple[int, ...]], *, input_grad: bool = False,
                  log: Callable[[str], None] = lambda message: None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[GradPass] | None]:
    """(logits (N, K), layer -> activations (N, C, h, w), the gradient passes per rank or None): one forward and
    one backward per rank when a method needs gradients (or the input gradient is asked for), else one forward."""
    if any("gradients" in m.needs for m in records) or input_grad:
        log(f"cam: {engine.chunks} forward + {engine.chunks * len(class_sets)} backward on {', '.join(layers)}")
        passes = engine.passes(layers, class_sets, input_grad=input_grad)
        return passes[0].logits, passes[0].activations, passes
    logits, activations = engine.activations(layers)
    return logits, activations, None


def run_methods(engine: Engine, layers: Sequence[str], records: Sequence[Method],
                class_sets: Sequence[tuple[int, ...]], logits: torch.Tensor, activations: dict[str, torch.Tensor],
                passes: list[GradPass] | None, *, batch_size: int, head: nn.Linear | None,
                seconds: dict[str, float], views: dict | None = None, max_channels: int | None = None,
                options: Any = None) -> tuple[dict, dict, list[str]]:
    """Each method's raw maps: (layer -> method -> (k, N, h, w), method -> {layer -> why not applicable}, warnings).
    `views` and `max_channels`: see `compute_maps`."""
    views = views or {}
    n = engine.batch.shape[0]
    per_image = [tuple(classes[i] for classes in class_sets) for i in range(n)]  # (N, k)
    raw: dict[str, dict[str, torch.Tensor]] = {name: {} for name in layers}
    skipped: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    for method in records:
        start = time.perf_counter()
        fn = method.function()
        for name in layers:
            a = _viewed(views, name, activations[name]).float()  # (N, C, h, w)
            if "gradients" in method.needs:
                raw[name][method.id] = torch.stack([fn(a, _viewed(views, name, p.gradients[name]).float())
                                                    for p in passes])
                continue
            keep = None
            if max_channels is not None and a.shape[1] > max_channels:
                keep = a.mean(dim=(2, 3)).topk(max_channels, dim=1).indices  # (N, M) most active first
            job = CamJob(model=engine.model, forward=engine.forward, batch=engine.batch, layer=name, activations=a,
                         raw_activations=activations[name], logits=logits, class_sets=list(class_sets),
                         per_image=per_image, batch_size=batch_size, head=head,
                         channels_last=views.get(name) is not None, keep=keep,
                         options=method.options_from(options))
            try:
                raw[name][method.id] = fn(job)
            except NotApplicable as exc:
                skipped.setdefault(method.id, {})[name] = str(exc)
            warnings += job.warnings
        seconds[method.id] = seconds.get(method.id, 0.0) + time.perf_counter() - start
    return raw, skipped, warnings


def _viewed(views: dict, name: str, output: torch.Tensor) -> torch.Tensor:
    """A layer's output (or its gradient) as (N, C, h, w): through the layer's view, if it has one."""
    view = views.get(name)
    return output if view is None else view(output)


def postprocess(raw: dict[str, dict[str, torch.Tensor]], skipped: dict[str, dict[str, str]], layers: list[str],
                methods: list[str], k: int, batch: torch.Tensor):
    """pytorch-grad-cam's post-processing of the raw maps: (methods done, final maps per layer and `fused`,
    the methods stacked per layer, not applicable anywhere, not applicable on some layers)."""
    n, size = batch.shape[0], tuple(batch.shape[-2:])
    not_applicable = {m: on_layers(why) for m, why in skipped.items() if len(why) == len(layers)}
    layer_not_applicable = {m: why for m, why in skipped.items() if m not in not_applicable}
    done = tuple(m for m in methods if m not in not_applicable)
    layer_methods = {name: tuple(m for m in done if m in raw[name]) for name in layers}
    empty = batch.new_zeros((0, k, n, *size), dtype=torch.float32)
    per_layer = {name: torch.stack([scale_cams(raw[name][m].clamp_min(0), size) for m in layer_methods[name]])
                 if layer_methods[name] else empty for name in layers}  # (M, k, N, H, W); raw sizes may differ
    final = {name: scale_cams(stage.clamp_min(0)) for name, stage in per_layer.items()}
    if len(layers) > 1:
        fused = []
        for method in done:  # the mean over the layers that have the method
            have = [per_layer[name][layer_methods[name].index(method)] for name in layers if method in raw[name]]
            fused.append(scale_cams(torch.stack(have).clamp_min(0).mean(0)))
        final[FUSED] = torch.stack(fused) if fused else empty
        layer_methods[FUSED] = done
    return done, final, layer_methods, not_applicable, layer_not_applicable


def not_applicable_notes(layer_not_applicable: dict[str, dict[str, str]], layers: Sequence[str]) -> list[str]:
    notes = []
    for method, skipped in layer_not_applicable.items():
        kept = [f"`{name}`" for name in layers if name not in skipped]
        fused = f" The fused {title(method)} map uses {', '.join(kept)} only." if len(layers) > 1 else ""
        notes.append(f"{title(method)} is not applicable {on_layers(skipped)} Its maps are shown for "
                     f"{', '.join(kept)}.{fused}")
    return notes


def on_layers(reasons: dict[str, str]) -> str:
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


