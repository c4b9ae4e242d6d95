"""The table of every image: its payload (figures/images.py) and the page that draws it, opened in Chromium.

The browser tests render a report whose table has 2,000 rows (ImageNet labels, three detail images with cards,
one hostile name) through render.render_report, write it to a file and drive it from file://."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torchvision

from reportgen import render
from reportgen.figures.images import COLUMNS, anchor, table
from tests.test_browser import assert_offline_and_clean, driver, js, open_page  # noqa: F401 (driver: a fixture)

HOSTILE = "</script><img src=x onerror=alert(1)>"
N = 2000
DETAIL = {3: "confident mistake", 10: "least confident correct", 1500: "class sample"}
HOSTILE_AT = 10  # a detail image with a hostile name


def _imagenet_labels() -> list[str]:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    return list(weights.meta["categories"])  # in the package: nothing is downloaded


def _record(name, truth, top1, probability, labels, detail=None) -> dict:
    other = (top1 + 1) % len(labels)
    return {"name": name, "source": f"val/{name}",
            "truth": None if truth is None else {"index": truth, "label": labels[truth]},
            "top_k": [{"index": top1, "label": labels[top1], "probability": probability},
                      {"index": other, "label": labels[other], "probability": (1 - probability) / 2}],
            "detail": detail}


def _validation_records(labels: list[str], n: int = N) -> list[dict]:
    """A validation set: names as in ImageNet's, about a fifth of them mistakes, a few detail images."""
    rng = np.random.default_rng(0)
    truths = rng.integers(0, len(labels), n)
    wrong = rng.random(n) < 0.2
    tops = np.where(wrong, (truths + rng.integers(1, len(labels), n)) % len(labels), truths)
    probabilities = rng.uniform(0.05, 1.0, n)
    return [_record(HOSTILE if i == HOSTILE_AT else f"ILSVRC2012_val_{i + 1:08d}.JPEG", int(truths[i]), int(tops[i]),
                    float(probabilities[i]), labels, DETAIL.get(i)) for i in range(n)]


