"""The feature space: every image's penultimate features reduced to 2-D (PCA, exact; UMAP with the extra `umap`), and
each mistake's nearest correctly classified neighbours.

Storage and compute: features are kept as float16 (`as_storage`): 50 000 images x 512 features is 51 MB, half of
float32; float16's 3 significant digits are far below what a 2-D map or a neighbour ranking can show. A feature
beyond float16's range (65 504) would become inf, so such an array stays float32. Every computation reads the stored
features in chunks and computes in float32 or float64 (PCA's covariance and the neighbour distances), so no full
float32 copy of 50 000 rows and no n x n matrix ever exists.

PCA (`pca_2d`): the two leading eigenvectors of the covariance, accumulated in float64 chunk by chunk (d x d, flat in
n), each signed so its largest-|loading| entry is positive: scikit-learn's `PCA(n_components=2, svd_solver='full')`
(its `svd_flip(u_based_decision=False)`, scikit-learn >= 1.5), which takes the SVD of the centred data instead.

Cost, measured on one CPU thread (OMP_NUM_THREADS=1) of the build machine with random float16 features: `pca_2d` of
50 000 x 512 takes 0.4 s; `nearest_correct` for 2 041 mistakes against 47 959 correct images of 512 features 6.5 s
(it grows as mistakes x correct images x features).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import ReportgenError

UMAP_INSTALL = "pip install 'reportgen[umap]'"
FLOAT16_MAX = float(np.finfo(np.float16).max)
CHUNK = 4096  # rows read at a time: 4096 x 2048 features of float64 is 64 MB


def as_storage(features: np.ndarray) -> np.ndarray:
    """Features (n, d) as kept for the whole data set: float16, or float32 where a value exceeds float16's range."""
    features = np.asarray(features, dtype=np.float32)
    finite = features[np.isfinite(features)]
    if finite.size and np.abs(finite).max() > FLOAT16_MAX:
        return features
    return features.astype(np.float16)


def _check(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2:
        raise ReportgenError(f"feature space: features must be (images, features), not shape {features.shape}")
    return features


def pca_2d(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Features (n, d) -> (n, 2) float32: their projection on the two leading principal axes. Exact (no random
    solver), so `seed` changes nothing; it is there to match `umap_2d`. Fewer than two axes (d = 1, or all images
    alike) leave the missing column 0."""
    del seed
    features = _check(features)
    n, d = features.shape
    if n == 0:
        return np.zeros((0, 2), np.float32)
    mean = np.zeros(d)
    for start in range(0, n, CHUNK):
        mean += features[start:start + CHUNK].astype(np.float64).sum(axis=0)
    mean /= n
    cov = np.zeros((d, d))
    for start in range(0, n, CHUNK):
        x = features[start:start + CHUNK].astype(np.float64) - mean
        cov += x.T @ x
    values, vectors = np.linalg.eigh(cov)              # ascending
    axes = vectors[:, ::-1][:, :2].T.copy()            # (<=2, d), leading first
    axes[values[::-1][:2] <= 1e-12 * max(values[-1], 1e-300)] = 0.0  # no variance: no axis
    lead = np.abs(axes).argmax(axis=1)
    axes *= np.where(axes[np.arange(len(axes)), lead] < 0, -1.0, 1.0)[:, None]
    out = np.zeros((n, 2), np.float32)
    for start in range(0, n, CHUNK):
        out[start:start + CHUNK, :len(axes)] = (features[start:start + CHUNK].astype(np.float64) - mean) @ axes.T
    return out


def require_umap() -> None:
    """A ReportgenError naming the extra when umap-learn cannot be imported."""
    if importlib.util.find_spec("umap") is None:
        raise ReportgenError(f"the feature-space map with UMAP needs umap-learn: {UMAP_INSTALL}")


def umap_2d(features: np.ndarray, *, seed: int = 0, neighbours: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """Features (n, d) -> (n, 2) float32 by umap-learn's `UMAP` with `random_state=seed` (which makes it
    single-threaded, hence reproducible), Euclidean metric."""
    features = _check(features)
    require_umap()
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=min_dist, metric="euclidean",
                        random_state=seed)
    return reducer.fit_transform(features.astype(np.float32)).astype(np.float32)


def nearest_correct(features: np.ndarray, truth: np.ndarray, predicted: np.ndarray, k: int = 3, *,
                    chunk: int = 1024) -> list[tuple[int, list[tuple[int, float]]]]:
    """For each wrongly classified image i (ascending), its k nearest correctly classified images j with their
    Euclidean distance in feature space, nearest first (ties: the smaller index first); fewer than k when fewer
    images are correct. Indices count over all images.

    Distances in float64 (|a|^2 + |b|^2 - 2 a.b), `chunk` mistakes against `CHUNK` correct images at a time, keeping
    a running top k: memory O(chunk x CHUNK), whatever n."""
    features = _check(features)
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if not len(truth) == len(predicted) == len(features):
        raise ReportgenError(f"feature space: {len(features)} feature rows, {len(truth)} true classes and "
                             f"{len(predicted)} predictions")
    wrong = np.flatnonzero(truth != predicted)
    right = np.flatnonzero(truth == predicted)
    if k < 1 or len(wrong) == 0 or len(right) == 0:
        return [(int(i), []) for i in wrong] if k >= 1 else []
    keep = min(k, len(right))
    result = []
    for start in range(0, len(wrong), chunk):
        rows = wrong[start:start + chunk]
        a = features[rows].astype(np.float64)
        a2 = (a * a).sum(axis=1)[:, None]
        best_d = np.full((len(rows), 0), np.inf)
        best_j = np.zeros((len(rows), 0), dtype=np.int64)
        for cstart in range(0, len(right), CHUNK):
            cols = right[cstart:cstart + CHUNK]
            b = features[cols].astype(np.float64)
            d2 = np.maximum(a2 + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T), 0.0)
            cand_d = np.concatenate([best_d, d2], axis=1)
            cand_j = np.concatenate([best_j, np.broadcast_to(cols, d2.shape)], axis=1)
            # a stable sort by distance breaks ties by column, that is by index: the running best come first and
            # hold smaller indices than this block, whose columns ascend
            order = np.argsort(cand_d, axis=1, kind="stable")[:, :keep]
            best_d = np.take_along_axis(cand_d, order, axis=1)
            best_j = np.take_along_axis(cand_j, order, axis=1)
        dist = np.sqrt(best_d)
        result += [(int(i), [(int(j), float(x)) for j, x in zip(js, ds)]) for i, js, ds in zip(rows, best_j, dist)]
    return result
