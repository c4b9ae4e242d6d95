"""The report as people use it: opened from file:// in headless Chromium, driven by Selenium.

Generic over whatever stages the quickstart config holds: every image decodes, every sidebar link lands on its
section, every sortable table sorts. Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them);
without them these tests fail and say so. Screenshots (desktop, phone, dark) and a PDF print go to
`test-artifacts/`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reportgen.registry import STAGES
from reportgen.cli import main
from tests.conftest import make_image

ROOT = Path(__file__).resolve().parent.parent
# REPORTGEN_BROWSER_CONFIG runs the same checks on another config (the size budget is the quickstart's)
QUICKSTART = Path(os.environ.get("REPORTGEN_BROWSER_CONFIG", ROOT / "example_configs" / "quickstart.yaml"))
ARTIFACTS = ROOT / "test-artifacts"
CHROMEDRIVER = os.environ.get("REPORTGEN_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = os.environ.get("REPORTGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = "<img src=x onerror=alert(1)>"
DESKTOP, PHONE = (1300, 1000), (390, 844)
MB = 1_000_000


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        return (f"the browser tests need Chromium and its driver, missing: {', '.join(missing)}. Install them with "
                "`apt-get install chromium chromium-driver` (or point REPORTGEN_CHROMIUM / REPORTGEN_CHROMEDRIVER "
                "at them).")
    return None


# ---------------------------------------------------------------------------------------------------------------
# builds and the browser


def build(config: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["build", str(config), "-o", str(out), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> dict:
    """The quickstart report built once, self-contained (report.html) and as a static site (index.html + assets/)."""
    one = tmp_path_factory.mktemp("quickstart")
    result = build(QUICKSTART, one)  # not quiet: the size line is part of the contract
    assert result.exit_code == 0, result.output
    site = tmp_path_factory.mktemp("quickstart-site")
    result_site = build(QUICKSTART, site, "-q", "--set", "output.self_contained=false")
    assert result_site.exit_code == 0, result_site.output
    return {"html": one / "report.html", "json": json.loads((one / "report.json").read_text()),
            "stderr": result.stderr, "site": site / "index.html"}


@pytest.fixture(scope="module")
def driver():
    problem = _browser_missing()
    if problem:
        pytest.fail(problem, pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="reportgen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                 f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    chrome.set_script_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def emulate(driver, *, width=DESKTOP[0], height=DESKTOP[1], scheme="light", media="screen", scripts=True) -> None:
    """Window size, colour scheme, print media, JavaScript on/off; motion always reduced (instant scrolling)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": media, "features": [
        {"name": "prefers-color-scheme", "value": scheme}, {"name": "prefers-reduced-motion", "value": "reduce"}]})
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": not scripts})


def open_page(driver, path: Path, **emulation) -> dict:
    """Load `path` from file:// under `emulation`; return what the page logged and requested while loading."""
    emulate(driver, **emulation)
    driver.get("about:blank")
    driver.get_log("browser"), driver.get_log("performance")  # drain
    driver.get(path.resolve().as_uri())
    return page_events(driver)


def page_events(driver) -> dict:
    """Console messages and network requests since the last call, and what the page may request: itself, data:
    URIs and, in static-site mode (index.html), the files of its own assets/ folder."""
    time.sleep(0.2)  # let late console messages (CSP reports, image errors) arrive
    console = driver.get_log("browser")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    page = driver.current_url.split("#")[0]
    allowed = [page, "data:"] + ([page.rsplit("/", 1)[0] + "/assets/"] if page.endswith("/index.html") else [])
    return {"errors": [e["message"] for e in console if e["level"] == "SEVERE"], "console": console,
            "requests": requests, "allowed": allowed}


def assert_offline_and_clean(events: dict) -> None:
    assert events["errors"] == [], events["errors"]
    outside = [url for url in events["requests"] if not any(url.startswith(a) for a in events["allowed"])]
    assert outside == [], outside
    assert not any("Content Security Policy" in e["message"] for e in events["console"]), events["console"]


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


