"""The feature-space scatter: its payload (figures/scatter.py), the page extras that carry its script only where a
section asks for it, and the drawing of 50 000 injected points in Chromium (templates/scatter.js).

The pages are rendered through render.render_report with a section template that includes the partial: no build,
so 50 000 points cost seconds, not a data set."""
from __future__ import annotations

import base64
import hashlib
import re
from html import unescape
from types import SimpleNamespace

import numpy as np
import pytest

from reportgen import render
from reportgen.figures.images import anchor
from reportgen.figures.scatter import LEVELS, UNKNOWN, class_colour, scatter_payload
from tests.test_browser import assert_offline_and_clean, driver, js, open_page, save_screenshot  # noqa: F401
from tests.test_browser import wait_for

MB = 1_000_000
N = 50_000
SMALL = 3_000  # the page the phone-width checks open
LABELS = [f"class_{k:02d}_{word}" for k, word in enumerate(["tench", "goldfish", "shark", "cock", "hen", "ostrich",
                                                           "brambling", "goldfinch", "junco", "bunting"] * 2)]
HOSTILE = "</script><img src=x onerror=alert(1)>"
SCATTER_JS = (render.templates_dir() / "scatter.js").read_text(encoding="utf-8")
SECTION = '{% from "partials/scatter.html.jinja2" import scatter %}\n{{ scatter(section.scatter, "feature-space", ' \
          '"Penultimate features, PCA to 2-D.") }}\n'
FAR, NEAR = 0, 1  # two points drawn apart from the cloud: FAR is a detail image and a mistake, NEAR has no card
DETAILS = [FAR, 7, 2424]


def _points(n: int = N, seed: int = 0):
    """A validation set in feature space: a blob per class, about a fifth mistakes, names as folders give them."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(LABELS), n)
    wrong = rng.random(n) < 0.2
    predicted = np.where(wrong, (truth + rng.integers(1, len(LABELS), n)) % len(LABELS), truth)
    centres = rng.normal(0, 4, (len(LABELS), 2))
    xy = centres[truth] + rng.normal(0, 1, (n, 2))
    truth[FAR], predicted[FAR], xy[FAR] = 1, 2, xy.max(axis=0) + 3  # up right, apart
    truth[NEAR], predicted[NEAR], xy[NEAR] = 3, 3, xy.min(axis=0) - 3  # down left, apart
    names = [f"val/{LABELS[t]}/image_{i:06d}.jpg" for i, t in enumerate(truth)]
    names[NEAR] = f"val/{LABELS[3]}/{HOSTILE}.jpg"
    return xy, truth, predicted, names


def _thumb(seed: int) -> bytes:
    from reportgen.figures.common import to_png
    return to_png(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _payload(n: int = N):
    xy, truth, predicted, names = _points(n)
    anchors = [anchor(names[i]) if i in DETAILS else None for i in range(n)]
    return scatter_payload(xy, truth, predicted, names, LABELS, anchors, {i: _thumb(i) for i in DETAILS}), (
        xy, truth, predicted, names)


def _render(tmp_path, with_scatter: bool, n: int = N, self_contained: bool = True):
    """A report page: the table of every image (n rows), cards for DETAILS, and a section with the scatter.
    Its HTML; a static site's page (`self_contained=False`) as `render.Rendered`, with its assets."""
    payload, (xy, truth, predicted, names) = _payload(n)
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    top = lambda i: [{"index": int(predicted[i]), "label": LABELS[predicted[i]], "probability": 0.9}]  # noqa: E731
    records = [{"name": names[i], "source": names[i], "truth": {"index": int(truth[i]), "label": LABELS[truth[i]]},
                "top_k": top(i), "detail": "class sample" if i in DETAILS else None} for i in range(n)]
    config = SimpleNamespace(title="Feature space", output=SimpleNamespace(self_contained=self_contained))
    ctx = SimpleNamespace(images=[SimpleNamespace(name=names[i], source=names[i], display=pixels) for i in DETAILS],
                          info=SimpleNamespace(notes=[]))
    template = tmp_path / "insight.html.jinja2"
    template.write_text(SECTION if with_scatter else "<p>No map.</p>\n")
    runs = [SimpleNamespace(name="insight", title="What the model learned", status="ok", error=None, seconds=0.1,
                            section={"scatter": payload}, stage=SimpleNamespace(template_path=template))]
    data = {"created": "2026-01-01T00:00:00+00:00",
            "versions": {"reportgen": "0.0", "torch": "t", "torchvision": "tv", "python": "3"},
            "model": {"description": "net", "num_classes": len(LABELS), "input_size": [3, 24, 32], "device": "cpu"},
            "config": {"title": "Feature space"}, "inputs": {"images": n},
            "images": [{"top_k": records[i]["top_k"], "truth": records[i]["truth"]} for i in DETAILS]}
    page = render.render_report(config, ctx, runs, data, records=records)
    assert page.failed == {}, page.failed
    return page.html if self_contained else page


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("scatter")
    with_map, without = _render(folder, True), _render(folder, False)
    (folder / "with.html").write_text(with_map, encoding="utf-8")
    (folder / "without.html").write_text(without, encoding="utf-8")
    # the phone checks are of the layout: a page of 3 000 points (its table of every image is 50 000 rows shorter)
    (folder / "small.html").write_text(_render(folder, True, n=SMALL), encoding="utf-8")
    return {"with": with_map, "without": without, "path": folder / "with.html", "plain": folder / "without.html",
            "small": folder / "small.html"}


