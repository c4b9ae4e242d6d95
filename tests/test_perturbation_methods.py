"""The black-box methods of the gradient family (`methods.perturbation`): RISE equals its formula (by hand, with the
same masks) and its expectation on a model whose class probability is known in closed form; Occlusion equals
Captum 0.9.0's on ResNet-18; both run in a build, are written to arrays.npz and scored by the evaluation; a window
that does not fit or a stride of 0 exits 2 at validation."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import Occlusion
from click.testing import CliRunner
from torch import nn

from reportgen.local_forward import Whole, near
from reportgen.cli import main
from reportgen.config import GradientsConfig, TargetSpec
from reportgen.errors import ReportgenError
from reportgen.methods import perturbation as P
from reportgen.methods.boxes import drise_masks
from reportgen.stages import gradients as G
from tests.helpers import build_black_box, make_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-4  # max |ours − reference| relative to max |reference| (float32 sums in another order, another batching)


def no_grad(model: nn.Module):
    def forward(x):
        with torch.inference_mode():
            return model(x)
    return forward


class RegionMean(nn.Module):
    """Class 0's softmax probability is the mean of the input over `region` (inputs in [0, 1]): the logits are
    log(m), log(1 − m), and softmax(log q) = q for q summing to 1."""

    def __init__(self, region: tuple[slice, slice]):
        super().__init__()
        self.region = region

    def forward(self, x):
        m = x[:, 0, self.region[0], self.region[1]].mean(dim=(1, 2))
        return torch.stack([m.log(), (1 - m).log()], dim=1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_rise_masks_in_parts_are_the_masks_drawn_at_once():
    whole = drise_masks(30, (20, 28), 6, 0.4, seed=3)
    parts = torch.cat([drise_masks(30, (20, 28), 6, 0.4, seed=3, rows=slice(a, a + 7)) for a in range(0, 30, 7)])
    assert torch.equal(whole, parts)


def test_rise_on_a_model_whose_probability_is_the_mean_of_a_region():
    """p_0(x ⊙ M) = mean of M over the region R (x = 1): the saliency is exactly Σ_i mean_R(M_i) M_i / (N p) with the
    masks drawn, and its expectation is p far from R (M there is independent of R's cells: E[M(u)] E[mean_R M] / p)
    and E[M(u)²] / p > p inside R."""
    size, cell, p, n = 48, 6, 0.5, 3000
    region = (slice(0, 3), slice(0, 3))
    x = torch.ones(1, 3, size, size)
    maps = P.compute_rise(no_grad(RegionMean(region)), x, [[0]], masks=n, cell=cell, p=p, seed=5, batch_size=256)
    saliency = maps[0][0]  # (C, H, W), the same map in every channel
    assert maps[0].shape == (1, 3, size, size) and torch.equal(saliency[0], saliency[2])
    masks = drise_masks(n, (size, size), cell, p, seed=5)
    weights = masks[:, region[0], region[1]].mean(dim=(1, 2))
    exact = torch.einsum("n,nhw->hw", weights.double(), masks.double()) / (n * p)
    assert float((saliency[0].double() - exact).abs().max()) <= 1e-5 * float(exact.abs().max())
    far = float(saliency[0, 3 * cell:, 3 * cell:].mean())  # more than two cells (the shift and the bilinear) away
    inside = float(saliency[0, region[0], region[1]].mean())
    assert abs(far - p) < 0.02, far
    assert inside > p + 0.1, inside


def test_rise_equals_its_formula_computed_by_hand_for_every_rank_and_batching():
    model, x = tiny(), torch.randn(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    class_sets = [(0, 2, 1), (3, 3, 0)]
    n, cell, p = 40, 5, 0.3
    masks = drise_masks(n, (20, 24), cell, p, seed=9)
    with torch.no_grad():
        expected = [torch.stack([sum(model(x[i:i + 1] * m)[0].softmax(0)[c[i]] * m for m in masks) / (n * p)
                                 for i in range(3)]) for c in class_sets]
    for batch_size in (7, 200):
        maps = P.compute_rise(no_grad(model), x, class_sets, masks=n, cell=cell, p=p, seed=9, batch_size=batch_size)
        for ours, ref in zip(maps, expected):
            assert float((ours[:, 1] - ref).abs().max()) <= TOL * float(ref.abs().max())


def test_the_stage_computes_rise_through_the_fast_forward_with_its_options():
    model, x = tiny(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=("rise",), targets=TargetSpec(k=2), rise_masks=24, rise_cell=4, rise_p=0.6)
    result = G.run(ctx, cfg)
    classes = result.classes  # (N, 2)
    expected = P.compute_rise(no_grad(model), x, [classes[:, r].tolist() for r in range(2)], masks=24, cell=4, p=0.6,
                              seed=ctx.config.seed, batch_size=64)
    assert result.maps["rise"].shape == (2, 2, 3, 16, 16)
    for r in range(2):
        ref = expected[r].numpy()
        assert np.abs(result.maps["rise"][:, r] - ref).max() <= TOL * np.abs(ref).max()
    assert P.rise_cell((224, 224)) == 32 and P.rise_cell((16, 20)) == 3  # RISE's 7 × 7 grid by default


def captum_occlusion(forward, x, targets, window, stride, per_eval):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Occlusion(forward).attribute(x, sliding_window_shapes=(x.shape[1], window, window), strides=stride,
                                            baselines=0, target=targets, perturbations_per_eval=per_eval)


def test_occlusion_equals_captum_on_resnet18_per_image_and_rank():
    """The stage's maps (its fast forward, batch_size inputs per forward) equal Captum's Occlusion given the same
    forward with perturbations_per_eval = that batch size; and, computed with the eager model, Captum's on it."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=("occlusion",), targets=TargetSpec(k=2), occlusion_window=11,
                          occlusion_stride=6, internal_batch_size=16)
    result = G.run(ctx, cfg)
    fast = G.fast_forward(ctx.info, model, x)
    assert not isinstance(near(fast), Whole)  # the first layers ran on crops (`local_forward`)
    for r in range(2):
        targets = result.classes[:, r].tolist()
        ref = captum_occlusion(fast, x, targets, 11, 6, 16)
        eager_ref = captum_occlusion(no_grad(model), x, targets, 11, 6, 16)
        eager = P.compute_occlusion(no_grad(model), x, [targets], window=11, stride=6, batch_size=16)[0]
        for i in range(2):  # per image
            ours = result.maps["occlusion"][i, r]
            assert np.abs(ours - ref[i].numpy()).max() <= TOL * ref[i].abs().max().item()
            assert (eager[i] - eager_ref[i]).abs().max() <= TOL * eager_ref[i].abs().max()
        assert ref.abs().max() > 0


