"""Deep Feature Factorization against pytorch-grad-cam 1.5.7's `dff`; the projection of new images by the definition of
non-negative least squares; concept shares and top patches by their definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
from scipy.optimize import nnls
from torch import nn

from reportgen.errors import ReportgenError
from reportgen.metrics.concepts import (
    Concepts,
    TopPatches,
    concept_mass,
    concept_shares,
    fit_concepts,
    project,
    sole_concepts,
    top_patches,
)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # pgc's 200 NMF iterations stop before its tolerance on these tiny samples: its warning, not ours
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]


def cnn_activations(n: int, seed: int) -> np.ndarray:
    """A tiny seeded CNN's second conv block (after its ReLU) on n random 24-px images: (n, 8, 6, 6) >= 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    images = torch.rand(n, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(images).numpy()


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return cnn_activations(6, seed=1)


@pytest.fixture(scope="module")
def fitted(sample) -> Concepts:
    return fit_concepts(sample, 4, layer="features.4")


def test_fit_equals_pytorch_grad_cam_dff(sample, fitted):
    ref_concepts, ref_maps = dff(sample.copy(), n_components=4)  # dff writes into its argument: give it a copy
    assert fitted.basis.shape == (4, 8) and fitted.heat_maps.shape == (6, 4, 6, 6)
    np.testing.assert_allclose(fitted.components, ref_concepts.T, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fitted.heat_maps, ref_maps, atol=1e-4, rtol=0)
    assert fitted.heat_maps.max() > 0.1  # a real factorization, not zeros matching zeros


def test_fit_with_negative_activations_and_nan_equals_dff(sample):
    # a layer before its ReLU: pgc shifts each channel by its minimum; NaN counts as 0; the caller's array stays
    acts = sample - 0.3
    acts[0, 1, 2, 3] = np.nan
    before = acts.copy()
    fit = fit_concepts(acts, 3, layer="conv")
    ref_concepts, ref_maps = dff(acts.copy(), n_components=3)
    np.testing.assert_array_equal(acts, before)
    assert (fit.offset < 0).all()
    np.testing.assert_allclose(fit.components, ref_concepts.T, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fit.heat_maps, ref_maps, atol=1e-4, rtol=0)


def test_seed_changes_the_fit(sample, fitted):
    other = fit_concepts(sample, 4, seed=1)
    assert not np.allclose(other.heat_maps, fitted.heat_maps, atol=1e-3)


def test_layer_without_spatial_output_names_the_layer():
    with pytest.raises(ReportgenError, match=r"'classifier\.1' has no spatial output"):
        fit_concepts(np.ones((4, 10), np.float32), 2, layer="classifier.1")
    with pytest.raises(ReportgenError, match="at least 1"):
        fit_concepts(np.ones((2, 3, 4, 4), np.float32), 0)


def test_projection_is_nnls_position_by_position(fitted):
    new = cnn_activations(3, seed=7) - 0.01  # outside the fit, some entries below the fit's offset
    maps = project(fitted, new)
    assert maps.shape == (3, 4, 6, 6) and maps.dtype == np.float32 and (maps >= 0).all()
    basis = fitted.basis.astype(np.float64)
    vectors = new.transpose(0, 2, 3, 1).reshape(-1, 8).astype(np.float64) - fitted.offset
    ours = maps.transpose(0, 2, 3, 1).reshape(-1, 4).astype(np.float64)
    ref = np.stack([nnls(basis.T, v)[0] for v in vectors])
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, atol=1e-5 * scale, rtol=0)
    # KKT: the gradient W^T(W h - x) is 0 where h > 0 and >= 0 where h = 0
    grad = (ours @ basis - vectors) @ basis.T
    tol = 1e-5 * np.abs(vectors @ basis.T).max()
    assert np.abs(grad[ours > 0]).max() <= tol
    assert grad[ours == 0].min() >= -tol
    assert (ours == 0).any() and (ours > 0).any()  # both kinds of condition were checked


def test_projection_of_the_fitted_sample_is_its_nmf_heat_maps(sample):
    # where NMF converged tightly, its H is the NNLS solution for its W: projecting the sample gives it back
    fit = fit_concepts(sample, 4, tol=1e-6, max_iter=5000, layer="features.4")
    assert fit.n_iter < 5000
    maps = project(fit, sample)
    np.testing.assert_allclose(maps, fit.heat_maps, atol=1e-5 * fit.heat_maps.max(), rtol=0)


def test_projection_of_the_fitted_sample_at_pgc_settings(sample, fitted):
    # pgc's 200 iterations stop before NMF's tolerance here: H is then NNLS-optimal for W to about 3e-5 of its range
    assert fitted.n_iter == 200
    maps = project(fitted, sample)
    np.testing.assert_allclose(maps, fitted.heat_maps, atol=1e-4 * fitted.heat_maps.max(), rtol=0)


def test_projection_checks_channels(fitted):
    with pytest.raises(ReportgenError, match="5 channels"):
        project(fitted, np.ones((1, 5, 6, 6), np.float32))
    with pytest.raises(ReportgenError, match="'features.4' has no spatial output"):
        project(fitted, np.ones((1, 8), np.float32))


def test_concept_shares_by_definition():
    heat = np.zeros((4, 3, 2, 2), np.float32)
    heat[0, 0] = 1.0                      # image 0: all concept 0
    heat[1, 0, 0, 0], heat[1, 1, 1, 1] = 1.0, 3.0  # image 1: 1/4 concept 0, 3/4 concept 1
    heat[2, 2, 0, :] = 5.0                # image 2: all concept 2
    # image 3: nothing active: counts nowhere
    mass = concept_mass(heat)
    np.testing.assert_allclose(mass, [[1, 0, 0], [0.25, 0.75, 0], [0, 0, 1], [0, 0, 0]])
    shares = concept_shares(mass, np.array([0, 0, 1, 1]), 3)
    np.testing.assert_allclose(shares[:2], [[0.625, 0.375, 0], [0, 0, 1]])
    assert np.isnan(shares[2]).all()      # a class without images
    np.testing.assert_allclose(concept_shares(heat, np.array([0, 0, 1, 1]), 3), shares, equal_nan=True)
    assert sole_concepts(shares).tolist() == [0, 2, -1]
    assert sole_concepts(shares, threshold=0.7).tolist() == [-1, 2, -1]
    # a concept's scale multiplies its mass: concept 1 worth a third as much turns image 1 into half and half
    np.testing.assert_allclose(concept_mass(heat, np.array([1.0, 1 / 3, 1.0]))[1], [0.5, 0.5, 0])


def test_top_patches_by_definition():
    rng = np.random.default_rng(0)
    heat = rng.random((7, 2, 3, 4)).astype(np.float32)
    top = top_patches(heat, 3)
    for c in range(2):
        best = heat[:, c].reshape(7, -1).max(axis=1)
        images = np.argsort(-best, kind="stable")[:3]
        expected = [(int(i), *map(int, np.unravel_index(heat[i, c].argmax(), (3, 4)))) for i in images]
        assert top[c] == expected
    # streamed in chunks: the same, with image indices counted over all chunks
    stream = TopPatches(3, 2)
    for start in range(0, 7, 3):
        stream.add(heat[start:start + 3])
    assert stream.result() == top
    # ties go to the earlier image; k above the image count gives every image
    assert top_patches(np.ones((2, 1, 2, 2), np.float32), 5) == [[(0, 0, 0), (1, 0, 0)]]
