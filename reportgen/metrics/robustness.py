"""Robustness of a map to its input: Captum's `infidelity` and `sensitivity_max`, batched.

Both are re-implementations of `captum.metrics` (0.9.0, `_core/infidelity.py`, `_core/sensitivity.py`)
for one image tensor; `tests/test_metrics_robustness.py` checks they equal Captum's numbers for the same
perturbations. Every perturbed copy of every image goes through the model (or the explanation) in ONE
call, rows image-major (`repeat_interleave`, Captum's order: image i, sample s -> row i * S + s), as Captum
does with `max_examples_per_batch=None`; pass `generator` for reproducible noise.

- `infidelity` (Yeh et al. 2019), Captum's `normalize=True` form: for S perturbations I_s,
  a_s = sum(attr * I_s), b_s = f(x) - f(x - I_s) (the target's logit), beta = sum(a b) / sum(a^2)
  (Captum's `safe_div`: a zero denominator counts as 1), infidelity = mean_s (beta a_s - b_s)^2.
  The perturbation is Gaussian noise of standard deviation `sd` in normalised input units; it returns
  (I, x - I) as Captum's `perturb_func` must. Lower is better; the score does not change with the map's scale.
- `sensitivity_max` (Yeh et al. 2019): Captum's default perturbation, x + U(-radius, radius) per element
  (radius 0.02); the score is max_s ||phi(x) - phi(x + d_s)||_F / ||phi(x)||_F (a zero norm counts as 1).
  Lower is better.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (M, C, H, W), (M,) -> (M, C, H, W) or (M, H, W)


def gaussian_perturbation(x: torch.Tensor, sd: float = 0.1,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum-style infidelity perturbation: I ~ N(0, sd^2) per element; returns (I, x - I)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * sd
    return noise, x - noise


def uniform_perturbation(x: torch.Tensor, radius: float = 0.02,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Captum's default sensitivity perturbation: x + U(-radius, radius) per element (same draws as
    `torch.FloatTensor(x.size()).uniform_(-radius, radius)` from a generator in the same state)."""
    noise = torch.empty(x.shape, dtype=torch.float32).uniform_(-radius, radius, generator=generator)
    return x + noise.to(device=x.device, dtype=x.dtype)


@torch.no_grad()
def infidelity(model: nn.Module, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor, *,
               sd: float = 0.1, n_samples: int = 10, generator: torch.Generator | None = None) -> np.ndarray:
    """Normalised infidelity per image, (N,) float64, lower is better.

    x (N, C, H, W) normalised input; attributions (N, C, H, W), or (N, H, W) applied to every channel
    (the same as passing the map repeated over channels to Captum); targets (N,) class indices.
    """
    n = len(x)
    attr = _per_channel(attributions, x)  # (N, C, H, W)
    rows = torch.repeat_interleave(x, n_samples, dim=0)  # (N*S, C, H, W)
    noise, perturbed = gaussian_perturbation(rows, sd, generator)
    row_targets = torch.repeat_interleave(targets, n_samples)
    f_x = _pick(model(x), targets).repeat_interleave(n_samples)  # (N*S,)
    b = (f_x - _pick(model(perturbed), row_targets)).view(n, n_samples)
    a = (torch.repeat_interleave(attr, n_samples, dim=0) * noise).flatten(1).sum(1).view(n, n_samples)
    aa, ab, bb = (a * a).sum(1), (a * b).sum(1), (b * b).sum(1)
    beta = ab / torch.where(aa != 0, aa, torch.ones_like(aa))
    return ((beta * beta * aa - 2 * beta * ab + bb) / n_samples).double().cpu().numpy()


@torch.no_grad()
def sensitivity_max(explain: Explain, x: torch.Tensor, targets: torch.Tensor, *, radius: float = 0.02,
                    n_samples: int = 10, generator: torch.Generator | None = None) -> np.ndarray:
    """Max-sensitivity per image, (N,) float64, lower is better.

    `explain(x, targets)` recomputes the map for a batch (it may enable gradients itself, as Captum's
    attribution methods do under its `no_grad`); it is called once on x and once on all N*S perturbed rows,
    with targets repeated to match.
    """
    n = len(x)
    phi = explain(x, targets).flatten(1)  # (N, D)
    rows = uniform_perturbation(torch.repeat_interleave(x, n_samples, dim=0), radius, generator)
    phi_perturbed = explain(rows, torch.repeat_interleave(targets, n_samples)).flatten(1)  # (N*S, D)
    diff = torch.linalg.vector_norm(phi.repeat_interleave(n_samples, dim=0) - phi_perturbed, dim=1)
    norm = torch.linalg.vector_norm(phi, dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm).repeat_interleave(n_samples)
    return (diff / norm).view(n, n_samples).amax(1).double().cpu().numpy()


def _per_channel(attributions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if attributions.dim() == 3:
        attributions = attributions.unsqueeze(1)
    return attributions.to(x.dtype).expand_as(x)


def _pick(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)
