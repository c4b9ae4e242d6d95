"""More of Captum 0.9.0's gradient family, equal to its `attribute()` for the same target and the same draws
(reference: captum/attr/_core/noise_tunnel.py, gradient_shap.py):

- `smoothgrad_sq`: NoiseTunnel(Saliency), nt_type="smoothgrad_sq": the mean of (∂s/∂x)² over SmoothGrad's noisy
  copies (`gradients.noisy_copies`: the same noise as `smoothgrad`, seeded per image);
- `vargrad`: nt_type="vargrad": mean of (∂s/∂x)² − (mean of |∂s/∂x|)², Captum's formula, in float32 as Captum;
- `gradientshap`: GradientShap: the mean over `samples` draws of (x̃ − b) · ∂s/∂x at b + α (x̃ − b), with x̃ a
  noisy copy of x (sd `shap_stdev` × its range), b the configured baseline (`baseline`, as integrated gradients)
  and α uniform in [0, 1].

GradientShap's α come from numpy's global generator in Captum. We draw the SAME numbers, not inject them: image i's
draws come from `np.random.RandomState(seed + i)` (the legacy generator that `np.random.seed(seed + i)` reseeds),
called as Captum calls the global one (`choice` of the baseline row, then `uniform` for α), and its noise from
torch's generator seeded the same way. So a build reproduces Captum image by image without touching either
global generator (a report must not change the user's random state), whatever the batching or sharding.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .gradients import GradientJob, _sum_input_grads, noisy_copies


def smoothgrad_sq(job: GradientJob) -> list[torch.Tensor]:
    return [sq for sq, _ in _noise_moments(job)]


def vargrad(job: GradientJob) -> list[torch.Tensor]:
    return [sq - mean * mean for sq, mean in _noise_moments(job)]


def gradientshap(job: GradientJob) -> list[torch.Tensor]:
    return compute_gradientshap(job.model, job.batch, job.class_sets, baseline=job.baseline,
                                samples=job.options.samples, stdev=job.options.shap_stdev, seed=job.seed,
                                batch_size=job.batch_size, forward=job.forward, offset=job.offset)


def _noise_moments(job: GradientJob) -> list[tuple[torch.Tensor, torch.Tensor]]:
    o = job.options
    return compute_noise_moments(job.model, job.batch, job.class_sets, samples=o.samples, stdev=o.stdev,
                                 seed=job.seed, batch_size=job.batch_size, forward=job.forward, offset=job.offset)


def compute_noise_moments(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *,
                          samples: int, stdev: float, seed: int, batch_size: int, forward: Callable | None = None,
                          offset: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per class set (mean of (∂s/∂x)², mean of |∂s/∂x|) over SmoothGrad's noisy copies (the noise of
    `gradients.compute_smoothgrad`), each (N, C, H, W), from one pass over the copies."""
    c = batch.shape[1]
    inputs = noisy_copies(batch, samples=samples, stdev=stdev, seed=seed, offset=offset)
    # both sums from the same gradients: the per-image totals hold [g², |g|] stacked along the channels
    totals = _sum_input_grads(model, inputs, torch.arange(batch.shape[0] * samples) // samples, None, class_sets,
                              torch.cat([batch, batch], dim=1), batch_size,
                              transform=lambda g: torch.cat([g * g, g.abs()], dim=1), forward=forward,
                              desc="SmoothGrad moments")
    return [(total[:, :c] / samples, total[:, c:] / samples) for total in totals]


def shap_draws(seed: int, index: int, samples: int, references: int = 1) -> np.ndarray:
    """Image `index`'s α (samples,) float64: what Captum's GradientShap draws from numpy's global generator after
    `np.random.seed(seed + index)`, one image per call (`references` rows in its baseline distribution)."""
    rs = np.random.RandomState(seed + index)
    rs.choice(references, samples)  # Captum draws the baseline rows first (one row here: always row 0)
    return rs.uniform(0.0, 1.0, samples)


def compute_gradientshap(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *,
                         baseline: torch.Tensor, samples: int, stdev: float, seed: int, batch_size: int,
                         forward: Callable | None = None, offset: int = 0) -> list[torch.Tensor]:
    """Captum's GradientShap(multiply_by_inputs=True) with n_samples=`samples`, stdevs = `stdev` × (max − min of
    each image), baselines = that image's row of `baseline` (N, C, H, W), called image by image after seeding
    numpy and torch with `seed + offset + i`. Per class set (N, C, H, W)."""
    n = batch.shape[0]
    alphas = torch.tensor(np.concatenate([shap_draws(seed, offset + i, samples) for i in range(n)]),
                          dtype=batch.dtype)  # per row, image-major
    noisy = noisy_copies(batch, samples=samples, stdev=stdev, seed=seed, offset=offset)
    images = torch.arange(n * samples) // samples
    chunk: dict[str, torch.Tensor] = {}  # the current chunk's x̃ − b: `_sum_input_grads` asks inputs, then transforms

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        x, b = noisy(rows), baseline[images[rows]]
        chunk["diff"] = x - b
        a = alphas[rows].to(batch.device).view(-1, 1, 1, 1)
        return a * x + (1.0 - a) * b  # Captum's `_scale_input`, term for term

    totals = _sum_input_grads(model, inputs, images, None, class_sets, batch, batch_size,
                              transform=lambda g: g * chunk["diff"].to(g), forward=forward, desc="GradientShap")
    return [total / samples for total in totals]