# ---------------------------------------------------------------------------------------------------------------
# the payload


def test_payload_stays_under_2_mb_at_50_000_points_in_any_order():
    xy, truth, predicted, names = _points()
    for shuffle in (False, True):  # names front-coded after sorting: the order the points come in does not matter
        order = np.random.default_rng(1).permutation(N) if shuffle else np.arange(N)
        payload = scatter_payload(xy[order], truth[order], predicted[order], [names[i] for i in order], LABELS,
                                  [None] * N, {})
        assert len(payload["json"].encode()) < 1.5 * MB, len(payload["json"].encode())
        assert payload["count"] == N and payload["labelled"]
        assert payload["mistakes"] == int((truth != predicted).sum())


def _decode(payload: dict) -> dict:
    """The payload read back as scatter.js reads it."""
    import json
    d = json.loads(payload["json"])
    kind = "<u2" if d["size"] == 2 else "u1"
    shared, rest, names, previous = base64.b64decode(d["shared"]), d["names"].split("\n"), [], ""
    for k, tail in zip(shared, rest):
        previous = previous[:k] + tail
        names.append(previous)
    read = lambda key, dtype: np.frombuffer(base64.b64decode(d[key]), dtype=dtype)  # noqa: E731
    return {"names": names, "x": read("x", "<u2"), "y": read("y", "<u2"), "truth": read("truth", kind),
            "pred": read("pred", kind), "anchors": {int(k): v for k, v in d["anchors"].items()},
            "colours": base64.b64decode(d["colours"]), "d": d}