DECODE_ALL = """
const done = arguments[arguments.length - 1];
const imgs = [...document.images].filter(i => !i.closest('#lightbox'));
imgs.forEach(i => { i.loading = 'eager'; });
const full = [...document.querySelectorAll('a.zoom')].map(a => { const im = new Image(); im.src = a.href; return im; });
const settle = im => im.decode().then(() => null, e => String(e));
const stacks = [...document.querySelectorAll('figure.fig .stack')];  // layered figures: pictures from the page's CSS
const url = css => { const m = css.match(/^url\("(.*)"\)$/); const im = new Image(); im.src = m ? m[1] : 'data:,'; return im; };
const unders = stacks.map(s => getComputedStyle(s).backgroundImage);
const under = stacks.map((s, k) => url(unders[k] === 'none' ? 'url("data:image/png;base64,")' : unders[k]));
const layer = stacks.map(s => url(getComputedStyle(s, '::after').backgroundImage));
const n = imgs.length + full.length;
Promise.all([...imgs, ...full, ...under, ...layer].map(settle)).then(errors => done({
  inline: imgs.map((im, k) => ({src: im.getAttribute('src').slice(0, 80), width: im.naturalWidth,
                                alt: im.getAttribute('alt'), error: errors[k]})),
  full: full.map((im, k) => ({src: im.src.slice(0, 80), width: im.naturalWidth, error: errors[imgs.length + k]})),
  layered: stacks.map((s, k) => {
    const box = s.getBoundingClientRect(), shown = s.querySelector('img').getBoundingClientRect();
    return {overlay: unders[k] !== 'none', under_width: under[k].naturalWidth, under_error: errors[n + k],
            map_width: layer[k].naturalWidth, map_error: errors[n + stacks.length + k],
            opacity: +getComputedStyle(s, '::after').opacity,
            same_box: Math.abs(box.width - shown.width) < 1 && Math.abs(box.height - shown.height) < 1};
  }),
}));
"""


def decode_all(driver) -> dict:
    return driver.execute_async_script(DECODE_ALL)