def test_occlusion_windows_that_stick_out_and_a_window_as_large_as_the_image():
    model, x = tiny(), torch.randn(2, 3, 13, 17, generator=torch.Generator().manual_seed(4))
    for window, stride in ((5, 3), (13, 1), (4, 4)):
        ours = P.compute_occlusion(no_grad(model), x, [(1, 2)], window=window, stride=stride, batch_size=9)[0]
        ref = captum_occlusion(no_grad(model), x, [1, 2], window, stride, 9)
        assert (ours - ref).abs().max() <= TOL * ref.abs().max(), (window, stride)


@pytest.mark.parametrize("window, stride", [(20, 4), (4, 0), (4, 5)])
def test_occlusion_refuses_a_window_or_stride_that_does_not_fit(window, stride):
    model, x = tiny(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ReportgenError, match="occlusion"):
        P.compute_occlusion(no_grad(model), x, [(0,)], window=window, stride=stride, batch_size=4)


@pytest.mark.parametrize("over, message", [({"occlusion_window": 17}, "occlusion_window.*larger than the input"),
                                           ({"occlusion_stride": 0}, "occlusion_stride"),
                                           ({"occlusion_window": 5, "occlusion_stride": 6}, "larger than the window")])
def test_validate_exits_2_for_an_occlusion_window_that_does_not_fit(project, over, message):
    config = project.base()  # 16 × 16 inputs
    config["analyses"]["gradients"] = {"methods": ["occlusion"], **over}
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert __import__("re").search(message, result.output) and "Traceback" not in result.output
    assert not (project.root / "out").exists()


def test_a_build_draws_writes_and_scores_rise_and_occlusion(project):
    build_black_box(project, {"methods": ["saliency", "rise", "occlusion"], "rise_masks": 16, "occlusion_window": 6,
                              "occlusion_stride": 4})


def test_the_batches_of_a_build_share_one_fast_forward():
    """The fast forward (a copy of the model, checked) is made once per build and input shape, not per batch; a
    randomised copy of the model (the sanity cascade's) gets its own."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ctx = make_context(model, x[:2])
    cfg = GradientsConfig(methods=("occlusion",), targets=TargetSpec(k=1), occlusion_window=8, occlusion_stride=8)
    G.run(ctx, cfg)
    fast = G.fast_forwards(ctx)
    made = dict(fast.made)
    assert len(made) == 1
    with torch.no_grad():
        logits = model(x[2:])
    second = ctx.for_batch(ctx.images, x[2:], logits, offset=2)
    G.run(second, cfg)
    assert G.fast_forwards(second) is fast and fast.made == made  # the same forward object, reused
    from reportgen.stages import evaluation
    assert evaluation._perturbation_forward(second) is made[next(iter(made))]  # the evaluation's metrics share it
    other = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    assert fast(other, x[:1]) is not made[next(iter(made))] and fast.made == made
