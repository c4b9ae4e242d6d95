"""Small tensor operations more than one stage uses: the one blur and the one way to walk in batches."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def batches(total: int, size: int | None) -> Iterator[slice]:
    """Consecutive slices of at most `size` items covering range(total) (`size` None or < 1: one slice)."""
    step = max(1, size or total or 1)
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


def gaussian_blur(x: torch.Tensor, sigma: float, *, padding: str = "replicate") -> torch.Tensor:
    """Separable gaussian blur of (N, C, H, W) per channel, radius ceil(3 sigma); the kernel is computed in
    float64. `padding`: "replicate" (edges repeated) or "reflect" (mirrored; the radius is then capped at
    the image side minus one, as reflection needs)."""
    radius = max(1, math.ceil(3 * sigma))
    if padding == "reflect":
        radius = min(radius, x.shape[2] - 1, x.shape[3] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode=padding)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
