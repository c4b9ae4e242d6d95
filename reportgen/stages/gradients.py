"""Gradient saliency: which input pixels move a class score, by seven attribution methods that equal
Captum 0.9.0's `attribute()` for the same target (reference: captum/attr/_core/*.py).

- `saliency` |∂s/∂x| and `input_x_gradient` x·∂s/∂x: the input gradient of the pass the CAM stage left in
  `ctx.shared[("grad_pass", classes)]` (no pass of their own), else of one forward and one backward per
  target rank (the ReLU-rule forward below, when that runs).
- `guided_backprop` / `deconvnet` / `guided_gradcam`: ONE forward with the ReLU backward rule made
  switchable (`hooks.relu_backward_rule`), one backward per rule and rank; it also gives guided_gradcam's
  plain layer gradient, and the input gradient when no CAM pass is there to reuse.
- `guided_gradcam`: Grad-CAM at `cam_layer` (ReLU, nearest upsampling) times guided backprop.
- `smoothgrad`: mean |∂s/∂x| over `samples` noisy copies, noise sd = `stdev` × (max − min) of each image.
- `integrated_gradients`: Gauss–Legendre quadrature over `steps` points from a baseline, times (x − baseline),
  plus its completeness gap |Σ attributions − (f(x) − f(baseline))| / |f(x) − f(baseline)| per image.

Here s = Σ_i logit[i, class_i]: one target class per image per rank (top-1, top-2, ...). Every forward
serves all ranks (one backward each).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import GRADIENT_METHODS, GradientsConfig
from ..engine import forward_backward_many
from ..errors import ReportgenError, did_you_mean
from ..hooks import capture_outputs_passing_copies, relu_backward_rule
from . import Context, ModelInfo, default_cam_layer

BASELINES = ("zero", "blur", "uniform")
BLUR_SIGMA = 0.05  # `blur` baseline: gaussian sigma = 5% of the shorter image side (11.2 px at 224x224)
GAP_WARNING = 0.05  # integrated gradients: warn when the completeness gap exceeds 5%
BATCH_ELEMENTS = 64 * 3 * 224 * 224  # default inputs per forward (ig, smoothgrad): 64 at 3x224x224
NEEDS_LAYER = ("guided_gradcam",)


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
    warnings: tuple[str, ...]


# ---------------------------------------------------------------------------- validation


def check(info: ModelInfo, cfg: GradientsConfig) -> None:
    """Everything knowable before running: method ids, counts, the CAM layer, the baseline, class ids."""
    for method in cfg.methods:
        if method not in GRADIENT_METHODS:
            raise ReportgenError(f"`analyses.gradients.methods`: unknown method `{method}`."
                                 f"{did_you_mean(method, GRADIENT_METHODS)} Methods: {', '.join(GRADIENT_METHODS)}.")
    for key in ("steps", "samples"):
        if getattr(cfg, key) < 1:
            raise ReportgenError(f"`analyses.gradients.{key}` must be at least 1, got {getattr(cfg, key)}.")
    if cfg.internal_batch_size is not None and cfg.internal_batch_size < 1:
        raise ReportgenError(f"`analyses.gradients.internal_batch_size` must be at least 1, "
                             f"got {cfg.internal_batch_size}.")
    if cfg.stdev < 0:
        raise ReportgenError(f"`analyses.gradients.stdev` must be at least 0, got {cfg.stdev}.")
    if any(m in NEEDS_LAYER for m in cfg.methods):
        cam_layer(info, cfg)
    if "integrated_gradients" in cfg.methods and isinstance(cfg.baseline, Path):
        load_baseline_file(cfg.baseline, tuple(info.config.model.input_size))
    for target in cfg.targets.classes:
        info.class_index(target)


def cam_layer(info: ModelInfo, cfg: GradientsConfig) -> str:
    """guided_gradcam's layer: `cam_layer`, else the CAM stage's first target layer, else the auto-picked one.
    It must give a spatial (N, C, h, w) output."""
    cam_cfg = info.config.analyses.cam
    if cfg.cam_layer is not None:
        name, origin = cfg.cam_layer, "`analyses.gradients.cam_layer`"
    elif cam_cfg is not None and cam_cfg.target_layers:
        name, origin = cam_cfg.target_layers[0], "`analyses.cam.target_layers[0]`"
    else:
        try:
            name = default_cam_layer(info)
        except ReportgenError as exc:
            raise ReportgenError(f"guided_gradcam needs a convolutional layer: {exc} "
                                 "Set `analyses.gradients.cam_layer` or drop guided_gradcam.") from None
        origin = "the automatic CAM layer"
    layer = info.layer(name)
    shape = layer.output_shape
    if shape is None or len(shape) != 4:
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
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ReportgenError(f"`analyses.gradients.baseline`: cannot read `{path}` as a .npy array: {exc}") from None
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) != tuple(input_size):
        raise ReportgenError(f"`analyses.gradients.baseline`: `{path.name}` has shape {list(array.shape)}; the model "
                             f"input is {list(input_size)} (channels, height, width).")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ReportgenError(f"`analyses.gradients.baseline`: `{path.name}` must hold finite numbers.")
    return array.astype(np.float32)


# ---------------------------------------------------------------------------- the stage


def run(ctx: Context, cfg: GradientsConfig) -> GradientsResult:
    check(ctx.info, cfg)
    model, batch = ctx.model, ctx.batch  # batch (N, C, H, W), never modified
    targets = ctx.targets(cfg.targets)  # per image, R classes
    class_sets = [tuple(int(t[r]) for t in targets) for r in range(len(targets[0]))]  # per rank, one class per image
    methods = set(cfg.methods)
    layer = cam_layer(ctx.info, cfg) if "guided_gradcam" in methods else None
    batch_size = cfg.internal_batch_size or max(1, BATCH_ELEMENTS // batch[0].numel())
    out: dict[str, list[torch.Tensor]] = {}  # method -> per rank (N, C, H, W)
    seconds = dict.fromkeys(cfg.methods, 0.0)
    clock = _Clock(seconds)
    warnings: list[str] = []
    if methods & {"guided_backprop", "deconvnet", "guided_gradcam"} and not any(
            isinstance(m, nn.ReLU) for m in model.modules()):
        warnings.append("The model has no nn.ReLU modules (it may call F.relu): guided backprop, deconvnet and "
                        "guided Grad-CAM then use plain gradients, as Captum does.")

    # saliency, input_x_gradient: the CAM stage's pass, else ONE forward for them, guided backprop, deconvnet
    # and guided_gradcam's Grad-CAM, with one backward per ReLU rule and rank
    wants_input = bool(methods & {"saliency", "input_x_gradient"})
    input_grads = [_shared_input_grad(ctx, classes) if wants_input else None for classes in class_sets]
    reused = tuple(grad is not None for grad in input_grads)
    missing = [r for r, grad in enumerate(input_grads) if grad is None] if wants_input else []
    rules = [rule for method, rule in (("guided_backprop", "guided"), ("guided_gradcam", "guided"),
                                       ("deconvnet", "deconv")) if method in methods]
    ruled = None
    if rules:
        with clock(_first(cfg.methods, ("guided_backprop", "deconvnet", "guided_gradcam"))):
            ctx.log(f"gradients: one forward, backward by the ReLU rules {', '.join(dict.fromkeys(rules))}")
            ruled = compute_ruled_pass(model, batch, class_sets, rules + (["plain"] if missing else []), layer)
        for r in missing:
            input_grads[r] = ruled.input_grads["plain"][r]
    elif missing:
        with clock(_first(cfg.methods, ("saliency", "input_x_gradient"))):
            ctx.log("gradients: one forward for the input gradient")
            passes = forward_backward_many(model, batch, [], [class_sets[r] for r in missing], input_grad=True)
        for r, grad_pass in zip(missing, passes):
            input_grads[r] = grad_pass.input_grad
    if "saliency" in methods:
        with clock("saliency"):
            out["saliency"] = [g.abs() for g in input_grads]
    if "input_x_gradient" in methods:
        with clock("input_x_gradient"):
            out["input_x_gradient"] = [batch * g for g in input_grads]
    if "guided_backprop" in methods:
        out["guided_backprop"] = ruled.input_grads["guided"]
    if "deconvnet" in methods:
        out["deconvnet"] = ruled.input_grads["deconv"]
    if layer is not None:
        with clock("guided_gradcam"):
            out["guided_gradcam"] = [compute_guided_gradcam(ruled.activations, grad, guided)
                                     for grad, guided in zip(ruled.layer_grads, ruled.input_grads["guided"])]

    if "smoothgrad" in methods:
        with clock("smoothgrad"):
            out["smoothgrad"] = compute_smoothgrad(model, batch, class_sets, samples=cfg.samples, stdev=cfg.stdev,
                                                   seed=ctx.config.seed, batch_size=batch_size)
    completeness, baseline_text = None, ""
    if "integrated_gradients" in methods:
        with clock("integrated_gradients"):
            baseline, baseline_text = make_baseline(cfg.baseline, batch, ctx.config.seed)
            out["integrated_gradients"] = compute_integrated_gradients(
                model, batch, class_sets, baseline=baseline, steps=cfg.steps, batch_size=batch_size)
            sums = torch.stack([a.double().sum(dim=(1, 2, 3)) for a in out["integrated_gradients"]], dim=1)
            deltas = score_difference(model, ctx.logits, baseline, class_sets)
            completeness = _completeness(sums.cpu().numpy(), deltas)
        warnings += _gap_warnings(completeness, targets, ctx, cfg.steps)

    maps = {m: torch.stack(out[m], dim=1).detach().float().cpu().numpy() for m in cfg.methods}  # (N, R, C, H, W)
    return GradientsResult(
        config=cfg, images=tuple(img.name for img in ctx.images), classes=np.asarray(targets, dtype=np.int64),
        maps=maps, cam_layer=layer, completeness=completeness, baseline=baseline_text,
        reused_cam_pass=reused, seconds=seconds, warnings=tuple(warnings),
    )


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
        "targets": [{"image": name, "classes": [int(c) for c in result.classes[i]]}
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
                for i, name in enumerate(result.images) for r in range(result.classes.shape[1])
            ],
        }
    return entry


# ---------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class RuledPass:
    """What one forward with switchable ReLU rules gave, per class set (target rank)."""

    input_grads: dict[str, list[torch.Tensor]]  # rule -> per class set ∂s/∂input (N, C, H, W), for the rules asked
    activations: torch.Tensor | None  # (N, C', h, w): the layer's own output (when a layer was asked for)
    layer_grads: list[torch.Tensor]  # per class set plain ∂s/∂layer output (N, C', h, w)


def compute_ruled_pass(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]],
                       rules: Sequence[str], layer: str | None = None) -> RuledPass:
    """ONE forward with every nn.ReLU's backward switchable (`hooks.relu_backward_rule`), then per class set
    one backward per rule: ∂ Σ_i logit[i, classes[i]] / ∂ input under "plain" (Captum's Saliency gradient),
    "guided" (GuidedBackprop) or "deconv" (Deconvolution). With `layer`, the plain backward also gives the
    gradient with respect to that layer's own output, as Captum's LayerGradCam takes it: the rest of the
    model gets a copy of the output, so an in-place op after the layer (VGG's ReLU(inplace=True)) changes
    neither the activation nor its gradient."""
    rules = list(dict.fromkeys(rules))
    plain_to_input = "plain" in rules  # else the plain backward stops at the layer
    if layer is not None and not plain_to_input:
        rules.append("plain")
    x = batch.detach().clone().requires_grad_()
    grads: dict[str, list[torch.Tensor]] = {rule: [] for rule in rules}
    layer_grads: list[torch.Tensor] = []
    with relu_backward_rule(model, rules[0]) as state, \
            capture_outputs_passing_copies(model, [layer] if layer else []) as outputs, torch.enable_grad():
        logits = model(x)
    output = outputs.get(layer) if layer else None
    last = len(class_sets) * len(rules) - 1
    for k, classes in enumerate(class_sets):
        score = _score(logits, classes)
        for j, rule in enumerate(rules):
            state.name = rule
            to_input = rule != "plain" or plain_to_input
            wrt = ([x] if to_input else []) + ([output] if rule == "plain" and output is not None else [])
            found = torch.autograd.grad(score, wrt, retain_graph=k * len(rules) + j < last, allow_unused=True)
            found = [torch.zeros_like(w) if g is None else g for g, w in zip(found, wrt)]
            if to_input:
                grads[rule].append(found[0])
            if rule == "plain" and output is not None:
                layer_grads.append(found[-1])
    return RuledPass(input_grads=grads, activations=None if output is None else output.detach(),
                     layer_grads=layer_grads)


def compute_relu_rule_gradient(model: nn.Module, batch: torch.Tensor, classes: Sequence[int],
                               rule: str) -> torch.Tensor:
    """One class set, one rule: (N, C, H, W)."""
    return compute_ruled_pass(model, batch, [classes], [rule]).input_grads[rule][0]


def compute_gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Captum's LayerGradCam with relu_attributions: relu(Σ_c mean_hw(grad) · A). (N, C, h, w) -> (N, 1, h, w)."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def compute_guided_gradcam(activation: torch.Tensor, gradient: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """Captum's GuidedGradCam: Grad-CAM upsampled (nearest) to the input size, times guided backprop, for
    every input channel. activation/gradient (N, C', h, w), guided (N, C, H, W) -> (N, C, H, W)."""
    cam = compute_gradcam(activation, gradient)
    return guided * F.interpolate(cam.to(guided.dtype), size=tuple(guided.shape[2:]), mode="nearest")


def compute_smoothgrad(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *, samples: int,
                       stdev: float, seed: int, batch_size: int) -> list[torch.Tensor]:
    """Captum's NoiseTunnel(Saliency), nt_type="smoothgrad": the mean of |∂s/∂x| over `samples` copies of each
    image plus gaussian noise of sd `stdev` × (max − min of that image). The noise is drawn on the CPU from a
    torch.Generator seeded with `seed`, image after image, (samples, C, H, W) each: the numbers Captum draws
    after `torch.manual_seed(seed)` when called image by image on the CPU. Every class set sees the same
    noisy copies (one forward each). Per class set (N, C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    sds = [stdev * float(x.max() - x.min()) for x in batch]
    noise: dict[int, torch.Tensor] = {}  # image -> (S, C, H, W) noise, drawn in image order, dropped once used

    def inputs(rows: torch.Tensor) -> torch.Tensor:  # rows image-major: image = row // S, sample = row % S
        images = rows // samples
        for i in range(int(images[0]), int(images[-1]) + 1):
            if i not in noise:
                noise[i] = torch.randn((samples, *batch.shape[1:]), generator=generator).to(batch) * sds[i]
        chunk = torch.stack([batch[i] + noise[i][s] for i, s in zip(images.tolist(), (rows % samples).tolist())])
        for i in [i for i in noise if i < int(images[-1])]:
            del noise[i]
        return chunk

    rows = batch.shape[0] * samples
    totals = _sum_input_grads(model, inputs, torch.arange(rows) // samples, None, class_sets, batch, batch_size,
                              transform=torch.abs)
    return [total / samples for total in totals]


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """Captum's Gauss–Legendre points on [0, 1] and their weights (approximation_methods.py)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()


def compute_integrated_gradients(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *,
                                 baseline: torch.Tensor, steps: int, batch_size: int) -> list[torch.Tensor]:
    """Captum's IntegratedGradients (method="gausslegendre", multiply_by_inputs): (x − b) · Σ_k w_k ∂s/∂x at
    b + α_k (x − b), with `batch_size` inputs per forward, one forward per chunk for all class sets.
    baseline (N, C, H, W). Per class set (N, C, H, W)."""
    if baseline.shape != batch.shape:
        raise ReportgenError(f"integrated gradients: the baseline has shape {list(baseline.shape)}, the inputs "
                             f"{list(batch.shape)}.")
    alphas, weights = gauss_legendre(steps)
    n = batch.shape[0]
    alphas = torch.tensor(alphas, dtype=batch.dtype, device=batch.device).view(-1, 1, 1, 1)
    diff = batch - baseline

    def inputs(rows: torch.Tensor) -> torch.Tensor:  # rows step-major (as Captum): step = row // N, image = row % N
        images = (rows % n).to(batch.device)
        return baseline[images] + alphas[(rows // n).to(batch.device)] * diff[images]

    rows = torch.arange(steps * n)
    totals = _sum_input_grads(model, inputs, rows % n, torch.tensor(weights, dtype=torch.float32)[rows // n],
                              class_sets, batch, batch_size)
    return [total * diff for total in totals]


def score_difference(model: nn.Module, logits: torch.Tensor, baseline: torch.Tensor,
                     class_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """f(x) − f(baseline) of each image's target logit, (N, R) float64: what IG's attributions should sum to.
    `logits` (N, K) are f(x), already known; f(baseline) costs one forward without autograd."""
    with torch.no_grad():
        start = model(baseline).to(logits)
    return torch.stack([_pick(logits, c) - _pick(start, c) for c in class_sets], dim=1).double().numpy()


def make_baseline(kind: str | Path, batch: torch.Tensor, seed: int) -> tuple[torch.Tensor, str]:
    """The IG baseline (N, C, H, W) and a description of it: zeros, each image blurred, uniform noise over
    each image's range (seeded), or a .npy file for every image."""
    n, c, h, w = batch.shape
    if isinstance(kind, Path):
        array = load_baseline_file(kind, (c, h, w))
        return torch.from_numpy(array).to(batch).expand_as(batch).clone(), f"from {kind.name}"
    if kind == "zero":
        return torch.zeros_like(batch), "zero"
    if kind == "blur":
        sigma = BLUR_SIGMA * min(h, w)
        return gaussian_blur(batch, sigma), f"gaussian blur, sigma {sigma:.1f} px"
    if kind == "uniform":
        noise = torch.rand(batch.shape, generator=torch.Generator().manual_seed(seed)).to(batch)
        lo = batch.amin(dim=(1, 2, 3), keepdim=True)
        hi = batch.amax(dim=(1, 2, 3), keepdim=True)
        return lo + noise * (hi - lo), f"uniform noise over each image's range, seed {seed}"
    raise ReportgenError(f"unknown baseline `{kind}`.{did_you_mean(str(kind), BASELINES)}")


def gaussian_blur(batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of (N, C, H, W) per channel; radius ceil(3 sigma), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(batch)
    c = batch.shape[1]
    x = F.pad(batch, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


# ---------------------------------------------------------------------------- helpers


def _sum_input_grads(model: nn.Module, inputs: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     weights: torch.Tensor | None, class_sets: Sequence[Sequence[int]], batch: torch.Tensor,
                     batch_size: int,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per class set, Σ over rows r of weights[r] · transform(∂ logit[classes[images[r]]] / ∂ input_r) for each
    image, `batch_size` rows per forward (one backward per class set). `inputs(rows)` builds the (B, C, H, W)
    inputs of a chunk of row indices; images (M,) and weights (M,) are per row. Per class set (N, C, H, W)."""
    totals = [torch.zeros_like(batch) for _ in class_sets]
    # not under torch.no_grad(): engine.forward_backward then returns zero gradients
    for start in range(0, len(images), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(images)))
        owner = images[rows].tolist()
        passes = forward_backward_many(model, inputs(rows), [], [[c[i] for i in owner] for c in class_sets],
                                       input_grad=True)
        for total, grad_pass in zip(totals, passes):
            grad = grad_pass.input_grad  # (B, C, H, W)
            if transform is not None:
                grad = transform(grad)
            if weights is not None:
                grad = grad * weights[rows].to(grad).view(-1, 1, 1, 1)
            for i in sorted(set(owner)):
                total[i] += grad[[j for j, o in enumerate(owner) if o == i]].sum(dim=0)
    return totals


def _score(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Σ_i logit[i, classes[i]]."""
    return _pick(logits, classes).sum()


def _pick(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """(N,) logit[i, classes[i]]."""
    return logits.gather(1, torch.as_tensor(list(classes), device=logits.device).view(-1, 1)).view(-1)


def _completeness(sums: np.ndarray, deltas: np.ndarray) -> Completeness:
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(deltas != 0, np.abs(sums - deltas) / np.abs(deltas), np.nan)
    return Completeness(attribution_sum=sums, delta=deltas, gap=gap)


def _gap_warnings(c: Completeness, targets: list[list[int]], ctx: Context, steps: int) -> list[str]:
    out = []
    for i, image in enumerate(ctx.images):
        for r, cls in enumerate(targets[i]):
            gap = c.gap[i, r]
            what = f"{image.name}, class {cls} ({ctx.label(cls)})"
            if math.isnan(gap):
                out.append(f"Integrated gradients for {what}: f(x) equals f(baseline), so the completeness gap "
                           "is undefined; try another baseline.")
            elif gap > GAP_WARNING:
                out.append(f"Integrated gradients for {what}: the attributions miss f(x) − f(baseline) by "
                           f"{100 * gap:.1f}% (over {100 * GAP_WARNING:.0f}%): raise `steps` (now {steps}).")
    return out


def _shared_input_grad(ctx: Context, classes: tuple[int, ...]) -> torch.Tensor | None:
    """The input gradient of the pass the CAM stage left for these classes, if any."""
    shared = ctx.shared.get(("grad_pass", classes))
    return None if shared is None else shared.input_grad


def _first(methods: Sequence[str], among: Sequence[str]) -> str:
    return next(m for m in methods if m in among)


class _Clock:
    """`with clock(method):` adds the block's wall time to seconds[method]."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds
        self.method = ""

    def __call__(self, method: str) -> "_Clock":
        self.method = method
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self.method] += time.perf_counter() - self.start
