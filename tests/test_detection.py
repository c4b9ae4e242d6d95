"""A detector end to end: its true boxes from a COCO file or a JSONL manifest, moved with the image, the records
and the detail choice (most missed objects first), and the bad input a detection config can hold, refused with
exit 2 and nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main
from tests.conftest import write_config
from reportgen.config import load_config
from reportgen.datasets import select
from reportgen.demo import detect
from reportgen.metrics.detection import match_boxes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "example_configs" / "detection"

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path: Path, **over) -> Path:
    cfg = {
        "title": "detector",
        "model": {"source": "module", "factory": "reportgen.demo.detect:build_model", "kwargs": {"num_classes": 6},
                  "checkpoint": str(SHIPPED / "model.pt"), "input_size": [3, 64, 64],
                  "labels": str(SHIPPED / "labels.txt"), "task": "detection", "device": "cpu"},
        "inputs": {"images": [str(SHIPPED / "images")], "batch_size": 4},
        "detection": {"annotations": str(SHIPPED / "instances.json")},
        "analyses": {"summary": {"depth": 1}},
        "report": {"detail": {"budget": 3}},
        "output": {"dir": str(tmp_path / "out")},
    }
    return write_config(tmp_path, cfg, over)


def _build(path: Path, *args: str):
    return CliRunner().invoke(main, ["build", str(path), "-q", *args])


def _refused(path: Path, *words: str) -> str:
    result = _build(path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output
    assert not (path.parent / "out").exists()
    return result.output


def _truth() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The shipped scenes' true boxes by image name, read from the COCO file itself."""
    coco = json.loads((SHIPPED / "instances.json").read_text())
    out = {}
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        boxes = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        out[Path(im["file_name"]).stem] = boxes, np.array([a["category_id"] for a in anns])
    return out


def test_records_list_the_best_box_per_class_and_detail_shows_the_most_missed(tmp_path):
    assert _build(_config(tmp_path)).exit_code == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "images.jsonl").read_text().splitlines()]
    assert len(records) == 12
    model = detect.load_model(SHIPPED / "model.pt")
    found = detect.detect(model, np.stack([np.asarray(Image.open(SHIPPED / "images" / f"{r['name']}.png")
                                                     .convert("RGB")) for r in records]))
    truth = _truth()
    missed = []
    for record, d in zip(records, found):
        best = {int(c): float(d["scores"][d["labels"] == c].max()) for c in np.unique(d["labels"])}
        top = sorted(best.items(), key=lambda kv: -kv[1])[:5]
        assert [t["index"] for t in record["top_k"]] == [c for c, _ in top]
        assert [t["score"] for t in record["top_k"]] == pytest.approx([s for _, s in top], abs=1e-4)
        keep = np.flatnonzero(d["scores"] >= 0.5)[:5]
        boxes, labels = truth[record["name"]]
        missed.append(int(match_boxes(d["boxes"][keep], d["scores"][keep], d["labels"][keep], boxes,
                                      labels).missed.sum()))
    # the detail images miss at least as many true boxes as any image left out
    shown = [i for i, r in enumerate(records) if r["detail"]]
    assert len(shown) == 3 and {records[i]["detail"] for i in shown} == {"most missed objects"}
    assert min(missed[i] for i in shown) >= max(m for i, m in enumerate(missed) if i not in shown)


def test_true_boxes_from_coco_and_from_a_manifest_agree_and_move_with_the_resize(tmp_path):
    coco = load_config(_config(tmp_path))
    manifest = load_config(_config(tmp_path, detection={"annotations": str(SHIPPED / "boxes.jsonl")}))
    labels = (SHIPPED / "labels.txt").read_text().split()
    a, b = select(coco, labels, 6), select(manifest, labels, 6)
    assert [e.file for e in a] == [e.file for e in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.truth.boxes, y.truth.boxes)
        np.testing.assert_array_equal(x.truth.labels, y.truth.labels)
    # no `inputs.images`: the images the annotations list
    alone = load_config(_config(tmp_path, inputs={"batch_size": 4},
                                detection={"annotations": str(SHIPPED / "instances.json"),
                                           "image_root": str(SHIPPED / "images")}))
    assert [e.file for e in select(alone, labels, 6)] == [e.file for e in a]
    # at half the size the boxes and their areas follow
    from reportgen.datasets import read_entry
    from reportgen.models.adapter import Preprocess

    half = load_config(_config(tmp_path, model={**yaml.safe_load(_config(tmp_path).read_text())["model"],
                                                "input_size": [3, 32, 32]}))
    image, _, _ = read_entry(a[0], half, Preprocess(normalize=None), "x")
    np.testing.assert_allclose(image.boxes.boxes, a[0].truth.boxes / 2)
    np.testing.assert_allclose(image.boxes.area, a[0].truth.area / 4)
    assert image.boxes.size == (32, 32)


def test_detection_options_on_a_classifier_are_refused(project):
    cfg = project.base()
    cfg["detection"] = {"score_threshold": 0.3}
    result = CliRunner().invoke(main, ["build", str(project.write(cfg)), "-q"])
    assert result.exit_code == 2 and "`detection`" in result.output and "model.task: detection" in result.output


