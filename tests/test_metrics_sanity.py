"""reportgen.metrics.sanity: cascading randomisation against Quantus 0.6.0's MPRT, SciPy and scikit-image."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.metrics import sanity

SHIPPED = Path(__file__).resolve().parents[1] / "example_configs" / "shapes"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial BatchNorm state, so that resetting it changes the maps
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain gradient of the target logit, summed over channels: (N, H, W), signed."""
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).gather(1, targets.view(-1, 1)).sum(), x)
    return grad.sum(1)


def explain(model, x, targets):
    return {"gradient": gradient(model, x, targets), "input_x_gradient": gradient(model, x, targets) * x.sum(1)}


@pytest.fixture
def case():
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    return tiny(), x, torch.tensor([0, 1, 2, 1])


def test_blocks_and_modules_orders():
    model = tiny()
    assert sanity.blocks(model) == [("fc", ["fc"]), ("features.3", ["features.3"]),
                                    ("features.1", ["features.1"]), ("features.0", ["features.0"])]
    assert sanity.blocks(model, "modules") == [("fc", ["fc"]), ("features.3", ["features.3"]),
                                               ("features.1", ["features.1"]), ("features.0", ["features.0"])]
    with pytest.raises(ValueError, match="mode"):
        sanity.blocks(model, "layers")


def test_blocks_group_a_childs_modules_head_first():
    from reportgen.demo import shapes
    model = shapes.build_model()
    order = sanity.blocks(model)
    assert [name for name, _ in order] == ["fc", "features.3", "features.2", "features.1", "features.0"]
    assert order[1][1] == ["features.3.1", "features.3.0"]  # BatchNorm, then the conv
    assert len(sanity.blocks(model, "modules")) == 9  # 4 convs, 4 BatchNorms, fc


def test_spearman_equals_scipy_with_ties_and_nan_for_constant():
    from scipy import stats as scipy_stats
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 6, 5)), rng.normal(size=(3, 6, 5))
    a[1] = np.round(a[1])  # ties
    b[2] = -a[2] + 0.01 * b[2]  # same magnitudes: high correlation after abs
    expected = [scipy_stats.spearmanr(np.abs(p).ravel(), np.abs(q).ravel())[0] for p, q in zip(a, b)]
    np.testing.assert_allclose(sanity.spearman_abs(a, b), expected, rtol=1e-12)
    assert sanity.spearman_abs(a, b)[2] > 0.99
    assert np.isnan(sanity.spearman_abs(np.ones((1, 4, 4)), a[:1, :4, :4]))[0]


def test_ssim_equals_scikit_image():
    from skimage import metrics
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 12, 9))
    b = a + rng.normal(scale=[[[0.1]], [[1.0]], [[5.0]]], size=(3, 12, 9))

    def unit(m):
        return np.abs(m) / np.abs(m).max()
    expected = [metrics.structural_similarity(unit(p), unit(q), data_range=1.0) for p, q in zip(a, b)]
    ours = sanity.ssim(a, b)
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    assert ours[0] > ours[1] > ours[2]
    np.testing.assert_allclose(sanity.ssim(a, 3 * a), 1.0)


