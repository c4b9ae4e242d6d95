"""The gradient family's computation, equal to Captum 0.9.0's `attribute()` for the same target
(reference: captum/attr/_core/*.py). Each method's function is named by its record in `reportgen.methods`.

- `saliency` |∂s/∂x| and `input_x_gradient` x·∂s/∂x: from the input gradient of one forward and one backward
  per target rank (served by the engine's cache when an earlier stage ran that pass);
- `guided_backprop` / `deconvnet` / `guided_gradcam`: from ONE forward with the ReLU backward rule made
  switchable (`hooks.relu_backward_rule`), one backward per rule and rank (`compute_relu_rule_pass`);
- `guided_gradcam`: Grad-CAM at a layer (ReLU, nearest upsampling) times guided backprop;
- `smoothgrad`: mean |∂s/∂x| over `samples` noisy copies, noise sd = `stdev` × (max − min) of each image;
- `integrated_gradients`: Gauss–Legendre quadrature over `steps` points from a baseline, times (x − baseline).

Here s = Σ_i logit[i, class_i]: one target class per image per rank (top-1, top-2, ...). Every forward
serves all ranks (one backward each).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine import for_rows, forward_backward_many
from ..errors import ReportgenError
from ..hooks import capture_outputs, relu_backward_rule
from ..ops import batches
from ..progress import track


@dataclass
class GradientJob:
    """What a gradient method that runs its own passes gets."""

    model: nn.Module
    # input -> logits (N, K); rows other than the batch's images in order go through `engine.for_rows(forward, owner)`
    forward: Callable[[torch.Tensor], torch.Tensor]
    batch: torch.Tensor  # (N, C, H, W) preprocessed, never modified
    class_sets: list[tuple[int, ...]]  # per rank, one class per image
    batch_size: int  # inputs per forward
    seed: int
    offset: int = 0  # the index of the batch's first image among all images (its noise seeds)
    make_baseline: Callable[[], torch.Tensor] | None = None  # integrated gradients: makes the (N, C, H, W) baseline
    options: Any = None  # the options of the method being run (its record's `options` dataclass: SmoothGrad's samples)
    # perturbation methods (`methods.perturbation`): makes the fast no-grad forward x -> logits of `model` (the
    # build's `metrics.forward.inference_forward`); None: `forward` without autograd
    make_inference: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = None
    # the inputs' feature masks (the manifest's `segments`, `methods.ablation.feature_mask`): (N, H, W) long, labels
    # 0 … K_i − 1 per image, a row of −1 for an image without; None: no image has one
    segments: torch.Tensor | None = None
    # per channel (lowest, highest) value of the model's input: pixels 0 and 1 after the normalisation (LRP's box rule);
    # None: pixels in [0, 1]
    input_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    made_baseline: torch.Tensor | None = field(default=None, init=False, repr=False)
    baseline_reads: int = field(default=0, init=False)  # how often a method read `baseline`
    made_inference: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, init=False, repr=False)

    def inference(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The no-grad forward x -> logits of perturbed copies of the batch's images (made on the first call)."""
        if self.made_inference is None:
            if self.make_inference is not None:
                self.made_inference = self.make_inference()
            else:
                def plain(x: torch.Tensor) -> torch.Tensor:
                    with torch.inference_mode():
                        return self.forward(x)
                self.made_inference = plain
        return self.made_inference

    @property
    def baseline(self) -> torch.Tensor | None:
        """The baseline, made on the first read; reads are counted (`dispatch.explain` tells which methods used it)."""
        self.baseline_reads += 1
        if self.made_baseline is None and self.make_baseline is not None:
            self.made_baseline = self.make_baseline()
        return self.made_baseline


# one function per method: see `reportgen.methods` for what each kind receives


def saliency(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.abs()


def input_x_gradient(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return x * grad


def guided_backprop(rule_pass: ReluRulePass, r: int) -> torch.Tensor:
    return rule_pass.input_grads["guided"][r]


def deconvnet(rule_pass: ReluRulePass, r: int) -> torch.Tensor:
    return rule_pass.input_grads["deconv"][r]


def guided_gradcam(rule_pass: ReluRulePass, r: int) -> torch.Tensor:
    return compute_guided_gradcam(rule_pass.activations, rule_pass.layer_grads[r], rule_pass.input_grads["guided"][r])


def smoothgrad(job: GradientJob) -> list[torch.Tensor]:
    return compute_smoothgrad(job.model, job.batch, job.class_sets, samples=job.options.samples,
                              stdev=job.options.stdev, seed=job.seed, batch_size=job.batch_size, forward=job.forward,
                              offset=job.offset)


def integrated_gradients(job: GradientJob) -> list[torch.Tensor]:
    return compute_integrated_gradients(job.model, job.batch, job.class_sets, baseline=job.baseline,
                                        steps=job.options.steps, batch_size=job.batch_size, forward=job.forward)


# ---------------------------------------------------------------------------- passes and quadratures


@dataclass(frozen=True)
class ReluRulePass:
    """What one forward with switchable ReLU rules gave, per class set (target rank)."""

    input_grads: dict[str, list[torch.Tensor]]  # rule -> per class set ∂s/∂input (N, C, H, W), for the rules asked
    activations: torch.Tensor | None  # (N, C', h, w): the layer's own output (when a layer was asked for)
    layer_grads: list[torch.Tensor]  # per class set plain ∂s/∂layer output (N, C', h, w)


def compute_relu_rule_pass(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]],
                       rules: Sequence[str], layer: str | None = None, forward: Callable | None = None) -> ReluRulePass:
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
            capture_outputs(model, [layer] if layer else [], detach=False, pass_copies=True) as outputs, torch.enable_grad():
        logits = (forward or model)(x)
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
    return ReluRulePass(input_grads=grads, activations=None if output is None else output.detach(),
                     layer_grads=layer_grads)


