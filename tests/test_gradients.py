"""Gradient saliency: every deterministic method equals Captum 0.9.0's `attribute()`; smoothgrad matches
Captum's NoiseTunnel seeded the same way; IG's completeness gap is right; hooks, ReLUs and inputs are left
as they were; shared passes are really shared; bad options fail at validation with exit code 2."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import (
    Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients, NoiseTunnel, Saliency,
)
from captum.attr._utils.visualization import _normalize_attr
from click.testing import CliRunner
from torch import nn

from reportgen.cli import main
from reportgen.config import Config, GradientsConfig, TargetSpec
from reportgen.engine import forward_backward
from reportgen.errors import ReportgenError, merge_warnings
from reportgen.figures import gradients as gfig
from reportgen.hooks import count_hooks, relu_backward_rule
from tests.helpers import make_context
from reportgen.methods import gradients as MG
from reportgen.stages import gradients as G

ALL = ("saliency", "input_x_gradient", "guided_backprop", "deconvnet", "guided_gradcam", "smoothgrad",
       "integrated_gradients")
DETERMINISTIC = tuple(m for m in ALL if m != "smoothgrad")
TOL = 1e-4  # max |ours − Captum| relative to max |Captum|


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyNet(nn.Module):
    """Biases (so IG is not exact at any step count), one ReLU module used twice, one in-place ReLU."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.relu(self.conv2(x))
        x = self.act(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


def batch(n: int = 3, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def relative(ours: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.detach().float().numpy()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def captum_maps(model, x, targets, layer, *, steps, samples, stdev, seed, internal_batch_size=None) -> dict:
    """Captum's attribution for each method, `targets` one class per image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about its ReLU hooks
        out = {
            "saliency": Saliency(model).attribute(x, target=targets),
            "input_x_gradient": InputXGradient(model).attribute(x, target=targets),
            "guided_backprop": GuidedBackprop(model).attribute(x, target=targets),
            "deconvnet": Deconvolution(model).attribute(x, target=targets),
            "guided_gradcam": GuidedGradCam(model, model.get_submodule(layer)).attribute(x, target=targets),
            "integrated_gradients": IntegratedGradients(model).attribute(
                x, target=targets, n_steps=steps, internal_batch_size=internal_batch_size),
        }

        def smoothgrad(i: int, target: int) -> torch.Tensor:
            torch.manual_seed(seed + i)  # image i's seed, as ours
            return NoiseTunnel(Saliency(model)).attribute(x[i:i + 1], nt_type="smoothgrad", nt_samples=samples,
                                                          stdevs=stdev * float(x[i].max() - x[i].min()), target=target)

        out["smoothgrad"] = torch.cat([smoothgrad(i, t) for i, t in enumerate(targets)])
    return out


MODELS = {
    "tiny": (tiny, "conv3", 50),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), None, 8),  # reused ReLU modules
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), None, 8),  # inplace ReLUs
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_equals_captum(name):
    build, layer, steps = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = batch()
    before = x.clone()
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=ALL, targets=TargetSpec(k=2), steps=steps, samples=4, stdev=0.15,
                          cam_layer=layer, internal_batch_size=7 if name == "tiny" else None)
    result = G.run(ctx, cfg)
    assert result.classes.shape == (3, 2)
    assert len({tuple(c) for c in result.classes.T.tolist()}) == 2  # ranks differ
    saved = G.arrays(result)
    for r in range(2):
        targets = result.classes[:, r].tolist()
        ref = captum_maps(model, x, targets, result.cam_layer, steps=steps, samples=4, stdev=0.15, seed=0,
                          internal_batch_size=cfg.internal_batch_size)
        for method in DETERMINISTIC:
            assert relative(result.maps[method][:, r], ref[method]) <= TOL, (method, r)
            for i, image in enumerate(result.images):
                key = f"gradients/{method}/{image}/{targets[i]}"
                assert saved[key].dtype == np.float32 and saved[key].shape == (3, 64, 64)
        # smoothgrad: same noise (seeded the same way, CPU), so far more than correlated
        ours, theirs = result.maps["smoothgrad"][:, r].ravel(), ref["smoothgrad"].numpy().ravel()
        assert np.corrcoef(ours, theirs)[0, 1] > 0.999
        assert relative(result.maps["smoothgrad"][:, r], ref["smoothgrad"]) <= TOL
    assert torch.equal(x, before)
    assert count_hooks(model) == 0


def test_guided_backprop_where_captum_is_wrong():
    """A ReLU whose input also feeds a skip path: Captum's hook on the ReLU's *input tensor* rewrites the
    skip path's gradient too. Ours changes only the ReLU's own backward, as a hand-derived oracle does."""

    class PreActivationSkip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            h = self.conv(x)
            return self.fc((self.relu(h) + 0.5 * h).flatten(1))

    torch.manual_seed(0)
    model = PreActivationSkip().eval()
    x = batch(2, 8)
    targets = [0, 3]
    for rule, captum_cls in (("guided", GuidedBackprop), ("deconv", Deconvolution)):
        xx = x.clone().requires_grad_()
        h = model.conv(xx)
        g_out = model.fc.weight[targets].view(2, 4, 8, 8)  # ∂ logit / ∂ (relu(h) + 0.5 h)
        g_relu = g_out.clamp_min(0) * (h > 0) if rule == "guided" else g_out.clamp_min(0)
        oracle = torch.autograd.grad(h, xx, g_relu + 0.5 * g_out)[0]
        ours = MG.compute_relu_rule_gradient(model, x, targets, rule)
        torch.testing.assert_close(ours, oracle, rtol=1e-5, atol=1e-7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = captum_cls(model).attribute(x, target=targets)
        assert (theirs - oracle).abs().max() > 0.1 * oracle.abs().max()  # captum 0.9.0 differs here


def test_integrated_gradients_completeness():
    model, x = tiny(), batch(2, 32)
    ctx = make_context(model, x)
    result = G.run(ctx, GradientsConfig(methods=("integrated_gradients",), steps=200))
    c = result.completeness
    assert c.gap.shape == (2, 1) and (c.gap < 0.01).all()
    assert not result.warnings
    # the gap is Captum's convergence delta relative to f(x) − f(baseline)
    targets = result.classes[:, 0].tolist()
    _, delta = IntegratedGradients(model).attribute(x, target=targets, n_steps=200, return_convergence_delta=True)
    np.testing.assert_allclose(c.gap[:, 0] * np.abs(c.delta[:, 0]), delta.abs().double().numpy(), rtol=1e-3,
                               atol=1e-6)
    with torch.no_grad():
        logits = model(x)
        expected = (logits - model(torch.zeros_like(x)))[torch.arange(2), targets].double().numpy()
    np.testing.assert_allclose(c.delta[:, 0], expected, rtol=1e-5)
    # too few steps: a large gap and a warning that says what to do, for exactly the images over 5%, given once
    coarse = G.run(ctx, GradientsConfig(methods=("integrated_gradients",), steps=1))
    over = [name for name, gap in zip(coarse.images, coarse.completeness.gap[:, 0]) if gap > G.GAP_WARNING]
    assert len(over) >= 1 and [w.image.split(":")[0] for w in coarse.warnings] == over
    (merged,) = merge_warnings(coarse.warnings)
    assert f"for {len(over)} image" in merged and merged.endswith("raise `steps` (now 1).")
    section = gfig.plot(coarse, ctx)
    assert [row["ok"] for row in section["completeness"]] == [g <= 0.05 for g in coarse.completeness.gap[:, 0]]


@pytest.mark.parametrize("kind", ["blur", "uniform", "file"])
def test_baselines(kind, tmp_path):
    model, x = tiny(), batch(2, 32)
    if kind == "file":
        np.save(tmp_path / "grey.npy", np.full((3, 32, 32), 0.25, dtype=np.float32))
        spec = tmp_path / "grey.npy"
    else:
        spec = kind
    base, text = G.make_baseline(spec, x, seed=3)
    assert base.shape == x.shape and text
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = G.BLUR_SIGMA * 32
        ref = np.stack([[gaussian_filter(ch, sigma, mode="nearest", truncate=np.ceil(3 * sigma) / sigma)
                         for ch in img] for img in x.numpy().astype(np.float64)])
        np.testing.assert_allclose(base.numpy(), ref, atol=1e-5)
    if kind == "uniform":
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        assert ((base >= lo) & (base <= hi)).all() and base.std() > 0
        assert torch.equal(base, G.make_baseline(spec, x, seed=3)[0])
        assert not torch.equal(base, G.make_baseline(spec, x, seed=4)[0])
    (ours,) = MG.compute_integrated_gradients(model, x, [[1, 2]], baseline=base, steps=20, batch_size=16)
    ref = IntegratedGradients(model).attribute(x, baselines=base, target=[1, 2], n_steps=20)
    assert relative(ours.numpy(), ref) <= TOL


def test_no_hook_left_relus_unchanged_input_unmodified():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = batch(2, 64)
    before_x, before_state = x.clone(), copy.deepcopy(model.state_dict())
    relus = {name: dict(vars(m)) for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    assert any(r["inplace"] for r in relus.values())
    with torch.no_grad():
        logits = model(x)
    ctx = make_context(model, x)
    G.run(ctx, GradientsConfig(methods=ALL, steps=4, samples=2))
    assert count_hooks(model) == 0
    assert torch.equal(x, before_x)
    assert all(p.grad is None for p in model.parameters())
    after = {name: dict(vars(m)) for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    assert after == relus
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), logits)

    class Boom(Exception):
        pass

    def explode(*_):
        raise Boom

    handle = model.classifier.register_forward_hook(explode)
    with pytest.raises(Boom), relu_backward_rule(model, "guided") as rule:
        assert rule.hooked == len(relus) and count_hooks(model) == 2 * len(relus) + 1
        model(x)
    handle.remove()
    assert count_hooks(model) == 0


class ForwardCounter:
    def __init__(self, model: nn.Module):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1


def test_saliency_and_input_x_gradient_reuse_the_cam_pass():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = batch(2, 64)
    ctx = make_context(model, x)
    classes = tuple(ctx.logits.argmax(1).tolist())
    (shared,) = ctx.engine.passes(["layer4"], [classes], input_grad=True)  # what the CAM stage leaves
    counter = ForwardCounter(model)
    result = G.run(ctx, GradientsConfig(methods=("saliency", "input_x_gradient")))
    assert counter.calls == 0 and result.reused_cam_pass == (True,)
    np.testing.assert_array_equal(result.maps["saliency"][:, 0], shared.input_grad.abs().numpy())
    np.testing.assert_array_equal(result.maps["input_x_gradient"][:, 0], (x * shared.input_grad).numpy())
    # guided_gradcam: ONE forward gives its Grad-CAM (plain backward) and guided backprop (guided backward)
    G.run(ctx, GradientsConfig(methods=("saliency", "guided_gradcam"), cam_layer="layer4"))
    assert counter.calls == 1
    # without a shared pass: ONE forward for both methods and both target ranks (two backward passes),
    ctx.engine.clear()
    result = G.run(ctx, GradientsConfig(methods=("saliency", "input_x_gradient"), targets=TargetSpec(k=2)))
    assert counter.calls == 1 + 1 and result.reused_cam_pass == (False, False)
    # and ONE forward for five methods and two ranks (plain, guided and deconv backward passes per rank)
    G.run(ctx, GradientsConfig(methods=("saliency", "input_x_gradient", "guided_gradcam", "guided_backprop",
                                        "deconvnet"), targets=TargetSpec(k=2), cam_layer="layer4"))
    assert counter.calls == 2 + 1
    counter.handle.remove()
    for r, classes in enumerate(result.classes.T.tolist()):
        expected = forward_backward(model, x, [], classes, input_grad=True).input_grad
        np.testing.assert_allclose(result.maps["saliency"][:, r], expected.abs().numpy(), rtol=1e-6, atol=1e-9)


def test_with_the_cam_stage_one_forward_serves_gradient_cams_saliency_and_input_x_gradient():
    from reportgen.config import AnalysesConfig, CamConfig
    from reportgen.stages import cam

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = batch(2, 64)
    analyses = AnalysesConfig(
        cam=CamConfig(methods=("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"), targets=TargetSpec(k=2)),
        gradients=GradientsConfig(methods=("saliency", "input_x_gradient"), targets=TargetSpec(k=2)))
    ctx = make_context(model, x, config=Config(analyses=analyses))
    counter = ForwardCounter(model)
    cam.run(ctx, analyses.cam)
    result = G.run(ctx, analyses.gradients)
    counter.handle.remove()
    assert counter.calls == 1 and result.reused_cam_pass == (True, True)
    for r, classes in enumerate(result.classes.T.tolist()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = Saliency(model).attribute(x, target=classes)
        assert relative(result.maps["saliency"][:, r], expected) <= TOL


def test_with_the_cam_stage_guided_backprop_deconvnet_and_guided_gradcam_share_its_forward():
    """The CAM pass's forward runs with switchable ReLU rules when the gradients section wants them: guided
    backprop, deconvnet and guided Grad-CAM add backward passes to it, and equal Captum's."""
    from reportgen.config import AnalysesConfig, CamConfig
    from reportgen.stages import cam

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = batch(2, 64)
    analyses = AnalysesConfig(
        cam=CamConfig(methods=("gradcam", "layercam"), target_layers=("layer4",), targets=TargetSpec(k=2)),
        gradients=GradientsConfig(methods=("saliency", "guided_backprop", "deconvnet", "guided_gradcam"),
                                  targets=TargetSpec(k=2), cam_layer="layer4"))
    ctx = make_context(model, x, config=Config(analyses=analyses))
    alone = make_context(model, x, config=Config(analyses=AnalysesConfig(cam=analyses.cam)))
    counter = ForwardCounter(model)
    cams = cam.run(ctx, analyses.cam)
    result = G.run(ctx, analyses.gradients)
    assert counter.calls == 1
    cams_alone = cam.run(alone, analyses.cam)  # the rules change nothing of the CAMs
    counter.handle.remove()
    assert cams.maps.keys() == cams_alone.maps.keys()
    for key, value in cams.maps.items():
        np.testing.assert_array_equal(value, cams_alone.maps[key])
    for r, classes in enumerate(result.classes.T.tolist()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = {"guided_backprop": GuidedBackprop(model).attribute(x, target=classes),
                        "deconvnet": Deconvolution(model).attribute(x, target=classes),
                        "guided_gradcam": GuidedGradCam(model, model.layer4).attribute(x, target=classes)}
        for method, values in expected.items():
            assert relative(result.maps[method][:, r], values) <= TOL, method


def test_a_cam_layer_that_an_inplace_relu_overwrites_keeps_its_own_pass():
    """BasicBlock's bn2 output is changed in place (`+= identity`, then ReLU(inplace=True)): with the ReLUs'
    rules switchable that ReLU would leave it alone, so the engine runs that pass as the model is, and guided
    backprop takes a forward of its own."""
    from reportgen.config import AnalysesConfig, CamConfig
    from reportgen.stages import cam

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = batch(2, 64)
    analyses = AnalysesConfig(cam=CamConfig(methods=("gradcam",), target_layers=("layer4.1.bn2",)),
                              gradients=GradientsConfig(methods=("saliency", "guided_backprop")))
    ctx = make_context(model, x, config=Config(analyses=analyses))
    alone = make_context(model, x, config=Config(analyses=AnalysesConfig(cam=analyses.cam)))
    cams, cams_alone = cam.run(ctx, analyses.cam), cam.run(alone, analyses.cam)
    for key, value in cams.maps.items():
        np.testing.assert_array_equal(value, cams_alone.maps[key])
    assert ctx.engine.relu_rules == ("guided",) and not any(p.relu_rule_grads for p in ctx.engine.cached_passes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = GuidedBackprop(model).attribute(x, target=ctx.logits.argmax(1).tolist())
    assert relative(G.run(ctx, analyses.gradients).maps["guided_backprop"][:, 0], expected) <= TOL


def test_smoothgrad_is_seeded():
    model, x = tiny(), batch(2, 32)

    def run(seed):
        ctx = make_context(model, x, config=Config(seed=seed))
        return G.run(ctx, GradientsConfig(methods=("smoothgrad",), samples=3)).maps["smoothgrad"]

    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # without noise, smoothgrad is saliency
    ctx = make_context(model, x)
    plain = G.run(ctx, GradientsConfig(methods=("smoothgrad", "saliency"), samples=2, stdev=0.0)).maps
    np.testing.assert_allclose(plain["smoothgrad"], plain["saliency"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sign", ["absolute_value", "positive", "all"])
def test_display_scaling_is_captums(sign):
    rng = np.random.default_rng(0)
    attr = rng.normal(size=(3, 20, 24)).astype(np.float32) * rng.uniform(0, 3, size=(1, 20, 24)).astype(np.float32)
    ours = gfig.normalize_attribution(attr, sign, outlier_perc=2)
    # Captum sums channels (HWC axis 2); for absolute_value we sum absolute values (the rule)
    reduced = np.abs(attr).sum(0) if sign == "absolute_value" else attr.sum(0)
    np.testing.assert_array_equal(ours, _normalize_attr(reduced, sign, 2).astype(np.float32))
    assert ours.min() >= (-1 if sign == "all" else 0) and np.abs(ours).max() == 1
    assert (np.abs(ours) == 1).sum() >= 1  # the top 2% of the mass is clipped at 1
    assert not gfig.normalize_attribution(np.zeros((3, 4, 4)), sign, 2).any()


def test_plot_figures_and_template_escape_names():
    from reportgen.figures.common import flatten, upscale_nearest
    from reportgen.render import _Images, make_environment

    model, x = tiny(), batch(1, 32)
    ctx = make_context(model, x, names=["<script>alert(1)</script>"])
    cfg = GradientsConfig(methods=("saliency", "integrated_gradients"), sign="all", steps=10)
    result = G.run(ctx, cfg)
    section = gfig.plot(result, ctx)
    (group,) = section["groups"]
    assert len(group["figures"]) == 2 * 2
    cls = int(result.classes[0, 0])
    assert all(f"class {cls}" in fig.alt and "<script>" in fig.alt for fig in group["figures"])
    assert {fig.alt.split(" ")[0] for fig in group["figures"]} == {"Saliency", "Integrated"}
    assert all(fig.png.startswith(b"\x89PNG") and fig.width >= gfig.MIN_SIDE for fig in group["figures"])
    heat, over = group["figures"][:2]
    assert heat.under is None and over.under is not None and over.alpha == cfg.alpha
    # composed by the page, the overlay is the heat map over the grey image, each pixel as opaque as its colour is
    # dark (its attribution strong): no veil where the map is zero, the map's colour at `alpha` where it is strongest;
    # the heat map alone is the same picture over white: the heat map itself
    assert heat.png == over.png
    grey = gfig.grey_beneath(ctx.images[0].display)
    plain = ctx.images[0].display.mean(axis=2)
    assert grey.min() >= gfig.GREY_FLOOR and np.corrcoef(grey[..., 0].ravel(), plain.ravel())[0, 1] > 0.999
    normed = gfig.normalize_attribution(result.maps["saliency"][0, 0], "all", 2)
    colours = gfig.colour(normed, "all", "RdBu_r")
    assert np.abs(flatten(heat).astype(int) - upscale_nearest(colours, gfig.MIN_SIDE)).max() <= 1
    dark = (255 - colours.astype(float)).max(axis=2, keepdims=True)  # opacity: the colour's darkness from white
    unblended = 255 - (255 - colours.astype(float)) * 255 / np.maximum(dark, 1)  # over white: the colour again
    weight = cfg.alpha * dark / 255
    expected = (weight * unblended + (1 - weight) * grey).round().clip(0, 255).astype(np.uint8)
    shown = flatten(over).astype(int)
    assert np.abs(shown - upscale_nearest(expected, gfig.MIN_SIDE)).max() <= 2
    assert cfg.alpha >= 0.75  # the strongest attribution reads clearly: at least 3/4 the map's colour
    import io

    from PIL import Image
    with Image.open(io.BytesIO(over.png)) as layer:  # opacity follows colour: a palette PNG, small
        assert layer.mode == "P" and layer.has_transparency_data
    weak, strong = (np.unravel_index(pick(np.abs(normed)), normed.shape) for pick in (np.argmin, np.argmax))
    scale = shown.shape[0] // normed.shape[0]
    at = lambda yx: shown[yx[0] * scale, yx[1] * scale]  # noqa: E731
    assert np.abs(at(weak) - grey[weak]).max() <= 0.05 * 255  # the input, unveiled (RdBu's middle is near white)
    assert np.abs(at(strong) - colours[strong]).max() <= (1 - cfg.alpha) * 255 + 1
    images = _Images(True)
    html = make_environment(images).get_template("sections/gradients.html.jinja2").render(
        section=section, report={})
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<img") == 1 + 1 + 4 and "completeness" in html
    assert html.count('class="zoom stack layered u0 m') == 2  # both overlays over the one grey picture
    assert html.count('class="zoom stack layered m') == 2  # the heat maps alone: the same two pictures
    # each picture once in the page's CSS: two heat maps, each also its overlay's layer, and one grey input
    assert len(images._layers) == 2 and len(images._unders) == 1


@pytest.mark.parametrize("yaml_options, message", [
    ("steps: 0", r"`analyses.gradients.steps` \(c.yaml, line 3\): must be at least 1"),
    ("samples: 0", r"`analyses.gradients.samples` \(c.yaml, line 3\): must be at least 1"),
    ("methods: [salency]", r"`analyses.gradients.methods\[0\]` \(c.yaml, line 3\): unknown method `salency`. "
                           r"Did you mean `saliency`"),
])
def test_the_schema_rejects_bad_options(yaml_options, message):
    """What needs no model is the config's to check, with the key's line."""
    from reportgen.config import parse_config

    text = f"model: {{name: resnet18}}\nanalyses:\n  gradients: {{{yaml_options}}}\n"
    with pytest.raises(ReportgenError, match=message):
        parse_config(text, base_dir=Path("."), origin="c.yaml")


@pytest.mark.parametrize("change, message", [
    ({"cam_layer": "layer9"}, "layer9"),
    ({"cam_layer": "fc"}, "spatial"),
])
def test_check_rejects_bad_options(change, message):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    ctx = make_context(model, batch(1, 32))
    methods = ("guided_gradcam", "smoothgrad", "integrated_gradients")
    cfg = dataclasses.replace(GradientsConfig(methods=methods), **change)
    with pytest.raises(ReportgenError, match=message):
        G.check(ctx.info, cfg)


def test_guided_gradcam_without_a_spatial_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    ctx = make_context(model, batch(1, 2))
    with pytest.raises(ReportgenError, match="cam_layer"):
        G.check(ctx.info, GradientsConfig(methods=("guided_gradcam",)))
    G.check(ctx.info, GradientsConfig(methods=("saliency", "guided_backprop")))  # those need no layer


@pytest.mark.parametrize("baseline, message", [("wrong.npy", r"shape \[3, 8, 8\]"), ("zeroo", "Did you mean `zero`"),
                                               ("x.npz", "several arrays"), ("big.npy", "larger than it can be: a baseline")])
def test_validate_exits_2_for_a_bad_baseline(project, baseline, message):
    np.save(project.root / "wrong.npy", np.zeros((3, 8, 8), dtype=np.float32))
    np.savez(project.root / "x.npz", a=np.zeros((3, 16, 16), dtype=np.float32))
    np.save(project.root / "big.npy", np.zeros((3, 160, 160), dtype=np.float32))
    config = project.base()
    config["analyses"]["gradients"] = {"methods": ["ig"], "baseline": baseline}
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert "baseline" in result.output and __import__("re").search(message, result.output)
    assert "Traceback" not in result.output


def test_build_with_gradients_saves_arrays(project):
    config = project.base()
    config["analyses"] = {"gradients": {"methods": list(ALL), "steps": 4, "samples": 2, "targets": "top2"}}
    config["output"]["save_arrays"] = True
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    arrays = np.load(project.root / "out" / "arrays.npz")
    keys = [k for k in arrays.files if k.startswith("gradients/")]
    assert len(keys) == len(ALL) * 2 * 2  # methods x images x top-2 classes
    assert all(arrays[k].shape == (3, 16, 16) and arrays[k].dtype == np.float32 for k in keys)
    html = (project.root / "out" / "report.html").read_text()
    assert 'id="gradients"' in html and "Integrated gradients: completeness" in html


def test_one_dispatch_serves_cam_and_gradient_methods_from_the_engines_one_pass():
    """`dispatch.explain` computes a CAM, saliency and guided backprop from ONE engine pass (one forward), each map
    equal to its own computation; integrated gradients reads the baseline, SmoothGrad does not."""
    from reportgen.engine import Engine
    from reportgen.methods.cam import compute_maps
    from reportgen.methods.dispatch import Settings, explain

    model, x = tiny(), batch(2, 16)
    classes = [1, 3]
    engine = Engine(model, x, input_grad_wanted=True, relu_rules=("guided",))
    explained = explain(["gradcam", "saliency", "guided_backprop"], engine, [classes], Settings(layers=("conv2",)))
    assert len(engine.cached_passes()) == 1 and explained.reused_input_grad == (True,)
    alone = compute_maps(model, x, ["conv2"], ["gradcam"], [classes])
    torch.testing.assert_close(explained.cam.final["conv2"], alone.final["conv2"])
    plain = forward_backward(model, x, [], classes, input_grad=True).input_grad
    torch.testing.assert_close(explained.gradients["saliency"][0], plain.abs())
    torch.testing.assert_close(explained.gradients["guided_backprop"][0],
                               MG.compute_relu_rule_gradient(model, x, classes, "guided"))

    start = torch.full_like(x, 0.5)
    fresh = Engine(model, x)
    explained = explain(["smoothgrad", "integrated_gradients"], fresh, [classes],
                        Settings(options=GradientsConfig(samples=2, steps=4), batch_size=8, baseline=lambda: start))
    assert explained.from_baseline == ("integrated_gradients",) and explained.baseline is start
    assert explained.cam is None and set(explained.gradients) == {"smoothgrad", "integrated_gradients"}