def assert_every_picture_decodes(images: dict, report_json: dict) -> None:
    for img in images["inline"] + images["full"]:
        assert img["error"] is None and img["width"] > 0, img
    # layered figures (CAM, gradients): each map decodes and covers its box; an overlay's map lies half
    # transparent on a picture beneath that decodes too; a map alone is opaque
    overlays = {s["name"] for s in report_json["stages"]} & {"cam", "gradients"}
    assert any(f["overlay"] for f in images["layered"]) == bool(overlays), overlays
    for fig in images["layered"]:
        assert fig["map_error"] is None and fig["map_width"] > 0 and fig["same_box"], fig
        if fig["overlay"]:
            assert fig["under_error"] is None and fig["under_width"] > 0 and 0 < fig["opacity"] < 1, fig
        else:
            assert fig["opacity"] == 1, fig


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def wait_for(predicate, timeout=5.0, message="condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------------
# the quickstart report


def test_quickstart_stays_under_its_size_budget_and_the_build_prints_it(quickstart):
    size = quickstart["html"].stat().st_size
    assert size < 3 * MB
    printed = re.search(r"wrote .*report\.html \(([\d.]+) MB\)", quickstart["stderr"])
    assert printed, quickstart["stderr"]
    assert float(printed.group(1)) == pytest.approx(size / MB, abs=0.006)


def test_opens_offline_with_no_console_error_and_no_network_request(driver, quickstart):
    events = open_page(driver, quickstart["html"])
    assert_offline_and_clean(events)
    assert js(driver, "return document.documentElement.classList.contains('js')"), "the inline script did not run"
    stage_ids = js(driver, "return [...document.querySelectorAll('section.stage')].map(s => s.id)")
    assert stage_ids == [s["name"] for s in quickstart["json"]["stages"]]
    assert js(driver, "return document.querySelectorAll('section.stage.failed').length") == 0


def test_every_image_decodes_and_says_what_it_shows(driver, quickstart):
    open_page(driver, quickstart["html"])
    # every picture has its box from the start (no layout shift moving the sections a link lands on)
    empty = js(driver, """return [...document.images].filter(i => !i.closest('#lightbox, details:not([open])'))
        .filter(i => { const r = i.getBoundingClientRect(); return !(r.width > 0 && r.height > 0); }).map(i => i.alt)""")
    assert empty == []
    images = decode_all(driver)
    assert len(images["inline"]) >= len(quickstart["json"]["images"])
    assert_every_picture_decodes(images, quickstart["json"])
    for img in images["inline"]:
        assert len(img["alt"].split()) >= 3, img  # a sentence, not a file name
    assert all(img["src"].startswith("data:image/png;base64,") for img in images["inline"])
    for name in (i["name"] for i in quickstart["json"]["images"]):
        assert any(name in img["alt"] for img in images["inline"]), name


def test_every_sidebar_link_lands_on_its_section_and_is_marked(driver, quickstart):
    open_page(driver, quickstart["html"])
    links = driver.find_elements("css selector", "#toc a")
    hrefs = [a.get_attribute("hash") for a in links]
    expected = {"#overview", "#inputs", "#config"} | {"#" + s["name"] for s in quickstart["json"]["stages"]}
    assert expected <= set(hrefs)
    assert len(hrefs) == len(expected) + len(quickstart["json"]["images"])
    for link, href in zip(links, hrefs):
        js(driver, "window.scrollTo(0, 0)")
        link.click()
        landed = wait_for(lambda: js(driver, """
            const el = document.getElementById(decodeURIComponent(arguments[0].slice(1)));
            const r = el.getBoundingClientRect(), h = window.innerHeight;
            const atEnd = window.scrollY + h >= document.documentElement.scrollHeight - 2;
            const ok = location.hash === arguments[0] && (Math.abs(r.top - 16) <= 4 || (atEnd && r.top >= 0 && r.top < h));
            return ok && arguments[1].classList.contains('active') ? r.top + 1 : 0;
        """, href, link), message=f"{href} to land and be marked")
        assert landed


def test_the_sidebar_marks_the_section_scrolled_to(driver, quickstart):
    open_page(driver, quickstart["html"])
    active = "return [...document.querySelectorAll('#toc .toc-stages a.active')].map(a => a.hash)"
    assert js(driver, active) == ["#overview"]
    ids = [a.get_attribute("hash") for a in driver.find_elements("css selector", "#toc .toc-stages a")]
    for href in ids[1:]:
        js(driver, "document.getElementById(arguments[0]).scrollIntoView(); window.scrollBy(0, 1)", href[1:])
        at_end = js(driver, "return window.scrollY + innerHeight >= document.documentElement.scrollHeight - 2")
        if at_end:  # sections at the very end cannot reach the top of the window; the last reached one is marked
            break
        assert wait_for(lambda: js(driver, active) == [href], message=f"{href} marked while scrolling")
    js(driver, "window.scrollTo(0, 0)")
    assert wait_for(lambda: js(driver, active) == ["#overview"])


def test_lightbox_opens_steps_with_arrows_and_closes_with_escape(driver, quickstart):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, quickstart["html"])
    zooms = driver.find_elements("css selector", "figure.fig .zoom")
    assert zooms
    total = len(zooms)
    box = driver.find_element("id", "lightbox")
    state = """const b = document.getElementById('lightbox'), im = b.querySelector('img');
               return {open: b.open, width: im.complete ? im.naturalWidth : 0, count: b.querySelector('.lb-count').textContent,
                       caption: b.querySelector('figcaption').textContent, alt: im.alt,
                       focus: document.activeElement === arguments[0], shown: b.getBoundingClientRect().width};"""
    assert js(driver, state, zooms[0])["open"] is False
    zooms[0].click()
    opened = wait_for(lambda: (s := js(driver, state, zooms[0]))["width"] and s, message="the lightbox picture")
    assert opened["open"] and opened["count"] == f"1 / {total}" and opened["caption"] and opened["alt"]
    assert opened["shown"] >= DESKTOP[0] * 0.9  # large: the whole window
    box.send_keys(Keys.ARROW_RIGHT)
    assert wait_for(lambda: js(driver, state, zooms[0])["count"] == f"{2 if total > 1 else 1} / {total}")
    box.send_keys(Keys.ARROW_LEFT)
    assert wait_for(lambda: js(driver, state, zooms[0])["count"] == f"1 / {total}")
    box.send_keys(Keys.ESCAPE)
    closed = wait_for(lambda: (s := js(driver, state, zooms[0])) and not s["open"] and s, message="closing")
    assert closed["focus"], "focus goes back to the figure that opened the lightbox"
    js(driver, "arguments[0].scrollIntoView({block: 'center'})", zooms[0])
    js(driver, "arguments[0].focus()", zooms[0])
    zooms[0].send_keys(Keys.ENTER)  # from the keyboard too
    assert wait_for(lambda: js(driver, state, zooms[0])["open"], message="Enter to open")
    assert js(driver, "return document.activeElement.className") == "lb-close"
    box.send_keys(Keys.ESCAPE)
    assert wait_for(lambda: not js(driver, state, zooms[0])["open"])
    zooms[-1].click()  # the last figure opens too, and the close button closes
    assert wait_for(lambda: js(driver, state, zooms[-1])["count"] == f"{total} / {total}")
    driver.find_element("css selector", "#lightbox .lb-close").click()
    assert wait_for(lambda: not js(driver, state, zooms[-1])["open"])
    overlays = driver.find_elements("css selector", "figure.fig .stack[class*=' u']")  # a map over a picture
    if overlays:  # an overlay opens large with its picture beneath, sized to the picture's aspect ratio
        js(driver, "arguments[0].scrollIntoView({block: 'center'})", overlays[0])
        overlays[0].click()
        big = wait_for(lambda: js(driver, """const b = document.getElementById('lightbox'), s = b.querySelector('.lb-stack');
            const r = s.getBoundingClientRect(), im = s.querySelector('img'), top = arguments[0].querySelector('img');
            return b.open && im.complete && im.naturalWidth ? {under: getComputedStyle(s).backgroundImage,
                same: getComputedStyle(arguments[0]).backgroundImage, opacity: +getComputedStyle(s, '::after').opacity,
                map: getComputedStyle(s, '::after').backgroundImage,
                same_map: getComputedStyle(arguments[0], '::after').backgroundImage,
                ratio: r.width / r.height, own: top.width / top.height, height: r.height, room: innerHeight} : null;""",
            overlays[0]), message="the overlay in the lightbox")
        assert big["under"].startswith('url("data:image/png') and big["under"] == big["same"], big
        assert big["map"].startswith('url("data:image/png') and big["map"] == big["same_map"], big
        assert 0 < big["opacity"] < 1 and abs(big["ratio"] - big["own"]) < 0.02 and big["height"] > big["room"] / 2, big
        box.send_keys(Keys.ESCAPE)
        assert wait_for(lambda: not js(driver, state, overlays[0])["open"])
    assert_offline_and_clean(page_events(driver))  # no script error, no request while browsing the figures


