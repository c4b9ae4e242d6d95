"""`reportgen site`: many reports in one static site, opened from file:// in Chromium."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main
from tests.test_browser import decode_all, driver, js, open_page, page_events, wait_for  # noqa: F401 (a fixture)


@pytest.fixture
def reports(project):
    """Three report folders of the tiny model: one self-contained, two with assets/ (the same pictures)."""
    config = project.base()
    config["analyses"] = {"summary": {}, "cam": {"methods": ["gradcam"]}}
    path = project.write(config)
    made = {}
    for name, extra in (("first", []), ("second", ["--set", "output.self_contained=false", "--set", "title=Second"]),
                        ("third", ["--set", "output.self_contained=false", "--set", "title=Third"])):
        done = CliRunner().invoke(main, ["build", str(path), "-o", str(project.root / name), "-q", *extra])
        assert done.exit_code == 0, done.output
        made[name] = project.root / name
    return made


def _inside(events: dict, site) -> None:
    assert events["errors"] == [], events["errors"]
    root = site.resolve().as_uri()
    outside = [u for u in events["requests"] if not (u.startswith(root) or u.startswith("data:"))]
    assert outside == [], outside


def test_the_site_lists_every_report_links_land_and_nothing_leaves_it(driver, reports, project):
    site = project.root / "site"
    done = CliRunner().invoke(main, ["site", str(reports["first"]), str(reports["second"]), "-o", str(site)])
    assert done.exit_code == 0, done.output
    _inside(open_page(driver, site / "index.html"), site)
    rows = js(driver, "return [...document.querySelectorAll('#site-reports tbody tr')].map(r => r.cells[1].innerText)")
    assert sorted(rows) == ["Second", "Tiny"]
    assert js(driver, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    # sortable: the title column ascending, then descending
    driver.find_elements("css selector", "#site-reports thead th button.sort")[1].click()
    first = "return document.querySelector('#site-reports tbody tr').cells[1].innerText"
    assert js(driver, first) == "Second"
    driver.find_elements("css selector", "#site-reports thead th button.sort")[1].click()
    assert js(driver, first) == "Tiny"
    # filterable by title or model
    box = driver.find_element("css selector", "input.filter")
    box.send_keys("second")
    wait_for(lambda: js(driver, "return document.querySelectorAll('#site-reports tbody tr:not(.filtered-out)').length")
             == 1, message="one row left")
    links = js(driver, "return [...new Set([...document.querySelectorAll('a[href]')].map(a => a.href))]")
    assert len(links) == 2
    titles = {}
    for link in links:
        driver.get("about:blank")
        driver.get_log("browser"), driver.get_log("performance")
        driver.get(link)
        _inside(page_events(driver), site)
        pictures = decode_all(driver)  # every <img>, each zoomed picture, and the layered figures' CSS backgrounds
        for picture in pictures["inline"] + pictures["full"]:
            assert picture["error"] is None and picture["width"] > 0, (link, picture)
        assert pictures["layered"], link  # the CAM overlays: their pictures come from the (relinked) stylesheet
        for layer in pictures["layered"]:
            assert layer["map_error"] is None and layer["map_width"] > 0, (link, layer)
            assert not layer["overlay"] or (layer["under_error"] is None and layer["under_width"] > 0), (link, layer)
        titles[link.rsplit("/", 2)[-2]] = driver.title
    assert titles == {"first": "Tiny", "second": "Second"}


def test_adding_a_report_updates_the_index_and_leaves_the_others_and_shares_pictures(reports, project):
    site = project.root / "site"
    assert CliRunner().invoke(main, ["site", str(reports["first"]), str(reports["second"]), "-o", str(site)]).exit_code == 0
    kept = {p: p.stat().st_mtime_ns for p in (site / "reports").rglob("*") if p.is_file()}
    assets = set((site / "assets").iterdir())
    done = CliRunner().invoke(main, ["site", str(reports["third"]), "-o", str(site)])
    assert done.exit_code == 0, done.output
    listed = json.loads((site / "site.json").read_text())["reports"]
    assert [e["slug"] for e in listed] == ["first", "second", "third"]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # the others are not rebuilt
    assert set((site / "assets").iterdir()) == assets  # the third report's pictures are the second's: stored once
    assert {p.name for p in (reports["third"] / "assets").iterdir()} <= {p.name for p in assets}
    assert "Third" in (site / "index.html").read_text()


def test_output_site_adds_the_report_as_it_is_built(project):
    config = project.base()
    config["output"]["site"] = "published"
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    listed = json.loads((project.root / "published" / "site.json").read_text())["reports"]
    assert [e["slug"] for e in listed] == ["out"] and (project.root / "published" / listed[0]["page"]).is_file()


def test_a_folder_without_a_report_or_a_site_that_is_not_one_is_refused(reports, project):
    done = CliRunner().invoke(main, ["site", str(project.root / "images"), "-o", str(project.root / "s")])
    assert done.exit_code == 2 and "holds no report" in done.output and not (project.root / "s").exists()
    mine = project.root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    done = CliRunner().invoke(main, ["site", str(reports["first"]), "-o", str(mine)])
    assert done.exit_code == 2 and "is not a reportgen site" in done.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_each_thumbnail_is_the_first_input_image_its_report_json_names(reports, project):
    """Embedded in the page (self-contained) or a file in assets/: the same picture, the same thumbnail."""
    site = project.root / "site"
    done = CliRunner().invoke(main, ["site", str(reports["first"]), str(reports["second"]), "-o", str(site)])
    assert done.exit_code == 0, done.output
    listed = {e["slug"]: e for e in json.loads((site / "site.json").read_text())["reports"]}
    assert listed["first"]["thumb"] == "thumbs/first.png" and listed["second"]["thumb"] == "thumbs/second.png"
    assert (site / "thumbs" / "first.png").read_bytes() == (site / "thumbs" / "second.png").read_bytes()
    page = json.loads((reports["second"] / "report.json").read_text())["page"]
    assert page["assets"] == "assets" and page["first_input"]["picture"].startswith("assets/")
    with Image.open(reports["second"] / page["first_input"]["picture"]) as picture, \
            Image.open(site / "thumbs" / "second.png") as thumb:
        assert thumb.size == picture.size == (16, 16)  # the tiny model's inputs: no smaller thumbnail
        assert np.array_equal(np.asarray(thumb.convert("RGB")), np.asarray(picture.convert("RGB")))
    assert json.loads((reports["first"] / "report.json").read_text())["page"] == \
        {"assets": None, "first_input": {"card": page["first_input"]["card"], "picture": None}}
    assert f'id="{page["first_input"]["card"]}"' in (reports["first"] / "report.html").read_text()


def test_a_report_built_before_report_json_described_its_page_is_listed_without_a_thumbnail(reports, project):
    old = project.root / "old"
    shutil.copytree(reports["second"], old)
    data = json.loads((old / "report.json").read_text())
    del data["page"]
    (old / "report.json").write_text(json.dumps(data))
    site = project.root / "site"
    done = CliRunner().invoke(main, ["site", str(old), "-o", str(site)])
    assert done.exit_code == 0, done.output
    assert json.loads((site / "site.json").read_text())["reports"][0]["thumb"] is None
    html = (site / "reports" / "old" / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*assets/[^"]+)"', html)
    assert links and all(link.startswith("../../assets/") and (site / "reports" / "old" / link).is_file()
                         for link in links)


@pytest.mark.parametrize("picture", ["../../secret.png", "assets/../../secret.png", 7])
def test_a_page_record_that_points_outside_its_assets_is_refused(reports, project, picture):
    data = json.loads((reports["second"] / "report.json").read_text())
    data["page"]["first_input"]["picture"] = picture
    (reports["second"] / "report.json").write_text(json.dumps(data))
    done = CliRunner().invoke(main, ["site", str(reports["second"]), "-o", str(project.root / "site")])
    assert done.exit_code == 2 and "its `page` entry is not one reportgen writes" in done.output
    assert not (project.root / "site").exists()