def _render(records: list[dict] | None, details: list[dict]) -> str:
    """A report's HTML with a card for each of `details` (records) and the table of `records`."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    config = SimpleNamespace(title="Validation", output=SimpleNamespace(self_contained=True))
    ctx = SimpleNamespace(images=[SimpleNamespace(name=r["name"], source=r["source"], display=pixels) for r in details],
                          info=SimpleNamespace(notes=[]))
    data = {"created": "2026-01-01T00:00:00+00:00",
            "versions": {"reportgen": "0.0", "torch": "t", "torchvision": "tv", "python": "3"},
            "model": {"description": "net", "num_classes": 1000, "input_size": [3, 24, 32], "device": "cpu"},
            "config": {"title": "Validation"},
            "images": [{"name": r["name"], "source": r["source"], "top_k": r["top_k"], "truth": r["truth"]}
                       for r in details],
            "stages": []}
    page = render.render_report(config, ctx, [], data, records=records)
    assert page.failed == {}
    return page.html


def _payload(html: str) -> dict:
    found = re.findall(r'<script type="application/json" id="images-data">(.*?)</script>', html, re.S)
    assert len(found) == 1
    return json.loads(found[0])


# ---------------------------------------------------------------------------------------------------------------
# the payload


def test_no_records_no_table():
    assert table([]) is None
    assert 'id="images-data"' not in _render([], [])


def test_rows_hold_names_label_positions_confidence_and_correctness():
    labels = ["cat", "dog", "crane", "crane"]  # ImageNet has two classes called "crane": correctness is by index
    records = [_record("a", 0, 0, 0.91234, labels), _record("b", 0, 1, 0.6, labels, "confident mistake"),
               _record("c", 2, 3, 0.5, labels), _record("d", None, 1, 0.7, labels)]
    out = table(records)
    assert {k: out[k] for k in ("count", "labelled", "mistakes")} == {"count": 4, "labelled": True, "mistakes": 2}
    payload = json.loads(out["json"])
    assert payload["columns"] == COLUMNS == ["name", "truth", "prediction", "confidence", "correct", "anchor", "detail"]
    assert payload["labelled"] is True and payload["labels"] == ["cat", "dog", "crane"]  # each text once
    assert payload["rows"] == [["a", 0, 0, 0.9123, 1], ["b", 0, 1, 0.6, 0, anchor("b"), "confident mistake"],
                               ["c", 2, 2, 0.5, 0], ["d", None, 1, 0.7, None]]
    assert ", " not in out["json"] and ": " not in out["json"]  # compact


def test_without_ground_truth_nothing_is_right_or_wrong():
    labels = ["cat", "dog"]
    out = table([_record("a", None, 1, 0.7, labels), _record("b", None, 0, 0.6, labels)])
    assert out["labelled"] is False and out["mistakes"] == 0
    assert json.loads(out["json"])["rows"] == [["a", None, 0, 0.7, None], ["b", None, 1, 0.6, None]]
    html = _render(None, [_record("a", None, 1, 0.7, labels)])
    assert "images-mistakes" not in html and ">Truth<" not in html  # no truth column, no mistakes box


def test_hostile_names_and_labels_stay_data():
    labels = [HOSTILE, "<!-- & -->"]
    out = table([_record(HOSTILE, 0, 1, 0.5, labels, "class sample")])
    assert "<" not in out["json"] and ">" not in out["json"] and "&" not in out["json"]
    payload = json.loads(out["json"])
    assert payload["rows"][0][0] == HOSTILE and payload["labels"] == [HOSTILE, "<!-- & -->"]
    html = _render([_record(HOSTILE, 0, 1, 0.5, labels, "class sample")], [])
    assert _payload(html)["rows"][0][0] == HOSTILE
    assert "<img src=x" not in html


def test_anchor_is_an_id_unique_per_name_and_the_cards_and_sidebar_use_it():
    names = ["cat.jpg", "cat jpg", "cat/jpg", "cat-jpg", HOSTILE, "ü", ""]
    ids = [anchor(n) for n in names]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"image-[A-Za-z0-9_-]+", i) for i in ids), ids
    assert anchor("cat.jpg") == anchor("cat.jpg") and anchor("cat.jpg").startswith("image-cat-jpg-")
    labels = ["cat", "dog"]
    details = [_record("cat.jpg", 0, 0, 0.9, labels), _record(HOSTILE, 1, 0, 0.8, labels)]
    html = _render(None, details)  # without records: each input is a row that links its card
    for r in details:
        assert f'<article id="{anchor(r["name"])}" class="card"' in html
        assert f'<a href="#{anchor(r["name"])}">' in html
    assert [row[5:] for row in _payload(html)["rows"]] == [[anchor(r["name"]), "all images"] for r in details]


def test_two_thousand_rows_stay_small():
    """2,000 ImageNet rows: about 40 bytes a row plus the labels they use; the page grows by what the JSON weighs
    (the HTML holds no row). Bound: 60 bytes a row all in, i.e. 120 kB (the brief's ceiling is 500 kB)."""
    records = _validation_records(_imagenet_labels())
    text = table(records)["json"]
    details = [records[i] for i in DETAIL]
    grown = len(_render(records, details).encode()) - len(_render(details, details).encode())
    assert len(text.encode()) < 60 * N
    assert grown < 60 * N


# ---------------------------------------------------------------------------------------------------------------
# in the browser


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    records = _validation_records(_imagenet_labels())
    path = tmp_path_factory.mktemp("images-table") / "report.html"
    path.write_text(_render(records, [records[i] for i in DETAIL]), encoding="utf-8")
    return {"path": path, "records": records}


ROWS = """return [...document.querySelectorAll('#images-table tbody tr')].filter(tr => tr.offsetParent !== null)
    .map(tr => [...tr.cells].map(td => td.getAttribute('data-sort') ?? td.textContent))"""


def _shown(driver) -> list[list[str]]:
    return js(driver, ROWS)


def test_every_image_is_a_row_and_nothing_is_blocked(driver, page):
    events = open_page(driver, page["path"])
    assert_offline_and_clean(events)  # the JSON block needs no CSP hash: it is never executed
    rows = _shown(driver)
    assert len(rows) == N
    assert [r[0] for r in rows] == [r["name"] for r in page["records"]]
    first = page["records"][0]
    assert rows[0][1:] == [first["truth"]["label"], first["top_k"][0]["label"],
                           str(round(first["top_k"][0]["probability"], 4)), str(int(first["truth"]["index"] ==
                                                                                   first["top_k"][0]["index"]))]
    assert js(driver, "return document.querySelectorAll('img[src=x], [onerror]').length") == 0
    assert js(driver, "return document.querySelector('.needs-js').offsetParent") is None
    caption = js(driver, "return document.querySelector('#images-table caption').textContent")
    mistakes = sum(r["truth"]["index"] != r["top_k"][0]["index"] for r in page["records"])
    assert caption == f"2,000 images, {mistakes:,} mistakes"


def test_sorting_by_confidence_orders_rows_from_the_keyboard(driver, page):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, page["path"])
    button = driver.find_element("css selector", "#images-table thead th:nth-child(4) button.sort")
    th = driver.find_element("css selector", "#images-table thead th:nth-child(4)")
    button.send_keys(Keys.ENTER)
    assert th.get_attribute("aria-sort") == "ascending"
    confidences = [float(r[3]) for r in _shown(driver)]
    assert len(confidences) == N and confidences == sorted(confidences)
    button.send_keys(Keys.SPACE)
    assert th.get_attribute("aria-sort") == "descending"
    assert [float(r[3]) for r in _shown(driver)] == sorted(confidences, reverse=True)
    correct = driver.find_element("css selector", "#images-table thead th:nth-child(5) button.sort")
    correct.click()
    assert [r[4] for r in _shown(driver)] == sorted(r[4] for r in _shown(driver))
    assert th.get_attribute("aria-sort") is None


