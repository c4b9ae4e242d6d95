"""A detector's data-set numbers (reportgen.stages.dataset_detection) equal pycocotools 2.0.11's COCOeval on the same
detections however the images are batched or split over ranks (each rank's result pickled, as torchrun's gather
does); images without true boxes counted and not scored; the per-image counts at the page's thresholds; the
figures and the template ("n/a" for a size range without objects); and `annotations.annotations_for`, the build's
true boxes, with its messages. Floats: COCOeval's and ours agree to 1e-9 in practice, asserted to 1e-6."""
from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from reportgen import render
from reportgen.annotations import ImageBoxes, annotations_for
from reportgen.config import Config, DetectionConfig
from reportgen.context import Context, ImageInput, ModelInfo
from reportgen.errors import ReportgenError
from reportgen.figures import dataset_detection as figures
from reportgen.models.detection import Detections
from reportgen.stages import dataset_detection as det
from tests.test_annotations import TV_LABELS, _coco, _image
from tests.test_metrics_detection import SIZE, _cocoeval, _data

K = 5
CFG = None  # the dataset options: a detector's numbers read none of them
TOL = 1e-6


def _truth(d) -> ImageBoxes:
    t = d["truths"]
    return ImageBoxes(path=f"{d['image_id']}.png", boxes=t["boxes"], labels=t["labels"],
                      names=tuple(str(k) for k in t["labels"]), iscrowd=t["iscrowd"].astype(bool), area=t["area"],
                      size=(SIZE, SIZE), image_id=d["image_id"])


def _context(data, labels=None, unlabelled=(), config=None, offset=0) -> Context:
    """A detector's batch context as the contract gives it: every detection (`outputs`, here float64 as the
    oracle's) and each image's true boxes (None for `unlabelled` positions)."""
    n = len(data)
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    images = [ImageInput(name=f"img{d['image_id']}", source="", original=pixels, display=pixels,
                     boxes=None if i in unlabelled else _truth(d)) for i, d in enumerate(data)]
    outputs = [Detections(*(torch.as_tensor(d["detections"][k]) for k in ("boxes", "scores", "labels"))) for d in data]
    info = ModelInfo(model=nn.Identity(), config=config or Config(), labels=labels or [str(k) for k in range(K)],
                     num_classes=K, layers={})
    return Context(info=info, device=torch.device("cpu"), batch=torch.zeros(n, 3, 1, 1), images=images,
                   logits=torch.zeros(n, 1), engine=None, offset=offset, outputs=outputs)


def _run(data, cuts, **kw):
    return [det.run(_context(data[a:b], offset=a, **kw), CFG) for a, b in zip(cuts[:-1], cuts[1:])]


def _pickled(result):
    return pickle.loads(pickle.dumps(result))  # what dist.gather (all_gather_object) does to a rank's result


@pytest.mark.parametrize("seed", [0, 3])
def test_batches_and_ranks_equal_cocoeval(seed):
    data = _data(seed, classes=K)
    reference = _cocoeval(data, K)
    assert (reference.stats[[3, 4, 5]] > -1).all() and 0.05 < reference.stats[0] < 0.95  # nothing trivial
    whole = det.run(_context(data), CFG)
    batched = det.reduce(_run(data, [0, 4, 5, 9, len(data)]))
    ranks = det.reduce([_pickled(det.reduce(_run(data, [0, 3, 7]))), _pickled(det.reduce(_run(data, [7, len(data)])))])
    for result in (whole, batched, ranks):
        np.testing.assert_allclose(result.summary.stats, reference.stats, rtol=0, atol=TOL)
        assert result.images == whole.images and result.count == len(data)
    data_json = det.to_json(ranks)
    assert data_json == det.to_json(whole)
    json.dumps(data_json, allow_nan=False)
    coco = data_json["coco"]
    assert [coco[key] for key, _ in det.AP_ROWS] == pytest.approx(reference.stats.tolist(), abs=TOL)
    precision = reference.eval["precision"]  # (T, R, K, A, M)
    rows = {row["index"]: row for row in data_json["per_class"]}
    curves = {c["index"]: c for c in data_json["pr_curves"]["classes"]}
    assert data_json["pr_curves"]["recall"] == pytest.approx(np.linspace(0, 1, 101).tolist())
    for k in range(K):
        s = precision[:, :, k, 0, 2]
        if not (s > -1).any():  # the last class: no truth, detections only -> AP n/a, no curve
            assert rows[k]["ap"] is None and rows[k]["ap50"] is None and rows[k]["truths"] == 0 and k not in curves
            continue
        assert rows[k]["ap"] == pytest.approx(float(s[s > -1].mean()), abs=TOL)
        assert rows[k]["ap50"] == pytest.approx(float(s[0].mean()), abs=TOL)
        np.testing.assert_allclose(curves[k]["iou50"], s[0], atol=TOL)
        np.testing.assert_allclose(curves[k]["iou75"], s[5], atol=TOL)  # IoU .75: COCOeval's iouThrs[5]
    assert det.headline(ranks) == pytest.approx({"images": float(len(data)), "ap": reference.stats[0],
                                                 "ap50": reference.stats[1], "ap75": reference.stats[2],
                                                 "ar100": reference.stats[8]}, abs=TOL)
    totals = det.totals(ranks)
    assert totals["dataset/precision50"].dtype == np.float32 and totals["dataset/precision75"].shape == (K, 101)
    np.testing.assert_allclose(totals["dataset/precision75"][0], precision[5, :, 0, 0, 2], atol=1e-6)


