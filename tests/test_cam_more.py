"""The rest of pytorch-grad-cam 1.5.7's CAMs (`reportgen.methods.cam_more`): each equals the reference's
`grayscale_cam` to 1e-3 on the panels of tests/test_cam.py (seeded random weights, small inputs, per-image targets)."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torchvision
from torch import nn

import pytorch_grad_cam as pgc
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.config import TargetSpec
from reportgen.methods import cam_more
from tests.test_cam import TOL, TinyNet, _batch, _max_diff, _ours, _run, _seeded
from reportgen.stages import cam as C

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REFERENCE = {"gradcam_elementwise": pgc.GradCAMElementWise, "randomcam": pgc.RandomCAM, "kpcacam": pgc.KPCA_CAM,
             "fem": pgc.FEM, "shapleycam": pgc.ShapleyCAM, "gradcam": pgc.GradCAM}


def _reference(model, x, method, layers, class_sets) -> list[np.ndarray]:
    """pytorch-grad-cam's grayscale_cam (N, H, W) per rank, one call per rank; RandomCAM's global numpy generator
    seeded as ours before the first."""
    np.random.seed(cam_more.RANDOM_SEED)
    out = []
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        with REFERENCE[method](model, [model.get_submodule(name) for name in layers]) as cam:
            for classes in class_sets:
                out.append(cam(x, [ClassifierOutputTarget(int(c)) for c in classes]))
    return out


def _check(model, x, methods, layers, k, fused=True) -> dict[str, float]:
    """Every (method, layer, rank) against pytorch-grad-cam on that layer alone, and the fused map of all layers
    (unless `fused` is False); returns the worst difference per method."""
    _, result = _run(model, x, methods, layers, TargetSpec(k=k))
    class_sets = [[result.targets[i][r] for i in range(x.shape[0])] for r in range(k)]
    keys = [[name] for name in layers] + ([list(layers)] if fused and len(layers) > 1 else [])
    worst: dict[str, float] = {}
    for method in methods:
        for key in keys:
            name = key[0] if len(key) == 1 else C.FUSED
            for r, ref in enumerate(_reference(model, x, method, key, class_sets)):
                diff = _max_diff(_ours(result, method, name, class_sets[r]), ref)
                assert diff <= TOL, f"{method} on {name}, rank {r}: max |ours - pytorch-grad-cam| = {diff:.2e}"
                worst[method] = max(worst.get(method, 0.0), diff)
    return worst


def test_gradcam_elementwise_resnet18_two_layers_fused_top2() -> None:
    model = _seeded(torchvision.models.resnet18)
    worst = _check(model, _batch(2), ("gradcam_elementwise",), ["layer3", "layer4"], k=2)
    assert set(worst) == {"gradcam_elementwise"}


@pytest.mark.parametrize("name", ["vgg11_bn", "mobilenet_v3_small"])
def test_gradcam_elementwise_and_fem_default_layer(name: str) -> None:
    model = _seeded(getattr(torchvision.models, name))
    _check(model, _batch(2), ("gradcam_elementwise", "fem"), ["features"], k=1)


def test_tiny_pre_activation_layer_top2() -> None:
    """`body` is pre-activation (negative values): element-wise ReLU and FEM's threshold see both signs."""
    model = _seeded(TinyNet)
    _check(model, _batch(3, size=20), ("gradcam_elementwise", "fem", "kpcacam", "randomcam"), ["body", "act"], k=2,
           fused=False)


def test_kpcacam_resnet18_fused_and_arpack_sized_layer() -> None:
    """ResNet-18 `layer2` + `layer3` fused; TinyNet's `act` at 16×16 = 256 cells, where scikit-learn's KernelPCA
    switches from a dense eigensolver to ARPACK (more than 200 samples)."""
    _check(_seeded(torchvision.models.resnet18), _batch(2), ("kpcacam",), ["layer2", "layer3"], k=1)
    _check(_seeded(TinyNet), _batch(2, size=32), ("kpcacam",), ["act"], k=1)


def test_randomcam_draws_pytorch_grad_cams_numbers_per_layer() -> None:
    """Per layer, ours equals pytorch-grad-cam after `np.random.seed(RANDOM_SEED)` (two ranks: two draws in rank
    order); it is deterministic, leaves numpy's global generator alone, and is not Grad-CAM."""
    model = _seeded(torchvision.models.resnet18)
    x = _batch(2)
    _check(model, x, ("randomcam",), ["layer2", "layer3"], k=2, fused=False)
    state = np.random.get_state()[1].copy()
    _, again = _run(model, x, ("randomcam", "gradcam"), ["layer2"], TargetSpec(k=2))
    assert np.array_equal(np.random.get_state()[1], state)
    _, first = _run(model, x, ("randomcam",), ["layer2"], TargetSpec(k=2))
    key = ("randomcam", "layer2", 0, again.targets[0][0])
    assert np.array_equal(again.maps[key], first.maps[key])
    assert np.abs(again.maps[key] - again.maps[("gradcam",) + key[1:]]).max() > 0.1


def _curved_resnet18() -> nn.Module:
    """ResNet-18 whose head is Linear, Tanh, Linear: curved after `layer4` (MobileNet-V3's Hardswish head is curved
    too, but at random weights its activations there are ~1e-8, where the curvature term vanishes)."""
    model = torchvision.models.resnet18(num_classes=10)
    model.fc = nn.Sequential(nn.Linear(512, 32), nn.Tanh(), nn.Linear(32, 10))
    return model


