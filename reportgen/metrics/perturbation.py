"""Perturbation metrics: change the input where a map says it matters, and watch the target's probability.

Every function takes `forward` (x -> logits (N, K)), a batch `x` (N, C, H, W) in the model's normalised
input space, `maps` {method: (N, H, W) float} (a CAM in [0, 1], or a gradient map the caller reduced to
(H, W)) and `targets` (N,) class indices, and returns {method: small frozen result of numpy arrays}.
The maps of all methods are scored together: inputs that do not depend on the map (the original, the
substrates) are forwarded once per image, and every perturbed input goes through `forward` in batches of
`batch_size`, whatever method, image or step it comes from. Scores are softmax probabilities of the
target class (pytorch-grad-cam's `ClassifierOutputSoftmaxTarget`; RISE's models end in softmax). A segmenter's
`forward` is `regions.RegionProbabilities`: the target class's mean probability over its region in the image each
input derives from (every function passes that image along with the input, `target_probabilities`).

- `deletion_insertion`: RISE's causal metrics (Petsiuk et al. 2018, the authors' `evaluation.py`).
- `road`: ROAD (Rong et al. 2022) exactly as pytorch-grad-cam 1.5.7 `metrics/road.py` computes it.
- `confidence_change`: x·map, as pytorch-grad-cam's `CamMultImageConfidenceChange` and torch-cam's
  Average Drop / Increase in Confidence.
"""
from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

SUBSTRATES = ("zero", "blur", "mean")
ROAD_PERCENTILES = (20, 40, 60, 80)  # pytorch-grad-cam's README example (its class default is 10, 20, ..., 90)


# --- shared helpers ---------------------------------------------------------------------------------


def target_probabilities(forward: Forward, items: Iterable[tuple], batch_size: int) -> np.ndarray:
    """Softmax probability of each item's class: items are (target, input (C, H, W), owner), forwarded
    `batch_size` at a time in the order given; owner: the image of the metric's batch the input derives from
    (optional). A forward that scores each image by something of its own (a segmenter's class-in-region
    probability, `metrics.regions.RegionProbabilities`) is bound to the chunk's owners (`for_rows`) and returns
    probabilities (`probabilities = True`); any other forward returns logits, scored alike for every row.
    Returns (len(items),) float32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    items = iter(items)
    out: list[torch.Tensor] = []
    bind = getattr(forward, "for_rows", None)
    while chunk := list(itertools.islice(items, batch_size)):
        targets = torch.tensor([item[0] for item in chunk])
        score = forward if bind is None or len(chunk[0]) < 3 else bind([item[2] for item in chunk])
        with torch.no_grad():
            logits = score(torch.stack([item[1] for item in chunk]))
        probs = logits.float() if getattr(forward, "probabilities", False) else torch.softmax(logits.float(), dim=-1)
        out.append(probs.gather(1, targets.to(probs.device).view(-1, 1)).squeeze(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _as_maps(maps: Mapping[str, np.ndarray | torch.Tensor], x: torch.Tensor) -> dict[str, np.ndarray]:
    """{method: (N, H, W) float32 numpy}, checked against x (N, C, H, W)."""
    out = {}
    for method, m in maps.items():
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        if m.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"maps[{method!r}] has shape {m.shape}, expected {(x.shape[0], *x.shape[2:])}")
        out[method] = m.astype(np.float32, copy=False)
    return out


def _targets(targets, n: int) -> list[int]:
    targets = [int(t) for t in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} inputs")
    return targets


# --- deletion and insertion (RISE) ------------------------------------------------------------------


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion for one method: probability of the target class after each step."""

    fraction: np.ndarray  # (P,) float32: fraction of the pixels changed at each point, 0 ... 1
    deletion: np.ndarray  # (N, P) float32: the original first, the substrate last
    insertion: np.ndarray  # (N, P) float32: the insertion substrate first, the original last
    deletion_auc: np.ndarray  # (N,) lower is better
    insertion_auc: np.ndarray  # (N,) higher is better


def default_step(height: int, width: int) -> int:
    """RISE changes 224 pixels a step at 224²: the same fraction of the image at any size."""
    return max(1, round(224 * height * width / 224**2))


