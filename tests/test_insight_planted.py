"""The planted shortcut the report must find (issue 27): a copy of the shipped shapes model trained on images where
every square carries a small checkerboard in the top-left corner (`shapes.Watermark`), then a report over a test set
where half of the squares carry it. SpRAy must split the squares into the marked and the unmarked half, and the
cluster flagged "outside the object" must be the marked one, its mean map in the mark's quadrant.

Slow: the training takes about half a minute on two threads. With REPORTGEN_INSIGHT_SHOT=docs/insight.png it also
saves the section's screenshot (desktop width, headless Chromium: the README's picture)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main
from reportgen.demo import shapes

pytestmark = pytest.mark.slow
sklearn_metrics = pytest.importorskip("sklearn.metrics")

ROOT = Path(__file__).resolve().parents[1]
SQUARE = shapes.CLASSES.index("square")


def test_spray_finds_the_planted_watermark(tmp_path):
    trained = shapes.train(tmp_path / "model", epochs=3, train_size=2000, val_size=200, num_samples=0,
                           tensorboard=False, watermark=shapes.Watermark(label=SQUARE, share=1.0))
    assert trained["val_accuracy"] > 0.3  # (the squares alone, by their mark, are a fifth)
    mark = shapes.Watermark(label=SQUARE, share=0.5, seed=1)
    test = shapes.generate(200, 777, watermark=mark)
    assert 10 <= test.marked.sum() <= (test.labels == SQUARE).sum() - 10  # both halves there
    rows = ["path,label,x0,y0,x1,y1"]
    for i in range(len(test)):
        Image.fromarray(test.images[i]).save(tmp_path / f"s{i:03d}.png")
        rows.append(f"s{i:03d}.png,{int(test.labels[i])}," + ",".join(str(int(v)) for v in test.boxes[i]))
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    config = {
        "title": "A planted shortcut", "seed": 0,
        "model": {"source": "module", "factory": "reportgen.demo.shapes:build_model", "kwargs": {"num_classes": 5},
                  "checkpoint": str(tmp_path / "model" / "model.pt"), "input_size": [3, 64, 64],
                  "labels": str(ROOT / "example_configs" / "shapes" / "labels.txt"), "device": "cpu"},
        "inputs": {"images": ["set.csv"], "batch_size": 64,
                   "preprocess": {"normalize": {"mean": shapes.MEAN, "std": shapes.STD}}},
        # the maps of the square class of every image; SpRAy groups them by true class
        "analyses": {"cam": {"methods": ["gradcam"], "target_layers": ["features.3"], "targets": {"classes": [SQUARE]},
                             "detail_images": 2},
                     "insight": {"by": "truth"}},
        "output": {"dir": "out", "save_arrays": True},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = CliRunner().invoke(main, ["build", str(tmp_path / "config.yaml"), "-q"])
    assert done.exit_code == 0, done.output
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["insight"]
    (square,) = [c for c in entry["classes"] if c["class"] == SQUARE]  # the other classes have no square map
    with np.load(tmp_path / "out" / "arrays.npz") as npz:
        images = npz[f"insight/{SQUARE}/images"].astype(int)
        clusters = npz[f"insight/{SQUARE}/clusters"].astype(int)
        mean_maps = npz[f"insight/{SQUARE}/mean_maps"]
    assert sorted(images.tolist()) == np.flatnonzero(test.labels == SQUARE).tolist()
    ari = sklearn_metrics.adjusted_rand_score(test.marked[images], clusters)
    print("clusters", square["clusters"], "ARI", ari, [(g["size"], g["flags"], g["outside"]) for g in square["groups"]])
    assert ari >= 0.8
    # the marked half's cluster is flagged: its maps lie outside the shape (the unmarked half's maps are near zero,
    # spread: their share outside sits near the flag's 50 %, so it is not asserted)
    j = max(range(square["clusters"]), key=lambda c: test.marked[images[clusters == c]].mean())
    assert test.marked[images[clusters == j]].mean() >= 0.9
    assert "outside" in square["groups"][j]["flags"] and square["groups"][j]["outside"] > 0.8
    rows_, cols = mark.quadrant(mean_maps.shape[-1])
    share = mean_maps[j][rows_, cols].sum() / mean_maps[j].sum()
    print("the flagged cluster's mass in the mark's quadrant", share)
    assert share > 0.5
    shot = os.environ.get("REPORTGEN_INSIGHT_SHOT")
    if shot:
        _screenshot(tmp_path / "out" / "report.html", Path(shot))


def _screenshot(html: Path, out: Path) -> None:
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("make_screenshot", ROOT / "docs" / "make_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    png = module.screenshot(html, 1300, 1400, 0, False, "insight")  # down to the flagged cluster
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                                dither=Image.Dither.NONE)
    image.save(out, optimize=True)
