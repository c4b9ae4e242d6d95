"""Concepts a layer has learned: Deep Feature Factorization (Collins et al. 2018, "Deep Feature Factorization for
concept discovery"), as pytorch-grad-cam 1.5.7's `dff` computes it, and the heat maps of images outside the fitted
sample by non-negative least squares against its concepts.

`fit_concepts` is `pytorch_grad_cam.feature_factorization.deep_feature_factorization.dff`:
- the activations (N, C, h, w), NaN set to 0, become one (C, N*h*w) matrix: one row per channel, one column per
  position of every image;
- each channel is shifted by its minimum over the sample (`offset`), so the matrix is non-negative whatever the
  layer's activation (post-ReLU layers have offset 0);
- scikit-learn's `NMF(n_components=concepts, init='random', random_state=seed)` with its defaults (coordinate
  descent, Frobenius loss, tol 1e-4, 200 iterations), named here so a change of scikit-learn's defaults changes
  nothing: X - offset ~ W H, with W (C, K) the concepts' channel vectors and H (K, N*h*w) their heat maps;
- pgc returns `W + offset` as the concepts and H reshaped to (N, K, h, w) as the explanations. Its
  `DeepFeatureFactorization` then min-maxes each image's maps and resizes them to the input (`scale_cam_image`):
  that is drawing, left to the figures.

`project` gives an image outside the sample its heat maps: for each position, the h >= 0 minimising
||(x - offset) - W h||, the problem NMF's H solves once W is fixed. No reference exists for it: the tests check its
optimality conditions (KKT) and scipy's `nnls` position by position. Cost: 2 000 images of 64 x 7 x 7 activations
against 8 concepts take 1.1 s on one CPU thread (linear in positions; about 27 s for 50 000 such images).

A concept's weight in an image (`concept_mass`): its heat map summed over positions, times the norm of its channel
vector (NMF's factors have a free scale per concept, so H alone does not compare concepts), divided by the image's
total: the share of the reconstructed activations each concept carries. A class's share of a concept is the mean over
its images (`concept_shares`); a class leans on one concept alone when that share exceeds 0.5 (`sole_concepts`).

scikit-learn (and scipy) come with the extra `insight`, imported only when a fit is asked for.
"""
from __future__ import annotations

import heapq
import importlib.util
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ReportgenError

INSIGHT_INSTALL = "pip install 'reportgen[insight]'"


def require_sklearn() -> None:
    """A ReportgenError naming the extra when scikit-learn cannot be imported (DFF's NMF is its `NMF`)."""
    if importlib.util.find_spec("sklearn") is None:
        raise ReportgenError(f"concepts (Deep Feature Factorization) need scikit-learn: {INSIGHT_INSTALL}")


@dataclass(frozen=True)
class Concepts:
    """A fitted factorization of one layer's activations; K concepts over C channels."""

    layer: str
    basis: np.ndarray      # (K, C) float32 >= 0: NMF's W, transposed: each concept's channel vector
    offset: np.ndarray     # (C,) float32: each channel's minimum over the fitted sample, removed before the NMF
    heat_maps: np.ndarray  # (N, K, h, w) float32 >= 0: NMF's H for the fitted sample (pgc's `dff` explanations)
    n_iter: int            # NMF's iterations; 200 (its max_iter) means it stopped before its tolerance

    @property
    def components(self) -> np.ndarray:
        """(K, C) float32: the concepts as pgc's `dff` returns them (W + offset), transposed."""
        return self.basis + self.offset[None, :]

    @property
    def scale(self) -> np.ndarray:
        """(K,) float32: the norm of each concept's channel vector; heat map x scale = its part of the activations."""
        return np.linalg.norm(self.basis, axis=1)


def _check_activations(activations: np.ndarray, layer: str) -> None:
    if np.ndim(activations) != 4:
        raise ReportgenError(f"concepts: layer {layer!r} has no spatial output (its output has shape "
                             f"{tuple(np.shape(activations))}, not (images, channels, height, width)); "
                             "choose a convolutional layer for Deep Feature Factorization")


