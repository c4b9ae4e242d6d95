"""`lime` and `kernel_shap` (`methods.surrogate`): equal to Captum 0.9.0's Lime and KernelShap (their draws under the
same seed, per image) with the same SLIC feature mask and perturbations_per_eval = our batch size; the fits equal
scikit-learn's run to convergence; an image's map does not depend on the batching or the images beside it; a build
draws, writes and scores both; too few samples or no scikit-image: validation exits 2."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import KernelShap, Lime
from click.testing import CliRunner
from sklearn.linear_model import Lasso, LinearRegression
from torch import nn

from reportgen.cli import main
from reportgen.config import GradientsConfig, TargetSpec
from reportgen.errors import ReportgenError
from reportgen.methods import ablation as A
from reportgen.methods import surrogate as S
from reportgen.stages import gradients as G
from tests.helpers import build_black_box, make_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
# max |ours − Captum| relative to max |Captum| per image, on panels of ≤ 12 superpixels: Captum's fits run in float32
# (scikit-learn's), ours in float64, and forwards of other batch compositions round differently. (At 50 superpixels
# Captum's float32 KernelShap fit, with its end weights of 10⁶, is only good to about 1e-3: docs/methods.md.)
TOL = 1e-4
# Lime against Captum's default Lasso (scikit-learn's tol=1e-4 dual-gap stop): its stopping error, measured up to
# 3e-5 on these panels (docs/methods.md); a Lasso run to tol 1e-12 is within 1e-6
TOL_LASSO_CONVERGED = 1e-5


def tiny_cnn() -> nn.Module:
    """Logits of a few units, so that Lime's Lasso (alpha 0.01) keeps most superpixels and zeroes some."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(10)
    return model


def no_grad(model: nn.Module):
    def forward(x):
        with torch.inference_mode():
            return model(x)
    return forward


def captum(cls, forward, x, targets, mask, samples, seed, per_eval, **kwargs):
    """Captum called image by image after torch.manual_seed(seed + i): the draws ours makes."""
    maps = []
    for i in range(x.shape[0]):
        torch.manual_seed(seed + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum's "minimum element in feature mask" and the like
            maps.append(cls(forward, **kwargs).attribute(
                x[i:i + 1], baselines=0, target=targets[i], feature_mask=mask[i:i + 1, None], n_samples=samples,
                perturbations_per_eval=per_eval)[0])
    return torch.stack(maps)


def test_lime_and_kernel_shap_equal_captum_per_image_and_rank():
    """The stage's maps (its fast forward, batch_size perturbed inputs per forward) equal Captum's Lime and KernelShap
    given the same forward, mask and seed; Lime also equals Captum's Lime with a Lasso run to convergence, closer."""
    model = tiny_cnn()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=("lime", "kernel_shap"), targets=TargetSpec(k=2), slic_segments=10,
                          lime_samples=60, kernel_shap_samples=30, internal_batch_size=16)
    result = G.run(ctx, cfg)
    mask = A.superpixels(x, segments=10, compactness=10.0, sigma=1.0)
    assert int(mask[0].max()) > 4 and not torch.equal(mask[0], mask[1])  # per-image superpixels
    fast = G.fast_forward(ctx.info, model, x)
    seed = ctx.config.seed
    for r in range(2):
        targets = result.classes[:, r].tolist()
        lime = captum(Lime, fast, x, targets, mask, 60, seed, 16)
        converged = captum(Lime, fast, x, targets, mask, 60, seed, 16,
                           interpretable_model=SkLearnLasso(alpha=0.01, tol=1e-12, max_iter=100_000))
        shap = captum(KernelShap, fast, x, targets, mask, 30, seed, 16)
        for i in range(2):  # per image
            ours = result.maps["lime"][i, r]
            assert np.abs(ours - lime[i].numpy()).max() <= TOL * lime[i].abs().max().item()
            assert np.abs(ours - converged[i].numpy()).max() <= TOL_LASSO_CONVERGED * converged[i].abs().max().item()
            ours = result.maps["kernel_shap"][i, r]
            assert np.abs(ours - shap[i].numpy()).max() <= TOL * shap[i].abs().max().item()
        assert lime.abs().max() > 0 and shap.abs().max() > 0
    # the Lasso zeroes some superpixels (the L1 term is at work) and least squares none
    assert (result.maps["lime"] == 0).any() and (result.maps["kernel_shap"] != 0).all()
    # another seed draws other coalitions, and other values (a test that the draws matter)
    targets = result.classes[:, 0].tolist()
    for method, cls, samples in (("lime", Lime, 60), ("kernel_shap", KernelShap, 30)):
        other = captum(cls, fast, x, targets, mask, samples, seed + 100, 16)
        assert np.abs(result.maps[method][:, 0] - other.numpy()).max() > 1e-3 * other.abs().max()


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_an_images_map_does_not_depend_on_the_batching_or_its_neighbours(method):
    model = tiny_cnn()
    x = torch.randn(3, 3, 24, 20, generator=torch.Generator().manual_seed(2))
    mask = A.superpixels(x, segments=8, compactness=10.0, sigma=1.0)
    options = dict(samples=24, kernel_width=1.0, alpha=0.01) if method == "lime" else dict(samples=24)
    compute = S.compute_lime if method == "lime" else S.compute_kernel_shap
    class_sets = [(0, 2, 1), (3, 3, 0)]
    maps = [compute(no_grad(model), x, class_sets, mask, seed=5, batch_size=b, **options) for b in (1, 7, 1000)]
    for other in maps[1:]:
        for r in range(2):
            assert (other[r] - maps[0][r]).abs().max() <= TOL * maps[0][r].abs().max()
    # images 1 and 2 alone (offset 1: their seeds) get the maps they got beside image 0
    alone = compute(no_grad(model), x[1:], [s[1:] for s in class_sets], mask[1:], seed=5, offset=1, batch_size=7,
                    **options)
    for r in range(2):
        assert maps[0][r].shape == (3, 3, 24, 20) and torch.equal(maps[0][r][:, 0], maps[0][r][:, 2])
        assert (alone[r] - maps[0][r][1:]).abs().max() <= TOL * maps[0][r][1:].abs().max()
    with pytest.raises(ReportgenError, match="feature mask"):
        compute(no_grad(model), x, class_sets, mask[:, :-1], seed=5, batch_size=4, **options)