def test_payload_keeps_every_point_name_class_and_the_maps_shape():
    n = 3000
    xy, truth, predicted, names = _points(n)
    truth[5] = -1  # unknown truth
    names[9] = "with\nnewline"
    anchors = [f"card-{i}" if i % 500 == 0 else None for i in range(n)]
    payload = scatter_payload(xy * 7 + 100, truth, predicted, names, LABELS, anchors, {500: b"png"})
    got = _decode(payload)
    expected_names = [name.replace("\n", " ") for name in names]
    assert sorted(expected_names) == got["names"]  # stored in name order
    where = {name: k for k, name in enumerate(got["names"])}
    at = np.array([where[name] for name in expected_names])
    span = (xy.max(axis=0) - xy.min(axis=0)).max()  # one scale for both axes: the aspect ratio is kept
    expected = (xy - xy.min(axis=0)) / span * LEVELS
    assert np.abs(got["x"][at] - expected[:, 0]).max() <= 0.5 and np.abs(got["y"][at] - expected[:, 1]).max() <= 0.5
    assert max(got["d"]["extent"]) == LEVELS and min(got["d"]["extent"]) < LEVELS
    assert got["truth"][at[5]] == len(LABELS) and (got["truth"][at][truth >= 0] == truth[truth >= 0]).all()
    assert (got["pred"][at] == predicted).all()
    assert got["anchors"] == {int(at[i]): f"card-{i}" for i in range(0, n, 500)}
    assert [(k, fig.png) for k, fig in payload["thumbs"]] == [(int(at[500]), b"png")]
    assert payload["mistakes"] == int(((truth >= 0) & (truth != predicted)).sum())
    # a colour per class, then unknown's, as the RGBA bytes the script writes into the canvas; the legend says so
    hexes = [class_colour(k) for k in range(len(LABELS))] + [UNKNOWN]
    assert got["colours"] == bytes.fromhex("".join(c[1:] + "ff" for c in hexes))
    assert payload["legend"] == list(zip(LABELS, hexes)) and len(set(hexes)) == len(hexes)


def test_payload_is_safe_inside_a_script_element_and_wide_for_many_classes():
    labels = [f"c{k}" for k in range(300)] + [HOSTILE]
    payload = scatter_payload(np.zeros((2, 2)), np.array([300, -1]), np.array([299, 0]), [HOSTILE, "b"], labels,
                              [None, None], {})
    assert "<" not in payload["json"] and ">" not in payload["json"] and "&" not in payload["json"]
    got = _decode(payload)
    assert got["d"]["size"] == 2 and got["names"] == [HOSTILE, "b"] and list(got["truth"]) == [300, 301]
    assert payload["legend"] == [] and payload["unknown"] == 1
    assert payload["mistakes"] == 1 and list(got["x"]) == [0, 0]  # all in one place: no division by zero


@pytest.mark.parametrize("bad", ["shape", "nan", "class", "thumb"])
def test_payload_refuses_inconsistent_input(bad):
    xy, truth, predicted, names = np.zeros((3, 2)), np.array([0, 1, -1]), np.array([0, 1, 1]), ["a", "b", "c"]
    thumbs = {}
    if bad == "shape":
        xy = np.zeros((2, 2))
    elif bad == "nan":
        xy[1, 0] = np.nan
    elif bad == "class":
        predicted = np.array([0, 1, 2])
    else:
        thumbs = {3: b"png"}
    with pytest.raises(ValueError, match="scatter"):
        scatter_payload(xy, truth, predicted, names, ["x", "y"], [None] * 3, thumbs)


# ---------------------------------------------------------------------------------------------------------------
# the page: scatter.js and its hash only where a section asks for them


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_only_a_page_with_a_scatter_carries_its_script_and_allows_it(pages):
    for html, scripts in ((pages["with"], 2), (pages["without"], 1)):
        csp = unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
        inline = re.findall(r"<script>(.*?)</script>", html, re.S)
        assert len(inline) == scripts
        allowed = re.search(r"script-src ([^;]+);", csp).group(1).split()
        assert allowed == [_digest(text) for text in inline]  # exactly the page's own scripts, nothing else
        assert (SCATTER_JS in inline) == (scripts == 2)
        assert ("scatter-tip" in html) == (scripts == 2)  # its stylesheet too
    assert pages["with"].count('class="scatter-data"') == 1


def test_the_scatter_adds_at_most_2_mb_at_50_000_points(pages):
    added = len(pages["with"].encode()) - len(pages["without"].encode())
    assert 0.5 * MB < added <= 2 * MB, added


