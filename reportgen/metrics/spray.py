"""Spectral Relevance Analysis (SpRAy; Lapuschkin et al., "Unmasking Clever Hans predictors", Nature
Communications 2019): cluster the explanation maps of one class to find the groups of images it is decided on for
different reasons.

The same computation as CoRelAy 1.0.0's `SpectralClustering` pipeline in the configuration that is SpRAy (CoRelAy's
defaults are not: its `EigenDecomposition` asks for the LARGEST eigenvalues, `which='LM'`, and nothing is seeded):

1. `downsample`: each map area-averaged to `size` × `size` (the paper's pre-processing), then scaled so that its
   cells average 1 (each map divided by its mean: its sum over the `size`² cells is `size`²). Dividing by the sum
   gives every image the same relevance mass, so a group is found by WHERE a map puts its mass, not how much; the
   constant `size`² keeps the values near 1, where float16 storage is exact to 3 digits. An all-zero map stays 0.
2. Euclidean distances, a sparse k-NN affinity (1 for each of a row's `k` nearest other rows), made symmetric as
   (A + Aᵀ) / 2 (`SparseKNN(n_neighbors=k, symmetric=True)`). The distances are computed `CHUNK` rows at a time and
   only the k nearest of each row kept: never a dense n × n matrix (CoRelAy's `SciPyPDist` builds one).
3. CoRelAy's `SymmetricNormalLaplacian`: D^-1/2 A D^-1/2 (the normalised affinity; the symmetric normalised
   Laplacian is I minus it). Its `eigen` LARGEST algebraic eigenvalues (`eigsh(which='LA')`, seeded `v0`) are the
   Laplacian's smallest, 1 − λ, as `EigenDecomposition` returns them; each row of the eigenvectors is normalised
   to unit length (`normalize=True`).
4. k-means (scikit-learn, seeded `random_state`, `n_init=10`) on the eigenvectors of the `c` smallest Laplacian
   eigenvalues (`index=(slice(None), slice(-c, None))`); `c` given, or where the eigengap is largest.

scikit-learn and scipy are imported lazily: the `insight` extra (`pip install 'reportgen[insight]'`).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from ..errors import ReportgenError

INSTALL = "pip install 'reportgen[insight]'"
CHUNK = 512  # rows of distances computed at once: CHUNK × n float64 (4 MB at n = 1000)


def require() -> None:
    """A ReportgenError naming the extra when scikit-learn or scipy cannot be imported."""
    missing = [name for name in ("sklearn", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        raise ReportgenError(f"`analyses.insight` (SpRAy) needs scikit-learn and scipy, and {' and '.join(missing)} "
                             f"is not installed: {INSTALL}")


def _area_weights(source: int, size: int) -> np.ndarray:
    """(size, source): row i averages the source cells that output cell i covers, each by its covered share."""
    edges = np.linspace(0.0, source, size + 1)
    left, right = edges[:-1, None], edges[1:, None]
    cells = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(right, cells + 1) - np.maximum(left, cells), 0.0, None)
    return overlap / overlap.sum(1, keepdims=True)


def area(maps: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) -> (n, size, size) float32: area averaging (each output cell the mean of the input it covers)."""
    maps = np.asarray(maps, dtype=np.float64)
    rows, cols = _area_weights(maps.shape[1], size), _area_weights(maps.shape[2], size)
    return (rows @ maps @ cols.T).astype(np.float32)  # two matrix products, (n, size, W) in between


def downsample(maps: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, H, W) maps -> (n, size * size) float32: area-averaged to size × size, each then divided by its mean
    (its cells sum to size²; see the module's step 1). Negative values (a signed attribution) are kept."""
    small = area(maps, size).reshape(len(maps), -1).astype(np.float64)
    mean = small.mean(1, keepdims=True)
    scale = np.divide(1.0, mean, out=np.zeros_like(mean), where=np.abs(mean) > 1e-12)
    return (small * scale).astype(np.float32)


def knn_affinity(x: np.ndarray, k: int = 10):
    """The symmetric sparse k-NN affinity of the rows of `x` (n, d), as CoRelAy's `SparseKNN` over Euclidean
    distances (`k` capped at n − 1), distances `CHUNK` rows at a time. scipy CSR (n, n) float64."""
    import scipy.sparse

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = min(k, n - 1)
    squares = (x * x).sum(1)
    columns = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, CHUNK):
        part = x[start:start + CHUNK]
        d = squares[start:start + CHUNK, None] + squares[None, :] - 2.0 * part @ x.T
        d[np.arange(len(part)), np.arange(start, start + len(part))] = -np.inf  # itself first, as argsort's [0]
        order = np.argsort(d, axis=1, kind="stable")
        columns[start:start + len(part)] = order[:, 1:k + 1]
    rows = np.repeat(np.arange(n), k)
    affinity = scipy.sparse.csr_matrix((np.ones(n * k), (rows, columns.ravel())), shape=(n, n))
    return (affinity + affinity.T) / 2.0


def normalised_affinity(affinity):
    """CoRelAy's `SymmetricNormalLaplacian`: D^-1/2 A D^-1/2."""
    import scipy.sparse

    degree = scipy.sparse.diags(np.asarray(affinity.sum(1)).ravel() ** -0.5, 0)
    return degree @ affinity @ degree


