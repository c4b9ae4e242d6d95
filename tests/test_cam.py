"""Class activation maps: every method equals pytorch-grad-cam 1.5.7's `grayscale_cam` on four torchvision
models (random weights, 64x64, several images, per-image targets); Grad-CAM and CAM equal hand computations;
the engine really does one forward and one backward; bad input fails at validation; the figures and the
section describe every map; on the shipped shapes model Grad-CAM points at the object."""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pytorch_grad_cam as pgc
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.config import (AnalysesConfig, CamConfig, Config, GradientsConfig, InputsConfig, TargetSpec,
                              parse_config)
from reportgen.engine import forward_backward, forward_backward_many
from reportgen.errors import ConfigError, ReportgenError
from reportgen.figures import cam as cam_figures
from reportgen.hooks import count_hooks
from tests.helpers import make_context, shared_passes
from reportgen import methods
from reportgen.stages import cam as C

TOL = 1e-3  # the bound on max |ours - pytorch-grad-cam|
REFERENCE = {
    "gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
    "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM,
}
# the six gradient CAMs with a pytorch-grad-cam class (a method registered later has no reference here)
GRADIENT_METHODS = tuple(m for m in REFERENCE if "gradients" in methods.get(m).needs)
EIGEN = ("eigencam", "eigengradcam")
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyNet(nn.Module):
    """conv-BN-ReLU, conv (`body`, pre-activation: negative values), ReLU (`act`), GAP, one linear layer."""

    def __init__(self, num_classes: int = 4, width: int = 6):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.body(self.stem(x)))), 1))


class ConcatNet(nn.Module):
    """A skip connection concatenated AFTER the target layer `body`: a batch of 1 before it cannot meet a
    batch of ablated copies after it, so Ablation-CAM must repeat the image."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(9, num_classes)

    def forward(self, x):
        s = self.stem(x)
        y = torch.cat([s, torch.tanh(self.body(s))], dim=1)  # (N, 9, H, W)
        return self.fc(y.mean(dim=(2, 3)))


def _seeded(build, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def _batch(n: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run(model, x, methods, layers=(), targets=TargetSpec(k=1), batch_size=32, config=None, labels=None):
    ctx = make_context(model, x, labels=labels, config=config)
    cfg = CamConfig(methods=tuple(methods), target_layers=tuple(layers), targets=targets, batch_size=batch_size)
    return ctx, C.run(ctx, cfg)


def _reference(model, x, method, layers, classes, batch_size=32) -> np.ndarray:
    """pytorch-grad-cam's grayscale_cam (N, H, W) for one class per image."""
    kwargs = {"batch_size": batch_size} if method == "ablationcam" else {}
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
        warnings.simplefilter("ignore")
        with REFERENCE[method](model, [model.get_submodule(name) for name in layers], **kwargs) as cam:
            if method == "scorecam":
                cam.batch_size = batch_size
            return cam(x, [ClassifierOutputTarget(int(c)) for c in classes])


def _ours(result, method, layer, classes) -> np.ndarray:
    return np.stack([result.maps[(method, layer, i, int(c))] for i, c in enumerate(classes)])


def _eigen_both_signs(model, x, method, layers, classes) -> dict[str, np.ndarray]:
    """Per map key (a layer or `fused`): (2**L, N, H, W) every sign combination of the layers' principal
    components, post-processed like the stage does. The reference's sign is LAPACK's choice."""
    grad_pass = forward_backward(model, x, layers, classes)
    size = tuple(x.shape[-2:])
    raw = []
    for name in layers:
        a = grad_pass.activations[name]
        raw.append(C.project_2d(a if method == "eigencam" else a * grad_pass.gradients[name]))
    signs = torch.tensor([[1.0 if (s >> j) & 1 == 0 else -1.0 for j in range(len(layers))]
                          for s in range(2 ** len(layers))])  # (S, L)
    stage = [C.scale_cams((signs[:, j, None, None, None] * raw[j]).clamp_min(0), size) for j in range(len(layers))]
    out = {name: C.scale_cams(stage[j].clamp_min(0)).numpy() for j, name in enumerate(layers)}
    if len(layers) > 1:
        out[C.FUSED] = C.scale_cams(torch.stack(stage).clamp_min(0).mean(0)).numpy()
    return out


