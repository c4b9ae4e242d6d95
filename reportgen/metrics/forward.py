"""The forward that perturbation metrics run: logits of many perturbed inputs, no gradients.

`inference_forward(model, example)` returns a callable x -> logits (N, K) that the metrics call for every
perturbed batch. Today it is the model itself under `torch.inference_mode()`; faster equivalents
(channels-last, folded batch norm, ...) belong here, each checked against the eager model on `example`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


def inference_forward(model: nn.Module, example: torch.Tensor) -> Forward:
    """x -> model(x) without autograd; `example` (1+, C, H, W) is an input of the shape the metrics will send."""
    del example  # kept for equivalents that must be traced or checked on a real input

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return forward
