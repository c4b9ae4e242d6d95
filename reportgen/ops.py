"""Small operations more than one module uses: the one blur, the one way to walk in batches, and giving freed
memory back between batches."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import time
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


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, another system)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# Trim again only once this many times the last trim's own time has passed since it. The trim's call is the
# smaller part of its cost: the page faults of the heap refilling after it are the larger (the digits' first pass,
# `benchmarks/reading.py`: spaced 20x it was still 19 % slower than never trimming, 100x: 2-6 %).
TRIM_SPACING = 100.0
_last_trim = {"end": -math.inf, "cost": 0.0}  # when the last trim ended and what it took (perf_counter seconds)


def release_memory() -> None:
    """Give the memory freed since the last call back to the system (glibc: `malloc_trim(0)`; elsewhere nothing).
    A batch's activations and gradients leave holes in the heap that later, differently sized batches do not
    fill exactly: without this, a build's resident memory creeps up batch after batch (tens of MB over a
    thousand images) although nothing is kept. A streamed build calls it after every batch; the heap's
    refilling costs page faults (`benchmarks/dataset.py`: about 15% of the time of ResNet-18 at 96², for a
    peak 1.05x instead of 1.08x at 1 600 images; trimming every 16 batches measured no cheaper in peak).
    A call that comes sooner than TRIM_SPACING times the last trim's time after it does nothing: with tiny
    batches (the digits at batch 8, 2 ms of forward each) trimming after every one made the first pass 40 % slower;
    a streamed ResNet-18 build at 96² (a trim about 8 ms, a batch's forward and backward 0.17 s) trims every
    few batches: `benchmarks/dataset.py --counts 100 400 1600`, three runs, peaked at 1.04-1.05x the first N's
    memory at 1 600 images (trimming after every batch, two runs in the same minutes: 1.03x, 1.07x; the peak
    varies by about ±15 MB from run to run), in 19.7-20.6 s instead of 21.9-23.2 s."""
    trim = _malloc_trim()
    if trim is None:
        return
    start = time.perf_counter()
    if start - _last_trim["end"] < TRIM_SPACING * _last_trim["cost"]:
        return
    trim(0)
    end = time.perf_counter()
    _last_trim.update(end=end, cost=end - start)
