"""Model-parameter randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

`cascade` randomises a deep copy of the model block by block, from the logits back towards the input
(cascading: each block stays randomised while the next is reset), recomputes every method's maps for the
same images after each block and compares them with the maps of the trained model. A map that still looks
the same once the weights are noise does not explain the model. The user's model, and the global torch
random state, are left as they were.

Similarity, per image:
- `spearman`: Spearman rank correlation of the absolute values (average ranks for ties, as
  `scipy.stats.spearmanr`; NaN when either map is constant). Quantus 0.6.0's `MPRT` does the same after its
  normalise-by-max, which does not change ranks.
- `ssim`: SSIM of the absolute maps each divided by its maximum (so in [0, 1], data range 1), with the
  standard constants (K1 = 0.01, K2 = 0.03), a 7x7 uniform window, sample covariance and the mean over the
  windows that fit inside the map: scikit-image's `structural_similarity(a, b, data_range=1)` defaults,
  the function the paper's code calls. Maps must be at least 7x7.

Granularity (`blocks`):
- "blocks": the model's top-level children that hold parameters, last (head) first; an `nn.Sequential` or
  `nn.ModuleList` child counts as its own children, one level down (so ResNet's `layer4.1`, `layer4.0`, ...; the shapes
  demo's `features.3` ... `features.0`). A block resets every module in it that has `reset_parameters`.
- "modules": as Quantus 0.6.0's `MPRT` (`layer_order="top_down"`): every module with `reset_parameters`
  (BatchNorm included), in reverse `named_modules` order, one block each.
Parameters of modules without `reset_parameters` (and parameters held directly by the root module) are
not randomised, as in Quantus.

Seeding: `torch.manual_seed(seed)` before each block's reset. Quantus seeds `seed + 1` (its
`get_random_layer_generator` calls `torch.manual_seed(seed=seed + 1)`), so our `seed=43` reproduces
Quantus's default `seed=42`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Block = tuple[str, list[str]]  # (name, names of the modules it resets, in order)
Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, object]]  # -> {method: (N, H, W)}

SSIM_WINDOW = 7
_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass(frozen=True)
class Cascade:
    """Similarity to the trained model's maps after each block of the cascade (blocks in order)."""

    blocks: tuple[str, ...]  # randomised in this order; row b: blocks[0..b] are random
    spearman: dict[str, np.ndarray]  # method -> (B, N) float64, per block, per image
    ssim: dict[str, np.ndarray]  # method -> (B, N) float64

    def mean_spearman(self, method: str) -> np.ndarray:
        """(B,) mean over images (NaN images left out)."""
        return _nanmean_rows(self.spearman[method])

    def mean_ssim(self, method: str) -> np.ndarray:
        """(B,) mean over images."""
        return _nanmean_rows(self.ssim[method])


def blocks(model: nn.Module, mode: str = "blocks") -> list[Block]:
    """The randomisation order for `cascade`: "blocks" (top-level, head first) or "modules" (as Quantus MPRT)."""
    if mode == "modules":
        return [(name, [name]) for name, _ in reversed(_resettable(model))]
    if mode != "blocks":
        raise ValueError(f'mode must be "blocks" or "modules", got {mode!r}')
    out = []
    for name, child in reversed(_top_level(model)):
        inner = [f"{name}.{sub}" if sub else name for sub, _ in reversed(_resettable(child))]
        if inner:
            out.append((name, inner))
    return out


