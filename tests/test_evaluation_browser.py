"""The evaluation section in headless Chromium (the harness of tests/test_browser.py): the ranking table sorts,
the curves, the cascade and the pointing-game figures are drawn, and the page logs no error and asks for nothing
outside itself. A screenshot of the section goes to test-artifacts/."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from reportgen.demo import shapes
from tests.test_browser import (ROOT, TEXT_COLOURS, _contrast, _flatten, assert_offline_and_clean, build,  # noqa: F401
                                decode_all, driver, js, open_page, page_events, save_screenshot)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Four shapes with their boxes in a manifest, Grad-CAM, LayerCAM, saliency and guided backprop, scored."""
    folder = tmp_path_factory.mktemp("evaluation-browser")
    batch = shapes.generate(4, seed=11)
    rows = ["path,label,x0,y0,x1,y1"]
    for i, (pixels, label, box) in enumerate(zip(batch.images, batch.labels, batch.boxes)):
        Image.fromarray(pixels).save(folder / f"shape{i}.png")
        rows.append(f"shape{i}.png,{int(label)}," + ",".join(str(int(v)) for v in box))
    (folder / "set.csv").write_text("\n".join(rows) + "\n")
    shipped = ROOT / "example_configs" / "shapes"
    config = {
        "title": "Evaluation in the browser",
        "model": {"source": "module", "factory": "reportgen.demo.shapes:build_model", "kwargs": {"num_classes": 5},
                  "checkpoint": str(shipped / "model.pt"), "input_size": [3, 64, 64],
                  "labels": str(shipped / "labels.txt"), "device": "cpu"},
        "inputs": {"images": ["set.csv"], "preprocess": {"normalize": {"mean": shapes.MEAN, "std": shapes.STD}}},
        "analyses": {"cam": {"methods": ["gradcam", "layercam"], "target_layers": ["features.3"]},
                     "gradients": {"methods": ["saliency", "guided_backprop"]},
                     "evaluation": {"step": 256, "sanity": {"images": 2}}},
        "output": {"dir": "out"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = build(path, folder / "out", "-q")
    assert done.exit_code == 0, done.output
    return {"html": folder / "out" / "report.html",
            "json": json.loads((folder / "out" / "report.json").read_text())}


def test_the_ranking_table_sorts_and_every_figure_is_drawn(driver, report):  # noqa: F811
    events = open_page(driver, report["html"])
    assert_offline_and_clean(events)
    table = driver.find_element("id", "evaluation-table")
    heads = table.find_elements("css selector", "thead th")
    labels = [h.text for h in heads]
    col = next(i for i, text in enumerate(labels) if text.startswith("Deletion AUC"))
    values = """return [...arguments[0].tBodies[0].rows].map(r => +r.cells[arguments[1]].dataset.sort);"""
    names = """return [...arguments[0].tBodies[0].rows].map(r => r.cells[0].textContent.trim());"""
    original, original_names = js(driver, values, table, col), js(driver, names, table)
    assert len(original) == 5  # 4 methods and the centre baseline
    button = heads[col].find_element("css selector", "button.sort")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    assert heads[col].get_attribute("aria-sort") == "ascending"
    assert js(driver, values, table, col) == sorted(original)
    best = js(driver, "return arguments[0].tBodies[0].rows[0].cells[arguments[1]].textContent", table, col)
    assert best.startswith("★")  # deletion: lower is better, so the best row comes first
    button.click()
    assert js(driver, values, table, col) == sorted(original, reverse=True)
    button.click()
    assert js(driver, names, table) == original_names

    pictures = decode_all(driver)
    drawn = {img["alt"]: img for img in pictures["inline"]}
    for start in ("Mean deletion and insertion curves", "Sanity check: mean Spearman", "Maps of image",
                  "Pointing game on shape0"):
        found = [img for alt, img in drawn.items() if alt.startswith(start)]
        assert found and all(img["error"] is None and img["width"] > 100 for img in found), start
    section = driver.find_element("id", "evaluation")
    driver.execute_script("arguments[0].scrollIntoView()", section)
    save_screenshot(driver, "evaluation-section.png")
    assert_offline_and_clean(page_events(driver))
    ev = report["json"]["evaluation"]
    assert ev["images"] == 4 and len(ev["curves"]["rows"]) == 5 and ev["sanity"]["images"] == ["shape0", "shape1"]
    assert np.isfinite([r["scores"]["pointing_game"]["mean"] for r in ev["rows"]]).all()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_section_passes_wcag_aa_contrast(driver, report, scheme):  # noqa: F811
    open_page(driver, report["html"], scheme=scheme)
    texts = js(driver, TEXT_COLOURS)  # the whole page, the evaluation section included
    assert any(t["text"].startswith("Method ranking") for t in texts)
    failures = []
    for t in texts:
        bg = _flatten(t["layers"])
        fg = t["fg"][:3] if len(t["fg"]) == 3 or t["fg"][3] == 1 else _flatten([t["fg"], [*bg, 1]])
        large = t["size"] >= 24 or (t["bold"] and t["size"] >= 18.66)
        if _contrast(fg, bg) < (3.0 if large else 4.5):
            failures.append((round(_contrast(fg, bg), 2), t["tag"], t["text"]))
    assert failures == []