def compute_relu_rule_gradient(model: nn.Module, batch: torch.Tensor, classes: Sequence[int],
                               rule: str) -> torch.Tensor:
    """One class set, one rule: (N, C, H, W)."""
    return compute_relu_rule_pass(model, batch, [classes], [rule]).input_grads[rule][0]


def compute_gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Captum's LayerGradCam with relu_attributions: relu(Σ_c mean_hw(grad) · A). (N, C, h, w) -> (N, 1, h, w)."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))


def compute_guided_gradcam(activation: torch.Tensor, gradient: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """Captum's GuidedGradCam: Grad-CAM upsampled (nearest) to the input size, times guided backprop, for
    every input channel. activation/gradient (N, C', h, w), guided (N, C, H, W) -> (N, C, H, W)."""
    cam = compute_gradcam(activation, gradient)
    return guided * F.interpolate(cam.to(guided.dtype), size=tuple(guided.shape[2:]), mode="nearest")


def image_generator(seed: int, index: int) -> torch.Generator:
    """The generator of image `index`'s noise (smoothgrad, the uniform baseline): seeded with seed + index."""
    return torch.Generator().manual_seed(seed + index)


def compute_smoothgrad(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *, samples: int,
                       stdev: float, seed: int, batch_size: int, forward: Callable | None = None,
                       offset: int = 0) -> list[torch.Tensor]:
    """Captum's NoiseTunnel(Saliency), nt_type="smoothgrad": the mean of |∂s/∂x| over `samples` copies of each
    image plus gaussian noise of sd `stdev` × (max − min of that image). The noise of image i, (samples, C, H, W),
    is drawn on the CPU from a torch.Generator seeded with `seed + offset + i` (`offset`: the batch's first image
    among all images): the numbers Captum draws after `torch.manual_seed(seed + offset + i)` when called image
    by image on the CPU, whatever the batching or sharding of a build. Every class set sees the same
    noisy copies (one forward each). Per class set (N, C, H, W)."""
    inputs = noisy_copies(batch, samples=samples, stdev=stdev, seed=seed, offset=offset)
    rows = batch.shape[0] * samples
    totals = _sum_input_grads(model, inputs, torch.arange(rows) // samples, None, class_sets, batch, batch_size,
                              transform=torch.abs, forward=forward, desc="SmoothGrad")
    return [total / samples for total in totals]


def noisy_copies(batch: torch.Tensor, *, samples: int, stdev: float, seed: int,
                 offset: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """SmoothGrad's noisy copies (see `compute_smoothgrad`): rows -> (B, C, H, W), rows image-major (image =
    row // samples, sample = row % samples), asked in increasing order."""
    sds = [stdev * float(x.max() - x.min()) for x in batch]
    noise: dict[int, torch.Tensor] = {}  # image -> (S, C, H, W) noise, drawn in image order, dropped once used

    def inputs(rows: torch.Tensor) -> torch.Tensor:  # rows image-major: image = row // S, sample = row % S
        images = rows // samples
        for i in range(int(images[0]), int(images[-1]) + 1):
            if i not in noise:
                noise[i] = torch.randn((samples, *batch.shape[1:]), generator=image_generator(seed, offset + i)
                                       ).to(batch) * sds[i]
        chunk = torch.stack([batch[i] + noise[i][s] for i, s in zip(images.tolist(), (rows % samples).tolist())])
        for i in [i for i in noise if i < int(images[-1])]:
            del noise[i]
        return chunk

    return inputs


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """Captum's Gauss–Legendre points on [0, 1] and their weights (approximation_methods.py)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()


def compute_integrated_gradients(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *,
                                 baseline: torch.Tensor, steps: int, batch_size: int,
                                 forward: Callable | None = None) -> list[torch.Tensor]:
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
                              class_sets, batch, batch_size, forward=forward, desc="integrated gradients")
    return [total * diff for total in totals]


def score_difference(model: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, baseline: torch.Tensor,
                     class_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """f(x) − f(baseline) of each image's target logit, (N, R) float64: what IG's attributions should sum to.
    `logits` (N, K) are f(x), already known; f(baseline) costs one forward without autograd."""
    with torch.no_grad():
        start = model(baseline).to(logits)
    return torch.stack([_pick(logits, c) - _pick(start, c) for c in class_sets], dim=1).double().numpy()


# ---------------------------------------------------------------------------- helpers


def _sum_input_grads(model: nn.Module, inputs: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     weights: torch.Tensor | None, class_sets: Sequence[Sequence[int]], batch: torch.Tensor,
                     batch_size: int, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     forward: Callable | None = None, desc: str = "") -> list[torch.Tensor]:
    """Per class set, Σ over rows r of weights[r] · transform(∂ logit[classes[images[r]]] / ∂ input_r) for each
    image, `batch_size` rows per forward (one backward per class set). `inputs(rows)` builds the (B, C, H, W)
    inputs of a chunk of row indices; images (M,) and weights (M,) are per row. Per class set (N, C, H, W)."""
    totals = [torch.zeros_like(batch) for _ in class_sets]
    # not under torch.no_grad(): engine.forward_backward then returns zero gradients
    chunks = list(batches(len(images), batch_size))
    for chunk in track(chunks, total=len(chunks), desc=desc, unit="batch"):
        rows = torch.arange(chunk.start, chunk.stop)
        owner = images[rows].tolist()
        passes = forward_backward_many(model, inputs(rows), [], [[c[i] for i in owner] for c in class_sets],
                                       input_grad=True, forward=for_rows(forward or model, owner))
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


