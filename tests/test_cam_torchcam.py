"""torchcam 0.5.0's SS-CAM, IS-CAM and Smooth Grad-CAM++ (`reportgen.methods.cam_torchcam`) equal torchcam's own
normalised maps to 1e-3 on panels of tests/test_cam.py (seeded random weights, small inputs, per-image targets, two ranks).

torchcam normalises at the layer's resolution (ReLU, min-max with eps 1e-8) and never resizes, so the raw maps are
compared after that same post-processing (the report's shared one resizes; see the module). The masked forwards
dominate the cost: the parity tests take fewer samples than torchcam's defaults, the same number on both sides."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchcam.methods import ISCAM, SSCAM, SmoothGradCAMpp

from reportgen.methods import cam_torchcam
from reportgen.methods.cam import CamJob
from reportgen.methods.options import ISCamOptions, SmoothGradCamppOptions, SSCamOptions
from tests.test_cam import _batch, _seeded

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-3


def _job(model, x, layer, class_sets, batch_size, options=None) -> CamJob:
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    per_image = [tuple(int(classes[i]) for classes in class_sets) for i in range(x.shape[0])]
    return CamJob(model=model, forward=model, batch=x, layer=layer, activations=seen[0].float(),
                  raw_activations=seen[0], logits=logits, class_sets=[tuple(c) for c in class_sets],
                  per_image=per_image, batch_size=batch_size, head=None, options=options)


def _torchcam_normalised(raw: torch.Tensor) -> np.ndarray:
    cam = raw.clamp_min(0)
    cam = cam - cam.amin(dim=(-2, -1), keepdim=True)
    return (cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-8)).numpy()


def _reference(extractor, model, x, layer, class_sets, **kwargs) -> list[np.ndarray]:
    """torchcam's normalised maps (N, h, w), one call per rank (as it is used), its global generator seeded as ours."""
    torch.manual_seed(cam_torchcam.RANDOM_SEED)
    out = []
    with extractor(model, layer, input_shape=tuple(x.shape[1:]), **kwargs) as cam:  # a clean forward per rank
        for classes in class_sets:
            with torch.no_grad():
                model(x)
            out.append(cam(class_idx=[int(c) for c in classes])[0].numpy())
    return out


def options_for(method: str, samples: int, std: float | None = None):
    """The record's options with `samples` (and the noise's `std`, None: torchcam's default)."""
    if method == "sscam":
        return SSCamOptions(sscam_samples=samples, **({} if std is None else {"sscam_std": std}))
    if method == "iscam":
        return ISCamOptions(iscam_steps=samples)
    return SmoothGradCamppOptions(smoothgradcampp_samples=samples,
                                  **({} if std is None else {"smoothgradcampp_std": std}))


def _check(method, model, x, layer, samples, std=None) -> float:
    extractor = {"sscam": SSCAM, "iscam": ISCAM, "smoothgradcampp": SmoothGradCAMpp}[method]
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).indices
    class_sets = [top2[:, 0].tolist(), top2[:, 1].tolist()]
    job = _job(model, x, layer, class_sets, batch_size=48, options=options_for(method, samples, std))
    ours = _torchcam_normalised(getattr(cam_torchcam, method)(job))
    kwargs = {} if method == "smoothgradcampp" else {"batch_size": 32}
    if std is not None:
        kwargs["std"] = std
    refs = _reference(extractor, model, x, layer, class_sets, num_samples=samples, **kwargs)
    worst = 0.0
    for r, ref in enumerate(refs):
        assert ours[r].shape == ref.shape
        diff = float(np.abs(ours[r] - ref).max())
        assert diff <= TOL, f"{method} rank {r}: max |ours - torchcam| = {diff:.2e}"
        assert ref.max() > 0.99  # a map, not a blank one
        worst = max(worst, diff)
    return worst


@pytest.mark.parametrize("method", ["sscam", "iscam", "smoothgradcampp"])
def test_parity_resnet18_layer2_top2(method) -> None:
    """ResNet-18 `layer2` (128 channels, 4 × 4 at 32 px), two images, two ranks; masked forwards in chunks of 48
    (torchcam: 32), the last partial."""
    model = _seeded(torchvision.models.resnet18)
    _check(method, model, _batch(2, size=32, seed=4), "layer2", samples=3)


@pytest.mark.parametrize("method", ["sscam", "iscam", "smoothgradcampp"])
def test_parity_vgg11_bn_inner_layer(method) -> None:
    """VGG-11-BN `features.6` (a ReLU after the second conv: 128 channels, 8 × 8 at 32 px), one image, top 2 (the
    ResNet-18 test has two images)."""
    model = _seeded(torchvision.models.vgg11_bn)
    _check(method, model, _batch(1, size=32, seed=3), "features.6", samples=3)


