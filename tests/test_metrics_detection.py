"""COCO AP streamed image by image (`reportgen.metrics.detection`) equals pycocotools 2.0.11's COCOeval("bbox") on
the same detections: all 12 stats, per-class AP and the precision-recall curves, whatever the order of the images
and however they are split (torchrun's ranks). Exact to 1e-9 in practice; asserted to 1e-6 as the issue asks."""
from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from reportgen.errors import ReportgenError
from reportgen.metrics.detection import DetectionEval

SIZE = 256  # images are SIZE × SIZE: room for small (< 32²), medium and large (> 96²) objects


def _box(rng: np.random.Generator, side: float) -> list[float]:
    w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
    w, h = min(w, SIZE - 1), min(h, SIZE - 1)
    x0, y0 = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
    return [x0, y0, x0 + w, y0 + h]


def _data(seed: int, images: int = 14, classes: int = 5, crowd: bool = True, segment_area: bool = False):
    """Random truths and detections: empty images, an image with no detection, a class with no truth (the last),
    small, medium and large objects, one truth of exactly 32² (small AND medium in COCO), crowds, detections near
    the truths (matches at every IoU), false positives, tied scores (rounded), and one image with more than 100
    detections of a class (COCOeval keeps the best 100)."""
    rng = np.random.default_rng(seed)
    data = []
    for i in range(images):
        t_boxes, t_labels, t_crowd, t_area = [], [], [], []
        if i % 5 != 0:  # every fifth image has no truth
            for _ in range(int(rng.integers(1, 7))):
                t_boxes.append(_box(rng, float(rng.choice([14, 28, 60, 120, 180]))))
                t_labels.append(int(rng.integers(0, classes - 1)))  # the last class never has a truth
                t_crowd.append(int(crowd and rng.random() < 0.12))
        if i == 1:
            t_boxes.append([10.0, 10.0, 42.0, 42.0])  # area 32² exactly
            t_labels.append(0)
            t_crowd.append(0)
        t_boxes = np.array(t_boxes, dtype=np.float64).reshape(-1, 4)
        w, h = t_boxes[:, 2] - t_boxes[:, 0], t_boxes[:, 3] - t_boxes[:, 1]
        t_area = w * h * (rng.uniform(0.4, 1.0, len(w)) if segment_area else 1.0)
        d_boxes, d_labels = [], []
        if i != 2:  # image 2 has no detection
            for box, label in zip(t_boxes, t_labels):
                for _ in range(int(rng.integers(0, 4))):
                    jitter = rng.normal(0, 0.12, 4) * np.array([box[2] - box[0], box[3] - box[1]] * 2)
                    d = np.clip(box + jitter, 0, SIZE)
                    d[2:] = np.maximum(d[2:], d[:2] + 1)
                    d_boxes.append(d.tolist())
                    d_labels.append(label if rng.random() < 0.85 else int(rng.integers(0, classes)))
            for _ in range(int(rng.integers(0, 6))):
                d_boxes.append(_box(rng, float(rng.choice([14, 40, 120]))))
                d_labels.append(int(rng.integers(0, classes)))
        if i == 3:  # more than 100 detections of class 1
            for _ in range(130):
                d_boxes.append(_box(rng, 30.0))
                d_labels.append(1)
        scores = np.round(rng.random(len(d_boxes)), 2)  # ties, as real detectors' rounded scores give
        data.append({
            "image_id": 100 + i,
            "detections": {"boxes": np.array(d_boxes, dtype=np.float64).reshape(-1, 4), "scores": scores,
                           "labels": np.array(d_labels, dtype=np.int64)},
            "truths": {"boxes": t_boxes, "labels": np.array(t_labels, dtype=np.int64),
                       "iscrowd": np.array(t_crowd, dtype=np.int64), "area": t_area},
        })
    return data


