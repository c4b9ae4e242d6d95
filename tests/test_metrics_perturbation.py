"""Perturbation metrics against their references: RISE's evaluation.py (re-written here as a per-image loop),
pytorch-grad-cam 1.5.7's ROAD and confidence metrics, torch-cam's definitions by hand, and closed forms on a
linear model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reportgen.metrics import perturbation as P


def tiny_model(size: int = 16, classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * size * size, classes)).eval()


def batch(n: int = 3, size: int = 16, methods=("a", "b"), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    maps = {m: torch.rand(n, size, size, generator=g).numpy() for m in methods}
    return x, maps


class Linear(torch.nn.Module):
    """logits = [Σ w·x, 0]: p(class 0) = sigmoid(Σ w·x)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


# --- deletion / insertion ---------------------------------------------------------------------------


def test_auc_and_default_step():
    assert P.auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert P.auc(np.array([[0.2, 0.4, 0.9]])) == pytest.approx([(1.5 - 0.1 - 0.45) / 2])
    assert P.auc(np.full(7, 0.3)) == pytest.approx(0.3)
    assert P.default_step(224, 224) == 224
    assert P.default_step(112, 112) == 56
    assert P.default_step(32, 32) == 5  # 224 * 1024 / 50176 = 4.57
    assert P.default_step(2, 2) == 1


def test_salient_order_most_salient_first_ties_by_index():
    m = np.array([[[0.5, 0.9], [0.5, 0.1]]])
    assert P.salient_order(m).tolist() == [[1, 0, 2, 3]]
    ties = np.zeros((1, 8, 8))
    ties[0, 5, 5] = 1
    assert P.salient_order(ties).tolist() == [[45] + [i for i in range(64) if i != 45]]


def test_blur_is_rises_kernel():
    """RISE's gkern(11, 5) and conv2d(x, kern, padding=5), as in the authors' code."""
    from scipy.ndimage import gaussian_filter

    inp = np.zeros((11, 11))
    inp[5, 5] = 1
    k = gaussian_filter(inp, 5)
    kern = np.zeros((3, 3, 11, 11))
    for c in range(3):
        kern[c, c] = k
    x = torch.randn(2, 3, 20, 20)
    expected = torch.nn.functional.conv2d(x, torch.from_numpy(kern.astype("float32")), padding=5)
    torch.testing.assert_close(P.gaussian_blur(x), expected, rtol=0, atol=1e-6)


def test_substrates():
    x = torch.randn(2, 3, 8, 8)
    assert P.make_substrate(x, "zero").abs().sum() == 0
    mean = P.make_substrate(x, "mean")
    torch.testing.assert_close(mean[:, :, 3, 5], x.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="unknown substrate"):
        P.make_substrate(x, "noise")


def test_linear_model_closed_form_and_best_order():
    """f = sigmoid(Σ w·x): deleting (to 0) the pixels with the largest w·x first lowers the logit the most at
    every step, so the map w·x gives a closed-form curve and the lowest deletion AUC of any order; inserting
    (from 0) them first gives the highest insertion AUC."""
    torch.manual_seed(3)
    size, step = 6, 5
    w = torch.randn(1, 3, size, size) * 0.5
    x = torch.randn(1, 3, size, size)
    contrib = (w * x).sum(1)  # (1, H, W)
    maps = {"wx": contrib.numpy()}
    rng = np.random.default_rng(0)
    maps.update({f"random{i}": rng.random((1, size, size)).astype(np.float32) for i in range(20)})
    maps["reversed"] = -contrib.numpy()
    curves = P.deletion_insertion(Linear(w), x, maps, [0], step=step, substrate="zero",
                                  insertion_substrate="zero", batch_size=8)

    total = float(contrib.sum())
    ordered = np.sort(contrib.numpy().ravel())[::-1].astype(np.float64)
    removed = np.concatenate([[0], np.cumsum(ordered)])[np.minimum(np.arange(0, 36 + step, step), 36)]
    assert len(removed) == math.ceil(36 / step) + 1 == 9
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    deletion, insertion = sigmoid(total - removed), sigmoid(removed)
    best = curves["wx"]
    np.testing.assert_allclose(best.deletion[0], deletion, atol=1e-6)
    np.testing.assert_allclose(best.insertion[0], insertion, atol=1e-6)
    np.testing.assert_allclose(best.deletion_auc, [(deletion.sum() - deletion[0] / 2 - deletion[-1] / 2) / 8],
                               atol=1e-6)
    np.testing.assert_allclose(best.fraction, np.minimum(np.arange(9) * step, 36) / 36)
    for method, c in curves.items():
        assert best.deletion_auc[0] <= c.deletion_auc[0] + 1e-7, method
        assert best.insertion_auc[0] >= c.insertion_auc[0] - 1e-7, method
    assert curves["reversed"].deletion_auc[0] > best.deletion_auc[0] + 0.05


