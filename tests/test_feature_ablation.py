"""`feature_ablation` and `shapley_value_sampling` (`methods.ablation`): equal to Captum 0.9.0's FeatureAblation
and ShapleyValueSampling (its permutations under the same seed, per image) on ResNet-18 with the same SLIC feature
mask and perturbations_per_eval = our batch size; the superpixels are deterministic and do not depend on the
normalisation; a build draws, writes and scores both; without scikit-image, validation exits 2."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import FeatureAblation, ShapleyValueSampling
from click.testing import CliRunner
from torch import nn

from reportgen.local_forward import Whole, near
from reportgen.cli import main
from reportgen.config import GradientsConfig, TargetSpec
from reportgen.errors import ReportgenError
from reportgen.methods import ablation as A
from reportgen.stages import gradients as G
from tests.helpers import build_black_box, make_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-4  # max |ours − Captum| relative to max |Captum| (float32 forwards of other batch compositions)


def no_grad(model: nn.Module):
    def forward(x):
        with torch.inference_mode():
            return model(x)
    return forward


def captum_ablation(forward, x, targets, mask, per_eval):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FeatureAblation(forward).attribute(x, baselines=0, target=targets, feature_mask=mask[:, None],
                                                  perturbations_per_eval=per_eval)


def test_feature_ablation_equals_captum_on_resnet18_per_image_and_rank():
    """The stage's maps (its fast forward, batch_size ablated inputs per forward) equal Captum's FeatureAblation given
    the same forward and the same SLIC mask; and, with the eager model, Captum's on it."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=("feature_ablation",), targets=TargetSpec(k=2), slic_segments=12,
                          internal_batch_size=8)
    result = G.run(ctx, cfg)
    mask = A.superpixels(x, segments=12, compactness=10.0, sigma=1.0)
    assert len(torch.unique(mask[0])) > 4 and not torch.equal(mask[0], mask[1])  # per-image superpixels
    fast = G.fast_forward(ctx.info, model, x)
    assert not isinstance(near(fast), Whole)  # the first layers ran on crops (`local_forward`)
    for r in range(2):
        targets = result.classes[:, r].tolist()
        ref = captum_ablation(fast, x, targets, mask, 8)
        eager_ref = captum_ablation(no_grad(model), x, targets, mask, 8)
        eager = A.compute_feature_ablation(no_grad(model), x, [targets], mask, batch_size=8)[0]
        for i in range(2):  # per image
            ours = result.maps["feature_ablation"][i, r]
            assert np.abs(ours - ref[i].numpy()).max() <= TOL * ref[i].abs().max().item()
            assert (eager[i] - eager_ref[i]).abs().max() <= TOL * eager_ref[i].abs().max()
        assert ref.abs().max() > 0