def test_a_static_sites_thumbnails_are_files_of_its_assets(tmp_path):
    import json
    page = _render(tmp_path, True, n=3000, self_contained=False)
    thumbs = json.loads(re.search(r'class="scatter-thumbs">(.*?)</script>', page.html).group(1))
    assert len(thumbs) == len(DETAILS)
    assert all(src.startswith("assets/") and src.removeprefix("assets/") in page.assets for src in thumbs.values())


def test_a_section_may_ask_only_for_files_of_the_templates():
    env = render.make_environment(render._Images(True))
    for name in ("../pyproject.toml", "nothere.js", "report.html.jinja2"):
        with pytest.raises(Exception, match="page extra"):
            env.from_string("{{ page_extra(name) }}").render(name=name)


def test_scatter_script_stays_small():
    assert len(SCATTER_JS.encode()) <= 6_000


# ---------------------------------------------------------------------------------------------------------------
# in Chromium


def _where(driver, index: int, n: int = N) -> tuple[float, float]:
    """Where the page drew point `index` of the data of `n` points (CSS px from the canvas's top left), from its
    data-view."""
    xy = _points(n)[0]
    low, span = xy.min(axis=0), (xy.max(axis=0) - xy.min(axis=0)).max()
    q = np.rint((xy[index] - low) / span * LEVELS)
    s, ox, oy = map(float, js(driver, "return document.querySelector('.scatter canvas').dataset.view").split(","))
    return ox + s * q[0], oy - s * q[1]


def _hover(driver, index: int, n: int = N) -> dict:
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", ".scatter canvas")
    js(driver, "arguments[0].scrollIntoView({block: 'center'})", canvas)
    x, y = _where(driver, index, n)
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(canvas, round(x - size["width"] / 2),
                                                     round(y - size["height"] / 2)).perform()
    return wait_for(lambda: js(driver, """const t = document.querySelector('.scatter-tip'), im = t.querySelector('img');
        return t.hidden ? null : {text: t.innerText, thumb: im ? im.src.slice(0, 22) : null}"""), message="the tooltip")


def _click_here(driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).click().perform()  # where the pointer is (an element's click() aims at its centre)


PIXEL = """const c = document.querySelector('.scatter canvas'), r = devicePixelRatio;
    return [...c.getContext('2d').getImageData(Math.round(arguments[0] * r), Math.round(arguments[1] * r), 1, 1).data]"""
SWATCH = """return [...document.querySelectorAll('.scatter-legend li')].filter(li => li.textContent === arguments[0])
    .map(li => li.querySelector('circle').getAttribute('fill'))[0]"""