def _max_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape and ours.dtype == np.float32
    return float(np.abs(ours - ref).max())


def _check_parity(model, x, methods, layers, k, batch_size=32) -> dict[str, float]:
    """Compare every (method, layer or fused, rank) with pytorch-grad-cam; returns the worst difference per method."""
    _, result = _run(model, x, methods, layers, TargetSpec(k=k), batch_size=batch_size)
    worst: dict[str, float] = {}
    keys = list(layers) + ([C.FUSED] if len(layers) > 1 else [])
    for method in methods:
        for r in range(k):
            classes = [result.targets[i][r] for i in range(x.shape[0])]
            both = _eigen_both_signs(model, x, method, list(layers), classes) if method in EIGEN else None
            for key in keys:
                ref = _reference(model, x, method, list(layers) if key == C.FUSED else [key], classes, batch_size)
                ours = _ours(result, method, key, classes)
                if both is None:
                    diff = _max_diff(ours, ref)
                else:
                    # our fixed sign is one of the candidates; the reference is another (per image)
                    assert min(_max_diff(ours, cand) for cand in both[key].astype(np.float32)) < 1e-6
                    per_image = np.abs(both[key] - ref[None]).reshape(len(both[key]), x.shape[0], -1).max(-1)
                    diff = float(per_image.min(0).max())
                worst[method] = max(worst.get(method, 0.0), diff)
                assert diff <= TOL, f"{method} on {key}, rank {r}: max |ours - pytorch-grad-cam| = {diff:.2e}"
    return worst


# ---------------------------------------------------------------- parity with pytorch-grad-cam


GRADIENT_AND_EIGEN = GRADIENT_METHODS + ("eigencam",)


def test_parity_resnet18_two_layers_fused_top2() -> None:
    """Per-layer maps and the fused map of [layer3, layer4], two target ranks (classes differ per image)."""
    model = _seeded(torchvision.models.resnet18)
    worst = _check_parity(model, _batch(3), GRADIENT_AND_EIGEN, ["layer3", "layer4"], k=2)
    assert set(worst) == set(GRADIENT_AND_EIGEN)


@pytest.mark.parametrize("name", ["vgg11_bn", "densenet121", "mobilenet_v3_small"])
def test_parity_default_layer(name: str) -> None:
    """The auto-picked layer (`features` for all three); DenseNet's output is changed in place by its
    `F.relu(inplace=True)` after the layer, which pytorch-grad-cam sees too."""
    model = _seeded(getattr(torchvision.models, name))
    x = _batch(3)
    ctx = make_context(model, x)
    (layer,), auto = C.target_layers(ctx.info, CamConfig())
    assert auto and layer == "features"
    _check_parity(model, x, GRADIENT_AND_EIGEN, [layer], k=1)


def test_parity_score_and_ablation_mobilenet() -> None:
    """MobileNet-V3's `features` ends in Hardswish: negative activations, so Ablation-CAM uses pytorch-grad-cam's
    decreasing `min - j*1e7` values; 576 channels in batches of 64, the last batch partial."""
    model = _seeded(torchvision.models.mobilenet_v3_small)
    _check_parity(model, _batch(2, seed=3), ("scorecam", "ablationcam"), ["features"], k=1, batch_size=64)


def test_parity_score_and_ablation_resnet18_top2() -> None:
    """ResNet-18 `layer2` (128 channels after a ReLU: ablation to 0), two ranks served by one set of forwards."""
    model = _seeded(torchvision.models.resnet18)
    _check_parity(model, _batch(2, seed=4), ("scorecam", "ablationcam"), ["layer2"], k=2, batch_size=48)