def test_shapleycam_on_a_head_with_curvature_differs_from_gradcam() -> None:
    """After `layer3` and `layer4` of a curved-head ResNet-18 the Hessian term matters, so ShapleyCAM must differ
    from Grad-CAM by more than 1e-2 and still equal pytorch-grad-cam's, per layer and rank (pytorch-grad-cam's
    ShapleyCAM fails on several layers at once: its first Hessian-vector product frees the graph the second needs;
    our fused map is the mean of the per-layer maps, as for every method)."""
    model = _seeded(_curved_resnet18)
    x = _batch(2)
    _check(model, x, ("shapleycam",), ["layer3", "layer4"], k=2, fused=False)
    _, result = _run(model, x, ("shapleycam", "gradcam"), ["layer4"], TargetSpec(k=1))
    classes = [t[0] for t in result.targets]
    differ = np.abs(_ours(result, "shapleycam", "layer4", classes) - _ours(result, "gradcam", "layer4", classes))
    assert differ.max() > 1e-2


def test_shapleycam_is_gradcam_when_the_model_is_piecewise_linear_after_the_layer() -> None:
    """ResNet-18 after `layer3` is ReLUs, pooling and one linear layer: H·A = 0, ShapleyCAM = Grad-CAM; two layers
    fused, two ranks, against pytorch-grad-cam too (per layer: see above)."""
    model = _seeded(torchvision.models.resnet18)
    x = _batch(2)
    _check(model, x, ("shapleycam",), ["layer3", "layer4"], k=2, fused=False)
    _, result = _run(model, x, ("shapleycam", "gradcam"), ["layer3", "layer4"], TargetSpec(k=1))
    classes = [t[0] for t in result.targets]
    assert _max_diff(_ours(result, "shapleycam", C.FUSED, classes), _ours(result, "gradcam", C.FUSED, classes)) < 1e-5


def _finer_reference(model, x, layers, target_idx=None) -> np.ndarray:
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        with pgc.FinerCAM(model, [model.get_submodule(name) for name in layers]) as cam:
            return cam(x, target_idx=target_idx)  # its own comparison classes: the 3 of nearest logits


@pytest.mark.parametrize("name,layers", [("resnet18", ["layer3", "layer4"]), ("vgg11_bn", ["features"])])
def test_finercam_top1_and_an_explicit_class(name, layers) -> None:
    """pytorch-grad-cam's FinerCAM choosing its own targets: the top class (top1), or a given class (`target_idx`,
    ours: an explicit class); several layers fused; and it is not Grad-CAM."""
    model = _seeded(getattr(torchvision.models, name))
    x = _batch(2)
    key = C.FUSED if len(layers) > 1 else layers[0]
    _, result = _run(model, x, ("finercam", "gradcam"), layers, TargetSpec(k=1))
    top = [t[0] for t in result.targets]
    assert _max_diff(_ours(result, "finercam", key, top), _finer_reference(model, x, layers)) <= TOL
    assert np.abs(_ours(result, "finercam", key, top) - _ours(result, "gradcam", key, top)).max() > 1e-2
    _, result = _run(model, x, ("finercam",), layers, TargetSpec(k=0, classes=(7,)))
    assert _max_diff(_ours(result, "finercam", key, [7, 7]), _finer_reference(model, x, layers, 7)) <= TOL


MORE = ("gradcam_elementwise", "randomcam", "kpcacam", "fem", "shapleycam", "finercam", "fullgrad")


def test_a_build_draws_writes_and_scores_every_method(project) -> None:
    """The records alone put the methods in a build: arrays.npz holds each one's maps (one per image, min-max'd)
    and the evaluation has a row for each."""
    from tests.test_evaluation_stage import build_cam_methods

    data, out = build_cam_methods(project, MORE)
    layer = data["cam"]["layers"][0]
    with np.load(out / "arrays.npz") as npz:
        for method in MORE:
            maps = [npz[k] for k in npz.files if k.startswith(f"cam/{method}/{layer}/")]
            assert len(maps) == 3 and all(m.shape == (32, 32) and 0 <= m.min() and m.max() <= 1 for m in maps)
            assert max(float(m.max()) for m in maps) > 0.99  # min-max'd, not blank


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_fullgrad_equals_pytorch_grad_cam_beside_a_layer_method(name) -> None:
    """FullGrad's input-sized map next to Grad-CAM's layer-sized one in one stage (two ranks); on ResNet-18 the
    biases include BatchNorms followed by in-place ReLUs and the downsample branches."""
    model = _seeded(getattr(torchvision.models, name))
    x = _batch(2, size=32)
    layer = "layer4" if name == "resnet18" else "features"
    _, result = _run(model, x, ("fullgrad", "gradcam"), [layer], TargetSpec(k=2))
    for r in range(2):
        classes = [t[r] for t in result.targets]
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            with pgc.FullGrad(model, []) as cam:
                ref = cam(x, [ClassifierOutputTarget(int(c)) for c in classes])
        ours = _ours(result, "fullgrad", layer, classes)
        assert _max_diff(ours, ref) <= TOL and ours.max() > 0.99 and ours.std() > 0.05  # not a blank map
