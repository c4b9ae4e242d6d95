"""Reading a detection data set's true boxes (`reportgen.annotations`): COCO files and JSONL manifests, the
category-to-label rule, and one clear ReportgenError per kind of bad input."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from reportgen import annotations
from reportgen.annotations import category_map, image_size, read_box_manifest, read_coco
from reportgen.errors import ReportgenError
from reportgen.metrics.detection import DetectionEval

# torchvision's COCO labels keep COCO's ids: index = id, gaps named "N/A"
TV_LABELS = ["__background__", "person", "bicycle", "N/A", "car", "N/A", "dog"]


def _image(path, w=64, h=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 20, 200)).save(path)
    return path


def _coco(tmp_path, **changes):
    """A COCO file of three images (one without annotations) under tmp_path/images."""
    for name in ("a.png", "b.png", "sub/c.png"):
        _image(tmp_path / "images" / name)
    data = {
        "images": [{"id": 10, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 11, "file_name": "b.png", "width": 64, "height": 48},
                   {"id": 12, "file_name": "sub/c.png"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2, 3, 20, 10], "area": 150.5, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 6, "bbox": [30.5, 4, 33.5, 40], "iscrowd": 1, "area": 900.0},
            {"id": 3, "image_id": 12, "category_id": 4, "bbox": [0, 0, 64, 48]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 4, "name": "car"}, {"id": 6, "name": "Dog "},
                       {"id": 90, "name": "toothbrush"}],  # used by no annotation: not mapped
    }
    data.update(changes)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_names_crowds_and_areas(tmp_path):
    read = read_coco(_coco(tmp_path), tmp_path / "images", TV_LABELS)
    assert read.rule == "name" and read.mapping == {1: 1, 4: 4, 6: 6}
    a, b, c = read.images
    assert a.path == str(tmp_path / "images" / "a.png") and a.image_id == 10 and a.size == (48, 64)
    np.testing.assert_array_equal(a.boxes, [[2, 3, 22, 13], [30.5, 4, 64, 44]])  # [x, y, w, h] -> x0, y0, x1, y1
    assert a.boxes.dtype == np.float64
    assert a.labels.tolist() == [1, 6] and a.names == ("person", "Dog") and a.category_ids == (1, 6)
    assert a.iscrowd.tolist() == [False, True] and a.area.tolist() == [150.5, 900.0]  # the file's areas
    assert a.annotation_ids == (1, 2)
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)
    assert c.area.tolist() == [64 * 48] and not c.iscrowd.any()  # no `area`: the box's, no `iscrowd`: not a crowd


def test_coco_by_id_when_the_names_are_not_the_models(tmp_path):
    read = read_coco(_coco(tmp_path), tmp_path / "images", [str(k) for k in range(7)])
    assert read.rule == "id" and read.mapping == {1: 1, 4: 4, 6: 6}
    assert read.images[0].labels.tolist() == [1, 6]


def test_coco_images_chosen_in_the_given_order(tmp_path):
    path = _coco(tmp_path)
    root = tmp_path / "images"
    read = read_coco(path, root, TV_LABELS, images=[root / "sub" / "c.png", root / "a.png"])
    assert [i.image_id for i in read.images] == [12, 10]


def test_coco_read_equals_cocoeval_on_the_same_file(tmp_path):
    """The boxes, crowds and areas read give DetectionEval the numbers COCOeval gives on the file itself (which
    needs every annotation's `iscrowd` and `area`)."""
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][2].update(iscrowd=0, area=float(64 * 48))
    path.write_text(json.dumps(data))
    read = read_coco(path, tmp_path / "images", TV_LABELS)
    detections = {10: ([[3, 3, 22, 14], [31, 5, 60, 40], [0, 0, 10, 10]], [0.9, 0.8, 0.3], [1, 6, 1]),
                  11: ([[5, 5, 20, 20]], [0.7], [4]), 12: ([[1, 1, 60, 47]], [0.6], [4])}
    ours = DetectionEval(TV_LABELS)
    results = []
    for image in read.images:
        boxes, scores, labels = detections[image.image_id]
        ours.update(image.image_id, (np.array(boxes, float), np.array(scores), np.array(labels)), image.truths(),
                    size=image.size)
        results += [{"image_id": image.image_id, "category_id": label, "score": score,
                     "bbox": [x0, y0, x1 - x0, y1 - y0]} for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        reference = COCOeval(coco, coco.loadRes(results), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    np.testing.assert_allclose(ours.summary().stats, reference.stats, atol=1e-6)


def test_image_size_applies_exif_orientation(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated a quarter: read as 48 wide, 64 high
    Image.new("RGB", (64, 48)).save(path, exif=exif)
    assert image_size(path) == (64, 48)


def test_category_map_rule():
    assert category_map({1: "person", 6: "dog"}, TV_LABELS) == ("name", {1: 1, 6: 6})
    assert category_map({0: "cat", 1: "dog"}, ["dog", "cat"]) == ("name", {0: 1, 1: 0})  # names win over ids
    assert category_map({0: "a", 2: "b"}, ["x", "y", "z"]) == ("id", {0: 0, 2: 2})
    with pytest.raises(ReportgenError, match=r"other ids: 2 'person' \(the model's label 1\)"):
        category_map({2: "person", 4: "zebra"}, TV_LABELS)
    with pytest.raises(ReportgenError, match=r"2 categories are not the model's: 7 'persn'.*`person`.*; 8 'kite'"):
        category_map({7: "persn", 8: "kite"}, TV_LABELS)
    with pytest.raises(ReportgenError, match="not the model's: 3 'N/A'"):  # a repeated label names nothing
        category_map({3: "N/A", 9: "x"}, TV_LABELS)


@pytest.mark.parametrize("changes, message", [
    ({"annotations": [{"id": k, "image_id": 99 + k, "category_id": 1, "bbox": [0, 0, 1, 1]} for k in range(7)]},
     r"7 annotations are of image ids that `images` does not list: 0, 1, 2, 3, 4 and 2 more"),
    ({"annotations": [{"id": 5, "image_id": 10, "category_id": 77, "bbox": [0, 0, 1, 1]}]},
     r"category ids that `categories` does not list: 5 \(category 77\)"),
    ({"annotations": [{"id": 5, "image_id": 10, "category_id": 90, "bbox": [0, 0, 1, 1]}]},
     r"1 categories are not the model's: 90 'toothbrush'"),
    ({"annotations": [{"id": 5, "image_id": 10, "category_id": 1, "bbox": [50, 0, 20, 10]}]},
     r"annotation 5 of image 10 \(a.png\): the box \[50, 0, 70, 10\] is outside the 64×48 image"),
    ({"annotations": [{"id": 5, "image_id": 10, "category_id": 1, "bbox": [5, 0, -2, 10]}]},
     r"annotation 5: `bbox` \[5, 0, -2, 10\] has a negative width .*x1 < x0"),
    ({"annotations": [{"id": 5, "image_id": 10, "category_id": 1, "bbox": [5, 0, 10]}]},
     r"annotation 5: `bbox` must be \[x, y, width, height\]"),
    ({"images": [{"id": 10, "file_name": "a.png"}, {"id": 10, "file_name": "b.png"}]}, "two images have the id 10"),
    ({"images": [{"id": 10, "file_name": "a.png"}, {"id": 11, "file_name": "./a.png"}]}, "are both a.png"),
    ({"images": [{"id": 10, "file_name": "../a.png"}]}, "not inside the image root"),
    ({"images": [{"id": 10, "file_name": "a.png", "width": 640, "height": 480}], "annotations": []},
     r"image 10 \(a.png\) is 640×480 in the file but 64×48 on disk"),
    ({"images": [{"id": 10 + k, "file_name": f"gone{k}.png"} for k in range(3)], "annotations": []},
     r"3 of its 3 images are not in .*: gone0.png, gone1.png, gone2.png"),
    ({"categories": [{"name": "person"}]}, r"categories\[0\] needs an integer `id`"),
    ({"images": {"a": 1}}, "is not a COCO annotation file"),
])
def test_coco_bad_input(tmp_path, changes, message):
    with pytest.raises(ReportgenError, match=message):
        read_coco(_coco(tmp_path, **changes), tmp_path / "images", TV_LABELS)


def test_coco_images_not_in_the_file_are_named(tmp_path):
    path = _coco(tmp_path)
    root = tmp_path / "images"
    others = [_image(tmp_path / "other" / f"x{k}.png") for k in range(2)]
    with pytest.raises(ReportgenError, match=r"has no image .*x0.png, .*x1.png \(file names are matched relative"):
        read_coco(path, root, TV_LABELS, images=[root / "a.png", *others])


def test_coco_malformed_and_oversized_files(tmp_path, monkeypatch):
    path = tmp_path / "instances.json"
    path.write_text('{"images": [}')
    with pytest.raises(ReportgenError, match="is not valid JSON: .* line 1, column 13"):
        read_coco(path, tmp_path, TV_LABELS)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ReportgenError, match="nested too deeply"):
        read_coco(path, tmp_path, TV_LABELS)
    path.write_bytes(b'{"images": "\xff"}')
    with pytest.raises(ReportgenError, match="not UTF-8"):
        read_coco(path, tmp_path, TV_LABELS)
    with pytest.raises(ReportgenError, match="does not exist"):
        read_coco(tmp_path / "nope.json", tmp_path, TV_LABELS)
    monkeypatch.setattr(annotations, "MAX_BYTES", 100)
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [], "pad": "x" * 200}))
    with pytest.raises(ReportgenError, match="more than the 100 read"):
        read_coco(path, tmp_path, TV_LABELS)