def fit_concepts(activations: np.ndarray, concepts: int, *, seed: int = 0, layer: str = "the layer",
                 tol: float = 1e-4, max_iter: int = 200) -> Concepts:
    """Deep Feature Factorization of `activations` (N, C, h, w) into `concepts` concepts, as pgc's `dff` with
    `random_state=seed` (pgc fixes 0). `tol` and `max_iter` are scikit-learn's NMF defaults, pgc's values."""
    _check_activations(activations, layer)
    if concepts < 1:
        raise ReportgenError(f"concepts: the number of concepts must be at least 1, not {concepts}")
    require_sklearn()
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    n, c, h, w = activations.shape
    x = np.array(activations, dtype=np.float32).transpose(1, 0, 2, 3).reshape(c, -1)  # (C, N*h*w), a copy
    x[np.isnan(x)] = 0
    offset = x.min(axis=-1)
    x = x - offset[:, None]
    nmf = NMF(n_components=concepts, init="random", random_state=seed, solver="cd", beta_loss="frobenius",
              tol=tol, max_iter=max_iter, alpha_W=0.0, alpha_H="same", l1_ratio=0.0)
    with warnings.catch_warnings():  # a fit that stops at max_iter is pgc's result too: `n_iter` records it
        warnings.simplefilter("ignore", ConvergenceWarning)
        basis = nmf.fit_transform(x)                            # (C, K)
    heat = nmf.components_.reshape(concepts, n, h, w).transpose(1, 0, 2, 3)
    return Concepts(layer=layer, basis=np.ascontiguousarray(basis.T, dtype=np.float32),
                    offset=offset.astype(np.float32), heat_maps=np.ascontiguousarray(heat, dtype=np.float32),
                    n_iter=int(nmf.n_iter_))


def project(concepts: Concepts, activations: np.ndarray, *, tol: float = 1e-6, max_sweeps: int = 1000,
            chunk: int = 65536) -> np.ndarray:
    """Heat maps (M, K, h, w) float32 of `activations` (M, C, h, w) against fitted concepts: per position the
    non-negative least-squares coefficients of its channel vector (less the fit's offset) on the concepts' basis.

    Solved by cyclic coordinate descent on the K x K normal equations (scikit-learn's NMF updates H the same way),
    `chunk` positions at a time in float64: each sweep costs O(positions x K^2), at most `max_sweeps` sweeps, and it
    stops once every optimality condition holds to `tol` times the largest |W^T x| of the chunk."""
    _check_activations(activations, concepts.layer)
    m, c, h, w = activations.shape
    k = concepts.basis.shape[0]
    if c != concepts.basis.shape[1]:
        raise ReportgenError(f"concepts: layer {concepts.layer!r} gave {c} channels, the concepts were fitted on "
                             f"{concepts.basis.shape[1]}")
    basis = concepts.basis.astype(np.float64)                  # (K, C)
    gram = basis @ basis.T                                     # (K, K)
    diag = np.maximum(np.diag(gram), np.finfo(np.float64).tiny)  # a zero concept keeps coefficient 0
    x = np.nan_to_num(np.asarray(activations, dtype=np.float64)).transpose(0, 2, 3, 1).reshape(-1, c)
    out = np.empty((x.shape[0], k), dtype=np.float64)
    for start in range(0, x.shape[0], chunk):
        b = (x[start:start + chunk] - concepts.offset.astype(np.float64)) @ basis.T  # (P, K): W^T x
        out[start:start + chunk] = _nnls_cd(gram, diag, b, tol * max(float(np.abs(b).max(initial=0.0)), 1e-30),
                                            max_sweeps)
    return out.reshape(m, h, w, k).transpose(0, 3, 1, 2).astype(np.float32)


def _nnls_cd(gram: np.ndarray, diag: np.ndarray, b: np.ndarray, tol: float, max_sweeps: int) -> np.ndarray:
    """min_h 1/2 h^T G h - b^T h subject to h >= 0, for each row of b: (P, K) -> (P, K)."""
    coef = np.maximum(b / diag, 0.0)  # the unconstrained one-concept solution, clipped: a start close to it
    for _ in range(max_sweeps):
        for j in range(gram.shape[0]):
            grad_j = coef @ gram[:, j] - b[:, j]
            coef[:, j] = np.maximum(coef[:, j] - grad_j / diag[j], 0.0)
        grad = coef @ gram - b
        # KKT: gradient 0 where the coefficient is positive, >= 0 where it is 0
        if np.abs(np.where(coef > 0, grad, np.minimum(grad, 0.0))).max(initial=0.0) <= tol:
            break
    return coef


