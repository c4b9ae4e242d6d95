"""The `insight` stage (SpRAy per class over the cam maps): a streamed build's report.json against SpRAy run on the
same maps, batch invariance, the cap, the page section, and bad input (exit 2, nothing written). The parity of SpRAy
itself with CoRelAy is tests/test_spray.py; the planted shortcut is tests/test_insight_planted.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main
from reportgen.demo import shapes
from reportgen.errors import ReportgenError
from reportgen.metrics import spray
from tests.test_browser import driver  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("sklearn")

SHIPPED = Path(__file__).resolve().parents[1] / "example_configs" / "shapes"
SIZE = 32


def shapes_project(root: Path, n: int = 48, seed: int = 11, **insight) -> dict:
    """`n` generated shapes at 32 px with labels and boxes in a manifest, the shipped model, gradcam + insight."""
    batch = shapes.generate(n, seed, size=SIZE)
    rows = ["path,label,x0,y0,x1,y1"]
    for i in range(n):
        Image.fromarray(batch.images[i]).save(root / f"s{i:03d}.png")
        rows.append(f"s{i:03d}.png,{int(batch.labels[i])}," + ",".join(str(int(v)) for v in batch.boxes[i]))
    (root / "set.csv").write_text("\n".join(rows) + "\n")
    return {
        "title": "insight", "seed": 0,
        "model": {"source": "module", "factory": "reportgen.demo.shapes:build_model", "kwargs": {"num_classes": 5},
                  "checkpoint": str(SHIPPED / "model.pt"), "input_size": [3, SIZE, SIZE],
                  "labels": str(SHIPPED / "labels.txt"), "device": "cpu"},
        "inputs": {"images": ["set.csv"], "batch_size": 16,
                   "preprocess": {"normalize": {"mean": shapes.MEAN, "std": shapes.STD}}},
        "analyses": {"cam": {"methods": ["gradcam", "layercam"], "target_layers": ["features.2"],
                             "targets": {"topk": 5}, "detail_images": 2},
                     "insight": {"min_images": 5, "k": 4, "size": 8, "exemplars": 2, **insight}},
        "output": {"dir": "out", "save_arrays": True},
    }


def build(root: Path, config: dict, *args):
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return CliRunner().invoke(main, ["build", str(path), "-q", *args])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("insight")
    config = shapes_project(root)
    done = build(root, config)
    assert done.exit_code == 0, done.output
    with np.load(root / "out" / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k.startswith("insight/")}
    return root, config, json.loads((root / "out" / "report.json").read_text()), arrays


def test_a_build_clusters_every_class_with_spray(built):
    root, config, report, arrays = built
    entry = report["insight"]
    assert entry["method"] == "gradcam" and entry["layer"] == "features.2" and entry["by"] == "predicted"
    assert entry["classes"], entry
    records = [json.loads(line) for line in (root / "out" / "images.jsonl").read_text().splitlines()]
    predicted = [r["top_k"][0]["index"] for r in records]
    for c in entry["classes"]:
        groups = c["groups"]
        assert sum(g["size"] for g in groups) == c["analysed"] == c["images"] == predicted.count(c["class"]) >= 5
        assert c["from_eigengap"] and len(groups) == c["clusters"] >= 2
        values = np.asarray(c["eigenvalues"])
        assert np.all(np.diff(values) >= -1e-9) and values[0] == pytest.approx(0, abs=1e-6)
        # the chosen count is where the gap is largest
        assert c["clusters"] == spray.eigengap(values)
        labels = arrays[f"insight/{c['class']}/clusters"].astype(int)
        assert [int((labels == j).sum()) for j in range(len(groups))] == [g["size"] for g in groups]
        assert [g["size"] for g in groups] == sorted((g["size"] for g in groups), reverse=True)
        for g in groups:
            assert 1 <= len(g["exemplars"]) <= 2
            assert g["accuracy"] is None or 0 <= g["accuracy"] <= 1
            assert g["outside"] is not None and 0 <= g["outside"] <= 1  # every image has a box
            assert ("outside" in g["flags"]) == (g["outside"] > 0.5)
            assert ("unlike" in g["flags"]) == (g["pearson"] is not None and g["pearson"] < 0.5)
        mean_maps = arrays[f"insight/{c['class']}/mean_maps"]
        assert mean_maps.shape == (len(groups), 8, 8)
        np.testing.assert_allclose(mean_maps.mean((1, 2)), 1.0, atol=1e-2)  # each map's cells average 1
    assert report["metrics"]["insight/classes"] == len(entry["classes"])
    assert report["metrics"]["insight/flagged_clusters"] == sum(bool(g["flags"]) for c in entry["classes"]
                                                                for g in c["groups"])
    assert sum(entry["skipped"].values()) + sum(c["images"] for c in entry["classes"]) == len(records)


def test_batching_and_the_cap_do_not_change_the_clusters(built, tmp_path):
    root, config, report, arrays = built
    again = dict(config, inputs=dict(config["inputs"], batch_size=5))
    (tmp_path / "set.csv").write_text((root / "set.csv").read_text())
    for png in root.glob("s*.png"):
        (tmp_path / png.name).write_bytes(png.read_bytes())
    done = build(tmp_path, again)
    assert done.exit_code == 0, done.output
    other = json.loads((tmp_path / "out" / "report.json").read_text())["insight"]
    entry = report["insight"]
    assert [c["groups"] for c in other["classes"]] == [c["groups"] for c in entry["classes"]]
    np.testing.assert_allclose([v for c in other["classes"] for v in c["eigenvalues"]],
                               [v for c in entry["classes"] for v in c["eigenvalues"]], atol=1e-6)
    # a cap below a class's count: a seeded sample of that size, the same whatever the batching
    capped = dict(again, analyses=dict(again["analyses"], insight=dict(again["analyses"]["insight"], max_per_class=6)))
    done = build(tmp_path, capped)
    assert done.exit_code == 0, done.output
    small = json.loads((tmp_path / "out" / "report.json").read_text())["insight"]
    for c, full in zip(small["classes"], entry["classes"]):
        assert c["images"] == full["images"] and c["analysed"] == min(6, full["images"])


def test_the_section_shows_spectra_clusters_and_flags(built):
    root, *_ = built
    html = (root / "out" / "report.html").read_text()
    start = html.index('<section id="insight"')
    section = html[start:start + html[start:].find("</section>")]
    assert "Spectral Relevance Analysis" in section and "Spectrum:" in section
    assert "Cluster 1:" in section and "nearest the cluster" in section
    assert section.count("<img") >= 4


def test_by_truth_and_an_explicit_cluster_count(tmp_path):
    config = shapes_project(tmp_path, by="truth", clusters=2)
    done = build(tmp_path, config)
    assert done.exit_code == 0, done.output
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["insight"]
    truth = shapes.generate(48, 11, size=SIZE).labels
    for c in entry["classes"]:
        assert c["clusters"] == 2 and not c["from_eigengap"]
        assert c["images"] == int((truth == c["class"]).sum())


@pytest.mark.parametrize("insight,message", [
    ({"method": "scorecam"}, "not one of the configured CAM methods"),
    ({"clusters": 1}, "clusters"),
    ({"clusters": 6}, "fewer than its clusters"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, insight, message):
    config = shapes_project(tmp_path, n=6, **insight)
    done = build(tmp_path, config)
    assert done.exit_code == 2, done.output
    assert message in done.output
    assert not (tmp_path / "out").exists()


def test_without_the_extra_the_message_names_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(ReportgenError, match=r"pip install 'reportgen\[insight\]'"):
        spray.require()


@pytest.mark.slow
@pytest.mark.parametrize("width", [375, 1400])
def test_the_section_fits_a_phone_and_a_desktop_with_no_console_error(built, driver, width):
    """The layout harness of tests/test_layout.py on a report with the insight section."""
    from tests.test_browser import js, open_page
    from tests.test_layout import LAYOUT

    root, *_ = built
    events = open_page(driver, root / "out" / "report.html", width=width, height=900)
    layout = js(driver, LAYOUT)
    assert layout["inner"] == width and layout["scroll"] <= layout["inner"], layout
    assert [o for o in layout["outside"] if "#insight" in o] == [], layout["outside"]
    assert [s for s in layout["scrolls"] if "#insight" in s["what"] and not s["table"]] == [], layout["scrolls"]
    assert events["errors"] == [], events["errors"]


def test_the_clusters_are_spray_of_pytorch_grad_cams_maps(built):
    """End to end: the build's clusters per class are `spray.spray` of pytorch-grad-cam 1.5.7's Grad-CAM maps of the
    same images for their predicted class, downsampled and stored as float16 as the stage does."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    root, config, report, arrays = built
    test = shapes.generate(48, 11, size=SIZE)
    model = shapes.load_model(SHIPPED / "model.pt")
    x = shapes.to_input(test.images)
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    with GradCAM(model=model, target_layers=[model.get_submodule("features.2")]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in predicted])
    options = config["analyses"]["insight"]
    for c in report["insight"]["classes"]:
        images = arrays[f"insight/{c['class']}/images"].astype(int)
        assert images.tolist() == np.flatnonzero(predicted == c["class"]).tolist()
        x_c = spray.downsample(maps[images], options["size"]).astype(np.float16).astype(np.float32)
        ours = spray.spray(x_c, k=options["k"], clusters=None, eigen=10, seed=0)
        np.testing.assert_allclose(ours.eigenvalues, c["eigenvalues"], atol=1e-4)  # float16 maps of float32 CAMs
        np.testing.assert_array_equal(ours.labels, arrays[f"insight/{c['class']}/clusters"].astype(int))


