"""Build-level behaviour of the house: models whose output is not a tensor, in-place changes after a CAM
layer, the automatic CAM layer on small inputs, labels in any case, stages that need a stage that failed."""
from __future__ import annotations

import dataclasses
import json
import textwrap

import numpy as np
from click.testing import CliRunner
from PIL import Image

from reportgen.registry import STAGES
from reportgen.cli import main

TUPLE_NET = textwrap.dedent('''
    import torch
    from torch import nn

    class TupleNet(nn.Module):
        """Returns (logits, pooled features): the logits are element 0."""

        def __init__(self, as_dict=False):
            super().__init__()
            torch.manual_seed(0)
            self.as_dict = as_dict
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            h = self.conv2(torch.relu(self.conv(x)))
            feats = h.mean(dim=(2, 3))
            logits = self.fc(torch.relu(feats))
            return {"logits": logits, "features": feats} if self.as_dict else (logits, feats)

    class InPlaceNet(nn.Module):
        """`h = conv2(x); h += x; relu_(h)`: conv2's output is changed in place after conv2 returns."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            h = self.conv2(x)
            h += x
            torch.relu_(h)
            return self.fc(h.mean(dim=(2, 3)))

    def tuple_net(as_dict=False):
        return TupleNet(as_dict)

    def in_place_net():
        return InPlaceNet()
''')


def _config(project, factory: str, analyses: dict, **model) -> dict:
    (project.root / "nets.py").write_text(TUPLE_NET)
    config = project.base()
    config["model"].update({"factory": f"nets:{factory}", "kwargs": {}}, **model)
    config["analyses"] = analyses
    return config


def test_a_model_returning_a_tuple_or_dict_is_explained_with_model_output(project):
    analyses = {"feature_maps": {"layers": ["conv2"]}, "cam": {"methods": ["gradcam", "scorecam"]},
                "gradients": {"methods": ["saliency", "guided_backprop"]}}
    runner = CliRunner()
    refused = runner.invoke(main, ["build", str(project.write(_config(project, "tuple_net", analyses)))])
    assert refused.exit_code == 2 and "model.output" in refused.stderr and "Traceback" not in refused.output
    layers = runner.invoke(main, ["layers", str(project.write(_config(project, "tuple_net", analyses)))])
    assert layers.exit_code == 0 and "conv2" in layers.output and "model.output" in layers.output
    for kwargs, output in (({}, 0), ({"as_dict": True}, "logits")):
        config = _config(project, "tuple_net", analyses, output=output, kwargs=kwargs)
        done = runner.invoke(main, ["build", str(project.write(config)), "-q"])
        assert done.exit_code == 0, done.output
        data = json.loads((project.root / "out" / "report.json").read_text())
        assert [s["status"] for s in data["stages"]] == ["ok", "ok", "ok"]
        assert data["model"]["num_classes"] == 3 and data["cam"]["layers"] == ["conv2"]


def test_cam_warns_when_its_layer_output_is_changed_in_place(project):
    config = _config(project, "in_place_net", {"cam": {"methods": ["gradcam"], "target_layers": ["conv2"]}})
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    warnings = json.loads((project.root / "out" / "report.json").read_text())["cam"]["warnings"]
    assert any("`conv2`'s output is changed in place" in w and "pytorch-grad-cam" in w for w in warnings)
    config["analyses"]["cam"]["target_layers"] = ["conv1"]  # nothing changes conv1's output afterwards
    assert CliRunner().invoke(main, ["build", str(project.write(config)), "-q"]).exit_code == 0
    warnings = json.loads((project.root / "out" / "report.json").read_text())["cam"]["warnings"]
    assert not any("in place" in w for w in warnings)


