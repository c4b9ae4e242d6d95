"""The rest of pytorch-grad-cam 1.5.7's CAMs (`reportgen.methods.cam_more`): each equals the reference's
`grayscale_cam` to 1e-3 on the panels of tests/test_cam.py (seeded random weights, small inputs, per-image targets)."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torchvision

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