def test_cascade_leaves_the_model_and_global_random_state_alone(case):
    model, x, targets = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    result = sanity.cascade(model, sanity.blocks(model), explain, x, targets, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert result.blocks == ("fc", "features.3", "features.1", "features.0")
    assert result.spearman["gradient"].shape == result.ssim["gradient"].shape == (4, 4)
    # same seed, same numbers; another seed, others
    again = sanity.cascade(model, sanity.blocks(model), explain, x, targets, seed=7)
    np.testing.assert_array_equal(result.spearman["gradient"], again.spearman["gradient"])
    other = sanity.cascade(model, sanity.blocks(model), explain, x, targets, seed=8)
    assert not np.allclose(result.spearman["gradient"], other.spearman["gradient"])


def test_cascade_of_nothing_changes_nothing(case):
    model, x, targets = case
    result = sanity.cascade(model, [("none", [])], explain, x, targets)
    np.testing.assert_allclose(result.spearman["gradient"], 1.0)
    np.testing.assert_allclose(result.ssim["input_x_gradient"], 1.0)


import quantus  # noqa: E402 (the reference for the tests below)


def test_modules_mode_equals_quantus_mprt(case):
    model, x, targets = case

    def quantus_explain(model, inputs, targets, **kwargs):
        maps = gradient(model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return maps.detach().numpy()[:, None]  # (N, 1, H, W)

    mprt = quantus.MPRT(seed=42, disable_warnings=True)  # top_down, Spearman, abs and normalise-by-max
    theirs = mprt(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=None,
                  explain_func=quantus_explain, batch_size=64)
    theirs.pop("original")
    ours = sanity.cascade(model, sanity.blocks(model, "modules"), lambda m, xx, t: {"g": gradient(m, xx, t)},
                          x, targets, seed=42 + 1)  # Quantus seeds seed + 1 before each reset
    assert list(theirs) == list(ours.blocks)
    np.testing.assert_allclose(ours.spearman["g"], np.array(list(theirs.values())), atol=1e-12)
    assert ours.mean_spearman("g")[-1] < 0.9  # the randomisation does change the gradient


# ---------------------------------------------------------------- the shipped shapes model


def grad_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at features.3 (mean gradient weights, ReLU), bilinear to the input size: (N, H, W)."""
    store = {}
    handle = model.get_submodule("features.3").register_forward_hook(lambda _m, _i, out: store.update(a=out))
    try:
        x = x.detach().clone().requires_grad_()
        score = model(x).gather(1, targets.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    cam = torch.relu((g.mean((2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True)).detach()
    return nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def shapes_explain(model, x, targets):
    from reportgen.methods.gradients import compute_relu_rule_gradient
    guided = compute_relu_rule_gradient(model, x, targets.tolist(), "guided")  # (N, 3, H, W)
    plain = compute_relu_rule_gradient(model, x, targets.tolist(), "plain")
    return {"gradcam": grad_cam(model, x, targets), "guided_backprop": guided.abs().amax(1),
            "gradient": plain.abs().amax(1)}


@pytest.mark.slow  # about 7 s on one CPU thread
def test_shapes_model_gradcam_fails_to_survive_randomisation_guided_backprop_survives():
    from reportgen.demo import shapes
    model = shapes.load_model(SHIPPED / "model.pt")
    batch = shapes.generate(16, seed=5)
    x, targets = shapes.to_input(batch.images), torch.as_tensor(batch.labels)
    result = sanity.cascade(model, sanity.blocks(model), shapes_explain, x, targets, seed=0)
    final = {m: float(result.mean_spearman(m)[-1]) for m in result.spearman}
    print("blocks", result.blocks)
    for m in result.spearman:
        print(m, "spearman", np.round(result.mean_spearman(m), 3), "ssim", np.round(result.mean_ssim(m), 3))
    assert final["gradcam"] <= 0.5  # the bound the stage promises
    assert final["guided_backprop"] > final["gradcam"]


def test_the_cascade_keeps_the_first_images_maps_and_a_method_that_stops_counts_as_constant(case):
    """`cascade_keeping_maps`: the same correlations as `cascade`, the first image's map at every step, and a map
    that a randomised model no longer gives is a constant one (correlation NaN), of the trained maps' shape."""
    model, x, targets = case
    calls = []

    def stopping(m, xs, ts):
        calls.append(1)
        out = explain(m, xs, ts)
        return out if len(calls) == 1 else {"gradient": out["gradient"]}

    order = sanity.blocks(model)
    result, maps = sanity.cascade_keeping_maps(model, order, stopping, x, targets, seed=3)
    plain = sanity.cascade(model, order, explain, x, targets, seed=3)
    np.testing.assert_array_equal(result.spearman["gradient"], plain.spearman["gradient"])
    assert np.isnan(result.spearman["input_x_gradient"]).all() and result.spearman["input_x_gradient"].shape == (4, 4)
    assert maps["gradient"].shape == (len(order) + 1, 10, 10) and maps["gradient"].dtype == np.float16
    np.testing.assert_array_equal(maps["gradient"][0], gradient(model, x, targets)[0].numpy().astype(np.float16))
    assert not maps["input_x_gradient"][1:].any()
