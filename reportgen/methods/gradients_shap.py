"""Captum 0.9.0's DeepLiftShap (captum/attr/_core/deep_lift.py `DeepLiftShap`): DeepLift (`gradients_more.
compute_deeplift`, the rescale rule, per module call) from each baseline of a distribution, averaged over the
distribution. Captum expands every input against every baseline (`repeat_interleave` of the inputs, `repeat` of the
baselines), runs DeepLift on the expanded batch and takes the mean over the baselines; with batch norm in eval mode
each (input, baseline) pair is independent, so DeepLift per baseline, summed and divided, is the same number.

The distribution (Captum takes it from the user, and refuses fewer than 2 baselines): `shap_baselines` copies of the
configured baseline (`baseline`: zero, blur, uniform or a .npy, as integrated gradients and DeepLift) plus Gaussian
noise of sd `shap_baseline_stdev` × (max − min of the image). Image i's noise comes from a CPU generator of its own
seeded with `seed + i` (i counted over all images of the build), drawn as one (B, C, H, W) tensor: the same baselines
whatever the batching or sharding, and torch's global generator untouched. With no noise and a fixed baseline every
copy is the same and DeepLiftShap is DeepLift.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .gradients import GradientJob
from .gradients_more import compute_deeplift


def deepliftshap(job: GradientJob) -> list[torch.Tensor]:
    o = job.options
    baseline = job.baseline
    # not counted as a read: its attributions sum to f(x) minus the MEAN score of its baselines, not to f(x) −
    # f(baseline), the completeness gap the stage reports for the methods that read the baseline
    job.baseline_reads -= 1
    baselines = shap_baselines(job.batch, baseline, count=o.shap_baselines, stdev=o.shap_baseline_stdev,
                               seed=job.seed, offset=job.offset)
    return compute_deepliftshap(job.model, job.batch, job.class_sets, baselines=baselines, batch_size=job.batch_size,
                                forward=job.forward)


def shap_baselines(batch: torch.Tensor, baseline: torch.Tensor, *, count: int, stdev: float, seed: int,
                   offset: int = 0) -> torch.Tensor:
    """(N, B, C, H, W): per image its `count` baselines, `baseline`'s row (N, C, H, W) plus noise of sd `stdev` ×
    the image's range, drawn from a generator seeded with `seed + offset + i` (see the module)."""
    out = baseline[:, None].expand(-1, count, *baseline.shape[1:]).clone()
    if stdev > 0:
        for i, image in enumerate(batch):
            generator = torch.Generator().manual_seed(seed + offset + i)
            noise = torch.randn(count, *image.shape, generator=generator, dtype=torch.float32)
            out[i] += (noise * (stdev * float(image.max() - image.min()))).to(out)
    return out


def compute_deepliftshap(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *,
                         baselines: torch.Tensor, batch_size: int, forward: Callable | None = None,
                         ) -> list[torch.Tensor]:
    """Captum's DeepLiftShap(multiply_by_inputs=True) with image i's baselines `baselines[i]` (N, B, C, H, W): the
    mean over the B baselines of DeepLift from each. Per class set (N, C, H, W)."""
    count = baselines.shape[1]
    totals = [torch.zeros_like(batch) for _ in class_sets]
    for j in range(count):
        for total, found in zip(totals, compute_deeplift(model, batch, class_sets, baseline=baselines[:, j],
                                                          batch_size=batch_size, forward=forward)):
            total += found
    return [total / count for total in totals]