def test_parity_tiny_every_method_two_layers() -> None:
    """Every method on a tiny model, pre-activation `body` (negative values) and post-ReLU `act`, fused."""
    model = _seeded(TinyNet)
    methods = GRADIENT_AND_EIGEN + ("scorecam", "ablationcam")
    _check_parity(model, _batch(3, size=20), methods, ["body", "act"], k=2, batch_size=4)


def test_ablation_repeats_the_image_when_the_model_does_not_broadcast() -> None:
    model = _seeded(ConcatNet)
    x = _batch(2, size=12)
    _, result = _run(model, x, ["ablationcam"], ["body"], batch_size=3)
    assert any("repeats each image" in w for w in result.warnings)
    classes = [t[0] for t in result.targets]
    assert _max_diff(_ours(result, "ablationcam", "body", classes),
                     _reference(model, x, "ablationcam", ["body"], classes, batch_size=3)) <= TOL


# ---------------------------------------------------------------- hand computations


def _postprocess(raw: torch.Tensor, size) -> np.ndarray:
    """pytorch-grad-cam's post-processing written out: ReLU, min-max, resize, then ReLU + min-max again."""
    out = []
    for cam in raw.clamp_min(0):
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        cam = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
        cam = cam - cam.min()
        out.append((cam / (1e-7 + cam.max())).numpy())
    return np.stack(out)