def test_bad_annotations_are_refused_before_anything_is_written(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(SHIPPED / "images", images)
    (images / "stranger.png").write_bytes((images / "scene_000.png").read_bytes())
    result = _build(_config(tmp_path, inputs__images=[str(images)]))  # an image without boxes: counted, not scored
    assert result.exit_code == 0 and "1 of 13 images are not in" in result.output + result.stderr
    (tmp_path / "out").rename(tmp_path / "first")
    rows = [json.loads(line) for line in (SHIPPED / "boxes.jsonl").read_text().splitlines()]
    (tmp_path / "images" / "stranger.png").unlink()
    rows[0]["boxes"][0] = [30, 30, 20, 40]  # x1 < x0
    bad = tmp_path / "boxes.jsonl"
    bad.write_text("\n".join(json.dumps({**r, "path": str(SHIPPED / r["path"])}) for r in rows))
    _refused(_config(tmp_path, detection={"annotations": str(bad)}, inputs__images=[str(SHIPPED / "images")]),
             "boxes.jsonl", "line 1")
    rows[0]["boxes"][0] = [30, 30, 70, 40]  # outside the 64-pixel image
    bad.write_text("\n".join(json.dumps({**r, "path": str(SHIPPED / r["path"])}) for r in rows))
    _refused(_config(tmp_path, detection={"annotations": str(bad)}), "line 1")
    coco = json.loads((SHIPPED / "instances.json").read_text())
    coco["categories"][0]["name"] = "hexagon"
    coco["categories"][0]["id"] = 17
    for a in coco["annotations"]:
        a["category_id"] = 17 if a["category_id"] == 1 else a["category_id"]
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    _refused(_config(tmp_path, detection={"annotations": str(tmp_path / "instances.json")}), "hexagon")
    _refused(_config(tmp_path, inputs={"images": [str(images)], "preprocess": {"normalize": "imagenet"}}),
             "normalize")
    for targets in ("top3", [3]):
        _refused(_config(tmp_path, analyses={"cam": {"methods": ["gradcam"], "targets": targets}}),
                 "analyses.cam.targets")
    _refused(_config(tmp_path, analyses={"cam": {"methods": ["cam"]}}), "original CAM")


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn"])
def test_a_torchvision_detector_says_its_task_and_builds(tmp_path, name):
    """Built with no weights (none downloaded): the model says it detects; a report with its maps and data-set
    section is built without true boxes (counted, not scored)."""
    model = {"source": "torchvision", "name": name, "device": "cpu", "task": None, "labels": None,
             "kwargs": {"num_classes": 3, "min_size": 64, "max_size": 64,
                        ("box_score_thresh" if "rcnn" in name else "score_thresh"): 0.0},
             "input_size": [3, 64, 64]}
    layer = "backbone.body.layer4" if "retina" in name else "backbone.body.16"
    path = _config(tmp_path, model=model, detection={"score_threshold": 0.0, "max_boxes": 2},
                   inputs={"images": [str(SHIPPED / "images" / "scene_000.png"),
                                      str(SHIPPED / "images" / "scene_001.png")]},
                   analyses={"summary": {"depth": 1}, "dataset": {},
                             "cam": {"methods": ["gradcam"], "target_layers": [layer]}})
    result = _build(path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["model"]["task"] == "detection"
    assert data["dataset"]["images"] == 2 and data["dataset"]["labelled"] == 0
    assert {s["name"]: s["status"] for s in data["stages"]} == {"summary": "ok", "dataset": "ok", "cam": "ok"}
    assert [len(image["boxes"]) for image in data["cam"]["images"]] == [2, 2]


@pytest.mark.slow  # two processes start torch
def test_two_processes_under_torchrun_detect_what_one_detects(tmp_path):
    """Each rank scores its shard's detections; the COCO evaluations merge: the same report as one process."""
    from tests.test_scale import assert_same_build, torchrun_build

    path = _config(tmp_path, inputs__batch_size=2, analyses={"dataset": {}}, output={"dir": str(tmp_path / "out"),
                                                                                    "save_arrays": True})
    one = tmp_path / "one"
    assert _build(path, "-o", str(one)).exit_code == 0
    assert_same_build(one, torchrun_build(path, tmp_path / "two"))


@pytest.mark.parametrize("make", ["_detr", "_yolos"])
def test_a_hugging_face_detector_folder_builds_with_its_boxes_explained(tmp_path, make):
    """A DETR (Hugging Face ResNet backbone, no timm) and a YOLOS folder, random weights: every query scores, so
    at threshold 0 each image's best two boxes are explained by Grad-CAM and D-RISE."""
    from tests import test_models_detection as hf

    folder, _, _ = getattr(hf, make)(tmp_path)
    model = {"source": "huggingface", "path": str(folder), "device": "cpu", "input_size": [3, 32, 32],
             "labels": None}
    path = _config(tmp_path, model=model, detection={"score_threshold": 0.0, "max_boxes": 2},
                   inputs={"images": [str(SHIPPED / "images" / "scene_000.png")], "preprocess": {"resize": [32, 32]}},
                   analyses={"dataset": {}, "cam": {"methods": ["gradcam", "drise"], "drise_masks": 8}})
    result = _build(path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["model"]["task"] == "detection" and data["dataset"]["images"] == 1
    boxes = data["cam"]["images"][0]["boxes"]
    assert len(boxes) == 2 and boxes[0]["score"] >= boxes[1]["score"]