# ---------------------------------------------------------------------------- JSONL


def _manifest(tmp_path, rows):
    _image(tmp_path / "a.png")
    _image(tmp_path / "sub" / "b.png", w=32, h=32)
    path = tmp_path / "boxes.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_manifest_names_and_indices(tmp_path):
    path = _manifest(tmp_path, [
        {"path": "a.png", "boxes": [[1, 2, 30, 40], [0, 0, 64, 48]], "labels": ["Person", 6], "iscrowd": [0, 1]},
        "",
        {"path": "sub/b.png", "boxes": [], "labels": []},
    ])
    read = read_box_manifest(path, TV_LABELS)
    a, b = read.images
    assert read.rule == "index and name" and read.mapping == {}
    np.testing.assert_array_equal(a.boxes, [[1, 2, 30, 40], [0, 0, 64, 48]])
    assert a.labels.tolist() == [1, 6] and a.names == ("person", "dog") and a.iscrowd.tolist() == [False, True]
    assert a.area.tolist() == [29 * 38, 64 * 48] and a.image_id == 1 and a.size == (48, 64)
    assert b.image_id == 3 and b.boxes.shape == (0, 4) and b.size == (32, 32)


@pytest.mark.parametrize("row, message", [
    ({"path": "a.png", "boxes": [[10, 0, 5, 5]], "labels": [1]}, r"line 1: box 0: the box \[10, 0, 5, 5\] has x1 < x0"),
    ({"path": "a.png", "boxes": [[0, 0, 5, 5], [0, 0, 65, 5]], "labels": [1, 1]},
     r"line 1: box 1: the box \[0, 0, 65, 5\] is outside the 64×48 image"),
    ({"path": "a.png", "boxes": [[0, 0, 5, 5]], "labels": ["persn"]}, r"label 0 'persn' is not one of .*`person`"),
    ({"path": "a.png", "boxes": [[0, 0, 5, 5]], "labels": [7]}, r"label 0 7 is not one of .*index 0 to 6"),
    ({"path": "a.png", "boxes": [[0, 0, 5, 5]], "labels": []}, "lists of one length"),
    ({"path": "a.png", "boxes": [[0, 0, 5]], "labels": [1]}, r"box 0 must be \[x0, y0, x1, y1\]"),
    ({"path": "a.png", "boxes": [[0, 0, 5, "x"]], "labels": [1]}, r"box 0 must be"),
    ({"path": "gone.png", "boxes": [], "labels": []}, "line 1: gone.png does not exist"),
    ({"path": "a.png", "boxes": [[0, 0, 5, 5]], "labels": [1], "iscrowd": [2]}, "`iscrowd` must be a list of 0 or 1"),
    ('{"path": "a.png", ', r"line 1: not valid JSON"),
    ([1, 2], "expected an object like"),
])
def test_manifest_bad_input(tmp_path, row, message):
    with pytest.raises(ReportgenError, match=message):
        read_box_manifest(_manifest(tmp_path, [row]), TV_LABELS)


def test_manifest_repeated_image_and_empty_file(tmp_path):
    row = {"path": "a.png", "boxes": [], "labels": []}
    with pytest.raises(ReportgenError, match=r"line 2: ./a.png is already on line 1"):
        read_box_manifest(_manifest(tmp_path, [row, {**row, "path": "./a.png"}]), TV_LABELS)
    with pytest.raises(ReportgenError, match="lists no image"):
        read_box_manifest(_manifest(tmp_path, [""]), TV_LABELS)