def test_50_000_points_draw_in_under_2_s_offline_within_the_policy_and_answer_the_pointer(driver, pages):
    events = open_page(driver, pages["path"])
    drawn = wait_for(lambda: js(driver, "return document.querySelector('.scatter canvas').dataset.drawMs"),
                     timeout=10, message="the scatter drawn")
    assert float(drawn) < 2000, drawn
    assert_offline_and_clean(events)
    canvas = js(driver, "const c = document.querySelector('.scatter canvas'); "
                        "return {w: c.width, cw: c.clientWidth, name: c.getAttribute('aria-label')}")
    assert canvas["w"] == canvas["cw"] > 600 and "50,000 images" in canvas["name"] and "mistakes ringed" in canvas["name"]
    _, truth, predicted, names = _points()
    tip = _hover(driver, FAR)
    assert names[FAR] in tip["text"] and f"Truth: {LABELS[1]}" in tip["text"] and f"Predicted: {LABELS[2]}" in tip["text"]
    assert "mistake" in tip["text"] and tip["thumb"] == "data:image/png;base64,"
    x, y = _where(driver, FAR)  # the dot wears its true class's colour, then its predicted one
    rgb = lambda hex_colour: list(bytes.fromhex(hex_colour[1:]))  # noqa: E731
    assert js(driver, PIXEL, x, y)[:3] == rgb(js(driver, SWATCH, LABELS[1]))
    driver.find_element("css selector", ".scatter input[value=pred]").click()
    assert wait_for(lambda: js(driver, PIXEL, x, y)[:3] == rgb(js(driver, SWATCH, LABELS[2])), message="recoloured")
    assert rgb(js(driver, SWATCH, LABELS[1])) != rgb(js(driver, SWATCH, LABELS[2]))
    tip = _hover(driver, NEAR)  # a hostile name is text, not markup
    assert names[NEAR] in tip["text"] and tip["thumb"] is None and "mistake" not in tip["text"]
    _click_here(driver)  # no card: the table of every image, filtered
    rows = wait_for(lambda: js(driver, """const rows = [...document.querySelectorAll('#images-table tbody tr')]
        .filter(r => !r.classList.contains('filtered-out')); return rows.length === 1 && rows[0].cells[0].textContent"""),
        message="the table filtered to the image")
    assert rows == names[NEAR]
    _hover(driver, FAR)
    _click_here(driver)  # a detail image: its card
    assert wait_for(lambda: js(driver, "return location.hash") == "#" + anchor(names[FAR]), message="the card")
    top = js(driver, "return document.getElementById(arguments[0]).getBoundingClientRect().top", anchor(names[FAR]))
    assert 0 <= top < 100, top
    assert_offline_and_clean(__import__("tests.test_browser", fromlist=["page_events"]).page_events(driver))
    save_screenshot(driver, "scatter-desktop.png")


def test_the_keyboard_steps_through_the_mistakes(driver, pages):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, pages["path"])
    canvas = driver.find_element("css selector", ".scatter canvas")
    js(driver, "arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()", canvas)
    said = "return document.querySelector('.scatter-said').textContent"
    canvas.send_keys(Keys.ARROW_RIGHT)
    first = wait_for(lambda: js(driver, said), message="the first mistake said")
    assert "✗ mistake" in first and "Truth: " in first and "Predicted: " in first
    canvas.send_keys(Keys.ARROW_RIGHT)
    assert wait_for(lambda: js(driver, said) != first and "✗ mistake" in js(driver, said), message="the next one")
    canvas.send_keys(Keys.ARROW_LEFT)
    assert wait_for(lambda: js(driver, said) == first, message="back")
    canvas.send_keys(Keys.ENTER)  # opens it: the table of every image filtered to its name (or its card)
    name = first.split(". ")[0]
    assert wait_for(lambda: js(driver, "return document.querySelector('input.filter').value") == name
                    or js(driver, "return location.hash") == "#" + anchor(name), message="Enter to open the image")
    js(driver, "document.activeElement.blur()")
    assert js(driver, "return document.querySelector('.scatter-tip').hidden")  # leaving the map hides its tooltip


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_width_has_no_sideways_scroll_and_a_sharp_canvas(driver, pages, scheme):
    open_page(driver, pages["small"], width=375, height=800, scheme=scheme)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 375, "height": 800, "deviceScaleFactor": 2, "mobile": True})
    driver.refresh()
    got = wait_for(lambda: js(driver, """const c = document.querySelector('.scatter canvas');
        return c.dataset.drawMs && {w: c.width, cw: c.clientWidth, right: c.getBoundingClientRect().right,
        scroll: document.documentElement.scrollWidth, inner: innerWidth}"""), timeout=10, message="drawn at phone width")
    assert got["scroll"] <= got["inner"] and got["right"] <= got["inner"], got
    assert got["w"] == 2 * got["cw"], got  # device pixels: sharp on a phone's screen
    _hover(driver, FAR, SMALL)  # the tooltip stays inside the page
    assert js(driver, "return document.documentElement.scrollWidth <= innerWidth")
    js(driver, "document.querySelector('.scatter').scrollIntoView()")
    save_screenshot(driver, f"scatter-phone-{scheme}.png")