def test_the_automatic_cam_layer_says_what_it_passed_over_on_a_small_input(project):
    config = project.base()
    config["model"] = {"source": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 4},
                       "input_size": [3, 32, 32], "labels": None, "device": "cpu"}
    config["analyses"] = {"cam": {"methods": ["gradcam"]}}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    cam = json.loads((project.root / "out" / "report.json").read_text())["cam"]
    assert cam["layers"] == ["layer3"]
    assert any("`layer4` (512×1×1) were passed over" in note for note in cam["notes"])
    assert any("`layer3` gives 2×2 maps" in w for w in cam["warnings"])
    layers = CliRunner().invoke(main, ["layers", "resnet18", "--input-size", "3,32,32"])
    assert "default CAM layer: layer3" in layers.output and "passed over: layer4 (512x1x1)" in layers.output


def test_labels_match_in_any_case_and_a_single_label_is_a_target(project):
    (project.root / "labels.txt").write_text("Cat\ndog\nbird\n")
    config = project.base()
    config["model"]["labels"] = "labels.txt"
    config["analyses"] = {"cam": {"methods": ["gradcam"], "targets": "cat"}}
    config["output"]["save_arrays"] = True
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    keys = np.load(project.root / "out" / "arrays.npz").files
    assert sorted(k for k in keys if k.startswith("cam/")) == ["cam/gradcam/4/a/0", "cam/gradcam/4/b/0"]