def test_gradcam_equals_a_hand_written_autograd_gradcam() -> None:
    model = _seeded(TinyNet)
    x = _batch(3, size=20)
    _, result = _run(model, x, ["gradcam"], ["body"], TargetSpec(classes=(2,)))
    store = {}
    handle = model.body.register_forward_hook(lambda _m, _i, out: store.update(a=out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[:, 2].sum(), store["a"])
    raw = (grads.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1).detach()
    expected = _postprocess(raw, (20, 20))
    assert _max_diff(_ours(result, "gradcam", "body", [2, 2, 2]), expected) < 1e-6
    assert expected.max() == pytest.approx(1.0, abs=1e-6) and expected.min() == 0.0


def test_cam_equals_the_linear_weights_map_and_gradcam_for_gap_models() -> None:
    model = _seeded(TinyNet)
    x = _batch(2, size=20)
    _, result = _run(model, x, ["cam", "gradcam"], ["act"], TargetSpec(k=2))
    assert result.not_applicable == {}
    with torch.no_grad():
        a = model.act(model.body(model.stem(x)))  # (N, C, h, w)
    for i in range(2):
        for c in result.targets[i]:
            raw = torch.einsum("c,chw->hw", model.fc.weight[c].detach(), a[i])[None]
            expected = _postprocess(raw, (20, 20))[0]
            assert _max_diff(result.maps[("cam", "act", i, c)], expected) < 1e-6
            # for global average pooling + linear, Grad-CAM's weights are the same up to 1/(h*w)
            assert _max_diff(result.maps[("gradcam", "act", i, c)], expected) < 1e-5


def test_cam_is_not_applicable_without_a_gap_linear_head() -> None:
    model = _seeded(TinyNet)
    x = _batch(2, size=20)
    _, result = _run(model, x, ["cam", "gradcam"], ["stem"])  # stem -> body -> ... : more than a linear head
    assert "cam" in result.not_applicable and "linear" in result.not_applicable["cam"]
    assert result.computed_methods == ("gradcam",)
    assert not any(key[0] == "cam" for key in result.maps)
    assert not any(key.startswith("cam/cam/") for key in C.arrays(result))


def _section_html(result, ctx) -> str:
    from reportgen import render

    section = cam_figures.plot(result, ctx)
    return render.make_environment(render._Images(True)).get_template("sections/cam.html.jinja2").render(
        section=section, report={})


@pytest.mark.parametrize("layers", [("stem",), ("stem", "body")])
def test_cam_alone_on_layers_where_it_does_not_apply_is_not_applicable(layers) -> None:
    """`methods: [cam]` on layers not feeding GAP + linear: no maps, the section says why (no crash)."""
    model = _seeded(TinyNet)
    x = _batch(2, size=20)
    ctx, result = _run(model, x, ["cam"], layers)
    assert result.computed_methods == () and result.maps == {} and C.arrays(result) == {}
    why = result.not_applicable["cam"]
    assert all(f"`{name}`" in why for name in layers) and "linear" in why
    assert C.to_json(result)["not_applicable"] == {"cam": why}
    html = _section_html(result, ctx)
    assert f"<strong>CAM</strong> is not applicable {why}" in html
    assert html.count("CAM: not applicable") == 2 * (len(layers) + (len(layers) > 1))  # images x rows
    assert count_hooks(model) == 0


def test_cam_is_computed_on_the_layers_it_applies_to() -> None:
    """[body, act]: CAM applies to `act` only (it feeds GAP + linear); `body` is skipped with a note."""
    model = _seeded(TinyNet)
    x = _batch(3, size=20)
    ctx, result = _run(model, x, ["cam", "gradcam"], ["body", "act"], TargetSpec(k=2))
    _, alone = _run(model, x, ["cam"], ["act"], TargetSpec(k=2))
    assert result.not_applicable == {} and result.computed_methods == ("cam", "gradcam")
    assert list(result.layer_not_applicable["cam"]) == ["body"]
    assert "linear" in result.layer_not_applicable["cam"]["body"]
    assert C.to_json(result)["not_applicable_layers"] == {"cam": result.layer_not_applicable["cam"]}
    for i in range(3):
        for c in result.targets[i]:
            assert ("cam", "body", i, c) not in result.maps
            assert _max_diff(result.maps[("cam", "act", i, c)], alone.maps[("cam", "act", i, c)]) < 1e-6
            assert _max_diff(result.maps[("cam", C.FUSED, i, c)], alone.maps[("cam", "act", i, c)]) < 1e-6
            assert ("gradcam", "body", i, c) in result.maps
    section = cam_figures.plot(result, ctx)
    rows = section["images"][0]["classes"][0]["rows"]
    assert [[bool(cell["figures"]) for cell in row["cells"]] for row in rows] == [[False, True], [True, True],
                                                                               [True, True]]
    assert "linear" in rows[0]["cells"][0]["why"]


def test_engine_runs_one_forward_and_backward_per_chunk_of_inputs_batch_size() -> None:
    """5 images with `inputs.batch_size: 2`: 3 forwards, 3 backwards per rank; the maps and the input gradient
    shared with the gradients stage equal those of one pass over all images."""
    model = _seeded(TinyNet)
    x = _batch(5, size=20)
    methods = GRADIENT_METHODS + ("eigencam", "cam", "scorecam", "ablationcam")
    analyses = AnalysesConfig(cam=CamConfig(), gradients=GradientsConfig(methods=("saliency",)))
    results = {}
    for chunk in (2, 8):
        config = Config(inputs=InputsConfig(batch_size=chunk), analyses=analyses)
        ctx = make_context(model, x, config=config)
        counts, handles = _count_passes(model, model.fc)
        try:
            cfg = CamConfig(methods=methods, target_layers=("body", "act"), targets=TargetSpec(k=2), batch_size=4)
            results[chunk] = (C.run(ctx, cfg), shared_passes(ctx), dict(counts))
        finally:
            for handle in handles:
                handle.remove()
    (chunked, shared, counts), (whole, whole_shared, whole_counts) = results[2], results[8]
    assert counts["backward"] == 3 * 2 and whole_counts["backward"] == 2  # one per chunk and rank
    assert counts["forward"] - whole_counts["forward"] == 3 - 1  # the masked forwards are the same
    assert set(chunked.maps) == set(whole.maps) and len(chunked.maps) == 10 * 3 * 5 * 2 - 5 * 2  # no cam on body
    for key, values in whole.maps.items():
        assert _max_diff(chunked.maps[key], values) < 1e-5, key
    assert set(shared) == set(whole_shared) and len(shared) == 2
    for key, grad_pass in shared.items():
        assert grad_pass.classes == key[1] and grad_pass.input_grad.shape == x.shape
        for ours, whole_values in ((grad_pass.input_grad, whole_shared[key].input_grad),
                                   (grad_pass.gradients["act"], whole_shared[key].gradients["act"])):
            assert _max_diff(ours.numpy(), whole_values.numpy()) <= 1e-5 * (1 + whole_values.abs().max().item())
    assert count_hooks(model) == 0


class InplaceBNNet(nn.Module):
    """conv -> BN (`bn`) -> ReLU(inplace=True) -> conv -> GAP -> linear: the ReLU overwrites the BN's output."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(6, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.relu(self.bn(self.conv(x)))).mean(dim=(2, 3)))


def test_parity_on_a_bn_layer_followed_by_an_inplace_relu() -> None:
    """The in-place hazard in the engine: gradients are the BN output's own; the activations are the tensor after
    the ReLU changed it, as pytorch-grad-cam 1.5.7 records them (on the CPU), for the gradient methods and
    Eigen-CAM (a forward without autograd) alike."""
    model = _seeded(InplaceBNNet)
    with torch.no_grad():
        model.bn.bias.normal_()  # the BN's output has negative values: the ReLU really changes it
    x = _batch(2, size=16)
    _check_parity(model, x, GRADIENT_AND_EIGEN, ["bn"], k=1)
    _check_parity(model, x, ("eigencam",), ["bn"], k=1)


def test_eigen_sign_is_fixed_by_positive_loadings() -> None:
    values = _batch(3, size=6)[:, :, :, :]  # (3, 3, 6, 6): three "channels"
    fixed = C.project_2d(values)
    free = C.project_2d(values, fix_sign=False)
    x = values.reshape(3, 3, 36).transpose(1, 2).double()
    x = x - x.mean(1, keepdim=True)
    for i in range(3):
        # the projection is ± the free one and correlates positively with the channel sum
        assert torch.allclose(fixed[i], free[i], atol=1e-6) or torch.allclose(fixed[i], -free[i], atol=1e-6)
        assert float((fixed[i].flatten().double() * x[i].sum(1)).sum()) > 0
        u, s, vh = np.linalg.svd(x[i].numpy(), full_matrices=True)
        assert np.allclose(np.abs(fixed[i].flatten().numpy()), np.abs(x[i].numpy() @ vh[0]), atol=1e-5)


# ---------------------------------------------------------------- one engine pass


def _count_passes(model: nn.Module, last: nn.Module):
    """Hooks (test only) counting forward calls of the model and backward passes through `last`'s output."""
    counts = {"forward": 0, "backward": 0}

    def on_forward(_m, _i, _o):
        counts["forward"] += 1

    def on_last(_m, _i, out):
        if out.requires_grad:
            out.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))

    handles = [model.register_forward_hook(on_forward), last.register_forward_hook(on_last)]
    return counts, handles