def test_images_without_truth_are_counted_not_scored_and_empty_truth_is_scored():
    data = _data(1, images=10, classes=K)
    scored = [d for i, d in enumerate(data) if i not in (1, 6)]
    reference = _cocoeval(scored, K)
    result = det.reduce(_run(data, [0, 5, 10], unlabelled=()))  # all scored: another number
    assert abs(result.summary.stats[0] - reference.stats[0]) > 1e-4
    contexts = [_context(data[:5], unlabelled=(1,)), _context(data[5:], unlabelled=(1,), offset=5)]
    result = det.reduce([det.run(c, CFG) for c in contexts])
    np.testing.assert_allclose(result.summary.stats, reference.stats, atol=TOL)
    assert result.count == 8 and result.unlabelled == 2 and result.labelled.tolist() == [i not in (1, 6) for i in range(10)]
    data_json = det.to_json(result)
    assert data_json["images"] == 10 and data_json["labelled"] == 8 and data_json["unlabelled"] == 2
    assert data_json["detections"] == sum(len(d["detections"]["scores"]) for d in data)  # every image's count
    assert len(data[0]["truths"]["boxes"]) == 0 and result.labelled[0]  # listed with no box: scored (its FPs count)
    entries = det.records(result)
    assert entries[1] == {"truth": None, "detections": int((data[1]["detections"]["scores"] >= 0.5).sum())}
    assert set(entries[0]) == {"detections", "true_positives", "false_positives", "missed"}
    assert entries[0]["missed"] == 0 and entries[0]["false_positives"] == entries[0]["detections"]
    # no image with truth at all: counted, no AP, the page says so
    none = det.run(_context(data[:3], unlabelled=(0, 1, 2)), CFG)
    assert none.count == 0 and "coco" not in det.to_json(none) and det.headline(none) == {"images": 3.0}
    assert det.totals(none) == {}
    section = figures.plot(none)
    assert section["metrics"] is None and section["figures"] == []
    assert "No image has true boxes" in _render(section)


def _box_image(image_id, d_boxes, scores, labels, t_boxes, t_labels, crowd=None):
    t_boxes = np.array(t_boxes, np.float64).reshape(-1, 4)
    return {"image_id": image_id,
            "detections": {"boxes": np.array(d_boxes, np.float64).reshape(-1, 4), "scores": np.array(scores),
                           "labels": np.array(labels, np.int64)},
            "truths": {"boxes": t_boxes, "labels": np.array(t_labels, np.int64),
                       "iscrowd": np.array(crowd or [0] * len(t_boxes), np.int64),
                       "area": (t_boxes[:, 2] - t_boxes[:, 0]) * (t_boxes[:, 3] - t_boxes[:, 1])}}