def _cocoeval(data, classes: int) -> COCOeval:
    """pycocotools on the same data: boxes as [x, y, w, h], the truths' `area` as given."""
    gt = {"images": [{"id": d["image_id"], "height": SIZE, "width": SIZE} for d in data],
          "annotations": [], "categories": [{"id": k, "name": str(k)} for k in range(classes)]}
    results = []
    for d in data:
        t = d["truths"]
        for box, label, crowd, area in zip(t["boxes"], t["labels"], t["iscrowd"], t["area"]):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": d["image_id"],
                                      "category_id": int(label), "iscrowd": int(crowd), "area": float(area),
                                      "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
        det = d["detections"]
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
            results.append({"image_id": d["image_id"], "category_id": int(label), "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _ours(data, classes: int, order=None) -> DetectionEval:
    ours = DetectionEval(classes)
    for i in order if order is not None else range(len(data)):
        d = data[i]
        ours.update(d["image_id"], d["detections"], d["truths"], size=(SIZE, SIZE))
    return ours


def _assert_equal(summary, reference: COCOeval, classes: int) -> None:
    np.testing.assert_allclose(summary.stats, reference.stats, rtol=0, atol=1e-6)
    precision = reference.eval["precision"]  # (T, R, K, A, M)
    for k in range(classes):
        s = precision[:, :, k, 0, 2]
        expected = None if not (s > -1).any() else float(np.mean(s[s > -1]))
        if expected is None:
            assert summary.class_ap[k] is None
            assert np.isnan(summary.precision50[k]).all() and np.isnan(summary.precision75[k]).all()
        else:
            assert summary.class_ap[k] == pytest.approx(expected, abs=1e-6)
            np.testing.assert_allclose(summary.precision50[k], s[0], atol=1e-6)
            np.testing.assert_allclose(summary.precision75[k], s[5], atol=1e-6)  # IoU .75: COCOeval's iouThrs[5]
            np.testing.assert_allclose(summary.precision[k], s.mean(axis=0), atol=1e-6)
            assert summary.class_ap50[k] == pytest.approx(float(s[0].mean()), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_cocoeval_streamed_in_any_order(seed):
    classes = 5
    data = _data(seed, classes=classes)
    reference = _cocoeval(data, classes)
    assert (reference.stats[[3, 4, 5]] > -1).all()  # every size range has objects: each AP is really compared
    assert 0.05 < reference.stats[0] < 0.95  # neither trivial
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    summary = _ours(data, classes, order).summary()
    _assert_equal(summary, reference, classes)
    assert summary.class_ap[classes - 1] is None  # no truth of the last class
    assert summary.images == len(data)
    assert summary.detections[1] >= 100 and summary.ap is not None


def test_area_field_not_the_box_decides_the_size_range():
    """COCO's own files give a segment's area: the size ranges follow it, as COCOeval's."""
    data = _data(7, segment_area=True)
    _assert_equal(_ours(data, 5).summary(), _cocoeval(data, 5), 5)


def test_without_crowds_and_with_default_areas():
    """`iscrowd` and `area` are optional: no crowd, the box's area."""
    data = _data(3, crowd=False)
    for d in data:
        del d["truths"]["iscrowd"], d["truths"]["area"]
    reference_data = _data(3, crowd=False)
    _assert_equal(_ours(data, 5).summary(), _cocoeval(reference_data, 5), 5)


def test_merge_of_two_halves_equals_all_at_once():
    data = _data(4)
    whole = _ours(data, 5).summary()
    first, second = DetectionEval(5), DetectionEval(5)
    for i, d in enumerate(data):
        (first if i % 2 else second).update(d["image_id"], d["detections"], d["truths"])
    merged = (first + second).summary()
    assert merged.stats == whole.stats
    assert merged.class_ap == whole.class_ap
    np.testing.assert_array_equal(merged.precision, whole.precision)
    assert len(first) + len(second) == len(data)


def test_a_size_range_without_objects_is_none():
    """Only medium objects: AP small and large are None (COCOeval's −1), AP medium is not."""
    truths = {"boxes": np.array([[10.0, 10.0, 60.0, 60.0]]), "labels": np.array([0])}
    detections = {"boxes": np.array([[12.0, 10.0, 60.0, 61.0], [100.0, 100.0, 110.0, 110.0]]),
                  "scores": np.array([0.9, 0.8]), "labels": np.array([0, 0])}
    ours = DetectionEval(["cat", "dog"])
    ours.update(0, detections, truths)
    summary = ours.summary()
    assert summary.ap_small is None and summary.ap_large is None and summary.ar_small is None
    assert summary.ap_medium == pytest.approx(summary.ap)
    assert summary.stats[3] == -1 and summary.class_ap[1] is None and summary.classes == ("cat", "dog")
    data = [{"image_id": 0, "detections": detections,
             "truths": {**truths, "iscrowd": np.array([0]), "area": np.array([2500.0])}}]
    _assert_equal(summary, _cocoeval(data, 2), 2)


def test_tensors_of_torchvision_output_are_taken():
    torch = pytest.importorskip("torch")
    data = _data(5)
    ours = DetectionEval(5)
    for d in data:
        det = {k: torch.as_tensor(v) for k, v in d["detections"].items()}
        ours.update(d["image_id"], det, {k: torch.as_tensor(v) for k, v in d["truths"].items()})
    _assert_equal(ours.summary(), _cocoeval(data, 5), 5)


def test_no_truth_at_all_gives_none_everywhere():
    ours = DetectionEval(3)
    ours.update(1, {"boxes": np.array([[0.0, 0, 5, 5]]), "scores": np.array([0.5]), "labels": np.array([2])},
                {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)})
    ours.update("b.png", {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)},
                {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)})  # ids of any kind: ints, then text
    summary = ours.summary()
    assert summary.ap is None and summary.ar100 is None and set(summary.class_ap) == {None}
    assert summary.stats == (-1.0,) * 12