@pytest.mark.parametrize("k", [1, 3])
def test_six_gradient_methods_and_eigencam_take_one_forward_and_one_backward_per_rank(k: int) -> None:
    model = _seeded(torchvision.models.resnet18)
    x = _batch(2)
    before = x.clone()
    ctx = make_context(model, x)
    counts, handles = _count_passes(model, model.fc)
    try:
        cfg = CamConfig(methods=GRADIENT_METHODS + ("eigencam", "cam"), target_layers=("layer3", "layer4"),
                        targets=TargetSpec(k=k))
        result = C.run(ctx, cfg)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == {"forward": 1, "backward": k}
    # layer3 does not feed the linear head: CAM on layer4 only, and its fused map is layer4's
    assert result.not_applicable == {} and list(result.layer_not_applicable["cam"]) == ["layer3"]
    assert any("`layer3`" in note and "fused CAM map uses `layer4` only" in note for note in result.notes)
    assert len(result.maps) == 7 * 3 * 2 * k + 2 * 2 * k  # 7 methods x (2 layers + fused) + cam x (layer4, fused)
    assert not any(key[:2] == ("cam", "layer3") for key in result.maps)
    for (method, layer, i, c), values in result.maps.items():
        if method == "cam" and layer == "fused":
            assert _max_diff(values, result.maps[("cam", "layer4", i, c)]) < 1e-6
    assert count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before)
    assert shared_passes(ctx) == {}  # no gradients stage configured: nothing kept