def test_per_image_counts_at_the_thresholds_of_the_config():
    # truths: two cats (1) and a crowd of dogs (2); detections: a cat on the first (.9), its duplicate (.8: a false
    # positive), a dog on the crowd (.7: neither), a cat on the second truth at .3 (below the score threshold:
    # not drawn, so that truth is missed), a bird (3) nowhere (.6: a false positive)
    image = _box_image(7, [[10, 10, 50, 50], [11, 10, 50, 51], [100, 100, 180, 180], [120, 10, 160, 60],
                           [200, 200, 220, 220]], [.9, .8, .7, .3, .6], [1, 1, 2, 1, 3],
                       [[10, 10, 50, 50], [120, 10, 160, 60], [90, 90, 200, 200]], [1, 1, 2], crowd=[0, 0, 1])
    result = det.run(_context([image]), CFG)  # no `detection` section: score .5, IoU .5
    assert det.records(result) == [{"detections": 4, "true_positives": 1, "false_positives": 2, "missed": 1}]
    assert result.detections.tolist() == [5] and result.score_threshold == 0.5
    low = Config(detection=DetectionConfig(score_threshold=0.25, iou_threshold=0.5))
    assert det.records(det.run(_context([image], config=low), CFG)) == [
        {"detections": 5, "true_positives": 2, "false_positives": 2, "missed": 0}]
    strict = Config(detection=DetectionConfig(score_threshold=0.5, iou_threshold=0.99))  # the duplicate
    assert det.records(det.run(_context([image], config=strict), CFG)) == [  # fails too: nothing matches
        {"detections": 4, "true_positives": 1, "false_positives": 2, "missed": 1}]
    exact = Config(detection=DetectionConfig(score_threshold=0.5, iou_threshold=1.0))
    shifted = _box_image(8, [[10, 10, 50, 51]], [.9], [1], [[10, 10, 50, 50]], [1])
    assert det.records(det.run(_context([shifted], config=exact), CFG)) == [
        {"detections": 1, "true_positives": 0, "false_positives": 1, "missed": 1}]
    assert det.to_json(result)["at_threshold"] == {"detections": 4, "true_positives": 1, "false_positives": 2,
                                                   "missed": 1}
    bad = _box_image(9, [[0, 0, 5, 5]], [.9], [K], [], [])  # a label the model does not have
    with pytest.raises(ValueError, match="image img9: detection labels"):
        det.run(_context([bad]), CFG)


def _render(section) -> str:
    env = render.make_environment(render._Images(True))
    return env.get_template("sections/dataset_detection.html.jinja2").render(report={}, section=section)


def test_a_size_range_without_objects_is_none_and_n_a_and_the_section_renders_escaped():
    hostile = '<script>alert("x")</script>'
    rng = np.random.default_rng(0)
    data = []
    for i in range(6):  # medium objects only (sides 40 to 60 px), detections jittered around them
        side = rng.uniform(40, 60, (3, 1))
        corner = rng.uniform(0, SIZE - 61, (3, 2))
        truths = np.hstack([corner, corner + side])
        boxes = truths + rng.normal(0, 3, truths.shape)
        data.append(_box_image(i, boxes, rng.random(3).round(2), [0, 1, 3], truths, [0, 1, 1]))
    reference = _cocoeval(data, K)
    assert reference.stats[3] == -1 and reference.stats[5] == -1 and reference.stats[4] > -1
    result = det.reduce(_run(data, [0, 2, 6], labels=[hostile, "b$c$", "c", "d", "e"]))
    np.testing.assert_allclose(result.summary.stats, reference.stats, atol=TOL)
    coco = det.to_json(result)["coco"]
    assert coco["ap_small"] is None and coco["ap_large"] is None and coco["ar_small"] is None
    assert coco["ap_medium"] == pytest.approx(reference.stats[4], abs=TOL)
    section = figures.plot(result, None)
    m = section["metrics"]
    assert m["empty_sizes"] == ["small", "large"]
    assert [row["head"] for row in m["ap"]] == ["@[.50:.95]", "@.50", "@.75", "small", "medium", "large"]
    assert m["ap"][3]["value"] is None and m["ap"][0]["value"] == pytest.approx(reference.stats[0] * 100, abs=1e-4)
    assert [row["index"] for row in m["rows"]] == [0, 1, 3] and m["without_truth"] == ["d"]
    (pr,) = section["figures"]
    assert pr.png.startswith(b"\x89PNG") and "IoU .50" in pr.alt and pr.width == 800
    html = _render(section)
    # cells: AP and AR small and large; the class without a true box (AP, AP50)
    assert html.count('<span class="muted">n/a</span>') == 2 + 2 + 2
    assert "no small, large object" in html and "<script>" not in html and "&lt;script&gt;" in html
    assert f"{reference.stats[0] * 100:.1f}" in html and html.count("<figure") == 1
    assert "<details>" not in html