def rise_loop(model, x, cam, target, step, start_fn, finish_fn):
    """The authors' CausalMetric.single_run, one image, one forward per point (order: our stable sort)."""
    hw = x.shape[2] * x.shape[3]
    n_steps = (hw + step - 1) // step
    start, finish = start_fn(x).clone(), finish_fn(x)
    order = np.argsort(-cam.reshape(-1), kind="stable")
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = torch.softmax(model(start), 1)[0, target]
        coords = order[step * i:step * (i + 1)]
        start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return scores


@pytest.mark.parametrize("sub", ["zero", "mean"])
def test_deletion_insertion_equals_per_image_loop(sub):
    model = tiny_model()
    x, maps = batch()
    x0 = x.clone()
    targets = [1, 4, 0]
    step = 37  # does not divide 256: the last step is short
    ours = P.deletion_insertion(model, x, maps, targets, step=step, substrate=sub, batch_size=7)
    assert torch.equal(x, x0)
    for method, cams in maps.items():
        assert ours[method].deletion.shape == (3, math.ceil(256 / step) + 1)
        for i in range(3):
            xi = x[i:i + 1]
            deletion = rise_loop(model, xi, cams[i], targets[i], step, lambda t: t,
                                 lambda t: P.make_substrate(t, sub))
            insertion = rise_loop(model, xi, cams[i], targets[i], step, P.gaussian_blur, lambda t: t)
            np.testing.assert_allclose(ours[method].deletion[i], deletion, atol=1e-6)
            np.testing.assert_allclose(ours[method].insertion[i], insertion, atol=1e-6)
            np.testing.assert_allclose(ours[method].deletion_auc[i], P.auc(deletion), atol=1e-6)
            np.testing.assert_allclose(ours[method].insertion_auc[i], P.auc(insertion), atol=1e-6)


def test_deletion_insertion_default_step_and_checks():
    model = tiny_model(size=32)
    x, maps = batch(n=2, size=32, methods=("a",))
    c = P.deletion_insertion(model, x, maps, [0, 1])["a"]
    assert c.deletion.shape == (2, math.ceil(1024 / 5) + 1)
    with pytest.raises(ValueError, match="expected"):
        P.deletion_insertion(model, x, {"a": maps["a"][:1]}, [0, 1])
    with pytest.raises(ValueError, match="targets"):
        P.deletion_insertion(model, x, maps, [0])
    with pytest.raises(ValueError, match="step"):
        P.deletion_insertion(model, x, maps, [0, 1], step=0)


# --- ROAD -------------------------------------------------------------------------------------------


def gradcam_targets(targets):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(t) for t in targets]


@pytest.fixture
def no_noise(monkeypatch):
    """grad-cam's ROAD classes build NoisyLinearImputer() with noise=0.01; make the default 0."""
    from pytorch_grad_cam.metrics import road

    monkeypatch.setattr(road.NoisyLinearImputer.__init__, "__defaults__", (0.0, road.neighbors_weights))


def test_road_missing_pixels():
    cam = np.arange(10, dtype=np.float32).reshape(2, 5) / 10
    assert P.road_missing(cam, 80, "morf").sum() == 2  # the top 20 %
    assert P.road_missing(cam, 80, "morf")[1, 3:].all()
    assert P.road_missing(cam, 80, "lerf")[0, :2].all()