def test_engine_many_equals_separate_passes_and_graph_starts_at_the_first_layer() -> None:
    model = _seeded(TinyNet)
    x = _batch(3, size=20)
    sets = [(0, 1, 2), (3, 3, 0)]
    recorded = []
    handle = model.stem.register_forward_hook(lambda _m, _i, o: recorded.append(o.requires_grad))
    try:
        many = forward_backward_many(model, x, ["body", "act"], sets)
        assert recorded == [False]  # nothing before the first target layer is recorded for autograd
        with_input = forward_backward_many(model, x, ["body", "act"], sets, input_grad=True)
        assert recorded == [False, True]
    finally:
        handle.remove()
    for a, b in zip(many, with_input):
        assert torch.allclose(a.gradients["body"], b.gradients["body"], atol=1e-6)
    for grad_pass, classes in zip(many, sets):
        store = {}
        handles = [model.body.register_forward_hook(lambda _m, _i, o: store.update(body=o)),
                   model.act.register_forward_hook(lambda _m, _i, o: store.update(act=o))]
        try:
            logits = model(x)
        finally:
            for handle in handles:
                handle.remove()
        score = logits.gather(1, torch.tensor(classes).view(-1, 1)).sum()
        g_body, g_act = torch.autograd.grad(score, [store["body"], store["act"]])
        assert grad_pass.classes == classes
        assert torch.allclose(grad_pass.gradients["body"], g_body, atol=1e-6)
        assert torch.allclose(grad_pass.gradients["act"], g_act, atol=1e-6)
        assert torch.allclose(grad_pass.activations["body"], store["body"].detach())
        assert torch.allclose(grad_pass.logits, logits.detach(), atol=1e-6)
    assert count_hooks(model) == 0


def test_engine_works_for_frozen_models_and_under_no_grad() -> None:
    model = _seeded(TinyNet)
    for p in model.parameters():
        p.requires_grad_(False)
    x = _batch(2, size=20)
    with torch.no_grad():
        grad_pass = forward_backward(model, x, ["stem"], [1, 2])
    assert grad_pass.gradients["stem"].abs().sum() > 0
    store = {}
    handle = model.stem.register_forward_hook(lambda _m, _i, o: store.update(a=o))
    try:
        logits = model(x.clone().requires_grad_())
    finally:
        handle.remove()
    (expected,) = torch.autograd.grad(logits[0, 1] + logits[1, 2], store["a"])
    assert torch.allclose(grad_pass.gradients["stem"], expected, atol=1e-6)


def test_input_gradient_is_shared_with_the_gradients_stage() -> None:
    model = _seeded(TinyNet)
    x = _batch(2, size=20)
    config = Config(analyses=AnalysesConfig(cam=CamConfig(), gradients=GradientsConfig(methods=("saliency",))))
    ctx, result = _run(model, x, ["gradcam"], ["act"], TargetSpec(k=2), config=config)
    assert len(shared_passes(ctx)) == 2
    for r in range(2):
        classes = tuple(result.targets[i][r] for i in range(2))
        grad_pass = shared_passes(ctx)[("grad_pass", classes)]
        xi = x.clone().requires_grad_()
        logits = model(xi)
        (expected,) = torch.autograd.grad(logits.gather(1, torch.tensor(classes).view(-1, 1)).sum(), xi)
        assert torch.allclose(grad_pass.input_grad, expected, atol=1e-6)
    assert count_hooks(model) == 0


# ---------------------------------------------------------------- results, arrays, json


