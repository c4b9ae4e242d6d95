"""`reportgen compare A B`: the shipped shapes model against a re-initialised one, on the same images."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.compare import DETAIL, MAPS_FILE
from reportgen.render import readable_number
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
    assert sorted(m["key_a"] for m in data["maps"]) == sorted(maps) == sorted(f"{m['key']}/{m['class_a']}"
                                                                            for m in data["maps"])
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
    assert js(driver, "return document.images.length") == 3 * min(len(maps), DETAIL)
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


def _normalised(values):
    return (values - values.min()) / (values.max() - values.min()) if values.max() > values.min() else 0 * values


def test_the_page_draws_changed_predictions_first_then_the_largest_differences_up_to_detail(two_reports):
    """compare.json has a row for every pair (image, method, layer), in the page's order; compare_maps.npz holds
    both maps of every pair; the page draws `--detail` of them, labelled, and counts the rest truthfully."""
    root, detail = two_reports, 5
    done = CliRunner().invoke(main, ["compare", str(root / "a"), str(root / "b"), "-o", str(root / "budget"),
                                     "--detail", str(detail)])
    assert done.exit_code == 0, done.output
    data = json.loads((root / "budget" / "compare.json").read_text())
    top1 = {side: {r["name"]: r["top_k"][0]["label"]
                   for r in map(json.loads, (root / side / "images.jsonl").read_text().splitlines())} for side in "ab"}
    with np.load(root / "a" / "arrays.npz") as npz_a, np.load(root / "b" / "arrays.npz") as npz_b, \
            np.load(root / "budget" / MAPS_FILE) as saved:
        keys = [k for k in npz_a.files if k.startswith(("cam/", "gradients/"))]
        assert len(data["maps"]) == len(keys) > detail and sorted(saved.files) == sorted(
            [f"a/{m['key_a']}" for m in data["maps"]] + [f"b/{m['key_b']}" for m in data["maps"]])
        plane = lambda v: np.abs(v).sum(axis=0) if v.ndim == 3 else v  # noqa: E731 (a gradient: Σ|channels|)
        expected = {}
        for m in data["maps"]:
            a, b = plane(npz_a[m["key_a"]]), plane(npz_b[m["key_b"]])
            np.testing.assert_array_equal(saved[f"a/{m['key_a']}"], a)
            np.testing.assert_array_equal(saved[f"b/{m['key_b']}"], b)
            expected[m["key_a"]] = float(np.abs(_normalised(a) - _normalised(b)).mean())
    rows = data["maps"]
    for m in rows:
        assert m["prediction_a"] == top1["a"][m["image"]] and m["prediction_b"] == top1["b"][m["image"]]
        assert m["changed"] == (m["prediction_a"] != m["prediction_b"])
        assert m["key"] == "/".join(filter(None, (m["key_a"].split("/")[0], m["method"], m["layer"], m["image"])))
        assert abs(m["difference"] - expected[m["key_a"]]) <= 1e-5
    changed = [m for m in rows if m["changed"]]
    assert 0 < len(changed) < len(rows) and rows[:len(changed)] == changed  # changed predictions first
    for group in (changed, rows[len(changed):]):  # then the largest difference first
        assert [m["difference"] for m in group] == sorted((m["difference"] for m in group), reverse=True)
    assert [m["drawn"] for m in rows] == [True] * detail + [False] * (len(rows) - detail)
    assert data["maps_drawn"] == detail and data["maps_not_drawn"] == len(rows) - detail
    assert data["maps_file"] == MAPS_FILE
    assert next(p.default for p in main.commands["compare"].params if p.name == "detail") == DETAIL

    html = (root / "budget" / "compare.html").read_text()
    maps = html[html.index('id="maps"'):]
    assert maps.count("<img ") == 3 * detail
    assert f"{len(rows) - detail} more pairs are not drawn" in maps and MAPS_FILE in maps
    captions = [maps.index(f"<strong>{m['image']}</strong> · {m['method']}") for m in rows[:detail]]
    assert captions == sorted(captions)  # drawn in compare.json's order
    first = rows[0]
    assert f"A predicts {first['prediction_a']}" in maps and f"B {first['prediction_b']}" in maps
    assert all(f"<figcaption>{label}</figcaption>" in maps for label in ("A", "B", "B − A"))


def test_numbers_read_as_people_write_them_on_the_page(two_reports):
    assert readable_number(1944040.0) == "1\u202f944\u202f040" and readable_number(-1234567) == "-1\u202f234\u202f567"
    assert [readable_number(v) for v in (0.81234, 12.0, 0.5, -0.0421, 999.96, 3.2e-7, None)] == \
        ["0.8123", "12", "0.5", "-0.0421", "1\u202f000", "3.2 × 10⁻⁷", "–"]
    root = two_reports
    done = CliRunner().invoke(main, ["compare", str(root / "a"), str(root / "b"), "-o", str(root / "numbers"),
                                     "--detail", "0"])
    assert done.exit_code == 0, done.output
    html = (root / "numbers" / "compare.html").read_text()
    assert not re.search(r"\de[+-]\d", html[html.index('id="summary"'):html.index('id="maps"')])
    totals = {t["what"]: t["a"] for t in json.loads((root / "numbers" / "compare.json").read_text())["totals"]}
    assert totals["mult-adds"] >= 1e6  # big enough for an exponent in %g
    assert f"{int(totals['mult-adds']):,}".replace(",", "\u202f") in html
    assert "<img " not in html[html.index('id="maps"'):] and "share no map" not in html


def test_a_rows_a_b_and_difference_stand_side_by_side_and_labelled(two_reports, driver):
    root = two_reports
    done = CliRunner().invoke(main, ["compare", str(root / "a"), str(root / "b"), "-o", str(root / "layout"),
                                     "--detail", "4"])
    assert done.exit_code == 0, done.output
    events = open_page(driver, root / "layout" / "compare.html", width=1400, height=900)
    assert events["errors"] == [], events["errors"]
    rows = js(driver, """return [...document.querySelectorAll('.compare-row')].map(row =>
        [...row.querySelectorAll('figure')].map(f => {
            const img = f.querySelector('img').getBoundingClientRect(), label = f.querySelector('figcaption');
            const text = label.getBoundingClientRect();
            return {x: img.left, y: img.top, w: img.width, label: label.textContent,
                    below: text.top >= img.bottom - 1 && text.height > 0};
        }))""")
    assert len(rows) == 4
    for row in rows:
        assert [f["label"] for f in row] == ["A", "B", "B − A"] and all(f["below"] for f in row), row
        assert max(f["y"] for f in row) - min(f["y"] for f in row) < 1, row  # one top
        assert 0 < row[0]["x"] + row[0]["w"] <= row[1]["x"] and row[1]["x"] + row[1]["w"] <= row[2]["x"], row


def _compare(root, out, *more):
    return CliRunner().invoke(main, ["compare", str(root / "a"), str(root / "b"), "-o", str(out), "--detail", "0",
                                     *more])


@pytest.mark.parametrize("name", ["compare.json", MAPS_FILE, "compare.html"])
def test_compare_replaces_no_file_it_did_not_write_nor_a_link(two_reports, tmp_path, name):
    """compare keeps a manifest of its files (.reportgen-compare.json), as a build does: a user's compare.json
    or a link at compare_maps.npz is refused with its path, and nothing is written."""
    root, out, outside = two_reports, tmp_path / "cmp", tmp_path / "mine"
    out.mkdir()
    outside.write_bytes(b"the user's own file")
    (out / name).symlink_to(outside)
    done = _compare(root, out)
    assert done.exit_code == 2 and str(out / name) in done.output and "did not write" in done.output, done.output
    assert outside.read_bytes() == b"the user's own file" and [p.name for p in out.iterdir()] == [name]
    (out / name).unlink()
    (out / name).write_bytes(b"mine")
    assert _compare(root, out).exit_code == 2 and (out / name).read_bytes() == b"mine"
    (out / name).unlink()
    assert _compare(root, out).exit_code == 0
    assert _compare(root, out).exit_code == 0  # its own files, listed in its manifest: replaced
    saved = out / MAPS_FILE
    assert not saved.is_symlink() and saved.stat().st_mode & 0o777 == 0o644
    with np.load(saved) as npz:
        assert len(npz.files) == 2 * len(json.loads((out / "compare.json").read_text())["maps"])
    assert sorted(p.name for p in out.iterdir()) == [".reportgen-compare.json", "compare.html", "compare.json",
                                                     MAPS_FILE]


def test_a_compare_folder_from_before_the_manifest_is_recognised_by_its_page(two_reports, tmp_path):
    root, out = two_reports, tmp_path / "cmp"
    assert _compare(root, out).exit_code == 0
    (out / ".reportgen-compare.json").unlink()
    (out / MAPS_FILE).unlink()  # older compares wrote none
    assert _compare(root, out).exit_code == 0
    (out / ".reportgen-compare.json").unlink()
    (out / "compare.html").write_text("<html>my page</html>")
    done = _compare(root, out)
    assert done.exit_code == 2 and "compare.html" in done.output
    assert (out / "compare.html").read_text() == "<html>my page</html>"