def test_summary_table_sorts_by_a_column_and_filters_by_name_or_type(driver, quickstart):
    open_page(driver, quickstart["html"])
    tables = driver.find_elements("css selector", "table.sortable")
    assert tables, "the summary table is sortable"
    column = """const t = arguments[0], c = arguments[1];
                return [...t.tBodies[0].rows].map(r => r.cells[c].dataset.sort !== undefined ? +r.cells[c].dataset.sort
                                                                                     : r.cells[c].textContent.trim());"""
    for table in tables:
        heads = table.find_elements("css selector", "thead th")
        numeric = [i for i, th in enumerate(heads) if "num" in th.get_attribute("class").split()]
        col = numeric[0] if numeric else 0
        original = js(driver, column, table, col)
        button = heads[col].find_element("css selector", "button.sort")
        button.click()
        assert heads[col].get_attribute("aria-sort") == "ascending"
        assert js(driver, column, table, col) == sorted(original)
        button.click()
        assert heads[col].get_attribute("aria-sort") == "descending"
        assert js(driver, column, table, col) == sorted(original, reverse=True)
        button.click()
        assert heads[col].get_attribute("aria-sort") is None
        assert js(driver, column, table, col) == original
    folds = driver.find_elements("css selector", "tr[data-name]:not([data-name='']) button.fold")
    assert folds, "the summary folds its nested layers"
    fold = folds[0]
    layer = js(driver, "return arguments[0].closest('tr').dataset.name", fold)
    hidden = "return [...document.querySelectorAll('tr[data-name]')].filter(r => r.hidden).map(r => r.dataset.name).sort()"
    children = sorted(js(driver, "return [...document.querySelectorAll('tr[data-name]')].map(r => r.dataset.name)"
                                 ".filter(n => n.startsWith(arguments[0] + '.'))", layer))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", fold)
    for sort_first in (False, True):  # folding works in the original order and sorted
        if sort_first:
            heads = tables[0].find_elements("css selector", "thead th button.sort")
            driver.execute_script("arguments[0].click()", heads[-1])
        driver.execute_script("arguments[0].click()", fold)
        assert fold.get_attribute("aria-expanded") == "false" and js(driver, hidden) == children and children
        driver.execute_script("arguments[0].click()", fold)
        assert fold.get_attribute("aria-expanded") == "true" and js(driver, hidden) == []
    box = driver.find_element("css selector", "input.filter")
    table = driver.find_element("id", box.get_attribute("data-table"))
    rows = ("return [...arguments[0].tBodies[0].rows].filter(r => r.offsetParent !== null)"
            ".map(r => r.cells[0].textContent + ' ' + r.cells[1].textContent)")
    everything = js(driver, rows, table)
    wanted = js(driver, "const rows = arguments[0].tBodies[0].rows; return rows[rows.length - 1].cells[1].textContent.trim()",
                table)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    box.send_keys(wanted.lower())
    shown = js(driver, rows, table)
    assert shown and all(wanted.lower() in r.lower() for r in shown) and len(shown) < len(everything)
    box.clear()
    box.send_keys(" ")  # an empty query shows every row again
    assert js(driver, rows, table) == everything
    assert_offline_and_clean(page_events(driver))


