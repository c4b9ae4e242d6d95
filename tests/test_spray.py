"""SpRAy (`reportgen.metrics.spray`) against CoRelAy 1.0.0's `SpectralClustering` pipeline in the SpRAy
configuration (which='LA', seeded v0 and k-means, the eigenvectors of the c smallest eigenvalues)."""
from __future__ import annotations

import numpy as np
import pytest

from reportgen.metrics import spray

pytest.importorskip("sklearn")
corelay_spectral = pytest.importorskip("corelay.pipeline.spectral")


def _maps(seed: int = 0, n: int = 90, side: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Three groups of maps, each a blob at its own place, with noise and random widths: (maps, group)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    centres = np.array([[5, 5], [12, 18], [19, 6]])
    yy, xx = np.mgrid[:side, :side]
    maps = []
    for g in group:
        cy, cx = centres[g] + rng.normal(0, 1.5, 2)
        width = rng.uniform(2, 4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
        maps.append(blob + rng.uniform(0, 0.1, (side, side)))
    return np.stack(maps).astype(np.float32), group


def _corelay(x: np.ndarray, k: int, c: int, eigen: int, seed: int):
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    pipeline = corelay_spectral.SpectralClustering(
        pairwise_distance=SciPyPDist(metric="euclidean"),
        affinity=SparseKNN(n_neighbors=k, symmetric=True),
        laplacian=SymmetricNormalLaplacian(),
        embedding=EigenDecomposition(n_eigval=eigen, which="LA", is_output=True,
                                     kwargs={"v0": spray.start_vector(len(x), seed)}),
        clustering=KMeans(n_clusters=c, index=(slice(None), slice(-c, None)), is_output=True,
                          kwargs={"random_state": seed, "n_init": 10}),
    )
    (values, _vectors), labels = pipeline(x)  # the two outputs (a task given replaces its `is_output` default)
    return values, labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Labels identical up to renaming: a one-to-one map between the label sets."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed,k,c,eigen", [(0, 10, 3, 10), (1, 5, 4, 8), (2, 10, 2, 6)])
def test_spray_equals_corelay(seed, k, c, eigen):
    maps, _ = _maps(seed)
    x = spray.downsample(maps, 16)
    ours = spray.spray(x, k=k, clusters=c, eigen=eigen, seed=seed)
    values, labels = _corelay(x.astype(np.float64), k, c, eigen, seed)
    np.testing.assert_allclose(ours.eigenvalues, np.sort(values), atol=1e-6)
    assert _same_partition(ours.labels, np.asarray(labels))
    assert len(set(ours.labels.tolist())) == c


def test_eigengap_finds_the_groups():
    maps, group = _maps(3)
    result = spray.spray(spray.downsample(maps, 16), k=10, clusters=None, eigen=10, seed=0)
    assert result.chosen and result.clusters == 3
    assert _same_partition(result.labels, group)


def test_knn_affinity_is_corelays_without_the_dense_matrix(monkeypatch):
    from corelay.processor.affinity import SparseKNN
    from scipy.spatial.distance import pdist, squareform

    x = spray.downsample(_maps(4, n=40)[0], 8).astype(np.float64)
    monkeypatch.setattr(spray, "CHUNK", 7)  # several chunks, the last one short
    ours = spray.knn_affinity(x, 6).toarray()
    theirs = SparseKNN(n_neighbors=6, symmetric=True)(squareform(pdist(x))).toarray()
    np.testing.assert_array_equal(ours, theirs)
    assert set(np.unique(ours)) <= {0.0, 0.5, 1.0}


def test_downsample_is_area_averaging_then_mean_one():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :2, :2] = 1.0  # the top-left quarter
    out = spray.downsample(maps, 2)
    np.testing.assert_allclose(out[0], [4.0, 0.0, 0.0, 0.0])  # mean 1 over 4 cells: all the mass in one
    np.testing.assert_array_equal(out[1], 0.0)  # no mass: stays 0
    odd = np.arange(25, dtype=np.float32).reshape(1, 5, 5)
    small = spray.area(odd, 2)
    assert small[0, 0, 0] == pytest.approx((odd[0, :2, :2].sum() + odd[0, :2, 2].sum() / 2 + odd[0, 2, :2].sum() / 2
                                            + odd[0, 2, 2] / 4) / 6.25)


def test_outside_share_and_pearson():
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 2:, 2:] = True
    assert spray.outside_share(maps, mask)[0] == pytest.approx(0.75)
    assert spray.pearson(maps[0], maps[0] * 2 + 1) == pytest.approx(1.0)
    assert spray.pearson(maps[0], np.ones((4, 4))) is None