def test_a_stage_whose_requirement_failed_is_skipped_with_the_reason(project, monkeypatch):
    import reportgen.stages.feature_maps as feature_maps
    import reportgen.stages.summary as summary

    def boom(ctx, cfg):
        raise RuntimeError("summary broke")

    monkeypatch.setitem(STAGES, "summary", dataclasses.replace(summary.SPEC, run=boom))
    monkeypatch.setitem(STAGES, "feature_maps", dataclasses.replace(feature_maps.SPEC, requires=("summary",)))
    config = project.base()
    config["analyses"] = {"feature_maps": {}, "summary": {}}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 1
    stages = json.loads((project.root / "out" / "report.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [("summary", "failed"), ("feature_maps", "skipped")]
    assert stages[1]["error"] == "it needs the summary section, which failed"


def test_transparent_and_sixteen_bit_images_reach_the_model_as_configured(project):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent red
    Image.fromarray(rgba, "RGBA").save(project.root / "images" / "a.png")
    deep = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16)  # 12-bit data, 0..4080
    Image.fromarray(deep).save(project.root / "images" / "b.png")
    (project.root / "images" / "b.jpg").unlink()
    config = project.base()
    config["analyses"] = {}
    config["output"]["save_arrays"] = True
    logits = {}
    for alpha, max_value in (("drop", None), ("white", None), ("drop", 4095)):
        config["inputs"].update(alpha=alpha, max_value=max_value)
        done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
        assert done.exit_code == 0, done.output
        arrays = np.load(project.root / "out" / "arrays.npz")
        logits[(alpha, max_value)] = (arrays["logits/a"], arrays["logits/b"])
    assert not np.allclose(logits[("drop", None)][0], logits[("white", None)][0])  # red kept vs. white
    assert np.allclose(logits[("drop", None)][0], logits[("drop", 4095)][0])
    assert not np.allclose(logits[("drop", None)][1], logits[("drop", 4095)][1])  # 12-bit range stretched


def test_a_streamed_build_equals_one_batch_of_every_image(project):
    """`inputs.batch_size: 2` streams 5 images in 3 batches through feature maps, CAM and gradients: every array
    equals the build that sees them in one batch, SmoothGrad's noise and the uniform baseline included, and the
    gradients still reuse the CAM pass of each batch."""
    from tests.conftest import make_image

    for i in range(3):
        make_image(project.root / "images" / f"c{i}.png", seed=10 + i)
    config = project.base()
    config["analyses"] = {
        "feature_maps": {"order": "mean"},
        "cam": {"methods": ["gradcam", "scorecam", "ablationcam", "cam"], "targets": "top2"},
        "gradients": {"methods": ["saliency", "input_x_gradient", "guided_gradcam", "smoothgrad",
                                  "integrated_gradients"], "samples": 3, "steps": 4, "baseline": "uniform",
                      "targets": "top2"},
    }
    config["output"]["save_arrays"] = True
    arrays, data = {}, {}
    for batch_size in (2, 8):
        config["inputs"]["batch_size"] = batch_size
        done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
        assert done.exit_code == 0, done.output
        with np.load(project.root / "out" / "arrays.npz") as npz:
            arrays[batch_size] = {key: npz[key] for key in npz.files}
        data[batch_size] = json.loads((project.root / "out" / "report.json").read_text())
    assert set(arrays[2]) == set(arrays[8]) and len([k for k in arrays[2] if k.startswith("cam/")]) == 4 * 5 * 2
    for key, value in arrays[8].items():
        assert np.abs(arrays[2][key] - value).max() <= 1e-5 * (1 + np.abs(value).max()), key
    for batch_size in (2, 8):
        assert data[batch_size]["gradients"]["reused_cam_pass"] == [True, True]
        assert [i["name"] for i in data[batch_size]["cam"]["images"]] == ["a", "b", "c0", "c1", "c2"]
    assert_close(data[2]["feature_maps"], data[8]["feature_maps"])  # a convolution's sums depend on the batch size


def assert_close(a, b, where: str = "") -> None:
    """Equal JSON, numbers within 1e-5 relative (float32 sums in another order: batches of another size)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b)), (where, a, b)
    else:
        assert a == b, where


def _five_images(project):
    from tests.conftest import make_image

    for i in range(3):
        make_image(project.root / "images" / f"c{i}.png", seed=10 + i)


def test_arrays_are_written_as_batches_finish_and_a_stage_failing_late_takes_its_entries_back(project, monkeypatch):
    import reportgen.stages.cam as cam
    from reportgen import write

    _five_images(project)
    events = []
    real_add = write.ArraysWriter.add

    def add(self, arrays):
        events.append(("add", sorted(arrays)))
        return real_add(self, arrays)

    calls = {"n": 0}

    def run(ctx, cfg):  # fails on the third batch
        calls["n"] += 1
        events.append(("cam", [image.name for image in ctx.images]))
        if calls["n"] == 3:
            raise RuntimeError("cam broke on the last batch")
        return real_run(ctx, cfg)

    real_run = cam.SPEC.run
    monkeypatch.setattr(write.ArraysWriter, "add", add)
    monkeypatch.setitem(STAGES, "cam", dataclasses.replace(cam.SPEC, run=run))
    config = project.base()
    config["inputs"]["batch_size"] = 2
    config["analyses"] = {"feature_maps": {}, "cam": {"methods": ["gradcam"]}}
    config["output"]["save_arrays"] = True
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 1  # cam failed
    # the first batch's feature maps were written before the second batch ran
    first_fm = next(i for i, e in enumerate(events) if e[0] == "add" and any("/a" in k for k in e[1])
                    and all(k.startswith("feature_maps/") for k in e[1]))
    second_cam = next(i for i, e in enumerate(events) if e == ("cam", ["c0", "c1"]))
    assert first_fm < second_cam
    with np.load(project.root / "out" / "arrays.npz") as npz:
        keys = npz.files
    assert not any(k.startswith("cam/") for k in keys)  # taken back: the stage failed
    assert {k.rsplit("/", 1)[1] for k in keys if k.startswith("feature_maps/")} == {"a", "b", "c0", "c1", "c2"}
    assert sum(k.startswith("logits/") for k in keys) == 5
    assert not list((project.root / "out").glob(".arrays.npz.*"))


def test_an_interrupted_build_leaves_no_arrays_file_and_no_folder(project, monkeypatch):
    import reportgen.stages.feature_maps as feature_maps

    def interrupt(ctx, cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(STAGES, "feature_maps", dataclasses.replace(feature_maps.SPEC, run=interrupt))
    config = project.base()
    config["analyses"] = {"feature_maps": {}}
    config["output"] = {"dir": "new/out", "save_arrays": True}
    done = CliRunner().invoke(main, ["build", str(project.write(config))])
    assert done.exit_code == 130
    assert not (project.root / "new").exists()