def three_images():
    """A seeded tiny CNN of 4 classes, 3 images of 20 × 24 and their SLIC superpixels (about 8 each)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    x = torch.randn(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    return model, x, A.superpixels(x, segments=8, compactness=10.0, sigma=1.0)


def test_every_pixel_of_a_superpixel_gets_its_drop_for_every_rank_and_batching():
    model, x, mask = three_images()
    class_sets = [(0, 2, 1), (3, 3, 0)]
    with torch.no_grad():
        logits = model(x)
        expected = torch.zeros(2, 3, 20, 24)
        for i in range(3):
            for k in torch.unique(mask[i]).tolist():
                off = mask[i] == k
                drop = logits[i] - model(x[i:i + 1] * ~off)[0]
                for r, cs in enumerate(class_sets):
                    expected[r, i][off] = drop[cs[i]]
    for batch_size in (1, 5, 500):
        maps = A.compute_feature_ablation(no_grad(model), x, class_sets, mask, batch_size=batch_size)
        for r in range(2):
            assert maps[r].shape == (3, 3, 20, 24) and torch.equal(maps[r][:, 0], maps[r][:, 2])
            assert (maps[r][:, 1] - expected[r]).abs().max() <= TOL * expected[r].abs().max()
    with pytest.raises(ReportgenError, match="feature mask"):
        A.compute_feature_ablation(no_grad(model), x, class_sets, mask[:, :-1], batch_size=4)


def test_superpixels_are_deterministic_and_follow_the_image_not_its_normalisation():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    a = A.superpixels(x, segments=16, compactness=10.0, sigma=1.0)
    assert torch.equal(a, A.superpixels(x, segments=16, compactness=10.0, sigma=1.0))
    assert torch.equal(a, A.superpixels((x - mean) / std, segments=16, compactness=10.0, sigma=1.0))
    fewer = A.superpixels(x, segments=4, compactness=10.0, sigma=1.0)
    assert a.min() == 0 and int(fewer[0].max()) < int(a[0].max())  # labels from 0; `segments` is SLIC's


def captum_shapley(forward, x, targets, mask, samples, seed, per_eval):
    """Captum called image by image after torch.manual_seed(seed + i): the permutations ours draws."""
    maps = []
    for i in range(x.shape[0]):
        torch.manual_seed(seed + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps.append(ShapleyValueSampling(forward).attribute(
                x[i:i + 1], baselines=0, target=targets[i], feature_mask=mask[i:i + 1, None], n_samples=samples,
                perturbations_per_eval=per_eval)[0])
    return torch.stack(maps)


def test_shapley_value_sampling_equals_captum_on_resnet18_with_its_permutations():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=("shapley_value_sampling",), targets=TargetSpec(k=2), slic_segments=8,
                          shapley_samples=3, internal_batch_size=8)
    result = G.run(ctx, cfg)
    mask = A.superpixels(x, segments=8, compactness=10.0, sigma=1.0)
    fast = G.fast_forward(ctx.info, model, x)
    assert not isinstance(near(fast), Whole)  # the first layers ran on crops (`local_forward`)
    for r in range(2):
        targets = result.classes[:, r].tolist()
        ref = captum_shapley(fast, x, targets, mask, 3, ctx.config.seed, 8)
        for i in range(2):
            ours = result.maps["shapley_value_sampling"][i, r]
            assert np.abs(ours - ref[i].numpy()).max() <= TOL * ref[i].abs().max().item()
        assert ref.abs().max() > 0
    # another seed draws other permutations, and other values (a test that the orders matter)
    other = captum_shapley(fast, x, result.classes[:, 0].tolist(), mask, 3, ctx.config.seed + 100, 8)
    assert np.abs(result.maps["shapley_value_sampling"][:, 0] - other.numpy()).max() > 1e-3 * other.abs().max()


def test_shapley_values_add_up_to_the_logits_rise_from_the_baseline_for_any_batching():
    """Efficiency: along every order the rises add up to f_c(x) − f_c(0), so the superpixels' values do too."""
    model, x, mask = three_images()
    with torch.no_grad():
        rise = model(x) - model(torch.zeros_like(x))
    maps = [A.compute_shapley_sampling(no_grad(model), x, [(0, 2, 1)], mask, samples=4, seed=5, offset=1,
                                       batch_size=b)[0] for b in (1, 7, 1000)]
    for i in range(3):
        ids, first = np.unique(mask[i].numpy(), return_index=True)
        total = maps[0][i, 0].flatten()[first].sum()  # one pixel per superpixel
        assert abs(float(total - rise[i, (0, 2, 1)[i]])) <= 1e-5 * float(rise[i].abs().max())
    for other in maps[1:]:
        assert (other - maps[0]).abs().max() <= TOL * maps[0].abs().max()


@pytest.mark.parametrize("method", ["feature_ablation", "shapley_value_sampling", "lime", "kernel_shap"])
def test_validate_exits_2_without_scikit_image(project, monkeypatch, method):
    monkeypatch.setitem(sys.modules, "skimage", None)  # what an environment without the extra imports
    config = project.base()
    config["analyses"]["gradients"] = {"methods": [method]}
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert "reportgen[superpixels]" in result.output and method in result.output and "Traceback" not in result.output


def test_validate_exits_2_for_zero_shapley_samples(project):
    config = project.base()
    config["analyses"]["gradients"] = {"methods": ["shapley_value_sampling"], "shapley_samples": 0}
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert "shapley_samples" in result.output and "Traceback" not in result.output


def test_a_build_draws_writes_and_scores_feature_ablation_and_shapley_value_sampling(project):
    build_black_box(project, {"methods": ["saliency", "feature_ablation", "shapley_value_sampling"],
                              "slic_segments": 10, "shapley_samples": 2})