def test_filter_and_mistakes_only_narrow_the_rows(driver, page):
    open_page(driver, page["path"])
    records = page["records"]
    query = "Tabby"
    hit = lambda r: any(query.lower() in t.lower() for t in (r["name"], r["truth"]["label"],  # noqa: E731
                                                               r["top_k"][0]["label"]))
    mistake = lambda r: r["truth"]["index"] != r["top_k"][0]["index"]  # noqa: E731
    box = driver.find_element("css selector", "input.filter[data-table=images-table]")
    box.send_keys(query)
    shown = [r[0] for r in _shown(driver)]
    assert shown == [r["name"] for r in records if hit(r)] and 0 < len(shown) < N
    driver.find_element("id", "images-mistakes").click()
    shown = _shown(driver)
    assert [r[0] for r in shown] == [r["name"] for r in records if hit(r) and mistake(r)] and shown
    assert all(r[4] == "0" for r in shown)
    assert js(driver, "return document.querySelector('.images-table .filter-count').textContent") == \
        f"{len(shown)} of {N} rows"
    box.clear()
    box.send_keys("val_00000004")  # a name
    assert [r[0] for r in _shown(driver)] == [records[3]["name"]] * mistake(records[3])  # mistakes only still ticked
    driver.find_element("id", "images-mistakes").click()
    box.clear()
    box.send_keys(" ")  # clear() fires no input event; a blank query shows every row
    assert len(_shown(driver)) == N


def page_height(driver) -> int:
    return js(driver, "return document.documentElement.scrollHeight")


def test_detail_rows_link_to_their_cards(driver, page):
    open_page(driver, page["path"])
    links = js(driver, """return [...document.querySelectorAll('#images-table tbody a')].map(a => ({
        name: a.textContent, title: a.title, hash: a.hash,
        target: (document.getElementById(a.hash.slice(1)) || {}).className}))""")
    expected = [(page["records"][i]["name"], detail) for i, detail in sorted(DETAIL.items())]
    assert [(link["name"], link["title"]) for link in links] == expected
    assert all(link["target"] == "card" for link in links), links
    driver.find_element("css selector", f'#images-table a[href="#{anchor(HOSTILE)}"]').click()
    assert js(driver, "return location.hash") == "#" + anchor(HOSTILE)
    # the 2,000 rows scroll in the table's own box: nothing in them (a visually hidden label) makes the page longer
    assert page_height(driver) < 3 * js(driver, "return innerHeight")
    # the card comes to the top, or as near as the page's end allows (a short page: it ends below the cards)
    landed = js(driver, """const top = document.getElementById(location.hash.slice(1)).getBoundingClientRect().top;
        const end = scrollY + innerHeight >= document.documentElement.scrollHeight - 1;
        return {top, end, scrolled: scrollY > 0, inner: innerHeight};""")
    assert landed["scrolled"] and 0 <= landed["top"] < landed["inner"] / 2 and (landed["top"] < 100 or landed["end"]), landed


def test_without_javascript_a_note_says_where_the_records_are(driver, page):
    events = open_page(driver, page["path"], scripts=False)
    assert_offline_and_clean(events)
    state = js(driver, """return {note: document.querySelector('.needs-js').offsetParent !== null,
        text: document.querySelector('.needs-js').textContent,
        table: document.getElementById('images-table').offsetParent !== null,
        tools: document.querySelector('.images-table .table-tools').offsetParent !== null}""")
    assert state["note"] and not state["table"] and not state["tools"]
    assert "2,000 images needs JavaScript" in state["text"] and "images.jsonl" in state["text"]