def auc(scores: np.ndarray) -> np.ndarray:
    """RISE's `auc`: the trapezoid rule on [0, 1], (Σa − a₀/2 − a_last/2) / (n − 1), along the last axis."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[-1]
    return (scores.sum(-1) - scores[..., 0] / 2 - scores[..., -1] / 2) / (n - 1)


def salient_order(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H·W) pixel indices, most salient first, ties by row-major index (a stable sort).
    RISE flips an ascending argsort, which puts ties in descending index order; we keep them ascending."""
    flat = np.asarray(maps).reshape(maps.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable")


def gaussian_blur(x: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's blur: `gkern(11, 5)`, i.e. scipy's `gaussian_filter` of an 11x11 delta (its reflect boundary
    included), applied per channel by `conv2d` with zero padding klen // 2. (N, C, H, W) -> same."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    kernel = torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32)).to(x.device, x.dtype)
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, klen, klen)
    return torch.nn.functional.conv2d(x, weight, padding=klen // 2, groups=channels)


def make_substrate(x: torch.Tensor, kind: str) -> torch.Tensor:
    """What removed pixels become: `zero` (zeros of the normalised input, RISE's deletion), `blur` (RISE's
    insertion start, `gaussian_blur`) or `mean` (each image's per-channel mean). (N, C, H, W) -> same."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    raise ValueError(f"unknown substrate {kind!r}; choose from {', '.join(SUBSTRATES)}")


def deletion_insertion(forward: Forward, x: torch.Tensor, maps: Mapping[str, np.ndarray], targets, *,
                       step: int | None = None, substrate: str = "zero", insertion_substrate: str = "blur",
                       batch_size: int = 64) -> dict[str, Curves]:
    """RISE's deletion and insertion curves and AUCs for each method's maps.

    As the authors' `evaluation.py` (`CausalMetric`): pixels are ordered by the map, most salient first;
    `step` pixels change between points (default `default_step`: 224 at 224²), so there are
    ceil(H·W / step) + 1 points, both ends included. Deletion starts from x and replaces pixels (all
    channels) by `substrate` (RISE: zeros; see `make_substrate`); insertion starts from
    `insertion_substrate` (RISE: the blurred image) and restores x's pixels. The score is the softmax
    probability of `targets` (RISE: the class predicted on x); the AUC is RISE's `auc`. Differences from
    RISE: ties in the map are ordered by ascending pixel index (see `salient_order`), and the targets are
    the caller's.

    The original and both substrates are forwarded once per image for all methods (they are the curves'
    ends); every other point is built as it is needed and forwarded `batch_size` at a time.
    """
    maps = _as_maps(maps, x)
    targets = _targets(targets, x.shape[0])
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    step = default_step(h, w) if step is None else step
    if step < 1:
        raise ValueError(f"step must be at least 1 pixel, got {step}")
    n_steps = math.ceil(h * w / step)
    with torch.no_grad():
        subs = {"deletion": make_substrate(x, substrate), "insertion": make_substrate(x, insertion_substrate)}
    ends = target_probabilities(forward, [(targets[i], t[i], i) for t in (x, subs["deletion"], subs["insertion"])
                                          for i in range(n)], batch_size).reshape(3, n)
    # rank[m][i] (H, W): the step at which each pixel changes is rank // step
    ranks = {}
    for method, m in maps.items():
        rank = np.empty((n, h * w), np.int64)
        np.put_along_axis(rank, salient_order(m), np.arange(h * w), axis=1)
        ranks[method] = torch.from_numpy(rank.reshape(n, 1, h, w)).to(x.device)
    starts = {"deletion": x, "insertion": subs["insertion"]}
    finishes = {"deletion": subs["deletion"], "insertion": x}

    def inner_points() -> Iterator[tuple[int, torch.Tensor]]:
        for i, method, mode, k in itertools.product(range(n), maps, ("deletion", "insertion"), range(1, n_steps)):
            changed = ranks[method][i] < k * step  # (1, H, W)
            yield targets[i], torch.where(changed, finishes[mode][i], starts[mode][i]), i

    inner = target_probabilities(forward, inner_points(), batch_size).reshape(n, len(maps), 2, n_steps - 1)
    fraction = (np.minimum(np.arange(n_steps + 1) * step, h * w) / (h * w)).astype(np.float32)
    out = {}
    for j, method in enumerate(maps):
        deletion = np.concatenate([ends[0][:, None], inner[:, j, 0], ends[1][:, None]], axis=1)
        insertion = np.concatenate([ends[2][:, None], inner[:, j, 1], ends[0][:, None]], axis=1)
        out[method] = Curves(fraction, deletion, insertion, auc(deletion), auc(insertion))
    return out


# --- ROAD (pytorch-grad-cam 1.5.7) ------------------------------------------------------------------

# pytorch-grad-cam's `neighbors_weights` (taken from the ROAD authors' imputations.py): (dy, dx), weight
NEIGHBOUR_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                     ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


@dataclass(frozen=True)
class Road:
    """ROAD for one method: p(target | imputed) − p(target | x) at each percentile."""

    percentiles: tuple[float, ...]
    morf: np.ndarray  # (N, P) float32: most relevant first removed (pixels with map ≥ the p-th percentile)
    lerf: np.ndarray  # (N, P) float32: least relevant first removed (the same on 1 − map)
    combined: np.ndarray  # (N,) float32: (mean LeRF − mean MoRF) / 2, higher is better


def imputation_system(missing: np.ndarray, image: np.ndarray):
    """pytorch-grad-cam's `NoisyLinearImputer.setup_sparse_system`, vectorised: one equation per missing
    pixel (row-major order), each the weighted mean of its 8 neighbours in the image (edge 1/6, diagonal
    1/12; weights of neighbours outside the image leave the diagonal). missing (H, W) bool, image (C, H, W).
    Returns A (n, n) CSC matrix and b (n, C)."""
    from scipy.sparse import coo_matrix

    h, w = missing.shape
    flat = missing.reshape(-1)
    indices = np.flatnonzero(flat)
    var = np.zeros(h * w, np.int64)
    var[indices] = np.arange(len(indices))
    rows0, cols0 = np.divmod(indices, w)
    img = image.reshape(image.shape[0], -1)
    b = np.zeros((len(indices), image.shape[0]))
    diagonal = np.ones(len(indices))
    rows, cols, vals = [], [], []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        r, c = rows0 + dy, cols0 + dx
        inside = (r >= 0) & (c >= 0) & (r < h) & (c < w)
        diagonal[~inside] -= weight
        ids = np.flatnonzero(inside)
        neighbour = r[inside] * w + c[inside]
        known = ~flat[neighbour]
        b[ids[known]] -= weight * img[:, neighbour[known]].T
        rows.append(ids[~known])
        cols.append(var[neighbour[~known]])
        vals.append(np.full(len(rows[-1]), weight))
    rows.append(np.arange(len(indices)))
    cols.append(np.arange(len(indices)))
    vals.append(-diagonal)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(indices), len(indices)))
    return a.tocsc(), b


def noisy_linear_impute(image: torch.Tensor, missing: np.ndarray, noise: float = 0.01,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """pytorch-grad-cam's `NoisyLinearImputer()(image, mask)`: the missing pixels (H, W) bool of image
    (C, H, W) on the CPU are set to the solution of `imputation_system` plus noise·N(0, 1), drawn as
    grad-cam draws it (`randn_like` of the (C, n) transposed solution, so the same numbers from the same
    generator state); `generator=None` draws from torch's global generator, as grad-cam does."""
    return _imputed(image, missing, _imputed_values(image, missing), noise, generator)


def _imputed_values(image: torch.Tensor, missing: np.ndarray) -> torch.Tensor | None:
    """The solution of `imputation_system`, (C, n) float32, or None when nothing is missing. The sparse solve
    (SuperLU) releases the GIL, so `road` runs several in threads."""
    from scipy.sparse.linalg import spsolve

    if not missing.any():
        return None
    a, b = imputation_system(missing, image.numpy())
    solution = torch.tensor(spsolve(a, b), dtype=torch.float).reshape(b.shape)
    return solution.t()  # scipy returns (n, C) in Fortran order, kept by torch.tensor: (C, n) contiguous


def _imputed(image: torch.Tensor, missing: np.ndarray, values: torch.Tensor | None, noise: float,
             generator: torch.Generator | None) -> torch.Tensor:
    flat = image.reshape(image.shape[0], -1).clone()
    if values is None:
        return flat.reshape_as(image)
    if noise:  # grad-cam: randn_like(res.t()), which keeps that layout
        values = values + noise * torch.empty_like(values).normal_(generator=generator)
    flat[:, np.flatnonzero(missing.reshape(-1))] = values
    return flat.reshape_as(image)


def road_missing(cam: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """The pixels ROAD imputes, as grad-cam's `RemoveMostRelevantFirst(percentile)` (`morf`: map ≥ its
    percentile, so 80 removes the top 20 %) and `RemoveLeastRelevantFirst` (`lerf`: the same on 1 − map,
    computed in float32 as grad-cam does)."""
    cam = np.asarray(cam, np.float32)
    mask = cam if order == "morf" else np.float32(1) - cam
    return ~(mask < np.percentile(mask, percentile))


def road(forward: Forward, x: torch.Tensor, maps: Mapping[str, np.ndarray], targets, *,
         percentiles: Iterable[float] = ROAD_PERCENTILES, noise: float = 0.01,
         generator: torch.Generator | None = None, batch_size: int = 64) -> dict[str, Road]:
    """ROAD for each method's maps, as pytorch-grad-cam 1.5.7 computes `ROADMostRelevantFirst(p)`,
    `ROADLeastRelevantFirst(p)` and `ROADCombined(percentiles)` with `ClassifierOutputSoftmaxTarget`
    targets: each score is p(target | imputed) − p(target | x), imputed by `noisy_linear_impute`;
    combined = (mean over percentiles of LeRF − mean of MoRF) / 2.

    The noise is drawn in grad-cam's order for `ROADCombined` called once per method in `maps`' order:
    per method, LeRF then MoRF, per percentile, per image; so seeding torch's global generator (or passing
    a `generator` seeded the same) before both gives the same numbers. p(target | x) is forwarded once per
    image (grad-cam forwards it again in every call), and the imputed inputs of all methods, orders and
    percentiles go through `forward` `batch_size` at a time; their sparse solves run on
    `torch.get_num_threads()` threads (SuperLU releases the GIL).
    """
    maps = _as_maps(maps, x)
    targets = _targets(targets, x.shape[0])
    percentiles = tuple(percentiles)
    n = x.shape[0]
    images = x.detach().cpu()
    before = target_probabilities(forward, [(targets[i], x[i], i) for i in range(n)], batch_size)

    def imputed() -> Iterator[tuple[int, torch.Tensor]]:
        combos = itertools.product(maps, ("lerf", "morf"), percentiles, range(n))
        workers = max(1, torch.get_num_threads())
        with ThreadPoolExecutor(workers) as pool:  # the solves in parallel; the noise drawn in order
            while window := list(itertools.islice(combos, max(batch_size, workers))):
                missing = [road_missing(maps[method][i], p, order) for method, order, p, i in window]
                solved = pool.map(_imputed_values, [images[i] for *_, i in window], missing)
                for (*_, i), lost, values in zip(window, missing, solved):
                    yield targets[i], _imputed(images[i], lost, values, noise, generator).to(x.device), i

    after = target_probabilities(forward, imputed(), batch_size).reshape(len(maps), 2, len(percentiles), n)
    out = {}
    for j, method in enumerate(maps):
        lerf, morf = (after[j, k].T - before[:, None] for k in (0, 1))  # (N, P) float32
        combined = (lerf.mean(1, dtype=np.float32) - morf.mean(1, dtype=np.float32)) / 2
        out[method] = Road(percentiles, morf, lerf, combined)
    return out


# --- confidence change (pytorch-grad-cam, torch-cam) ------------------------------------------------


@dataclass(frozen=True)
class ConfidenceChange:
    """Masking x by the map (x·map): how the target's probability changes. (N,) float32 each."""

    p: np.ndarray  # p(target | x)
    p_masked: np.ndarray  # p(target | x·map)
    change: np.ndarray  # p_masked − p: pytorch-grad-cam's `CamMultImageConfidenceChange` (softmax target)
    drop_in_confidence: np.ndarray  # max(0, p − p_masked): grad-cam's `DropInConfidence` (not divided by p)
    average_drop: np.ndarray  # relu(p − p_masked) / (p + 1e-7): torch-cam's Average Drop, per image
    increase_in_confidence: np.ndarray  # 1[p_masked > p]: grad-cam's `IncreaseInConfidence` (change > 0)
    # and torch-cam's Increase in Confidence ([p < p_masked]), the same predicate


def confidence_change(forward: Forward, x: torch.Tensor, maps: Mapping[str, np.ndarray], targets, *,
                      batch_size: int = 64) -> dict[str, ConfidenceChange]:
    """x·map (the map broadcast over channels, in normalised input space) for each method, as
    pytorch-grad-cam's `CamMultImageConfidenceChange` with `ClassifierOutputSoftmaxTarget`, and torch-cam's
    `ClassificationMetric` (Average Drop, Increase in Confidence; averaging over images is the caller's).
    p(target | x) is forwarded once for all methods."""
    maps = _as_maps(maps, x)
    targets = _targets(targets, x.shape[0])
    n = x.shape[0]
    p = target_probabilities(forward, [(targets[i], x[i], i) for i in range(n)], batch_size)
    masked = {m: torch.from_numpy(v).to(x.device, x.dtype)[:, None] * x for m, v in maps.items()}
    p_masked = target_probabilities(forward, [(targets[i], masked[m][i], i) for m in maps for i in range(n)],
                                    batch_size).reshape(len(maps), n)
    out = {}
    for j, method in enumerate(maps):
        change = p_masked[j] - p
        out[method] = ConfidenceChange(
            p=p, p_masked=p_masked[j], change=change, drop_in_confidence=np.maximum(-change, 0),
            average_drop=(np.maximum(p - p_masked[j], 0) / (p + np.float32(1e-7))).astype(np.float32),
            increase_in_confidence=(change > 0).astype(np.float32))
    return out
