"""The gradient engine: ONE forward and ONE backward pass give every target layer's activations and
gradients (and, on request, the input gradient) for a batch and one target class per image.

Every gradient-based CAM and `saliency` / `input_x_gradient` is a cheap function of a GradPass.

How the pass stays cheap:

- the backward is `torch.autograd.grad` with respect to the target layers' outputs (and the input
  only when asked), so no parameter gradient is ever computed and autograd stops at the earliest
  target layer;
- without `input_grad`, the forward runs without autograd up to the first target layer and the
  graph starts there (the layer's output becomes the leaf), so nothing before it is recorded;
- several target classes per image (top-k) share one forward: k backward passes on one graph.

Gradients are taken with respect to each layer's output *as the layer returned it*, even when a
later operation changes that tensor in place (DenseNet's `F.relu(features, inplace=True)`); the
activations are the tensor as it is after the forward. That is exactly what pytorch-grad-cam 1.5.7
records (a tensor hook registered on the output, and the output object itself), so the maps agree.

The hooks of `_capture` capture the gradient edge and cut the graph while the layer runs (which
`capture_outputs` cannot do); they are registered and removed by
`reportgen.hooks.forward_hooks`.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from .errors import ReportgenError
from .hooks import ForwardHook, capture_outputs, forward_hooks


@dataclass(frozen=True)
class GradPass:
    classes: tuple[int, ...]  # (N,) the target class of each image
    logits: torch.Tensor  # (N, K) detached
    activations: dict[str, torch.Tensor]  # layer -> (N, C, h, w) detached
    gradients: dict[str, torch.Tensor]  # layer -> d(Σ_i logit[i, class_i]) / d activation, (N, C, h, w)
    input_grad: torch.Tensor | None  # (N, C, H, W) d(Σ_i logit[i, class_i]) / d input, when asked for


def forward_backward(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Sequence[str],
    classes: Sequence[int],
    *,
    input_grad: bool = False,
) -> GradPass:
    """One forward and one backward pass. The loss is Σ_i logit[i, classes[i]] (pytorch-grad-cam's
    ClassifierOutputTarget summed over the batch). `batch` is not modified; parameters get no .grad."""
    return forward_backward_many(model, batch, layers, [classes], input_grad=input_grad)[0]


def forward_backward_many(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Sequence[str],
    class_sets: Sequence[Sequence[int]],
    *,
    input_grad: bool = False,
) -> list[GradPass]:
    """One forward, then one backward per entry of `class_sets` (each: one class per image).

    All GradPasses share the forward's logits and activations. `batch` is not modified; parameters
    get no .grad; every hook is removed on return.
    """
    n = batch.shape[0]
    class_sets = [tuple(int(c) for c in classes) for classes in class_sets]
    for classes in class_sets:
        if len(classes) != n:
            raise ValueError(f"need one class per image: {len(classes)} classes for {n} images")
    layers = list(dict.fromkeys(layers))
    x = batch.detach().clone()
    cut = not input_grad and bool(layers)
    for attempt in range(2):
        x.requires_grad_(not cut)
        with _capture(model, layers, cut=cut) as captured, torch.set_grad_enabled(not cut):
            logits = model(x)
        complete = logits.requires_grad and all(captured[name][1] is not None for name in layers)
        if complete or attempt == 1:
            break
        # a target layer is not connected to the graph when it starts at the first target layer
        # (a layer computed from earlier tensors only): record everything from the input instead
        cut = False
    if logits.ndim != 2:
        raise ReportgenError(f"{type(model).__name__} returns an output of shape {tuple(logits.shape)}; "
                             "class activation maps need (N, num_classes) scores.")
    activations = {name: captured[name][0].detach() for name in layers}
    wrt = [captured[name][1] for name in layers] + ([x] if input_grad else [])
    live = [i for i, w in enumerate(wrt) if w is not None]
    passes = []
    for k, classes in enumerate(class_sets):
        index = torch.as_tensor(classes, device=logits.device).view(-1, 1)
        grads: list[torch.Tensor | None] = [None] * len(wrt)
        with torch.enable_grad():  # also when the caller is inside torch.no_grad()
            score = logits.gather(1, index).sum()
            if live and score.requires_grad:
                found = torch.autograd.grad(score, [wrt[i] for i in live], allow_unused=True,
                                            retain_graph=k < len(class_sets) - 1)
                for i, g in zip(live, found):
                    grads[i] = g
        passes.append(GradPass(
            classes=classes,
            logits=logits.detach(),
            activations=activations,
            gradients={name: _zeros_if_none(g, activations[name]) for name, g in zip(layers, grads)},
            input_grad=_zeros_if_none(grads[-1], x).detach() if input_grad else None,
        ))
    return passes


def forward_activations(
    model: nn.Module, batch: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward without autograd: (logits (N, K), layer -> output (N, C, h, w)), detached."""
    with torch.no_grad(), capture_outputs(model, list(dict.fromkeys(layers)), detach=True) as outputs:
        logits = model(batch)
    missing = [name for name in layers if not torch.is_tensor(outputs.get(name))]
    if missing:
        raise ReportgenError(f"layer `{missing[0]}` produced no tensor output in the forward pass.")
    return logits.detach(), {name: outputs[name] for name in layers}


def forward_replacing(
    model: nn.Module, batch: torch.Tensor, layer: str, output: torch.Tensor
) -> torch.Tensor:
    """Logits of a no-grad forward of `batch` in which `layer` returns `output` instead of its own result.

    `output` may have a larger batch than `batch` (b, C, h, w) when everything after the layer
    broadcasts a batch of 1 (the caller checks that the logits make sense)."""
    def hook(_module, _inputs, _output):
        return output

    with forward_hooks(model, [(layer, hook)]), torch.no_grad():
        return model(batch)


@contextmanager
def _capture(
    model: nn.Module, layers: Sequence[str], *, cut: bool
) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor | GradientEdge | None]]]:
    """name -> (output tensor, what to differentiate with respect to), filled as the model runs.

    With `cut`, the model starts without autograd; the first target layer to finish turns autograd
    on and hands the rest of the model a copy of a fresh leaf, so the graph starts there.
    """
    captured: dict[str, tuple[torch.Tensor, torch.Tensor | GradientEdge | None]] = {}

    def make_hook(name: str) -> ForwardHook:
        def hook(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise ReportgenError(f"layer `{name}` returns a {type(output).__name__}, not a tensor; "
                                     "choose a layer with an (N, C, H, W) output.")
            if cut and not torch.is_grad_enabled():
                leaf = output.detach().requires_grad_()
                torch.set_grad_enabled(True)  # restored when the caller's grad-mode block exits
                passed_on = leaf.clone()  # later in-place ops change this copy, never the leaf
                captured[name] = (passed_on, leaf)
                return passed_on
            captured[name] = (output, get_gradient_edge(output) if output.requires_grad else None)
            return None

        return hook

    with forward_hooks(model, [(name, make_hook(name)) for name in layers]):
        yield captured
    missing = [name for name in layers if name not in captured]
    if missing:
        raise ReportgenError(f"layer `{missing[0]}` is not called in {type(model).__name__}'s forward pass.")


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like).detach() if grad is None else grad.detach()
