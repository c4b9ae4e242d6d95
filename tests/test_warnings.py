"""Warnings and notes that do not grow with the data set: a stage's per-image warnings of one kind are given once,
on the console, on the page and in report.json, with a count, a few example images and the fix; and Score-CAM's
cost note counts the masked forwards of the whole streamed build, not of one batch."""
from __future__ import annotations

import html
import json
import re

import pytest
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import CamConfig
from reportgen.errors import EXAMPLES, ImageWarning, merge_warnings
from reportgen.stages import cam as C
from tests.conftest import make_image

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

IMAGES = 12


def _build(project, width: int, analyses: dict):
    """A streamed build of IMAGES images made here, two a batch, of the tiny net with `width` channels."""
    for old in (project.root / "images").iterdir():
        old.unlink()
    for i in range(IMAGES):
        make_image(project.root / "images" / f"i{i:02d}.png", size=(16, 16), seed=10 + i)
    config = project.base()
    config["model"]["kwargs"]["width"] = width
    config["inputs"]["batch_size"] = 2
    config["analyses"] = analyses
    result = CliRunner().invoke(main, ["build", str(project.write(config))])
    assert result.exit_code == 0, result.output
    return result, project.root / "out"


def _section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}"')
    return html[start:html.index("</section>", start)]


def test_integrated_gradients_warns_once_for_every_image_it_misses(project):
    """One `steps` from a zero baseline misses f(x) − f(baseline) by far on every image, in every batch: one line
    on the console, one banner and one report.json entry, counting the images (not image-class pairs) and naming
    EXAMPLES of them."""
    done, out = _build(project, 8, {"gradients": {"methods": ["integrated_gradients"], "steps": 1, "targets": "top2"}})
    records = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    missed = [r["name"] for r in records if max(r["gradients"]["integrated_gradients_gap"]) > 0.05]
    assert len(records) == IMAGES and len(missed) >= 2 * 2  # every image; more than one batch's worth

    lines = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(lines) == 1 and "raise `steps` (now 1)" in lines[0], done.stderr
    assert re.search(rf"\b{len(missed)} images\b", lines[0])
    named = [name for name in (r["name"] for r in records) if re.search(rf"\b{name}\b", lines[0])]
    assert len(named) == EXAMPLES and set(named) <= set(missed)

    page = _section((out / "report.html").read_text(), "gradients")
    banners = re.findall(r'<p class="warn" role="note">(.*?)</p>', page, re.S)
    assert len(banners) == 1 and f"{len(missed)} images" in banners[0] and "raise `steps`" in banners[0]
    report = json.loads((out / "report.json").read_text())
    assert report["gradients"]["warnings"] == [lines[0].split("warning: ", 1)[1]]


def test_score_cam_counts_the_forwards_of_every_batch(project):
    """96 channels × 12 images = 1 152 masked forwards, 192 a batch: the note counts them all and suggests a
    `max_channels` below the layer's 96 channels."""
    _, out = _build(project, 96, {"cam": {"methods": ["scorecam"]}})
    notes = json.loads((out / "report.json").read_text())["cam"]["notes"]
    (note,) = [n for n in notes if "forward" in n]
    assert "1,152" in note and f"{IMAGES} images" in note and "`analyses.cam.max_channels` (say 64)" in note
    assert note in html.unescape((out / "report.html").read_text())


def test_the_score_cam_note_suggests_a_max_channels_only_below_the_channel_count():
    """A 32-channel layer over 597 images: 19 104 forwards, and no `max_channels: 64` (it would cap nothing)."""
    cfg = CamConfig(methods=("scorecam", "ablationcam"))
    (note,) = C.masked_forwards_notes(cfg, {"conv2": (32, 4, 4)}, 597)
    assert "19,104" in note and "597 images" in note and "say 64" not in note and "max_channels" not in note
    (note,) = C.masked_forwards_notes(cfg, {"conv2": (32, 4, 4), "conv3": (128, 2, 2)}, 10)
    assert "1,600" in note and "(say 64)" in note  # 64 < 128: it helps on conv3
    assert not C.masked_forwards_notes(cfg, {"conv2": (32, 4, 4)}, 8)  # 256 forwards: few, no note
    assert not C.masked_forwards_notes(CamConfig(methods=("scorecam",), max_channels=16), {"c": (512, 4, 4)}, 99)


def test_merged_warnings_count_images_and_keep_other_messages():
    steps = [ImageWarning("IG misses", f"img{i}", "raise `steps`.") for i in range(5)]
    merged = merge_warnings(["plain", *steps[:2], "plain", ImageWarning("other", "img9", "fix it."), *steps[2:]])
    assert merged == ("plain", "IG misses for 5 images (e.g. img0; img1; img2): raise `steps`.",
                      "other for 1 image (img9): fix it.")
    assert merge_warnings(merged) == merged  # merging again changes nothing