def test_arrays_keys_values_and_fused_entry() -> None:
    model = _seeded(TinyNet)
    x = _batch(3, size=20)
    ctx, result = _run(model, x, ["gradcam", "eigencam"], ["body", "act"], TargetSpec(k=2))
    out = C.arrays(result)
    assert len(out) == 2 * 3 * 3 * 2  # methods x (2 layers + fused) x images x ranks
    for i, image in enumerate(ctx.images):
        for c in result.targets[i]:
            for layer in ("body", "act", "fused"):
                values = out[f"cam/gradcam/{layer}/{image.name}/{c}"]
                assert values.shape == (20, 20) and values.dtype == np.float32
                assert values.min() >= 0 and values.max() <= 1 + 1e-6
    top = ctx.logits.topk(2, dim=1).indices.tolist()
    assert [list(t) for t in result.targets] == top
    probs = torch.softmax(ctx.logits, 1)
    assert result.probabilities[0][1] == pytest.approx(float(probs[0, top[0][1]]))
    info = C.to_json(result)
    assert info["layers"] == ["body", "act"] and info["fused"] is True
    assert info["images"][1]["targets"][0]["index"] == top[1][0]


def test_explicit_targets_by_label_and_duplicates() -> None:
    model = _seeded(TinyNet)
    labels = ["cat", "dog", "<b>fish</b>", "owl"]
    _, result = _run(model, _batch(2, size=20), ["gradcam"], ["act"], TargetSpec(classes=("owl", 1, 3)),
                     labels=labels)
    assert result.targets == ((3, 1), (3, 1))
    assert result.labels == {3: "owl", 1: "dog"}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("cfg, message", [
    (CamConfig(target_layers=("act", "bodyy")), "Did you mean `body`"),
    (CamConfig(target_layers=("fc",)), "4-D"),
    (CamConfig(target_layers=("pool", "unused")), "not called"),
    (CamConfig(targets=TargetSpec(classes=(4,))), "outside the model's 4 outputs"),
    (CamConfig(targets=TargetSpec(classes=("dgo",))), "not in the label list. Did you mean `dog`"),
])
def test_check_rejects_bad_layers_and_classes(cfg: CamConfig, message: str) -> None:
    model = _seeded(TinyNet)
    model.unused = nn.Conv2d(1, 1, 1)
    info = make_context(model, _batch(1, size=20), labels=["cat", "dog", "emu", "owl"]).info
    with pytest.raises(ReportgenError, match=message):
        C.check(info, cfg)


def test_check_rejects_a_model_without_spatial_layers() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    info = make_context(model, _batch(1, size=4)).info
    with pytest.raises(ReportgenError, match="no layer with a spatial"):
        C.check(info, CamConfig())


def test_unknown_method_is_a_config_error_with_a_suggestion() -> None:
    head = "model: {name: resnet18}\nanalyses:\n"
    with pytest.raises(ConfigError, match="Did you mean `gradcampp`"):
        parse_config(head + "  cam: {methods: [gradcampps]}\n", base_dir=Path("."))
    config = parse_config(head + "  cam: {methods: [Grad-CAM++, Score-CAM]}\n", base_dir=Path("."))
    assert config.analyses.cam.methods == ("gradcampp", "scorecam")


def test_cli_validate_exits_2_for_a_bad_target_layer(project) -> None:
    from click.testing import CliRunner

    from reportgen.cli import main

    config = project.base()
    config["analyses"] = {"cam": {"methods": ["gradcam"], "target_layers": ["6"]}}  # Flatten: 2-D output
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2 and "4-D" in result.output


# ---------------------------------------------------------------- figures and section


