"""The Python API: reportgen.build(config, *, model=None, images=None, overrides=None) -> Report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import reportgen
from reportgen.cli import main
from reportgen.config import load_config
from reportgen.errors import ReportgenError
from tests.conftest import make_image

ANALYSES = {"summary": {}, "feature_maps": {}, "cam": {"methods": ["gradcam", "scorecam"]},
            "gradients": {"methods": ["saliency", "guided_backprop"]}}


def _arrays(folder) -> dict[str, np.ndarray]:
    with np.load(folder / "arrays.npz") as npz:
        return {key: npz[key] for key in npz.files}


def _tinynet(project):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinynet_api", project.root / "tinynet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(num_classes=3)


def test_an_in_memory_model_builds_what_the_cli_builds_from_its_factory_and_is_given_back_as_it_came(project):
    config = project.base() | {"analyses": ANALYSES}
    config["output"] |= {"save_arrays": True}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-o", str(project.root / "cli"), "-q"])
    assert done.exit_code == 0, done.output
    model = _tinynet(project)  # the factory's seeded weights
    model.train()
    model[0].weight.requires_grad_(False)
    config["model"] = {"input_size": [3, 16, 16], "labels": None, "device": "cpu"}  # no source: the model given
    config["inputs"]["images"] = [str(project.root / "images")]
    report = reportgen.build(config, model=model, overrides={"output.dir": str(project.root / "api")})
    assert report.exit_code == 0 and report.html_path.exists()
    assert all(m.training for m in model.modules()) and not model[0].weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "0.weight")
    assert all(p.grad is None for p in model.parameters())
    cli, api = _arrays(project.root / "cli"), _arrays(project.root / "api")
    assert cli.keys() == api.keys() and any(k.startswith("cam/") for k in cli)
    for key, value in cli.items():
        np.testing.assert_allclose(api[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    data = json.loads(report.json_path.read_text())
    assert data["config"]["model"]["source"] == "python" and "given in Python" in data["model"]["description"]


def test_images_given_in_python_equal_the_files_they_came_from(project):
    for i in range(2):
        make_image(project.root / "images" / f"c{i}.png", size=(24, 20), seed=7 + i)
    files = [project.root / "images" / f"c{i}.png" for i in range(2)]
    config = project.base()
    config["output"] |= {"save_arrays": True}
    config["inputs"]["images"] = [str(f) for f in files]
    reportgen.build(config, overrides=[f"output.dir={project.root / 'files'}"])
    pixels = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    given = [Image.open(files[0]), torch.from_numpy(pixels[1].copy()).permute(2, 0, 1).float() / 255]  # PIL, float CHW
    for images in (given, np.stack(pixels)):  # a list of mixed kinds, one (N, H, W, C) uint8 array
        report = reportgen.build(config, images=images, overrides={"output.dir": str(project.root / "given")})
        names = [image["name"] for image in json.loads(report.json_path.read_text())["images"]]
        assert names == ["image0", "image1"]
        a, b = _arrays(project.root / "files"), _arrays(project.root / "given")
        for name, file in zip(names, ("c0", "c1")):
            np.testing.assert_allclose(b[f"logits/{name}"], a[f"logits/{file}"], rtol=1e-6, atol=1e-7)


def test_config_as_path_dict_or_config_with_overrides_and_the_headline_metrics(project):
    for cls in ("circle", "square"):
        for i in range(2):
            (project.root / "set" / cls).mkdir(parents=True, exist_ok=True)
            make_image(project.root / "set" / cls / f"{i}.png", seed=hash((cls, i)) % 1000)
    config = project.base() | {"analyses": {"summary": {}, "dataset": {}}}
    config["model"] |= {"labels": None, "kwargs": {"num_classes": 2}}
    config["inputs"]["images"] = ["set"]
    path = project.write(config)
    reports = [reportgen.build(load_config(path)), reportgen.build(str(path), overrides=["seed=3"]),
               reportgen.build(path, overrides={"title": "Again"})]
    assert [r.data["title"] for r in reports] == ["Tiny", "Tiny", "Again"] and reports[1].config.seed == 3
    with pytest.raises(ReportgenError, match="overrides apply to a config given as a path or a dict"):
        reportgen.build(load_config(path), overrides={"seed": 1})
    metrics = reports[0].metrics()
    data = reports[0].data
    assert metrics["dataset/top1_accuracy"] == pytest.approx(data["dataset"]["accuracy"])
    assert metrics["dataset/ece"] == pytest.approx(data["dataset"]["ece"])
    assert metrics["summary/total_params"] == data["summary"]["totals"]["total_params"]
    assert all(isinstance(v, float) for v in metrics.values())
    assert all(set(key) <= set("abcdefghijklmnopqrstuvwxyz0123456789_/.-") for key in metrics)  # MLflow names


@pytest.mark.parametrize("images, message", [
    (["not an image"], "images[0] is a str"),
    ([np.zeros((8, 8, 3), np.int64)], "images[0]: int64 pixels of shape [8, 8, 3]"),
    ([torch.full((3, 8, 8), 2.0)], "images[0]: float pixels must lie in [0, 1]"),
    ([], "`images` is empty"),
    ([np.zeros((0, 0, 3), np.uint8)], "images[0] is 0 × 0 pixels"),
])
def test_bad_images_are_refused_with_the_clis_kind_of_message(project, images, message):
    with pytest.raises(ReportgenError, match=message.replace("[", r"\[").replace("]", r"\]")):
        reportgen.build(project.write(), images=images)
    assert not (project.root / "out").exists()


@pytest.mark.parametrize("overrides, message", [
    (42, "overrides is a int: give a dict"),
    ({"title": object()}, "overrides['title'] is a object, which a config cannot hold"),
])
def test_overrides_a_config_cannot_hold_are_one_message(project, overrides, message):
    with pytest.raises(ReportgenError, match=message.replace("[", r"\[").replace("]", r"\]")):
        reportgen.build(project.write(), overrides=overrides)
    assert not (project.root / "out").exists()


def test_source_python_needs_a_model_given_in_python(project):
    config = project.base()
    config["model"] = {"source": "python", "input_size": [3, 16, 16]}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 2 and "`model.source: python` is the model given in Python" in done.output
    with pytest.raises(ReportgenError, match="got a str, not a torch.nn.Module"):
        reportgen.build(project.write(), model="resnet18")


def test_an_override_of_false_switches_a_stage_off_and_none_runs_it_with_defaults(project):
    config = project.base()
    config["analyses"] |= {"kernels": {"max_filters": 2}}
    path = project.write(config)
    off = reportgen.build(path, overrides={"analyses.kernels": False})
    assert "kernels" not in off.data and off.config.analyses.enabled() == ["summary"]
    on = reportgen.build(path, overrides={"analyses.feature_maps": None})
    assert "feature_maps" in on.data and on.config.analyses.enabled() == ["summary", "kernels", "feature_maps"]


def test_imagenet_labels_that_do_not_fit_warn_when_left_at_the_default_and_raise_when_a_dict_asks_for_them(
        project, monkeypatch):
    from reportgen.errors import ConfigWarning

    config = project.base()
    config["model"]["kwargs"] = {"num_classes": 10}
    del config["model"]["labels"]
    path = project.write(config)
    with pytest.warns(ConfigWarning, match="`model.labels` is left at `imagenet`"):
        reportgen.build(path)
    with pytest.raises(ReportgenError, match="`model.labels`.*`imagenet` gives 1000 labels, but the model has 10"):
        reportgen.build(path, overrides={"model.labels": "imagenet"})
    monkeypatch.chdir(project.root)  # a dict's paths resolve against the current folder
    with pytest.raises(ReportgenError, match="`imagenet` gives 1000 labels"):  # a dict that names them
        reportgen.build(config | {"model": config["model"] | {"labels": "imagenet"}})
    with pytest.warns(ConfigWarning, match="is left at `imagenet`"):  # a dict that leaves them out
        reportgen.build(config)