def test_the_variant_is_the_dataset_record_with_these_functions():
    from reportgen.stages import dataset

    v = det.VARIANT
    assert v.name == "dataset" and v.options is dataset.DatasetConfig and v.run is det.run and v.reduce is det.reduce
    assert v.select is None and v.totals is det.totals and v.metrics is det.headline and v.records is det.records
    v.check_files()  # its figure module and template exist


# ---------------------------------------------------------------------------- annotations_for


def _config(path):
    return SimpleNamespace(detection=SimpleNamespace(annotations=path), shown_path=lambda p: str(p))


def test_annotations_for_a_coco_file_gives_the_build_images_it_lists(tmp_path):
    path = _coco(tmp_path).rename(tmp_path / "images" / "instances.json")  # the image root: the JSON's folder
    root = tmp_path / "images"
    extra = _image(root / "d.png")  # in the build, not in the file: no truth, a note
    entries = [SimpleNamespace(file=str(root / "sub" / "c.png")), SimpleNamespace(file=str(extra)),
               SimpleNamespace(file=str(root / "a.png"))]
    notes: list[str] = []
    found = annotations_for(_config(path), TV_LABELS, entries, notes)
    assert list(found) == [str(root / "sub" / "c.png"), str(root / "a.png")]
    assert found[str(root / "a.png")].labels.tolist() == [1, 6] and found[str(root / "sub" / "c.png")].image_id == 12
    assert notes == [f"1 of 3 images are not in {path} ({extra}): they have no true boxes, and count in no AP."]
    assert annotations_for(_config(None), TV_LABELS, entries) == {}
    (root / "b.png").unlink()  # an annotated image the build does not use need not exist
    assert len(annotations_for(_config(path), TV_LABELS, entries[2:])) == 1
    # none of the build's images: the file is of other images, both named
    others = [SimpleNamespace(file=str(_image(tmp_path / "elsewhere" / f"{n}.png"))) for n in "xyz"]
    with pytest.raises(ReportgenError, match=r"has no image .*x\.png, .*y\.png, .*z\.png .*lists a\.png, b\.png"):
        annotations_for(_config(path), TV_LABELS, others)
    # categories that are not the model's: named
    with pytest.raises(ReportgenError, match=r"categories are not the model's: 1 'person'"):
        annotations_for(_config(path), ["__background__", "cat", "bird"], entries)
    with pytest.raises(ReportgenError, match="neither a COCO file"):
        annotations_for(_config(tmp_path / "boxes.csv"), TV_LABELS, entries)


def test_annotations_for_a_manifest_skips_rows_of_other_images(tmp_path):
    for name in ("a.png", "b.png"):
        _image(tmp_path / name)
    rows = [{"path": "a.png", "boxes": [[1, 2, 30, 40]], "labels": ["dog"]},
            {"path": "gone.png", "boxes": [], "labels": []},  # not in the build: not read, need not exist
            {"path": "b.png", "boxes": [], "labels": []}]
    path = tmp_path / "boxes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    found = annotations_for(_config(path), TV_LABELS, [tmp_path / "b.png", tmp_path / "a.png"])
    assert list(found) == [str(tmp_path / "b.png"), str(tmp_path / "a.png")]
    assert found[str(tmp_path / "a.png")].labels.tolist() == [6] and found[str(tmp_path / "a.png")].image_id == 1
    assert len(found[str(tmp_path / "b.png")].boxes) == 0  # listed without boxes: scored
    with pytest.raises(ReportgenError, match=r"lists none of the images: it lists a\.png, gone\.png, b\.png"):
        annotations_for(_config(path), TV_LABELS, [_image(tmp_path / "other" / "x.png")])
    rows[0]["boxes"] = [[1, 2, 80, 40]]  # outside the 64×48 image: named by its line
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ReportgenError, match=r"line 1: box 0: the box \[1, 2, 80, 40\] is outside the 64×48 image"):
        annotations_for(_config(path), TV_LABELS, [tmp_path / "a.png"])
