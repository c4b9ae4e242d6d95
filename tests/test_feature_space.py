"""The feature space's numbers: PCA against scikit-learn, the mistakes' nearest correct neighbours against brute force,
float16 storage, and UMAP's message without its extra."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from sklearn.decomposition import PCA

from reportgen.errors import ReportgenError
from reportgen.metrics import feature_space
from reportgen.metrics.feature_space import as_storage, nearest_correct, pca_2d, umap_2d

pytestmark = pytest.mark.usefixtures("one_thread")


def features(n: int, d: int, seed: int) -> np.ndarray:
    """Correlated, offset features with a clear spectrum (so the principal axes are well defined)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(3, 0.2, d) @ rng.normal(size=(d, d)) + 5).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pca_equals_scikit_learn(dtype, monkeypatch):
    monkeypatch.setattr(feature_space, "CHUNK", 37)  # several chunks, one of them partial
    x = features(200, 12, seed=0).astype(dtype)
    ours = pca_2d(x)
    ref = PCA(n_components=2, svd_solver="full").fit_transform(x.astype(np.float64))
    assert ours.shape == (200, 2) and ours.dtype == np.float32
    # scikit-learn >= 1.5 signs each axis so its largest |loading| is positive, as we do: equal with the sign
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    assert ours[:, 0].var() > ours[:, 1].var() > 0


def test_pca_sign_is_fixed_by_the_largest_loading():
    # -x has the same axes, signed by the same rule (on the axes, not the data): its map is the mirror image
    x = features(50, 4, seed=3)
    a = pca_2d(x)
    b = pca_2d(-x)
    np.testing.assert_allclose(a, -b, atol=1e-4 * np.abs(a).max())
    np.testing.assert_array_equal(pca_2d(x, seed=5), a)


def test_pca_degenerate_inputs():
    assert pca_2d(np.zeros((0, 3), np.float32)).shape == (0, 2)
    line = np.arange(6, dtype=np.float32)[:, None]
    np.testing.assert_allclose(pca_2d(line), np.stack([line[:, 0] - 2.5, np.zeros(6)], axis=1))
    np.testing.assert_array_equal(pca_2d(np.ones((4, 3), np.float32)), np.zeros((4, 2)))
    with pytest.raises(ReportgenError, match="images, features"):
        pca_2d(np.ones((2, 3, 4), np.float32))


def brute_force(x: np.ndarray, truth: np.ndarray, predicted: np.ndarray, k: int):
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    right = np.flatnonzero(truth == predicted)
    out = []
    for i in np.flatnonzero(truth != predicted):
        order = right[np.argsort(d[i, right], kind="stable")[:k]]
        out.append((int(i), [(int(j), float(d[i, j])) for j in order]))
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_correct_equals_brute_force(k, monkeypatch):
    monkeypatch.setattr(feature_space, "CHUNK", 16)  # correct images in several blocks: the running top k merges
    rng = np.random.default_rng(1)
    x = as_storage(features(90, 6, seed=1))
    truth = rng.integers(0, 3, 90)
    predicted = np.where(rng.random(90) < 0.3, (truth + 1) % 3, truth)
    ours = nearest_correct(x, truth, predicted, k=k, chunk=7)
    ref = brute_force(x, truth, predicted, k)
    assert [i for i, _ in ours] == [i for i, _ in ref] and len(ours) == (truth != predicted).sum() > 10
    for (_, got), (_, want) in zip(ours, ref):
        assert [j for j, _ in got] == [j for j, _ in want]
        np.testing.assert_allclose([g for _, g in got], [w for _, w in want], rtol=1e-9, atol=1e-9)
        assert all(truth[j] == predicted[j] for j, _ in got)


def test_nearest_correct_ties_and_few_correct(monkeypatch):
    monkeypatch.setattr(feature_space, "CHUNK", 2)
    # images 1, 3 and 4 are equally far from the mistake 0: the smaller indices win, across blocks
    x = np.array([[0, 0], [1, 0], [5, 5], [0, 1], [-1, 0]], np.float32)
    truth = np.array([0, 1, 1, 1, 1])
    predicted = np.array([1, 1, 0, 1, 1])
    far = pytest.approx(np.sqrt(41))  # image 2 at (5, 5) is as far from 1 as from 3
    assert nearest_correct(x, truth, predicted, k=2) == [(0, [(1, 1.0), (3, 1.0)]), (2, [(1, far), (3, far)])]
    # fewer correct images than k: all of them; no correct image: empty lists; no mistake: nothing
    assert [len(n) for _, n in nearest_correct(x, truth, predicted, k=9)] == [3, 3]
    assert nearest_correct(x, truth, (truth + 1) % 2, k=2) == [(i, []) for i in range(5)]
    assert nearest_correct(x, truth, truth, k=2) == []
    with pytest.raises(ReportgenError, match="5 feature rows, 5 true classes and 4 predictions"):
        nearest_correct(x, truth, predicted[:4])


def test_storage_is_float16_unless_out_of_range():
    x = features(10, 4, seed=2)
    stored = as_storage(x)
    assert stored.dtype == np.float16 and stored.nbytes == x.nbytes // 2
    np.testing.assert_allclose(stored, x, rtol=1e-3)
    big = x.copy()
    big[0, 0] = 1e5
    assert as_storage(big).dtype == np.float32


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed")
def test_umap_without_its_extra_names_it():
    with pytest.raises(ReportgenError, match=r"umap-learn: pip install 'reportgen\[umap\]'"):
        umap_2d(features(20, 4, seed=0), seed=0)