def start_vector(n: int, seed: int) -> np.ndarray:
    """The seeded `v0` of `eigsh` (ARPACK's start; unseeded, its eigenvectors' signs and k-means vary per run)."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, n)


def embedding(normalised, eigen: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues (m,) of the Laplacian, descending as CoRelAy gives them, eigenvectors (n, m) with unit rows):
    the m = min(eigen, n − 1) smallest. A graph too small for ARPACK (m ≥ n − 1) is solved densely."""
    from scipy.sparse.linalg import eigsh

    n = normalised.shape[0]
    m = max(1, min(eigen, n - 1))
    if m < n - 1:
        values, vectors = eigsh(normalised, k=m, which="LA", v0=start_vector(n, seed))
    else:
        values, vectors = np.linalg.eigh(normalised.toarray())
        values, vectors = values[-m:], vectors[:, -m:]
    values = 1.0 - values
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return values, vectors


def eigengap(values: np.ndarray, most: int | None = None) -> int:
    """The cluster count c ≥ 2 with the largest gap between the c-th and (c+1)-th smallest eigenvalue (c up to
    `most`, or one less than the eigenvalues given)."""
    ascending = np.sort(np.asarray(values, dtype=np.float64))
    gaps = np.diff(ascending)  # gaps[c - 1]: between the c-th and (c+1)-th smallest
    last = len(ascending) - 1 if most is None else min(most, len(ascending) - 1)
    if last < 2:
        return 2
    return int(np.argmax(gaps[1:last]) + 2)


@dataclass(frozen=True)
class SprayResult:
    eigenvalues: np.ndarray  # (m,) the Laplacian's smallest, ascending
    labels: np.ndarray  # (n,) int, cluster per row, 0 … c − 1 (largest cluster first)
    clusters: int
    chosen: bool  # True: c chosen from the eigengap
    distance: np.ndarray  # (n,) each row's distance to its cluster's centre in the embedding
    embedding: np.ndarray  # (n, c) what k-means clustered


def spray(x: np.ndarray, *, k: int = 10, clusters: int | None = None, eigen: int = 10, seed: int = 0) -> SprayResult:
    """SpRAy on the rows of `x` (n, d) (`downsample`'s output): the spectral embedding and its seeded k-means.
    `clusters` None: chosen from the eigengap among the `eigen` smallest eigenvalues (then at most eigen − 1)."""
    require()
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if clusters is not None and clusters > n:
        raise ReportgenError(f"SpRAy: {n} images cannot be split into {clusters} clusters.")
    eigen = max(eigen, (clusters or 2) + 1)
    values, vectors = embedding(normalised_affinity(knn_affinity(x, k)), eigen, seed)
    chosen = clusters is None
    c = eigengap(values) if chosen else clusters
    c = min(c, vectors.shape[1], n)
    points = vectors[:, -c:]
    raw, centres = kmeans(points, c, seed=seed)
    # largest cluster first (ties: the lower k-means label): a stable naming for the page
    order = sorted(range(c), key=lambda j: (-int((raw == j).sum()), j))
    rename = np.empty(c, dtype=np.int64)
    rename[order] = np.arange(c)
    distance = np.linalg.norm(points - centres[raw], axis=1)
    return SprayResult(eigenvalues=np.sort(values), labels=rename[raw], clusters=c, chosen=chosen,
                       distance=distance, embedding=points)


def kmeans(points: np.ndarray, c: int, *, seed: int, restarts: int = 10, iterations: int = 300) -> tuple[np.ndarray,
                                                                                                         np.ndarray]:
    """(labels (n,), centres (c, d)): Lloyd's k-means from `restarts` seeded greedy k-means++ starts (scikit-learn's
    `KMeans(n_init=10)` algorithm: 2 + ln c candidates per new centre, the one that lowers the inertia most), the
    run of least inertia kept. In numpy: importing scikit-learn costs a build 0.85 s, more than SpRAy itself."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    rng = np.random.default_rng(seed)
    best = None
    trials = 2 + int(np.log(c))
    for _ in range(restarts):
        centres = [points[rng.integers(n)]]
        closest = ((points - centres[0]) ** 2).sum(1)
        for _ in range(1, c):
            total = closest.sum()
            candidates = rng.choice(n, trials, p=closest / total) if total > 0 else rng.integers(n, size=trials)
            distances = np.minimum(closest, ((points[None] - points[candidates][:, None]) ** 2).sum(2))
            pick = int(np.argmin(distances.sum(1)))
            centres.append(points[candidates[pick]])
            closest = distances[pick]
        centres = np.array(centres)
        labels = None
        for _ in range(iterations):
            new = ((points[:, None] - centres[None]) ** 2).sum(2).argmin(1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            centres = np.array([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(c)])
        inertia = float(((points - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels, centres)
    return best[1], best[2]


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two maps (None where one is constant)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return None if norm == 0 else float((a * b).sum() / norm)


def outside_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(n,) the share of each map's mass (its values shifted to a minimum of 0) outside the object's pixels `masks`
    (n, H, W) bool; NaN for a map without mass."""
    m = np.asarray(maps, dtype=np.float64)
    m = m - m.reshape(len(m), -1).min(1)[:, None, None]
    total = m.reshape(len(m), -1).sum(1)
    outside = (m * ~np.asarray(masks, dtype=bool)).reshape(len(m), -1).sum(1)
    return np.divide(outside, total, out=np.full(len(m), np.nan), where=total > 0)
