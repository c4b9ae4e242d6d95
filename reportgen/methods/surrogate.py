"""Surrogate-model methods of the gradient family over a feature mask (classifiers, forward only): a weighted linear
model fitted, per image and class, to the class's LOGIT over random subsets ("coalitions") of the image's features;
each pixel gets its feature's coefficient. The mask is `ablation.feature_mask(job)` (SLIC superpixels, labels
0 … K_i − 1 per image: K_i = its largest label + 1 features, as Captum counts them), the baseline is 0.

- `lime`: Captum 0.9.0's `Lime` with its defaults: `lime_samples` coalitions, each feature kept with probability ½
  (`default_perturb_func`: `torch.bernoulli` of a (1, K) row of ½ per sample; no sample is special); weights
  exp(−d² / (2 · kernel_width²)) with d = 1 − cos(x, perturbed x) (`get_exp_kernel_similarity_function`, cosine),
  which with baseline 0 is 1 − sqrt(Σ_on s_f / Σ s_f), s_f the feature's Σ x²; the surrogate is scikit-learn's
  `Lasso(alpha)` with an intercept (`SkLearnLasso(alpha=0.01)`): min 1/(2 Σw) Σ w (y − c − z·b)² + alpha ‖b‖₁.
- `kernel_shap`: Captum 0.9.0's `KernelShap`: the first two coalitions are all features and none (weight 10⁶,
  Captum's stand-in for the Shapley kernel's infinite end weights), then per sample a size k ~ (K − 1) / (k (K − k))
  over 1 … K − 1 (`torch.multinomial` of those probabilities, Captum's `Categorical`) and the k features with the
  largest of K `torch.randn` draws, each of weight 1; the surrogate is a weighted least-squares fit with an
  intercept (`SkLearnLinearRegression`: scipy's lstsq, the minimum-norm solution when the samples do not determine
  the fit).

The draws: the SAME numbers as Captum. Image i's coalitions come from a torch.Generator seeded with
`seed + offset + i` (as smoothgrad's noise and shapley_value_sampling's orders), in Captum's order of calls: the
ones Captum draws after `torch.manual_seed(seed + offset + i)` called on that image alone. Drawing rather than
injecting keeps the method usable without Captum, and an image's map independent of the images batched with it
(Captum loops over a batch's images without reseeding, with K of the whole batch).

The fits run here in torch float64, not in scikit-learn (no extra dependency): least squares by `torch.linalg.lstsq`
(gelsd, minimum norm), the Lasso by cyclic coordinate descent on the weighted Gram matrix run to convergence
(relative step ≤ 1e-12). scikit-learn fits Captum's float32 data in float32 and stops its Lasso at a dual gap of
1e-4 · ‖y‖², so Captum's coefficients approximate what ours computes: they differ by scikit-learn's stopping and
float32 errors (under 1e-4 of the largest value on the tests' panels; at 50 superpixels about 1e-3 for KernelShap,
whose end weights of 10⁶ cost float32 least squares three digits; see docs/methods.md).

Forwards go through `GradientJob.inference()`, `batch_size` perturbed inputs at a time; one forward serves every
target rank (the coalitions do not depend on the class) and every draw of the same coalition of an image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ReportgenError
from ..ops import batches
from ..progress import track
from .ablation import feature_mask
from .gradients import GradientJob, image_generator
from .perturbation import Forward, _classifier_forward

END_WEIGHT = 1e6  # Captum's KernelShap.inf_weight: the weight of the all and none coalitions
LASSO_SWEEPS = 20_000  # coordinate-descent sweeps at most (the tests' and benchmark's fits take < 200)


def lime(job: GradientJob) -> list[torch.Tensor]:
    o = job.options
    return compute_lime(_classifier_forward(job, "Lime"), job.batch, job.class_sets, feature_mask(job),
                        samples=o.lime_samples, kernel_width=o.lime_kernel_width, alpha=o.lime_alpha, seed=job.seed,
                        offset=job.offset, batch_size=job.batch_size)


def kernel_shap(job: GradientJob) -> list[torch.Tensor]:
    o = job.options
    return compute_kernel_shap(_classifier_forward(job, "KernelShap"), job.batch, job.class_sets, feature_mask(job),
                               samples=o.kernel_shap_samples, seed=job.seed, offset=job.offset,
                               batch_size=job.batch_size)


def compute_lime(forward: Forward, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], mask: torch.Tensor, *,
                 samples: int, kernel_width: float, alpha: float, seed: int, batch_size: int,
                 offset: int = 0) -> list[torch.Tensor]:
    """Captum's `Lime(forward).attribute(batch[i:i + 1], baselines=0, target=class_sets[r][i],
    feature_mask=mask[i:i + 1, None], n_samples=samples)` after `torch.manual_seed(seed + offset + i)`, with
    `SkLearnLasso(alpha)` and the cosine kernel of `kernel_width`, for every image i and rank r (the Lasso run to
    convergence, see the module): per rank (N, C, H, W)."""
    counts = _counts("lime", batch, mask)
    coalitions = []
    for i, k in enumerate(counts):
        generator = image_generator(seed, offset + i)
        # Captum draws torch.bernoulli of a (1, K) row per sample: the same numbers as one (S, K) draw
        coalitions.append(torch.bernoulli(torch.full((samples, k), 0.5), generator=generator))
    z = _padded(coalitions, max(counts)).to(batch.device)  # (N, S, K_max)
    scores = _scores(forward, batch, class_sets, mask, z, batch_size, "Lime")  # (N, S, R)
    # the cosine kernel: with baseline 0, cos(x, x on z) = sqrt(Σ_f z_f s_f / Σ_f s_f), s_f = Σ x² over feature f
    energy = torch.zeros(len(counts), z.shape[2], dtype=torch.float64, device=batch.device)
    energy.scatter_add_(1, mask.flatten(1), batch.double().pow(2).sum(1).flatten(1))
    # (an image of zeros: 0, as Captum's CosineSimilarity gives with its eps)
    cosine = ((z @ energy[:, :, None])[..., 0] / energy.sum(1, keepdim=True).clamp_min(1e-300)).sqrt()
    weights = torch.exp(-(1 - cosine) ** 2 / (2 * kernel_width ** 2))  # (N, S)
    return _paint(weighted_lasso(z, scores, weights, alpha), batch, mask)


def compute_kernel_shap(forward: Forward, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], mask: torch.Tensor,
                        *, samples: int, seed: int, batch_size: int, offset: int = 0) -> list[torch.Tensor]:
    """Captum's `KernelShap(forward).attribute(batch[i:i + 1], baselines=0, target=class_sets[r][i],
    feature_mask=mask[i:i + 1, None], n_samples=samples)` after `torch.manual_seed(seed + offset + i)`, for every
    image i and rank r (see the module): per rank (N, C, H, W)."""
    counts = _counts("kernel_shap", batch, mask)
    coalitions = [kernel_shap_coalitions(k, samples, image_generator(seed, offset + i)) for i, k in enumerate(counts)]
    z = _padded(coalitions, max(counts)).to(batch.device)
    scores = _scores(forward, batch, class_sets, mask, z, batch_size, "KernelShap")
    weights = torch.ones(z.shape[:2], dtype=torch.float64, device=batch.device)
    weights[:, :2] = END_WEIGHT  # the all and none coalitions (only those have 0 or K features on)
    return _paint(weighted_least_squares(z, scores, weights), batch, mask)


def kernel_shap_coalitions(k: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """KernelShap's `samples` coalitions of `k` features, (samples, k) 0/1 float64, drawn as Captum's
    `kernel_shap_perturb_generator` draws them (a size, then K normal numbers, per sample). One feature (a mask of
    one label) has no size to draw, where Captum raises: all and none are then every coalition."""
    if k < 2:
        return torch.tensor([1.0, 0.0], dtype=torch.float64).repeat(samples)[:samples, None].expand(samples, k).clone()
    sizes = torch.arange(k, dtype=torch.float)
    probs = torch.tensor(k - 1) / (sizes * (k - sizes))  # float32, as Captum computes them
    probs[0] = 0.0
    probs = (probs / probs.sum(-1, keepdim=True)).reshape(1, -1)  # what Categorical(probs).sample() draws from
    rows = [torch.ones(1, k), torch.zeros(1, k)][:samples]
    for _ in range(samples - len(rows)):
        size = int(torch.multinomial(probs, 1, True, generator=generator))
        values = torch.randn(1, k, generator=generator)
        rows.append((values > torch.kthvalue(values, k - size).values.item()).float())
    return torch.cat(rows).double()


def weighted_lasso(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """scikit-learn's `Lasso(alpha).fit(z, y, sample_weight=w).coef_` per problem, run to convergence: z (P, S, K),
    y (P, S, R), w (P, S) -> (P, R, K) float64. A constant column's coefficient is 0 (scikit-learn skips it)."""
    gram, cross = _centred(z, y, w)  # (P, K, K), (P, R, K)
    diagonal = gram.diagonal(dim1=1, dim2=2)  # (P, K)
    live = diagonal > 1e-12 * diagonal.amax(1, keepdim=True).clamp_min(1e-300)
    safe = torch.where(live, diagonal, torch.ones_like(diagonal))
    coef = torch.zeros_like(cross)
    for _ in range(LASSO_SWEEPS):
        previous = coef.clone()
        for j in range(z.shape[2]):  # cyclic, over every problem and class at once
            # the correlation of feature j with the residual of the other features' fit
            rho = cross[:, :, j] - torch.einsum("prk,pk->pr", coef, gram[:, j]) + coef[:, :, j] * diagonal[:, j, None]
            step = rho.sign() * (rho.abs() - alpha).clamp_min(0) / safe[:, j, None]
            coef[:, :, j] = torch.where(live[:, j, None], step, torch.zeros_like(step))
        if (coef - previous).abs().amax() <= 1e-12 * coef.abs().amax().clamp_min(1e-30):
            break
    return coef


def weighted_least_squares(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """scikit-learn's `LinearRegression().fit(z, y, sample_weight=w).coef_` per problem (the minimum-norm solution
    when the samples do not determine it): z (P, S, K), y (P, S, R), w (P, S) -> (P, R, K) float64."""
    root = (w / w.sum(1, keepdim=True)).sqrt()[:, :, None]
    zc, yc = _centre(z, w), _centre(y, w)
    solution = torch.linalg.lstsq((root * zc).cpu(), (root * yc).cpu(), driver="gelsd").solution  # (P, K, R)
    return solution.transpose(1, 2).to(z.device)


def _centre(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`a` (P, S, ·) less its mean over the samples weighted by `w` (P, S): the intercept's part of the fit."""
    return a - (w[:, :, None] * a).sum(1, keepdim=True) / w.sum(1)[:, None, None]


def _centred(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted Gram matrix of the centred design and its product with the centred targets, the weights
    normalised to sum 1: the Lasso's objective is ½ bᵀ G b − qᵀ b + alpha ‖b‖₁ (+ a constant)."""
    w = w / w.sum(1, keepdim=True)
    zc, yc = _centre(z, w), _centre(y, w)
    weighted = w[:, :, None] * zc
    return weighted.transpose(1, 2) @ zc, (weighted.transpose(1, 2) @ yc).transpose(1, 2)


def _counts(name: str, batch: torch.Tensor, mask: torch.Tensor) -> list[int]:
    n, _, h, w = batch.shape
    if mask.shape != (n, h, w):
        raise ReportgenError(f"{name}: the feature mask is {tuple(mask.shape)}, not (N, H, W) = {(n, h, w)}.")
    return [int(m.max()) + 1 for m in mask]  # K_i, Captum's count of features of a mask: its largest label + 1


def _padded(coalitions: list[torch.Tensor], width: int) -> torch.Tensor:
    """(N, S, K_max) float64: each image's (S, K_i) coalitions, features beyond K_i off (constant columns: a zero
    coefficient)."""
    out = torch.zeros(len(coalitions), coalitions[0].shape[0], width, dtype=torch.float64)
    for i, c in enumerate(coalitions):
        out[i, :, :c.shape[1]] = c
    return out


def _scores(forward: Forward, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], mask: torch.Tensor,
            z: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    """The class logits of every coalition of every image, (N, S, R) float64: the image with the features its
    coalition has off set to 0. A coalition an image draws twice (KernelShap's sizes 1 and K − 1 repeat often) is
    one forward: rows are the distinct (image, coalition) pairs."""
    n, c, h, w = batch.shape
    samples = z.shape[1]
    classes = torch.as_tensor([list(s) for s in class_sets], dtype=torch.long, device=batch.device)  # (R, N)
    images = torch.arange(n, device=z.device).repeat_interleave(samples)[:, None].to(z.dtype)
    pairs, inverse = torch.unique(torch.cat([images, z.flatten(0, 1)], 1), dim=0, return_inverse=True)
    image_of, on_of = pairs[:, 0].long(), pairs[:, 1:].bool()
    distinct = torch.zeros(len(pairs), len(class_sets), dtype=torch.float64, device=batch.device)
    flat = mask.flatten(1)
    chunks = list(batches(len(pairs), batch_size))
    for chunk in track(chunks, total=len(chunks), desc=desc, unit="batch"):
        image = image_of[chunk]
        on = on_of[chunk].gather(1, flat[image]).view(-1, 1, h, w)  # each pixel: its feature is on
        out = forward(torch.where(on, batch[image], torch.zeros((), dtype=batch.dtype, device=batch.device)))
        distinct[chunk] = out.gather(1, classes[:, image].T).double()
    return distinct[inverse].view(n, samples, len(class_sets))


def _paint(coef: torch.Tensor, batch: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Per rank (N, C, H, W): each pixel takes its feature's coefficient (coef: (N, R, K_max)), over the channels."""
    n, c, h, w = batch.shape
    ranks = coef.shape[1]
    values = coef.gather(2, mask.flatten(1)[:, None].expand(n, ranks, h * w)).view(n, ranks, h, w)
    return [values[:, r, None].expand(n, c, h, w).to(batch.dtype).contiguous() for r in range(ranks)]
