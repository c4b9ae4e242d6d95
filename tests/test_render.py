"""Rendering without a browser: the page frame's snapshot, escaping, CSP hashes, lossless PNGs, colour contrast."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reportgen import render
from reportgen.cli import main

HOSTILE = "<script>alert(1)</script>"
SNAPSHOT = Path(__file__).parent / "snapshots" / "report_frame.html"
CSS = (render.templates_dir() / "style.css").read_text()


# ---------------------------------------------------------------------------------------------------------------
# the page frame: a snapshot with hostile strings, payloads replaced by hashes


def _fake_report(self_contained: bool = True):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    config = SimpleNamespace(title=f"Frame {HOSTILE}", output=SimpleNamespace(self_contained=self_contained))
    images = [SimpleNamespace(name=f"cat {HOSTILE}", source=f"images/{HOSTILE}.png", display=pixels)]
    ctx = SimpleNamespace(images=images, info=SimpleNamespace(notes=[f"note {HOSTILE}"]))
    runs = [SimpleNamespace(name="cam", title="Class activation maps", status="failed",
                            error=f"ValueError: bad layer {HOSTILE}", seconds=0.5, section=None),
            SimpleNamespace(name="training", title="Training curves", status="skipped", error="no logs", seconds=0.0,
                            section=None)]
    data = {
        "created": "2026-01-01T00:00:00+00:00",
        "versions": {"reportgen": "0.0", "torch": "t", "torchvision": "tv", "python": "3"},
        "model": {"description": f"net {HOSTILE}", "num_classes": 3, "input_size": [3, 24, 32], "device": "cpu"},
        "config": {"title": f"Frame {HOSTILE}"},
        "images": [{"top_k": [{"index": 2, "label": f"label {HOSTILE}", "probability": 0.75}]}],
        "stages": [{"name": r.name, "status": r.status, "seconds": r.seconds, "error": r.error} for r in runs],
    }
    page = render.render_report(config, ctx, runs, data)
    assert page.failed == {}  # both sections were drawn as they are
    return page.html, page.assets


def _normalise(html: str) -> str:
    """Payloads (images, CSS, JS, the CSP's hashes) replaced by short hashes: the snapshot shows structure."""
    short = lambda text: hashlib.sha256(text.encode()).hexdigest()[:12]  # noqa: E731
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", lambda m: f"data:png#{short(m.group(0))}", html)
    html = re.sub(r"<style>.*?</style>", "<style>(style.css)</style>", html, flags=re.S)
    html = re.sub(r"<script>.*?</script>", "<script>(report.js)</script>", html, flags=re.S)
    return re.sub(r"sha256-[A-Za-z0-9+/=]+", "sha256-…", html)


def test_page_frame_matches_its_snapshot():
    html, assets = _fake_report()
    assert assets == {}
    text = _normalise(html)
    if os.environ.get("REPORTGEN_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "rerun with REPORTGEN_UPDATE_SNAPSHOTS=1 after an intended change"


def test_every_string_is_escaped_and_the_page_carries_no_inline_handler_or_style_attribute():
    html, _ = _fake_report()
    assert "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8  # title x3, note, name x3, label, error...
    assert not re.search(r"\son\w+\s*=", html)
    assert " style=" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html)
    assert html.count("<script>") == 1 and html.count("<style>") == 1


def test_csp_allows_exactly_the_inline_style_and_script():
    html, _ = _fake_report()
    csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = lambda text: base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()  # noqa: E731
    assert f"style-src 'sha256-{digest(style)}'" in csp
    assert f"script-src 'sha256-{digest(script)}'" in csp
    assert csp.startswith("default-src 'none';") and "img-src data:;" in csp
    assert "http" not in csp and "unsafe" not in csp


def test_static_site_frame_links_assets_and_the_same_figures():
    one, _ = _fake_report(self_contained=True)
    site, assets = _fake_report(self_contained=False)
    srcs = re.findall(r'(?:src|href)="(assets/[^"]+)"', site)
    assert srcs and {s.removeprefix("assets/") for s in srcs} == set(assets)
    assert "data:image" not in site
    alts = lambda html: re.findall(r'alt="([^"]*)"', html)  # noqa: E731
    assert alts(one) == alts(site)


def test_script_and_style_stay_small():
    assert len((render.templates_dir() / "report.js").read_bytes()) < 12_000
    assert len(CSS.encode()) < 12_000


# ---------------------------------------------------------------------------------------------------------------
# a real build: a section template that breaks marks its stage failed, the rest is drawn


def test_a_section_that_cannot_be_drawn_fails_its_stage_not_the_report(project, monkeypatch):
    import reportgen.figures.summary as summary_figures

    monkeypatch.setattr(summary_figures, "plot", lambda result, ctx=None: {"rows": []})  # template needs more
    result = CliRunner().invoke(main, ["build", str(project.write()), "-q"])
    assert result.exit_code == 1, result.output
    out = project.root / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["stages"][0]["status"] == "failed"
    assert data["stages"][0]["error"].startswith("the section could not be drawn: UndefinedError")
    assert data["metrics"]["summary/total_params"] > 0 and data["summary"]["rows"]  # what it computed stays
    html = (out / "report.html").read_text()
    assert 'class="section stage failed"' in html and "This stage failed" in html
    assert 'id="input-1-title"' in html and 'id="input-2-title"' in html  # the rest is there (both cards)


# ---------------------------------------------------------------------------------------------------------------
# PNGs: re-encoded losslessly, never larger


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGBA"))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["few-colours", "opaque-rgba", "translucent-rgba", "many-colours", "grey"])
def test_optimise_png_keeps_every_pixel_and_never_grows(kind):
    rng = np.random.default_rng(1)
    if kind == "few-colours":  # a flat matplotlib chart: RGBA, opaque, few colours
        lut = rng.integers(0, 256, size=(40, 4), dtype=np.uint8)
        lut[:, 3] = 255
        pixels = lut[rng.integers(0, 40, size=(60, 90))]
    elif kind == "opaque-rgba":
        pixels = np.dstack([rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8), np.full((50, 70), 255, np.uint8)])
    elif kind == "translucent-rgba":
        pixels = rng.integers(0, 256, size=(50, 70, 4), dtype=np.uint8)
    elif kind == "many-colours":
        pixels = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    else:
        pixels = rng.integers(0, 256, size=(50, 70), dtype=np.uint8)
    png = _png(pixels)
    out = render.optimise_png(png)
    assert len(out) <= len(png)
    np.testing.assert_array_equal(_pixels(out), _pixels(png))
    if kind == "few-colours":
        assert len(out) < 0.6 * len(png)
        assert Image.open(io.BytesIO(out)).mode == "P"
    if kind == "opaque-rgba":
        assert Image.open(io.BytesIO(out)).mode == "RGB"
    if kind in ("many-colours", "grey"):  # what `to_png` made is kept as it is, not decoded again
        assert out == png