def test_bad_input_is_refused():
    ours = DetectionEval(2)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
    with pytest.raises(ReportgenError, match="not inside the image"):
        ours.update(1, empty, {"boxes": np.array([[0.0, 0, 70, 10]]), "labels": np.array([0])}, size=(64, 64))
    with pytest.raises(ReportgenError, match="x0 ≤ x1"):
        ours.update(1, empty, {"boxes": np.array([[20.0, 0, 10, 10]]), "labels": np.array([0])}, size=(64, 64))
    with pytest.raises(ValueError, match="class indices"):
        ours.update(1, empty, {"boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([2])})
    ours.update(1, empty, {"boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([1])})
    with pytest.raises(ValueError, match="already given"):
        ours.update(1, empty, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)})
    with pytest.raises(ValueError, match="both evaluations"):
        ours.merge(ours)


def test_iou_ties_go_to_the_later_truth():
    """A detection equally close to two truths takes the later one (COCOeval's `>=` scan): here that leaves the
    earlier truth to the next detection, two hits; taking the first would leave one."""
    truths = {"boxes": np.array([[5.0, 10, 20, 20], [10.0, 10, 25, 20]]), "labels": np.array([0, 0]),
              "iscrowd": np.array([0, 0]), "area": np.array([150.0, 150.0])}
    detections = {"boxes": np.array([[10.0, 10, 20, 20], [5.0, 10, 19, 20]]), "scores": np.array([0.9, 0.8]),
                  "labels": np.array([0, 0])}
    ours = DetectionEval(1)
    ours.update(7, detections, truths)
    summary = ours.summary()
    reference = _cocoeval([{"image_id": 7, "detections": detections, "truths": truths}], 1)
    _assert_equal(summary, reference, 1)
    assert summary.ap50 == pytest.approx(1.0)


def test_match_boxes_takes_the_best_free_truth_of_the_class_in_score_order():
    from reportgen.metrics.detection import match_boxes

    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    boxes = np.array([[0, 0, 10, 9], [1, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.7])
    labels = np.array([1, 1, 2, 1])
    found = match_boxes(boxes, scores, labels, truth, np.array([1, 1, 2]))
    # the 0.9 box takes truth 0 first; the 0.5 box finds it taken; box 2 has the wrong class for truth 1
    assert found.truth_of.tolist() == [-1, 0, -1, -1]
    assert found.missed.tolist() == [False, True, True]
    assert found.false_positive.tolist() == [True, False, True, True]
    crowd = match_boxes(boxes[:2], scores[:2], labels[:2], truth[:1], [1], crowd=[True])
    assert crowd.truth_of.tolist() == [-2, -2] and crowd.missed.tolist() == [False]
    assert crowd.false_positive.tolist() == [False, False]  # a crowd's match is neither hit nor false positive