def test_sections_fold_and_unfold(driver, quickstart):
    open_page(driver, quickstart["html"])
    for section in driver.find_elements("css selector", "section.stage"):
        summary = section.find_element("css selector", ":scope > details > summary")
        tall = section.size["height"]
        driver.execute_script("arguments[0].scrollIntoView()", summary)
        summary.click()
        assert section.find_element("css selector", "details").get_attribute("open") is None
        assert section.size["height"] < tall
        summary.click()
        assert section.find_element("css selector", "details").get_attribute("open") is not None


def test_the_method_picker_hides_and_shows_a_methods_figures_and_only_them(driver, quickstart):
    """Each section with several methods has a picker, grouped by family; unticking a method hides every figure of
    it in that section (CSS only, so with JavaScript off too) and nothing else; ticking it shows them again."""
    for scripts in (True, False):
        open_page(driver, quickstart["html"], scripts=scripts)
        for section in ("cam", "gradients"):
            picker = driver.find_element("css selector", f"#{section} details.picker")
            boxes = picker.find_elements("css selector", "input[type=checkbox]")
            assert len(boxes) >= 2 and all(b.is_selected() for b in boxes)
            assert picker.find_elements("css selector", "fieldset legend")  # the groups
            assert js(driver, "return getComputedStyle(arguments[0]).display", picker.find_element(
                "css selector", "fieldset")) == "flex"  # its look (picker.css) came with it
            method = boxes[0].get_attribute("id").removeprefix(f"pick-{section}-")
            shown = f"#{section} .m-{method}"
            others = f"#{section} [class*=' m-']:not(.m-{method}), #{section} [class^='m-']:not(.m-{method})"

            def visible(selector):
                return [e.is_displayed() for e in driver.find_elements("css selector", selector)]

            assert visible(shown) and all(visible(shown))
            before = visible(others)
            assert before and all(before)
            picker.find_element("css selector", "summary").click()
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", boxes[0])
            boxes[0].click()
            assert not any(visible(shown))
            assert visible(others) == before  # the other methods stay
            boxes[0].click()
            assert all(visible(shown))