def test_figures_and_section_describe_every_map() -> None:
    from reportgen import render
    from reportgen.figures.common import flatten, overlay, upscale_nearest

    model = _seeded(TinyNet)
    labels = ["cat", "dog", "<b>fish</b>", "owl"]
    ctx = make_context(model, _batch(3, size=20), labels=labels, names=["a", "<i>b</i>", "c"])
    cfg = CamConfig(methods=("cam", "gradcam", "scorecam"), target_layers=("body", "act"),
                    targets=TargetSpec(classes=(2, 0)), detail_images=2)
    result = C.run(ctx, cfg)
    section = cam_figures.plot(result, ctx)
    assert len(section["images"]) == 2 and section["hidden_images"] == 1 and len(section["grid"]) == 3
    cells = [cell for image in section["images"] for cls in image["classes"] for row in cls["rows"]
             for cell in row["cells"]]
    assert len(cells) == 2 * 2 * 3 * 3  # images x classes x (2 layers + fused) x methods
    assert [cell["figures"] == [] for cell in cells[:3]] == [True, False, False]  # cam is not applicable
    over, heat = cells[1]["figures"]
    for figure in (over, heat):
        assert "Grad-CAM" in figure.alt and "image a" in figure.alt and "<b>fish</b> (2)" in figure.alt
        assert "layer body" in figure.alt and figure.png.startswith(b"\x89PNG")
        assert figure.height >= cam_figures.MIN_SIDE  # small inputs are enlarged
    assert over.under is not None and heat.under is None and over.png == heat.png
    # the page lays the heat map over the image: composed, that is exactly the classic blend
    base, values = ctx.images[0].display[..., :3], result.maps[("gradcam", "body", 0, 2)]
    expected = upscale_nearest(overlay(base, values, alpha=cfg.alpha, cmap=cfg.colormap), cam_figures.MIN_SIDE)
    np.testing.assert_array_equal(flatten(over), expected)
    images = render._Images(True)
    html = render.make_environment(images).get_template("sections/cam.html.jinja2").render(
        section=section, report={})
    assert "<i>b</i>" not in html and "&lt;i&gt;b&lt;/i&gt;" in html
    assert "&lt;b&gt;fish&lt;/b&gt; (2)" in html and "<b>fish" not in html
    assert "style=" not in html and "<script" not in html and '="http' not in html
    # colour bar, grid rows (input + 2 overlays), originals + (overlay, heat map) per map
    cells_with_maps = 3 * 3 - 1  # (2 layers + fused) x methods, but no CAM on `body`
    assert html.count("<img") == 1 + 3 * (1 + 3) + 2 * (1 + 2 * cells_with_maps * 2)
    assert html.count('class="zoom stack layered u') == 3 * 3 + 2 * 2 * cells_with_maps  # overlays
    assert html.count('class="zoom stack layered m') == 2 * 2 * cells_with_maps  # heat maps alone
    # a heat map shown alone and in its overlay is one picture: the same CSS class, its bytes once in the page
    pairs = re.findall(r'<div class="pair m-\w+">(.*?)</div>', html, re.S)
    assert len(pairs) == 2 * 2 * cells_with_maps
    for pair in pairs:
        over_map, alone_map = re.findall(r'class="zoom stack layered (?:u\d+ )?(m\d+) o\d+"', pair)
        assert over_map == alone_map
    # one rule per picture and opacity; then one rule per method the picker shows or hides (its look: picker.css)
    picks = len(images._picks)
    assert picks == 3 and len(images.css().splitlines()) == len(images._unders) + len(images._layers) + \
        len(images._alphas) + picks
    assert all(images.css().count(images.src(png)) == 1 for png in images._layers)
    assert "CAM is not applicable on layer `body`: CAM needs" in html  # CAM has maps on `act` and fused only
    assert "fused CAM map uses `act` only" in html


# ---------------------------------------------------------------- the shipped shapes model


def test_gradcam_points_at_the_object_on_the_shipped_shapes_model() -> None:
    from reportgen.demo import shapes
    from reportgen.methods.cam import compute_maps

    model = shapes.load_model(ROOT / "example_configs" / "shapes" / "model.pt")
    fresh = shapes.generate(120, seed=90_210)  # not a training, validation or sample seed
    x = shapes.to_input(fresh.images)
    computed = compute_maps(model, x, [shapes.CAM_LAYER], ["gradcam"], [fresh.labels.tolist()])
    maps = computed.final[shapes.CAM_LAYER][0, 0].numpy()  # (N, H, W)
    hits = 0
    for cam, (x0, y0, x1, y1) in zip(maps, fresh.boxes):
        y, x_ = np.unravel_index(int(cam.argmax()), cam.shape)
        hits += int(x0 <= x_ < x1 and y0 <= y < y1)
    assert hits / len(maps) >= 0.9