def test_sscam_noise_matters_and_is_seeded(monkeypatch) -> None:
    """Ours draws its own noise: the same map twice, another with another seed, and torch's global generator
    untouched."""
    model = _seeded(torchvision.models.resnet18)
    x = _batch(1, size=32)
    job = _job(model, x, "layer2", [[0]], batch_size=64, options=SSCamOptions(sscam_samples=2))
    state = torch.get_rng_state()
    first, second = cam_torchcam.sscam(job), cam_torchcam.sscam(job)
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(first, second)
    monkeypatch.setattr(cam_torchcam, "RANDOM_SEED", 1)
    assert not torch.allclose(first, cam_torchcam.sscam(job))


def test_a_build_draws_writes_and_scores_them(project) -> None:
    """The records alone put the methods in a build: arrays.npz holds each one's maps and the evaluation has a
    row for each; their counts come from the config."""
    from tests.test_evaluation_stage import build_cam_methods

    methods = ["sscam", "iscam", "smoothgradcampp"]
    data, out = build_cam_methods(project, methods, sscam_samples=2, iscam_steps=2, smoothgradcampp_samples=2)
    assert data["config"]["analyses"]["cam"]["sscam_samples"] == 2
    layer = data["cam"]["layers"][0]
    with np.load(out / "arrays.npz") as npz:
        for method in methods:
            maps = [npz[k] for k in npz.files if k.startswith(f"cam/{method}/{layer}/")]
            assert len(maps) == 3 and all(m.shape == (32, 32) and 0 <= m.min() and m.max() <= 1 for m in maps)
            assert max(float(m.max()) for m in maps) > 0.99


def test_smoothgradcampp_defaults_resnet18_two_chunks() -> None:
    """torchcam's defaults (4 samples, std 0.3), three images in passes of two (the last chunk partial)."""
    model = _seeded(torchvision.models.resnet18)
    x = _batch(3, size=32, seed=5)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    ours = _torchcam_normalised(cam_torchcam.smoothgradcampp(_job(model, x, "layer3", [classes], batch_size=2)))
    (ref,) = _reference(SmoothGradCAMpp, model, x, "layer3", [classes])
    assert np.abs(ours[0] - ref).max() <= TOL and ref.max() > 0.99


# ---------------------------------------------------------------------------- the counts as options


@pytest.mark.parametrize("method, samples, std", [("sscam", 2, 0.5), ("iscam", 4, None), ("smoothgradcampp", 2, 1.0)])
def test_parity_holds_at_non_default_options(method, samples, std) -> None:
    """Counts and noise other than torchcam's defaults, given as the record's options, on ResNet-18 `layer2`."""
    model = _seeded(torchvision.models.resnet18)
    _check(method, model, _batch(2, size=32, seed=6), "layer2", samples=samples, std=std)


def test_the_options_change_the_maps_and_default_to_torchcams() -> None:
    """The options reach the computation: another count gives another map; none given is torchcam's defaults."""
    assert (SSCamOptions(), ISCamOptions(), SmoothGradCamppOptions()) == (
        SSCamOptions(35, 2.0), ISCamOptions(10), SmoothGradCamppOptions(4, 0.3))
    model = _seeded(torchvision.models.resnet18)
    x = _batch(1, size=32)
    maps = [cam_torchcam.iscam(_job(model, x, "layer3", [[0]], batch_size=64, options=ISCamOptions(steps)))
            for steps in (1, 3)]
    assert not torch.allclose(maps[0], maps[1])


@pytest.mark.parametrize("key, value, message", [
    ("sscam_samples", 0, "sscam_samples"), ("sscam_std", 0, "sscam_std"), ("iscam_steps", 0, "iscam_steps"),
    ("smoothgradcampp_samples", 0, "smoothgradcampp_samples"), ("smoothgradcampp_std", -1, "smoothgradcampp_std")])
def test_validate_refuses_a_count_or_noise_the_method_cannot_use(project, key, value, message) -> None:
    """No forward at all (0 samples, 0 steps) or no noise for a noise method: exit 2, the key named, nothing
    written."""
    from click.testing import CliRunner

    from reportgen.cli import main

    config = project.base()
    config["analyses"]["cam"] = {"methods": ["sscam", "iscam", "smoothgradcampp"], key: value}
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (project.root / "out").exists()