def test_reducing_the_ranks_reductions_is_reducing_every_batch():
    """Under torchrun each rank reduces its batches, then rank 0 reduces those: the same result as one reduce of all
    batches (the cap keeps the same seeded sample, the counts add up)."""
    from reportgen.config import InsightConfig
    from reportgen.stages import insight
    from tests.test_spray import _maps

    maps, _ = _maps(5, n=60)
    small = spray.downsample(maps, 8).astype(np.float16)
    cfg = InsightConfig(size=8, k=5, min_images=5, max_per_class=25, exemplars=2)

    def batch(rows: range) -> insight.InsightResult:
        rows = np.asarray(rows)
        classes = (rows % 2).astype(np.int64)
        kept = insight.Kept(classes=classes, indices=rows.astype(np.int64), truth=classes, predicted=classes,
                            maps=small[rows], thumbs=np.zeros((len(rows), insight.THUMB, insight.THUMB, 3), np.uint8),
                            outside=np.full(len(rows), np.nan, np.float32),
                            priority=np.array([insight._priority(0, int(i)) for i in rows]),
                            names=tuple(f"i{i}" for i in rows))
        return insight.InsightResult(config=cfg, method="gradcam", layer="l", seed=0, kept=kept,
                                     seen={c: int((classes == c).sum()) for c in (0, 1)}, labels={0: "a", 1: "b"})

    batches = [batch(range(s, min(s + 7, 60))) for s in range(0, 60, 7)]
    once = insight.reduce(batches)
    twice = insight.reduce([insight.reduce(batches[:4]), insight.reduce(batches[4:])])
    assert insight.to_json(once) == insight.to_json(twice)
    assert [c.analysed for c in once.classes] == [25, 25] and [c.images for c in once.classes] == [30, 30]
    for a, b in zip(once.classes, twice.classes):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.labels, b.labels)
