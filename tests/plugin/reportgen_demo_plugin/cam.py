"""The plug-in method's computation: activations weighted by their gradients' magnitude."""
from __future__ import annotations

import torch


def abscam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) activations and gradients -> (N, h, w)."""
    return (a * g.abs()).sum(dim=1)