# ---------------------------------------------------------------------------------------------------------------
# colour contrast of the stylesheet's pairs, both themes (the browser test checks every rendered text too)


def _variables(css: str, dark: bool) -> dict[str, str]:
    light = dict(re.findall(r"--([\w-]+):(#[0-9a-f]{6})", re.search(r"^:root\{([^}]*)\}", css, re.M).group(1)))
    if not dark:
        return light
    block = re.search(r"@media screen and \(prefers-color-scheme:dark\)\{:root\{([^}]*)\}\}", css).group(1)
    return light | dict(re.findall(r"--([\w-]+):(#[0-9a-f]{6})", block))


def contrast(a: str, b: str) -> float:
    def lum(hex_colour: str) -> float:
        channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# (text, background) as style.css uses them
TEXT_PAIRS = [("fg", "bg"), ("fg", "card"), ("muted", "bg"), ("muted", "card"), ("accent", "card"), ("accent", "bg"),
              ("bg", "accent"), ("ok", "card"), ("bad", "card"), ("muted", "card"), ("fg", "warnbg"), ("fg", "code"),
              ("muted", "code")]


def test_contrast_ratios_pass_wcag_aa_in_both_themes():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)  # the formula itself
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    for dark in (False, True):
        colours = _variables(CSS, dark)
        assert len(colours) == 10
        for fg, bg in TEXT_PAIRS:
            assert contrast(colours[fg], colours[bg]) >= 4.5, (dark, fg, bg)
        assert contrast(colours["muted"], colours["bg"]) >= 3.0  # input borders: non-text contrast
    assert _variables(CSS, True)["bg"] != _variables(CSS, False)["bg"]
    lightbox = dict(re.findall(r"(background|color):(#[0-9a-f]{6})", re.search(r"#lightbox\{([^}]*)\}", CSS).group(1)))
    assert contrast(lightbox["color"], lightbox["background"]) >= 4.5


def contrast_table() -> dict[str, dict[str, float]]:
    """The measured ratios, for the report: `python -c "from tests.test_render import contrast_table as t; print(t())"`."""
    return {theme: {f"{fg}/{bg}": round(contrast(_variables(CSS, theme == "dark")[fg],
                                                 _variables(CSS, theme == "dark")[bg]), 2)
                    for fg, bg in TEXT_PAIRS} for theme in ("light", "dark")}