def cascade(model: nn.Module, order: list[Block], explain: Explain, x: torch.Tensor, targets: torch.Tensor, *,
            seed: int = 42) -> Cascade:
    """Randomise a copy of `model` block after block (`order`, from `blocks`), recomputing the maps with
    `explain(model, x, targets) -> {method: (N, H, W) maps}` and comparing them with the trained model's."""
    work = copy.deepcopy(model)
    original = _numpy_maps(explain(work, x, targets))
    spearman: dict[str, list[np.ndarray]] = {m: [] for m in original}
    ssim_: dict[str, list[np.ndarray]] = {m: [] for m in original}
    with torch.random.fork_rng(devices=_cuda_devices(work)):
        for _, names in order:
            torch.manual_seed(seed)
            for name in names:
                work.get_submodule(name).reset_parameters()
            maps = _numpy_maps(explain(work, x, targets))
            for method, before in original.items():
                spearman[method].append(spearman_abs(before, maps[method]))
                ssim_[method].append(ssim(before, maps[method]))
    return Cascade(blocks=tuple(name for name, _ in order),
                   spearman={m: np.stack(v) if v else np.zeros((0, len(x))) for m, v in spearman.items()},
                   ssim={m: np.stack(v) if v else np.zeros((0, len(x))) for m, v in ssim_.items()})


def cascade_keeping_maps(model: nn.Module, order: list[Block], explain: Explain, x: torch.Tensor,
                         targets: torch.Tensor, *, seed: int = 42) -> tuple[Cascade, dict[str, np.ndarray]]:
    """`cascade`, also keeping the first image's maps at every step: method -> (B + 1, H, W) float16, the trained
    model's then after each block. A method that gives no map on a randomised model (it stopped applying) counts
    as a constant map there (its correlation NaN)."""
    first: dict[str, np.ndarray] = {}
    steps: list[dict[str, np.ndarray]] = []

    def keeping(work: nn.Module, xs: torch.Tensor, ts: torch.Tensor) -> dict[str, np.ndarray]:
        out = _numpy_maps(explain(work, xs, ts))
        if first:
            out = {k: out.get(k, np.zeros_like(v)) for k, v in first.items()}
        else:
            first.update(out)
        steps.append({k: v[0].astype(np.float16) for k, v in out.items()})
        return out

    result = cascade(model, order, keeping, x, targets, seed=seed)
    return result, {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def spearman_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman rank correlation of |a[i]| and |b[i]| over pixels, maps (N, ...)."""
    ra = np.stack([_ranks(np.abs(m).ravel()) for m in a])
    rb = np.stack([_ranks(np.abs(m).ravel()) for m in b])
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / np.where(denom > 0, denom, 1.0), np.nan)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) SSIM of |a[i]| / max and |b[i]| / max, maps (N, H, W) with H, W >= 7 (see the module's notes)."""
    return np.array([_ssim(_unit(p), _unit(q)) for p, q in zip(a, b)])


def _ssim(x: np.ndarray, y: np.ndarray, k1: float = 0.01, k2: float = 0.03) -> float:
    def mean(v: np.ndarray) -> np.ndarray:  # 7x7 window means at every window inside the map
        return np.lib.stride_tricks.sliding_window_view(v, (SSIM_WINDOW, SSIM_WINDOW)).mean((-2, -1))

    n = SSIM_WINDOW * SSIM_WINDOW
    cov = n / (n - 1)  # sample covariance
    ux, uy = mean(x), mean(y)
    vx, vy, vxy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy), cov * (mean(x * y) - ux * uy)
    c1, c2 = k1 ** 2, k2 ** 2  # data range 1
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.abs(np.asarray(m, dtype=np.float64))
    top = m.max()
    return m / top if top > 0 else m


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank (scipy.stats.rankdata's "average")."""
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(v))
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    return ranks


def _top_level(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The root's children, an nn.Sequential / nn.ModuleList child replaced by its own children (one level)."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, _CONTAINERS):
            out.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            out.append((name, child))
    return out


def _resettable(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if hasattr(m, "reset_parameters")]


def _numpy_maps(maps: Mapping[str, object]) -> dict[str, np.ndarray]:
    out = {}
    for method, m in maps.items():
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        out[method] = m.astype(np.float64)
    return out


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _nanmean_rows(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = ~np.isnan(v)
        return np.where(ok.any(1), np.where(ok, v, 0).sum(1) / np.maximum(ok.sum(1), 1), np.nan)