def test_phone_width_has_no_sideways_scrolling_and_desktop_and_phone_screenshots_are_kept(driver, quickstart):
    open_page(driver, quickstart["html"])
    assert js(driver, "return getComputedStyle(document.getElementById('toc')).position") == "sticky"
    assert save_screenshot(driver, "report-desktop.png").stat().st_size > 10_000
    open_page(driver, quickstart["html"], width=PHONE[0], height=PHONE[1])
    layout = js(driver, """const d = document.documentElement;
        return {scroll: d.scrollWidth, width: window.innerWidth, toc: getComputedStyle(document.getElementById('toc')).position,
                widest: Math.max(...[...document.querySelectorAll('main *')].map(e => e.getBoundingClientRect().right))};""")
    assert layout["width"] == PHONE[0] and layout["toc"] == "static"
    assert layout["scroll"] <= layout["width"], layout
    assert save_screenshot(driver, "report-phone.png").stat().st_size > 5_000


def _contrast(c1, c2) -> float:
    def lum(rgb):
        chans = [v / 255 for v in rgb[:3]]
        chans = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in chans]
        return 0.2126 * chans[0] + 0.7152 * chans[1] + 0.0722 * chans[2]
    hi, lo = sorted((lum(c1), lum(c2)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


TEXT_COLOURS = """
const parse = s => (s.match(/[\\d.]+/g) || []).map(Number);
const out = [];
for (const el of document.querySelectorAll('body *')) {
  if (!el.checkVisibility || !el.checkVisibility({visibilityProperty: true, opacityProperty: true})) continue;
  if (!el.closest('#toc, main')) continue;
  if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  const style = getComputedStyle(el);
  const fg = parse(style.color);
  const layers = [];
  for (let p = el; p; p = p.parentElement) {
    const bg = parse(getComputedStyle(p).backgroundColor);
    if (bg.length === 4 && bg[3] === 0) continue;
    layers.push(bg);
    if (bg.length === 3 || bg[3] === 1) break;
  }
  out.push({tag: el.tagName, text: el.textContent.trim().slice(0, 30), fg, layers,
            size: parseFloat(style.fontSize), bold: +style.fontWeight >= 700});
}
return out;
"""


def _flatten(layers: list[list[float]]) -> list[float]:
    """Composite the background layers (innermost first) over white."""
    colour = [255.0, 255.0, 255.0]
    for layer in reversed(layers):
        alpha = layer[3] if len(layer) == 4 else 1.0
        colour = [alpha * v + (1 - alpha) * c for v, c in zip(layer[:3], colour)]
    return colour


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_visible_text_passes_wcag_aa_contrast_in_both_themes(driver, quickstart, scheme):
    open_page(driver, quickstart["html"], scheme=scheme)
    body_colour = js(driver, "return getComputedStyle(document.body).backgroundColor")
    background = _flatten([[float(v) for v in re.findall(r"[\d.]+", body_colour)]])
    assert (sum(background) / 3 < 60) == (scheme == "dark")  # the theme follows the system
    texts = js(driver, TEXT_COLOURS)
    assert len(texts) > 20
    failures = []
    for t in texts:
        bg = _flatten(t["layers"])
        fg = t["fg"][:3] if len(t["fg"]) == 3 or t["fg"][3] == 1 else _flatten([t["fg"], [*bg, 1]])
        large = t["size"] >= 24 or (t["bold"] and t["size"] >= 18.66)
        ratio = _contrast(fg, bg)
        if ratio < (3.0 if large else 4.5):
            failures.append((round(ratio, 2), t["tag"], t["text"], fg, bg))
    assert failures == []
    if scheme == "dark":
        save_screenshot(driver, "report-dark.png")


def test_headings_in_order_tables_with_header_cells(driver, quickstart):
    open_page(driver, quickstart["html"])
    levels = js(driver, "return [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1])")
    assert levels[0] == 1 and levels.count(1) == 1
    for before, after in zip(levels, levels[1:]):
        assert after <= before + 1, levels
    tables = js(driver, """return [...document.querySelectorAll('table')].map(t => ({
        th: t.querySelectorAll('th').length, thead: t.tHead !== null,
        unscoped: [...t.querySelectorAll('thead th')].filter(th => th.getAttribute('scope') !== 'col').length}))""")
    assert tables and all(t["th"] and t["thead"] and t["unscoped"] == 0 for t in tables), tables


def test_print_hides_the_sidebar_opens_every_section_and_keeps_figures_whole(driver, quickstart):
    open_page(driver, quickstart["html"], media="print")
    style = js(driver, """const closed = document.querySelector('details:not([open]) pre, details:not([open]) table');
        return {toc: getComputedStyle(document.getElementById('toc')).display,
                figure: getComputedStyle(document.querySelector('figure.fig')).breakInside,
                closedShown: closed === null || closed.getClientRects().length > 0,
                bg: getComputedStyle(document.body).backgroundColor};""")
    assert style == {"toc": "none", "figure": "avoid", "closedShown": True, "bg": "rgb(255, 255, 255)"}
    pdf = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": False, "preferCSSPageSize": True})
    import base64

    data = base64.b64decode(pdf["data"])
    assert data.startswith(b"%PDF")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.pdf").write_bytes(data)


def test_fully_readable_with_javascript_off(driver, quickstart):
    events = open_page(driver, quickstart["html"], scripts=False)
    assert_offline_and_clean(events)
    state = js(driver, """return {
        js: document.documentElement.classList.contains('js'),
        closedStages: document.querySelectorAll('section.stage > details:not([open])').length,
        hiddenRows: [...document.querySelectorAll('tbody tr')]
            .filter(r => r.offsetParent === null && !r.closest('details:not([open])')).length,
        controls: [...document.querySelectorAll('.table-tools, button.fold')].filter(e => e.offsetParent !== null).length,
        lightbox: document.getElementById('lightbox').getClientRects().length,
        broken: [...document.images].filter(i => !i.closest('#lightbox') && i.complete && i.naturalWidth === 0).length};""")
    assert state == {"js": False, "closedStages": 0, "hiddenRows": 0, "controls": 0, "lightbox": 0, "broken": 0}


def test_static_site_mode_has_the_same_content_and_stays_inside_its_folder(driver, quickstart):
    def content():
        return js(driver, """return {sections: [...document.querySelectorAll('main section')].map(s => s.id),
            alts: [...document.images].filter(i => !i.closest('#lightbox')).map(i => i.alt.replace(/[\d.]+/g, '#')),
            toc: [...document.querySelectorAll('#toc a')].map(a => a.hash),
            text: document.querySelector('main').innerText.replace(/\\d{4}-\\d\\d-\\d\\dT[\\d:+]+|[\\d.]+/g, '#')}""")

    open_page(driver, quickstart["html"])
    one_file = content()
    events = open_page(driver, quickstart["site"])
    assert_offline_and_clean(events)
    site = content()
    assert site["sections"] == one_file["sections"] and site["alts"] == one_file["alts"]
    assert site["toc"] == one_file["toc"]
    images = decode_all(driver)
    assert_every_picture_decodes(images, quickstart["json"])
    folder = quickstart["site"].parent.resolve().as_uri() + "/assets/"
    srcs = js(driver, "return [...document.images].filter(i => i.getAttribute('src')).map(i => i.src)")
    assert srcs and all(s.startswith(folder) for s in srcs), srcs[:3]
    assert all(u.startswith(quickstart["site"].parent.resolve().as_uri()) for u in page_events(driver)["requests"])


# ---------------------------------------------------------------------------------------------------------------
# bad input: a failed stage and hostile names


HOSTILE_NET = textwrap.dedent(f'''
    import torch
    from torch import nn

    def build(num_classes=3):
        torch.manual_seed(0)
        net = nn.Sequential()
        net.add_module({HOSTILE!r}, nn.Conv2d(3, 4, 3, padding=1))
        net.add_module("relu", nn.ReLU())
        net.add_module("pool", nn.AdaptiveAvgPool2d(1))
        net.add_module("flat", nn.Flatten())
        net.add_module("head", nn.Linear(4, num_classes))
        return net
''')


def test_a_failed_stage_and_hostile_names_render_as_text_and_run_no_script(driver, project, monkeypatch):
    import reportgen.stages.training as training

    def boom(ctx, cfg):
        raise RuntimeError(f"cannot read {HOSTILE}")

    monkeypatch.setitem(STAGES, "training", dataclasses.replace(training.SPEC, run=boom))
    (project.root / "hostilenet.py").write_text(HOSTILE_NET)
    make_image(project.root / "images" / f"{HOSTILE}.png", seed=3)
    (project.root / "labels.txt").write_text(f"cat\n{HOSTILE}\ndog\n")
    config = project.base()
    config["title"] = f"Report {HOSTILE}"
    config["model"].update(factory="hostilenet:build", labels="labels.txt")
    config["analyses"]["training"] = {"logs": ["missing.csv"]}
    result = build(project.write(config), project.root / "out", "-q")
    assert result.exit_code == 1, result.output
    events = open_page(driver, project.root / "out" / "report.html")
    assert_offline_and_clean(events)
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    page = js(driver, """return {
        injected: document.querySelectorAll('img[src="x"], [onerror]').length,
        h1: document.querySelector('h1').textContent,
        card: [...document.querySelectorAll('#inputs h3')].map(h => h.textContent),
        toc: [...document.querySelectorAll('#toc .toc-images a')].map(a => a.textContent),
        layers: [...document.querySelectorAll('#summary-table tbody th')].map(th => th.textContent),
        failed: [...document.querySelectorAll('section.stage.failed')].map(s => s.id),
        error: document.querySelector('#training .stage-error') && document.querySelector('#training .stage-error').textContent,
        badge: document.querySelector('#toc a[href="#training"]').parentElement.textContent,
        labels: document.querySelector('#inputs').textContent};""")
    assert page["injected"] == 0
    assert page["h1"] == f"Report {HOSTILE}"
    assert HOSTILE in page["card"] and HOSTILE in page["toc"]
    assert HOSTILE in page["layers"]
    assert HOSTILE in page["labels"]
    assert page["failed"] == ["training"]
    assert "This stage failed" in page["error"] and f"RuntimeError: cannot read {HOSTILE}" in page["error"]
    assert "failed" in page["badge"]
    images = decode_all(driver)
    assert all(img["width"] > 0 for img in images["inline"])
    assert any(HOSTILE in img["alt"] for img in images["inline"])
    summary_ok = yaml.safe_load((project.root / "out" / "report.json").read_text())["stages"][0]
    assert summary_ok["name"] == "summary" and summary_ok["status"] == "ok"
