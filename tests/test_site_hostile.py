"""`reportgen site` on folders a stranger may hand over: it deletes no folder site.json does not list, writes
through no link, copies no linked file from outside a report folder, and makes folders a web server can read."""
from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from reportgen.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One self-contained report and one with assets/, built once for the module."""
    from tests.conftest import make_project

    project = make_project(tmp_path_factory.mktemp("site_hostile"))
    config = project.base()
    config["analyses"] = {"summary": {}}
    path = project.write(config)
    folders = {}
    for name, extra in (("mine", []), ("paged", ["--set", "output.self_contained=false"])):
        done = CliRunner().invoke(main, ["build", str(path), "-o", str(project.root / name), "-q", *extra])
        assert done.exit_code == 0, done.output
        folders[name] = project.root / name
    return folders


def _site(*args) -> object:
    return CliRunner().invoke(main, ["site", *map(str, args)])


def test_a_folder_site_json_does_not_list_keeps_its_files(built, tmp_path):
    site = tmp_path / "site"
    assert _site(built["paged"], "-o", site).exit_code == 0
    own = site / "reports" / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("my notes")
    done = _site(built["mine"], "-o", site)
    assert done.exit_code == 0, done.output
    assert (own / "notes.txt").read_text() == "my notes" and sorted(os.listdir(own)) == ["notes.txt"]
    assert (site / "reports" / "mine-2" / "report.html").is_file()  # the report took the next free name


def test_re_adding_a_listed_report_keeps_a_file_the_user_put_beside_it(built, tmp_path):
    site = tmp_path / "site"
    assert _site(built["mine"], "-o", site).exit_code == 0
    (site / "reports" / "mine" / "notes.txt").write_text("mine")
    assert _site(built["mine"], "-o", site).exit_code == 0
    assert (site / "reports" / "mine" / "notes.txt").read_text() == "mine"
    assert (site / "reports" / "mine" / "report.html").read_bytes() == (built["mine"] / "report.html").read_bytes()


def test_report_folders_take_the_mode_the_umask_gives(built, tmp_path):
    old = os.umask(0o022)
    try:
        assert _site(built["mine"], "-o", tmp_path / "site").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "site" / "reports" / "mine").stat().st_mode) == 0o755


@pytest.mark.parametrize("link", ["thumbs/mine.png", "thumbs", "reports/mine/report.json"])
def test_the_site_writes_through_no_link(built, tmp_path, link):
    site = tmp_path / "site"
    assert _site(built["mine"], "-o", site).exit_code == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    path = site / link
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(victim)
    done = _site(built["mine"], "-o", site)
    assert done.exit_code == 2 and "is a link" in done.output and str(path) in done.output, done.output
    assert victim.read_text() == "keep"


def test_a_dangling_asset_link_makes_no_file_outside_the_site(built, tmp_path):
    site = tmp_path / "site"
    assert _site(built["paged"], "-o", site).exit_code == 0
    asset = next((site / "assets").glob("*.png"))
    asset.unlink()
    asset.symlink_to(tmp_path / "made.png")
    done = _site(built["paged"], "-o", site)
    assert done.exit_code == 2 and str(asset) in done.output, done.output
    assert not (tmp_path / "made.png").exists()


def test_a_report_folder_linking_outside_itself_is_refused(built, tmp_path):
    import shutil

    folder = tmp_path / "stranger"
    shutil.copytree(built["mine"], folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (folder / "images.jsonl").unlink()
    (folder / "images.jsonl").symlink_to(secret)
    done = _site(folder, "-o", tmp_path / "site")
    assert done.exit_code == 2 and "outside its report folder" in done.output, done.output
    assert not (tmp_path / "site").exists() or "password" not in "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "site").rglob("*") if p.is_file())


def test_the_index_shows_at_most_twelve_metrics_those_most_reports_have_and_says_how_many_more(built, tmp_path):
    import json
    import re
    import shutil

    from reportgen.site import COLUMNS

    folder = tmp_path / "many"
    shutil.copytree(built["mine"], folder)
    data = json.loads((folder / "report.json").read_text())
    data["metrics"] |= {f"evaluation/deletion/method{i}/layer": i / 100 for i in range(40)}
    (folder / "report.json").write_text(json.dumps(data))
    site = tmp_path / "site"
    assert _site(built["paged"], folder, "-o", site).exit_code == 0
    html = (site / "index.html").read_text()
    headings = re.findall(r'<th scope="col" class="num">([^<]*)</th>', html)[1:]  # after Images
    summary = sorted(k for k in data["metrics"] if k.startswith("summary/"))
    assert len(headings) == COLUMNS and set(summary) <= set(headings)  # every report has them: shown first
    hidden = len(data["metrics"]) - COLUMNS
    assert f"{hidden} more metrics" in html
    listed = json.loads((site / "site.json").read_text())["reports"]
    assert max(len(r["metrics"]) for r in listed) == len(data["metrics"])  # site.json keeps them all