@pytest.mark.parametrize("percentile", [10, 50, 90])
def test_imputer_equals_gradcam(percentile):
    """The same system, solution and noise draws as NoisyLinearImputer (its mask: 1 keeps, 0 imputes)."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    x, maps = batch(n=1, size=24, methods=("a",))
    missing = P.road_missing(maps["a"][0], percentile, "morf")
    keep = torch.from_numpy(np.float32(~missing))
    torch.testing.assert_close(P.noisy_linear_impute(x[0], missing, noise=0),
                               NoisyLinearImputer(noise=0)(x[0], keep), rtol=0, atol=1e-6)
    torch.manual_seed(5)
    expected = NoisyLinearImputer()(x[0], keep)
    ours = P.noisy_linear_impute(x[0], missing, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[:, ~torch.from_numpy(missing)], x[0][:, ~torch.from_numpy(missing)])


def test_road_equals_gradcam_without_noise(no_noise):
    from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst

    model = tiny_model()
    x, maps = batch()
    targets = [1, 4, 0]
    percentiles = (20, 40, 60, 80)
    ours = P.road(model, x, maps, targets, percentiles=percentiles, noise=0, batch_size=5)
    for method, cams in maps.items():
        expected = ROADCombined(percentiles=list(percentiles))(x, cams, gradcam_targets(targets), model)
        np.testing.assert_allclose(ours[method].combined, expected, atol=1e-5)
        for k, p in enumerate(percentiles):
            morf = ROADMostRelevantFirst(p)(x, cams, gradcam_targets(targets), model)
            lerf = ROADLeastRelevantFirst(p)(x, cams, gradcam_targets(targets), model)
            np.testing.assert_allclose(ours[method].morf[:, k], morf, atol=1e-5)
            np.testing.assert_allclose(ours[method].lerf[:, k], lerf, atol=1e-5)
    assert not np.allclose(ours["a"].combined, ours["b"].combined)


def test_road_equals_gradcam_with_the_same_noise():
    """ROADCombined per method, in maps' order, after one seed of the global generator: our draws come in
    the same order (per method: LeRF then MoRF, per percentile, per image)."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    model = tiny_model()
    x, maps = batch()
    targets = [2, 2, 3]
    torch.manual_seed(7)
    expected = {m: ROADCombined(percentiles=[30, 70])(x, cams, gradcam_targets(targets), model)
                for m, cams in maps.items()}
    torch.manual_seed(7)
    global_gen = P.road(model, x, maps, targets, percentiles=(30, 70))
    own_gen = P.road(model, x, maps, targets, percentiles=(30, 70), generator=torch.Generator().manual_seed(7))
    quiet = P.road(model, x, maps, targets, percentiles=(30, 70), noise=0)
    for m in maps:
        np.testing.assert_allclose(global_gen[m].combined, expected[m], atol=1e-5)
        np.testing.assert_allclose(own_gen[m].combined, expected[m], atol=1e-5)
    assert max(np.abs(quiet[m].combined - expected[m]).max() for m in maps) > 1e-5  # the noise matters


def test_road_batch_size_does_not_change_numbers():
    model = tiny_model()
    x, maps = batch(methods=("a",))
    one = P.road(model, x, maps, [0, 1, 2], noise=0, batch_size=1)["a"]
    many = P.road(model, x, maps, [0, 1, 2], noise=0, batch_size=64)["a"]
    np.testing.assert_allclose(one.morf, many.morf, atol=1e-5)  # the documented tolerance: oneDNN's kernels
    np.testing.assert_allclose(one.lerf, many.lerf, atol=1e-5)  # depend on the batch size
    assert one.morf.shape == (3, 4) and one.percentiles == (20, 40, 60, 80)


# --- confidence change ------------------------------------------------------------------------------


def test_confidence_change_equals_gradcam_and_torchcam_definitions():
    from pytorch_grad_cam.metrics.cam_mult_image import (CamMultImageConfidenceChange, DropInConfidence,
                                                         IncreaseInConfidence)

    model = tiny_model()
    x, maps = batch(n=4)
    targets = [0, 1, 2, 3]
    ours = P.confidence_change(model, x, maps, targets, batch_size=3)
    for method, cams in maps.items():
        c = ours[method]
        t = gradcam_targets(targets)
        np.testing.assert_allclose(c.change, CamMultImageConfidenceChange()(x, cams, t, model), atol=1e-6)
        np.testing.assert_allclose(c.drop_in_confidence, DropInConfidence()(x, cams, t, model), atol=1e-6)
        np.testing.assert_array_equal(c.increase_in_confidence, IncreaseInConfidence()(x, cams, t, model))
        # torch-cam's ClassificationMetric.update, by hand
        with torch.no_grad():
            p = torch.softmax(model(x), 1)[range(4), targets]
            pm = torch.softmax(model(torch.from_numpy(cams)[:, None] * x), 1)[range(4), targets]
        np.testing.assert_allclose(c.average_drop, (torch.relu(p - pm) / (p + 1e-7)).numpy(), atol=1e-6)
        np.testing.assert_array_equal(c.increase_in_confidence, (p < pm).float().numpy())
        np.testing.assert_allclose(c.p, p.numpy(), atol=1e-6)
    ones = P.confidence_change(model, x, {"ones": np.ones((4, 16, 16), np.float32)}, targets)["ones"]
    np.testing.assert_allclose(ones.change, 0, atol=1e-6)
    assert ones.average_drop.max() < 1e-5 and ones.increase_in_confidence.sum() == 0
