"""Every method at once, on the shipped shapes model: one build of 40 generated scenes with their boxes
(`shapes.generate(40, 2024)`), every CAM and gradient method of the registry that applies to a classifier, the
evaluation's deletion, insertion, confidence change and localisation over all 40, and the page checked in
Chromium at a phone's and a desktop's width (no sideways scrolling, every picture decodes, the method picker lists
every method in its group).

The ranking it scores is written to `test-artifacts/ranking-40-shapes.md` (every row with its 95 % intervals, and
which baselines it does not beat): the table the README's and the notes' ranking comes from. Run alone with
`python -m pytest -q tests/test_every_method.py`.

Sample counts are cut so that the build takes about half a minute on one core (SS-CAM 1 noisy copy, IS-CAM 2 steps,
integrated gradients 8 steps, SmoothGrad and its kin 4 copies, DeepLiftShap 2 baselines, RISE 100 masks,
ShapleyValueSampling 2 orders of 20 superpixels, LIME 50 and KernelShap 30 samples, deletion steps of 512 pixels);
each method is otherwise at its defaults. The ranking is of these settings.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from reportgen import methods as M
from reportgen import registry
from reportgen.cli import main
from reportgen.demo import shapes
from tests.test_browser import (ARTIFACTS, ROOT, assert_every_picture_decodes, assert_offline_and_clean, decode_all,  # noqa: F401
                                driver, js, open_page)
from tests.test_layout import LAYOUT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SHAPES = ROOT / "example_configs" / "shapes"
SCENES, SEED = 40, 2024
RANKED = ("deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "top_iou")


def every(family: str) -> list[str]:
    refused = next(t for t in registry.TASKS if t.name == "classification").methods_refused
    return [m.id for m in M.BUILT_IN if m.family == family and m.id not in refused]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("every-method")
    scenes = shapes.generate(SCENES, SEED)
    (root / "images").mkdir()
    rows = ["path,label,x0,y0,x1,y1"]
    for i, (image, label, box) in enumerate(zip(scenes.images, scenes.labels, scenes.boxes)):
        Image.fromarray(image).save(root / "images" / f"scene_{i:02d}.png")
        rows.append(f"images/scene_{i:02d}.png,{shapes.CLASSES[label]}," + ",".join(map(str, box)))
    (root / "scenes.csv").write_text("\n".join(rows) + "\n")
    config = {
        "title": "Every method on 40 shapes", "seed": 0,
        "model": {"source": "module", "factory": "reportgen.demo.shapes:build_model", "kwargs": {"num_classes": 5},
                  "checkpoint": str(SHAPES / "model.pt"), "input_size": [3, 64, 64],
                  "labels": str(SHAPES / "labels.txt"), "device": "cpu"},
        "inputs": {"images": [str(root / "scenes.csv")],
                   "preprocess": {"normalize": {"mean": shapes.MEAN, "std": shapes.STD}}},
        "analyses": {
            "cam": {"methods": every("cam"), "targets": "top1", "target_layers": [shapes.CAM_LAYER],
                    "sscam_samples": 1, "iscam_steps": 2},
            "gradients": {"methods": every("gradients"), "targets": "top1", "rise_masks": 100, "slic_segments": 20,
                          "shapley_samples": 2, "steps": 8, "samples": 4, "shap_baselines": 2, "lime_samples": 50,
                          "kernel_shap_samples": 30},
            "evaluation": {"metrics": ["deletion", "insertion", "confidence_change", "localisation"],
                           "images": SCENES, "step": 512},
        },
        "report": {"detail": {"budget": 2}},
        "output": {"dir": str(root / "out"), "save_arrays": True},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = CliRunner().invoke(main, ["build", str(path), "-q"])
    assert done.exit_code == 0, done.output
    out = root / "out"
    return {"html": out / "report.html", "json": json.loads((out / "report.json").read_text()), "config": config}


def ranking_table(evaluation: dict) -> str:
    """The ranking as Markdown: a row per (method, layer) with mean [95 % interval] per column, baselines marked,
    and the baselines a row does not beat."""
    columns = [c for c in evaluation["columns"] if c["id"] in RANKED]
    head = ["method", "group"] + [f"{c['label']} ({'↑' if c['better'] == 'higher' else '↓'})" for c in columns]
    lines = ["| " + " | ".join(head + ["not better than a baseline in"]) + " |", "|" + "---|" * (len(head) + 1)]
    for row in evaluation["rows"]:
        name = M.title(row["method"]) if row["method"] in M.REGISTRY else "Centre Gaussian"
        group = M.get(row["method"]).group if row["method"] in M.REGISTRY else "Baselines"
        cells = []
        for c in columns:
            s = row["scores"].get(c["id"])
            cells.append("–" if s is None else f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")
        worse = ", ".join(c["label"] for c in columns if c["id"] in row["not_better"]) or \
            ("(a baseline)" if row["baseline"] else "–")
        lines.append(f"| {name}{' (baseline)' if row['baseline'] else ''} | {group} | " + " | ".join(cells) +
                     f" | {worse} |")
    return "\n".join(lines) + "\n"


def test_every_method_is_drawn_written_and_ranked_next_to_the_baselines(built):
    ev = built["json"]["evaluation"]
    assert ev["images"] == SCENES
    ranked = {row["method"] for row in ev["rows"]}
    wanted = set(built["config"]["analyses"]["cam"]["methods"]) | set(built["config"]["analyses"]["gradients"]["methods"])
    applicable = wanted - {m for m in wanted if m == "legrad"}  # LeGrad explains vision transformers only
    assert applicable <= ranked, sorted(applicable - ranked)
    assert {"randomcam", "baseline_centre"} <= ranked
    rows = {row["method"]: row for row in ev["rows"]}
    for method in applicable:
        scores = rows[method]["scores"]
        assert all(scores[c] is not None and np.isfinite(scores[c]["mean"]) for c in RANKED), method
    # the ranking means something: Grad-CAM points at the shape far more often than the random map does
    assert rows["gradcam"]["scores"]["pointing_game"]["mean"] > rows["randomcam"]["scores"]["pointing_game"]["mean"] + 0.3
    assert "pointing_game" not in rows["gradcam"]["not_better"]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ranking-40-shapes.md").write_text(ranking_table(ev))


def test_the_page_with_every_method_fits_phone_and_desktop_and_lists_every_method(driver, built):  # noqa: F811
    html = built["html"].read_text()
    for width in (375, 1400):
        events = open_page(driver, built["html"], width=width, height=900)
        assert_offline_and_clean(events)
        layout = js(driver, LAYOUT)
        assert layout["scroll"] <= layout["inner"] and layout["outside"] == [], layout
        assert [s for s in layout["scrolls"] if not s["table"]] == [], layout["scrolls"]
    assert_every_picture_decodes(decode_all(driver), built["json"])
    for family in ("cam", "gradients"):
        configured = built["config"]["analyses"][family]["methods"]
        boxes = re.findall(rf'id="pick-{family}-(\w+)"', html)
        assert sorted(boxes) == sorted(configured)
        legends = js(driver, f"return [...document.querySelectorAll('#{family} .picker legend')].map(e => e.textContent)")
        assert legends == [g for g, _ in M.grouped(configured)]
    print(f"page {built['html'].stat().st_size / 1e6:.2f} MB for {len(built['json']['images'])} detail images at 64²")
