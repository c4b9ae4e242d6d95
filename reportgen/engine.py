"""The gradient engine: ONE forward and ONE backward pass give every target layer's activations and
gradients (and, on request, the input gradient) for a batch and one target class per image.

Every gradient-based CAM and `saliency` / `input_x_gradient` is a cheap function of a GradPass.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .hooks import capture_outputs


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
    if len(classes) != batch.shape[0]:
        raise ValueError(f"need one class per image: {len(classes)} classes for {batch.shape[0]} images")
    x = batch.detach().clone().requires_grad_(input_grad)
    with torch.enable_grad(), capture_outputs(model, layers, detach=False) as outputs:
        logits = model(x)
        index = torch.as_tensor(list(classes), device=logits.device).view(-1, 1)
        score = logits.gather(1, index).sum()
        wrt = [outputs[name] for name in layers] + ([x] if input_grad else [])
        grads = torch.autograd.grad(score, wrt, allow_unused=True)
    return GradPass(
        classes=tuple(int(c) for c in classes),
        logits=logits.detach(),
        activations={name: outputs[name].detach() for name in layers},
        gradients={name: _zeros_if_none(g, outputs[name]) for name, g in zip(layers, grads)},
        input_grad=_zeros_if_none(grads[-1], x).detach() if input_grad else None,
    )


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like).detach() if grad is None else grad.detach()