def concept_mass(heat_maps: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """(N, K, h, w) heat maps -> (N, K) float32: each concept's share of each image (rows sum to 1; a row of zeros
    where the image activates no concept). `scale`: `Concepts.scale`, each concept's channel-vector norm, so a share
    is a share of the reconstructed activations; without it the heat maps are summed as they are."""
    mass = np.asarray(heat_maps, dtype=np.float64).sum(axis=(2, 3))
    if scale is not None:
        mass = mass * np.asarray(scale, dtype=np.float64)[None, :]
    total = mass.sum(axis=1, keepdims=True)
    return np.divide(mass, total, out=np.zeros_like(mass), where=total > 0).astype(np.float32)


def concept_shares(mass: np.ndarray, classes: np.ndarray, num_classes: int, *,
                   scale: np.ndarray | None = None) -> np.ndarray:
    """Each class's mean concept share over its images: (num_classes, K) float32, rows sum to 1 (NaN for a class
    without images). `mass`: `concept_mass`'s (N, K) (keep it while streaming), or the (N, K, h, w) heat maps
    themselves (then `scale` as in `concept_mass`). Images that activate no concept count in no class."""
    mass = concept_mass(mass, scale) if np.ndim(mass) == 4 else np.asarray(mass, dtype=np.float32)
    classes = np.asarray(classes)
    live = mass.sum(axis=1) > 0
    sums = np.zeros((num_classes, mass.shape[1]), dtype=np.float64)
    np.add.at(sums, classes[live], mass[live])
    counts = np.bincount(classes[live], minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts[:, None]).astype(np.float32)


def sole_concepts(shares: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(num_classes,) int: the concept a class leans on alone (its share above `threshold`), -1 where none does."""
    shares = np.nan_to_num(np.asarray(shares), nan=0.0)
    best = shares.argmax(axis=1)
    return np.where(shares[np.arange(len(shares)), best] > threshold, best, -1)


class TopPatches:
    """Per concept, the `k` images whose strongest position is strongest, with that position, fed chunk by chunk
    (memory O(K x k)). One patch per image: a concept's top patches are k different images, not k neighbouring
    positions of one. Ties go to the earlier image."""

    def __init__(self, k: int, concepts: int) -> None:
        self.k = k
        self._heaps: list[list[tuple[float, int, int, int]]] = [[] for _ in range(concepts)]
        self._seen = 0

    def add(self, heat_maps: np.ndarray) -> None:
        """Heat maps (n, K, h, w) of the next n images, in the order their indices count."""
        n, concepts, _, w = heat_maps.shape
        flat = np.asarray(heat_maps).reshape(n, concepts, -1)
        where = flat.argmax(axis=2)                                        # (n, K): each image's strongest position
        value = np.take_along_axis(flat, where[..., None], axis=2)[..., 0]
        for c, heap in enumerate(self._heaps):
            for i in np.argsort(-value[:, c], kind="stable")[:self.k]:
                # a min-heap on (value, -image): the weakest, and among equals the latest, image leaves first
                item = (float(value[i, c]), -(self._seen + int(i)), int(where[i, c]) // w, int(where[i, c]) % w)
                if len(heap) < self.k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        self._seen += n

    def result(self) -> list[list[tuple[int, int, int]]]:
        """Per concept, (image, y, x) strongest first: `image` counts over everything added, y and x are positions
        of the activation grid (h, w)."""
        return [[(-i, y, x) for _, i, y, x in sorted(heap, reverse=True)] for heap in self._heaps]


def top_patches(heat_maps: np.ndarray, k: int) -> list[list[tuple[int, int, int]]]:
    """Per concept, the (image, y, x) of its `k` strongest positions, one per image, strongest first."""
    top = TopPatches(k, heat_maps.shape[1])
    top.add(heat_maps)
    return top.result()
