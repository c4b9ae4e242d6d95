"""Reproducible pages: with SOURCE_DATE_EPOCH set, two builds of one config give the same bytes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from reportgen.cli import main
from tests.conftest import make_image


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_builds_under_source_date_epoch_are_byte_identical(project, monkeypatch):
    make_image(project.root / "images" / "c.png", seed=3)
    config = project.base()
    config["analyses"] = {"summary": {}, "kernels": {}, "feature_maps": {},
                          "cam": {"methods": ["gradcam", "scorecam"]},
                          "gradients": {"methods": ["saliency", "smoothgrad", "integrated_gradients"],
                                        "samples": 3, "steps": 4, "baseline": "uniform"}}
    config["output"] |= {"save_arrays": True, "self_contained": False}
    path = project.write(config)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    builds = []
    for _ in range(2):
        done = CliRunner().invoke(main, ["build", str(path), "-q"])
        assert done.exit_code == 0, done.output
        builds.append(_files(project.root / "out"))
    assert builds[0].keys() == builds[1].keys() and {"index.html", "report.json", "arrays.npz", "images.jsonl"} <= set(builds[0])
    for name, data in builds[0].items():
        assert data == builds[1][name], name
    report = json.loads(builds[0]["report.json"])
    assert report["created"] == "2023-11-14T22:13:20+00:00" and report["source_date_epoch"] == 1700000000
    assert '"seconds"' not in builds[0]["report.json"].decode()
    html = builds[0]["index.html"].decode()
    assert "Compute time per" not in html and ">Seconds<" not in html
    monkeypatch.delenv("SOURCE_DATE_EPOCH")  # without it, the timings are there
    assert CliRunner().invoke(main, ["build", str(path), "-q"]).exit_code == 0
    timed = (project.root / "out" / "index.html").read_text()
    assert "Compute time per step" in timed and ">Seconds<" in timed


@pytest.mark.parametrize("value", ["yesterday", "253402300800", "99999999999999999999"])
def test_a_source_date_epoch_that_is_not_a_date_is_refused_before_any_work(project, monkeypatch, value):
    """Past the year 9999 the date cannot be written: refused at once, not after every stage has run."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    done = CliRunner().invoke(main, ["build", str(project.write()), "-q"])
    assert done.exit_code == 2 and f"SOURCE_DATE_EPOCH is `{value}`" in done.output, done.output
    assert "Traceback" not in done.output and not (project.root / "out").exists()
