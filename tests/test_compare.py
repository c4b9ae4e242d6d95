"""`reportgen compare A B`: the shipped shapes model against a re-initialised one, on the same images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from reportgen.cli import main
from tests.test_browser import ROOT, driver, js, open_page  # noqa: F401 (driver: a fixture)

SHAPES = ROOT / "example_configs" / "shapes"


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory):
    """The shapes model as trained (A) and as initialised before training (B), on the twelve shipped images."""
    root = tmp_path_factory.mktemp("compare")
    config = {"title": "Trained", "model": {"source": "module", "factory": "reportgen.demo.shapes:build_model",
                                            "kwargs": {"num_classes": 5}, "checkpoint": str(SHAPES / "model.pt"),
                                            "input_size": [3, 64, 64], "labels": str(SHAPES / "labels.txt"),
                                            "device": "cpu"},
              "inputs": {"images": [str(SHAPES / "images" / "*.png")],
                         "preprocess": {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}},
              "analyses": {"summary": {}, "cam": {"methods": ["gradcam"]}, "gradients": {"methods": ["saliency"]},
                           "evaluation": {"metrics": ["deletion"], "step": 512, "images": 3}},
              "output": {"dir": str(root / "a"), "save_arrays": True}}
    (root / "a.yaml").write_text(yaml.safe_dump(config))
    config["title"], config["output"]["dir"] = "Re-initialised", str(root / "b")
    del config["model"]["checkpoint"]
    (root / "b.yaml").write_text(yaml.safe_dump(config))
    for name in ("a", "b"):
        done = CliRunner().invoke(main, ["build", str(root / f"{name}.yaml"), "-q"])
        assert done.exit_code == 0, done.output
    return root


def test_compare_shows_which_predictions_changed_and_every_shared_map(two_reports, driver):
    root = two_reports
    done = CliRunner().invoke(main, ["compare", str(root / "a"), str(root / "b"), "-o", str(root / "cmp")])
    assert done.exit_code == 0, done.output
    data = json.loads((root / "cmp" / "compare.json").read_text())
    a = {r["name"]: r for r in map(json.loads, (root / "a" / "images.jsonl").read_text().splitlines())}
    b = {r["name"]: r for r in map(json.loads, (root / "b" / "images.jsonl").read_text().splitlines())}
    expected = sum(a[n]["top_k"][0]["label"] != b[n]["top_k"][0]["label"] for n in a)
    assert data["images"] == 12 and data["changed"] == expected > 0  # an untrained model predicts otherwise
    assert [p["image"] for p in data["predictions"] if p["changed"]] == \
        [n for n in a if a[n]["top_k"][0]["label"] != b[n]["top_k"][0]["label"]]
    with np.load(root / "a" / "arrays.npz") as npz:
        maps = [k for k in npz.files if k.startswith(("cam/", "gradients/"))]
    # same images and methods: every map is paired, the changed ones with the class each model explains
    assert [f"{m['key']}/{m['class_a']}" for m in data["maps"]] == maps
    assert any(m["class_a"] != m["class_b"] for m in data["maps"])
    total = {t["what"]: (t["a"], t["b"]) for t in data["totals"]}
    assert total["parameters"][0] == total["parameters"][1]  # the same architecture
    assert "only" in data and not data["only"]
    deletion = [m for m in data["metrics"] if m["name"].startswith("evaluation/deletion_auc/")]
    assert deletion and all(m["a_interval"][0] <= m["a"] <= m["a_interval"][1] and m["b_interval"] for m in deletion)
    events = open_page(driver, root / "cmp" / "compare.html")
    assert events["errors"] == [], events["errors"]
    assert all(u.startswith(("data:", (root / "cmp").resolve().as_uri())) for u in events["requests"])
    assert js(driver, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert js(driver, "return document.images.length") == 3 * len(maps)
    changed = js(driver, "return document.querySelectorAll('#compare-predictions tbody tr.changed').length")
    assert changed == data["changed"]


def test_reports_of_different_sizes_or_images_or_without_arrays_are_refused(two_reports, project):
    root = two_reports
    config = project.base()
    config["output"]["save_arrays"] = True
    assert CliRunner().invoke(main, ["build", str(project.write(config)), "-q"]).exit_code == 0
    done = CliRunner().invoke(main, ["compare", str(root / "a"), str(project.root / "out"), "-o", str(root / "x")])
    assert done.exit_code == 2 and "different input sizes (A [3, 64, 64], B [3, 16, 16])" in done.output
    config["model"]["input_size"] = [3, 64, 64]
    assert CliRunner().invoke(main, ["build", str(project.write(config)), "-q"]).exit_code == 0
    done = CliRunner().invoke(main, ["compare", str(root / "a"), str(project.root / "out"), "-o", str(root / "x")])
    assert done.exit_code == 2 and "share no image" in done.output
    config["output"]["save_arrays"] = False
    assert CliRunner().invoke(main, ["build", str(project.write(config)), "-q"]).exit_code == 0
    done = CliRunner().invoke(main, ["compare", str(project.root / "out"), str(root / "a"), "-o", str(root / "x")])
    assert done.exit_code == 2 and "lacks arrays.npz" in done.output and not (root / "x").exists()