def test_a_coalition_drawn_twice_is_one_forward():
    """KernelShap's sizes 1 and K − 1 repeat: with 4 superpixels, 40 samples hold at most 2⁴ distinct coalitions."""
    model = tiny_cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    mask = torch.arange(4).repeat_interleave(64).view(1, 16, 16).expand(2, -1, -1).contiguous()  # 4 bands
    rows = []

    def counting(t):
        rows.append(t.shape[0])
        return no_grad(model)(t)

    once = S.compute_kernel_shap(counting, x, [(0, 1)], mask, samples=40, seed=1, batch_size=8)[0]
    assert sum(rows) <= 2 * 16 and max(rows) <= 8
    ref = captum(KernelShap, no_grad(model), x, [0, 1], mask, 40, 1, 8)
    assert (once - ref).abs().max() <= TOL * ref.abs().max()


def test_kernel_shap_values_add_up_to_the_logits_rise_from_the_baseline():
    """Its end coalitions' weight of 10⁶ makes the fit all but pass through f(x) and f(0): the superpixels' values
    add up to f_c(x) − f_c(0) (Shapley's efficiency), to 1e-3 of the logits' largest rise."""
    model = tiny_cnn()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    mask = A.superpixels(x, segments=8, compactness=10.0, sigma=1.0)
    with torch.no_grad():
        rise = model(x) - model(torch.zeros_like(x))
    maps = S.compute_kernel_shap(no_grad(model), x, [(1, 3)], mask, samples=40, seed=3, batch_size=16)[0]
    for i, c in enumerate((1, 3)):
        ids, first = np.unique(mask[i].numpy(), return_index=True)
        total = maps[i, 0].flatten()[first].sum()  # one pixel per superpixel
        assert abs(float(total - rise[i, c])) <= 1e-3 * float(rise[i].abs().max())


