"""The GPU lane: a `device: cuda` build equals the same build on the CPU, CAM and gradient maps on CUDA equal the
CPU's, and the evaluation's fast forward runs on CUDA. Run it where CUDA is available:

    python -m pytest -m gpu tests/test_gpu.py

A run whose `-m` does not name `gpu` deselects these tests (tests/conftest.py); `-m gpu` without CUDA fails.
The lane needs only what reportgen itself installs (torch, torchvision, ...), none of the reference packages
(pytorch-grad-cam, Captum): the rest of the suite checks the CPU against them, this lane checks CUDA against the CPU.

Tolerance: both devices compute in float32 (`float32_math` switches TF32 off, which cuDNN otherwise uses for
convolutions), so the results differ only by the order in which different kernels sum. CAM maps, in [0, 1], may
differ by `TOL`; raw gradient maps and every other saved array by `TOL` times their largest |value|; logits by
`TOL` times the largest |logit|. TOL = 1e-3 is the bound the CPU's own CAM maps meet against pytorch-grad-cam.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from reportgen import methods
from reportgen.cli import main
from reportgen.config import CamConfig, GradientsConfig, TargetSpec
from reportgen.metrics import forward as F
from reportgen.stages import cam as C
from reportgen.stages import gradients as G
from tests.helpers import make_context
from tests.test_metrics_forward import assert_unchanged, resnet18, snapshot

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
TOL = 1e-3
EVALUATION_TOL = 0.02  # an AUC moves when maps that differ by TOL reorder two nearly equal pixels


@pytest.fixture(scope="module", autouse=True)
def cuda():
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.fail("the gpu lane needs CUDA, and torch.cuda.is_available() is False here", pytrace=False)


@pytest.fixture
def float32_math():
    """float32 matrix products and convolutions on CUDA, as on the CPU (TF32 rounds their inputs to 10 bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_close(got: np.ndarray, expected: np.ndarray, what) -> None:
    assert got.shape == expected.shape, what
    assert np.abs(got - expected).max() <= TOL * max(1.0, float(np.abs(expected).max())), what


def test_a_cuda_build_equals_the_cpu_build(project, float32_math):
    config = project.base()
    config["analyses"] = {
        "summary": {"depth": 2},
        "feature_maps": {},
        "cam": {"methods": [m for m in methods.ids("cam") if m != "drise"], "targets": "top2"},  # drise: detectors
        "gradients": {"methods": list(methods.ids("gradients")), "samples": 3, "steps": 8, "targets": "top2"},
        "evaluation": {"metrics": ["deletion", "insertion", "road", "confidence_change"], "step": 16},
    }
    config["output"]["save_arrays"] = True
    arrays, data = {}, {}
    for device in ("cpu", DEVICE):
        config["model"]["device"] = device
        config["output"]["dir"] = f"out-{device}"
        done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
        assert done.exit_code == 0, done.output
        out = project.root / f"out-{device}"
        with np.load(out / "arrays.npz") as npz:
            arrays[device] = {key: npz[key] for key in npz.files}
        data[device] = json.loads((out / "report.json").read_text())
    assert data[DEVICE]["model"]["device"].startswith(DEVICE)
    assert {s["name"]: s["status"] for s in data[DEVICE]["stages"]} == {s["name"]: "ok" for s in data["cpu"]["stages"]}
    assert set(arrays[DEVICE]) == set(arrays["cpu"])
    assert any(key.startswith("cam/") for key in arrays["cpu"]) and any(k.startswith("gradients/") for k in arrays["cpu"])
    for key, expected in arrays["cpu"].items():
        assert_close(arrays[DEVICE][key], expected, key)
    scores = {k: v for k, v in data["cpu"]["metrics"].items() if k.startswith("evaluation/")}
    assert scores and data[DEVICE]["metrics"].keys() == data["cpu"]["metrics"].keys()
    assert {k: data[DEVICE]["metrics"][k] for k in scores} == pytest.approx(scores, abs=EVALUATION_TOL)


def test_cam_and_gradient_maps_on_cuda_equal_the_cpu(float32_math):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # layer3: 256 channels of 4x4, so that Score-CAM's and Ablation-CAM's masked forwards stay few on the CPU
    cam_config = CamConfig(methods=methods.ids("cam"), target_layers=("layer3",), targets=TargetSpec(k=2))
    gradients_config = GradientsConfig(methods=methods.ids("gradients"), targets=TargetSpec(k=2), steps=8, samples=3,
                                       cam_layer="layer4")
    cams, gradients = {}, {}
    for device in ("cpu", DEVICE):
        ctx = make_context(model.to(device), x.to(device))
        cams[device], gradients[device] = C.run(ctx, cam_config), G.run(ctx, gradients_config)
    assert cams[DEVICE].targets == cams["cpu"].targets
    assert cams[DEVICE].maps.keys() == cams["cpu"].maps.keys()
    assert {key[0] for key in cams["cpu"].maps} | set(cams["cpu"].not_applicable) == set(methods.ids("cam"))
    for key, expected in cams["cpu"].maps.items():
        assert np.abs(cams[DEVICE].maps[key] - expected).max() <= TOL, key
    np.testing.assert_array_equal(gradients[DEVICE].classes, gradients["cpu"].classes)
    assert gradients[DEVICE].maps.keys() == gradients["cpu"].maps.keys() == set(methods.ids("gradients"))
    for method, expected in gradients["cpu"].maps.items():
        assert np.abs(gradients[DEVICE].maps[method] - expected).max() <= TOL * np.abs(expected).max(), method


def test_the_evaluation_fast_forward_runs_on_cuda_and_equals_the_cpu(float32_math):
    model = resnet18()
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x)
    model = model.to(DEVICE)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checked fast copy, no fallback to the eager model
        forward = F.inference_forward(model, x[:1].to(DEVICE))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in F.fast_copy(model, x[:1].to(DEVICE)).modules())
    with torch.inference_mode():
        got = forward(x.to(DEVICE))
    assert got.device.type == DEVICE and not got.requires_grad
    assert float((got.cpu() - expected).abs().max()) <= TOL * max(1.0, float(expected.abs().max()))
    assert_unchanged(model, before)
