"""Report outputs: static-site mode, failed stages, atomic writes."""
import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from reportgen.registry import STAGES
from reportgen import write
from reportgen.cli import main


def build(config_path, *args):
    return CliRunner().invoke(main, ["build", str(config_path), "-q", *args])


def test_static_site_mode_writes_index_and_assets_with_relative_links(project):
    config = project.base()
    config["output"]["self_contained"] = False
    assert build(project.write(config)).exit_code == 0
    out = project.root / "out"
    html = (out / "index.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("assets/") for s in srcs)
    for src in srcs:
        assert (out / src).is_file()
    assert "data:image" not in html


def test_a_failing_stage_is_reported_and_exits_1(project, monkeypatch):
    import reportgen.stages.summary as summary

    def boom(ctx, cfg):
        raise RuntimeError("the <b>summary</b> exploded")

    monkeypatch.setitem(STAGES, "summary", dataclasses.replace(summary.SPEC, run=boom))
    result = CliRunner().invoke(main, ["build", str(project.write())])
    assert result.exit_code == 1
    assert "stages failed: summary" in result.stderr
    data = json.loads((project.root / "out" / "report.json").read_text())
    assert data["stages"][0]["status"] == "failed"
    assert data["stages"][0]["error"] == "RuntimeError: the <b>summary</b> exploded"
    html = (project.root / "out" / "report.html").read_text()
    assert "This stage failed." in html and "the &lt;b&gt;summary&lt;/b&gt; exploded" in html


def test_a_crash_while_writing_keeps_the_previous_report(project, monkeypatch):
    assert build(project.write()).exit_code == 0
    out = project.root / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = write._write_temp

    def crash_on_html(path, data):
        if path.name == "report.html":
            raise OSError("disk full")  # after report.json was written under its temporary name
        return real(path, data)

    monkeypatch.setattr(write, "_write_temp", crash_on_html)
    config = project.base()
    config["title"] = "second"
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"], catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "writing the report to" in result.stderr and "disk full" in result.stderr and "unchanged" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_rebuild_removes_what_it_no_longer_writes(project):
    """Arrays from an earlier --save-arrays build, the other output mode's page and unreferenced assets go;
    files the user put there stay, even when they are named like reportgen's."""
    out = project.root / "out"
    assert build(project.write(), "--save-arrays").exit_code == 0
    assert (out / "arrays.npz").is_file()
    static = project.base()
    static["output"]["self_contained"] = False
    assert build(project.write(static)).exit_code == 0
    assets = {p.name for p in (out / "assets").iterdir()}
    page = (out / "index.html").read_text()
    assert not (out / "report.html").exists() and not (out / "arrays.npz").exists()
    assert assets and all(f"assets/{name}" in page for name in assets)  # every asset left is one the page uses
    (out / "assets" / "notes.txt").write_text("the user's own file")
    (out / "assets" / ("0" * 20 + ".png")).write_bytes(b"the user's picture, named like an asset")
    assert build(project.write()).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [write.MANIFEST, "assets", "images.jsonl", "report.html",
                                                     "report.json"]
    assert sorted(p.name for p in (out / "assets").iterdir()) == ["0" * 20 + ".png", "notes.txt"]
    assert json.loads((out / write.MANIFEST).read_text())["files"] == ["images.jsonl", "report.html", "report.json"]


def test_write_atomic_leaves_no_temp_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        write.write_atomic(target, object())  # not bytes: fails inside the write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_published_report_shows_no_home_folders(project):
    """Paths in the report (config block, report.json, training runs, warnings) are relative to the config."""
    import shutil

    shutil.copy(Path(__file__).resolve().parent.parent / "example_configs" / "shapes" / "metrics.csv",
                project.root / "metrics.csv")
    (project.root / "labels.txt").write_text("a\nb\nc\n")
    config = project.base()
    config["model"]["labels"] = "labels.txt"
    config["analyses"]["training"] = {"logs": ["metrics.csv", "runs/*"]}  # the second matches nothing
    assert build(project.write(config)).exit_code == 0
    out = project.root / "out"
    for name in ("report.html", "report.json"):
        text = (out / name).read_text()
        assert str(project.root) not in text, name
    saved = json.loads((out / "report.json").read_text())["config"]
    assert saved["model"]["labels"] == "labels.txt" and saved["analyses"]["training"]["logs"] == ["metrics.csv", "runs/*"]
    assert "no log files match `runs/*`" in (out / "report.html").read_text()


def test_training_logs_that_are_all_missing_skip_the_stage_and_the_build_succeeds(project):
    config = project.base()
    config["analyses"]["training"] = {"logs": ["runs/*", "missing.csv"]}
    result = CliRunner().invoke(main, ["build", str(project.write(config))])
    assert result.exit_code == 0, result.output
    assert "stage training skipped: no training logs found" in result.stderr
    stages = {s["name"]: s for s in json.loads((project.root / "out" / "report.json").read_text())["stages"]}
    assert stages["training"]["status"] == "skipped" and "missing.csv" in stages["training"]["error"]
    html = (project.root / "out" / "report.html").read_text()
    assert "Skipped: no training logs found: no log files match `runs/*`" in html
    checked = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert checked.exit_code == 0 and "warning: no log files match `runs/*`" in checked.stderr
    assert "the training stage would be skipped" in checked.stderr