def test_a_mask_of_one_feature_gets_its_whole_rise():
    """A mask of one label (a user's): KernelShap (where Captum raises) gives it f_c(x) − f_c(0); Lime, on an image
    of zeros too, a finite map."""
    model = tiny_cnn()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    with torch.no_grad():
        rise = float(model(x)[0, 2] - model(torch.zeros_like(x))[0, 2])
    shap = S.compute_kernel_shap(no_grad(model), x, [(2,)], mask, samples=10, seed=0, batch_size=4)[0]
    assert abs(float(shap[0, 0, 0, 0]) - rise) <= 1e-5 * abs(rise) and torch.equal(shap, shap[0, 0, 0, 0].expand_as(shap))
    lime = S.compute_lime(no_grad(model), torch.zeros_like(x), [(2,)], mask, samples=10, kernel_width=1.0, alpha=0.01,
                          seed=0, batch_size=4)[0]
    assert torch.isfinite(lime).all()


def test_the_fits_equal_scikit_learns_run_to_convergence():
    """Per problem and target: the Lasso (a constant column gets 0, as scikit-learn skips it) and least squares
    (minimum norm when under-determined) with sample weights and an intercept."""
    g = torch.Generator().manual_seed(0)
    z = torch.bernoulli(torch.full((2, 30, 6), 0.5), generator=g).double()
    z[1, :, 4] = 0  # a feature image 1 lacks
    y = z @ torch.randn(2, 6, 3, generator=g, dtype=torch.float64) + 0.1 * torch.randn(2, 30, 3, generator=g,
                                                                                         dtype=torch.float64)
    w = torch.rand(2, 30, generator=g, dtype=torch.float64) + 0.1
    lasso = S.weighted_lasso(z, y, w, 0.05)
    squares = S.weighted_least_squares(z, y, w)
    few = S.weighted_least_squares(z[:, :4], y[:, :4], w[:, :4])  # 4 samples, 7 unknowns
    for p in range(2):
        for t in range(3):
            ref = Lasso(alpha=0.05, tol=1e-14, max_iter=1_000_000).fit(z[p], y[p, :, t], sample_weight=w[p]).coef_
            np.testing.assert_allclose(lasso[p, t].numpy(), ref, rtol=0, atol=1e-9)
            ref = LinearRegression().fit(z[p], y[p, :, t], sample_weight=w[p]).coef_
            np.testing.assert_allclose(squares[p, t].numpy(), ref, rtol=0, atol=1e-9)
            ref = LinearRegression().fit(z[p, :4], y[p, :4, t], sample_weight=w[p, :4]).coef_
            np.testing.assert_allclose(few[p, t].numpy(), ref, rtol=0, atol=1e-9)
    assert (lasso == 0).any() and (lasso != 0).any() and (lasso[1, :, 4] == 0).all()


@pytest.mark.parametrize("keys, words", [
    ({"methods": ["lime"], "lime_samples": 1}, ["lime_samples", "at least 2"]),
    ({"methods": ["kernel_shap"], "slic_segments": 20, "kernel_shap_samples": 20},
     ["kernel_shap_samples", "20 superpixels", "at least 21"]),
    ({"methods": ["kernel_shap"], "kernel_shap_samples": 0}, ["kernel_shap_samples"]),
])
def test_validate_exits_2_for_too_few_samples(project, keys, words):
    config = project.base()
    config["analyses"]["gradients"] = keys
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert all(word in result.output for word in words) and "Traceback" not in result.output
    keys = {**keys, "lime_samples": 2, "kernel_shap_samples": 21, "slic_segments": 20}
    config["analyses"]["gradients"] = keys  # just enough
    assert CliRunner().invoke(main, ["validate", str(project.write(config))]).exit_code == 0


def test_a_build_draws_writes_and_scores_lime_and_kernel_shap(project):
    """(tinynet's logits vary by less than Lasso's default alpha of 0.01 buys: a smaller one keeps its map non-zero)"""
    build_black_box(project, {"methods": ["saliency", "lime", "kernel_shap"], "slic_segments": 10, "lime_samples": 16,
                              "lime_alpha": 1e-4, "kernel_shap_samples": 12})

