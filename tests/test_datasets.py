"""Labelled inputs: ImageFolder-layout folders, CSV / JSONL manifests (labels, boxes, masks), limit and per-class
sampling, unreadable images skipped or refused, ground truth in report.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main
from reportgen.config import load_config
from reportgen import datasets
from reportgen.datasets import find_entries, resolve_labels
from reportgen.errors import ReportgenError
from reportgen.pipeline import prepare_model
from tests.conftest import make_image


def folder(root: Path, classes: dict[str, int], size=(40, 32)) -> Path:
    """root/<class>/<class>_<i>.png, `count` images per class."""
    seed = 10
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            make_image(root / name / f"{name}_{i}.png", size=size, seed=seed)
            seed += 1
    return root


def config_with(project, images, labels=None, **inputs):
    config = project.base()
    config["inputs"]["images"] = images
    config["inputs"].update(inputs)
    if labels is not None:
        (project.root / "labels.txt").write_text("\n".join(labels) + "\n")
        config["model"]["labels"] = "labels.txt"
    return config


def load(project, config):
    """The images a build would read: (ImageInputs, batch, notes)."""
    cfg = load_config(project.write(config))
    info, _ = prepare_model(cfg)
    loaded = datasets.load(cfg, info.preprocess, info.labels, info.num_classes)
    return loaded.images, torch.stack(loaded.tensors), loaded.notes


def build(project, config):
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    data = None
    if (project.root / "out" / "report.json").exists():
        data = json.loads((project.root / "out" / "report.json").read_text())
    return result, data


def rel(images):
    return [img.source for img in images]


# ---------------------------------------------------------------------------- ImageFolder


def test_imagefolder_classes_are_labels_exact_or_any_case(project):
    folder(project.root / "data", {"Cat": 2, "dog": 1, "bird": 1})
    folder(project.root / "data" / ".ipynb_checkpoints", {"x": 1})  # hidden folders are no class and hold no image
    folder(project.root / "data" / "dog", {".cache": 1})
    images, batch, _ = load(project, config_with(project, ["data"], labels=["cat", "dog", "bird"]))
    # torchvision's order: sorted class names ("Cat" < "bird" < "dog"), each folder's files sorted
    assert rel(images) == ["data/Cat/Cat_0.png", "data/Cat/Cat_1.png", "data/bird/bird_0.png", "data/dog/dog_0.png"]
    assert [img.label for img in images] == [0, 0, 2, 1]
    assert batch.shape == (4, 3, 16, 16)
    assert all(img.box is None and img.mask is None for img in images)


def test_wordnet_like_folders_map_by_sorted_index_as_imagefolder_does(project):
    folder(project.root / "imagenet", {"n03000000": 1, "n01000000": 1, "n02000000": 1})
    images, _, _ = load(project, config_with(project, ["imagenet"]))  # no labels: the sorted index
    assert [(Path(img.source).parent.name, img.label) for img in images] == [
        ("n01000000", 0), ("n02000000", 1), ("n03000000", 2)]
    # with labels that are not the folder names, still by sorted index (the count equals the classes)
    images, _, _ = load(project, config_with(project, ["imagenet"], labels=["tench", "goldfish", "shark"]))
    assert [img.label for img in images] == [0, 1, 2]
    from torchvision.datasets import ImageFolder
    assert ImageFolder(str(project.root / "imagenet")).class_to_idx == {"n01000000": 0, "n02000000": 1,
                                                                       "n03000000": 2}


def test_class_folders_that_match_nothing_are_an_error_with_close_matches(project):
    folder(project.root / "data", {"cat": 1, "dgo": 1, "fish": 1, "bird": 1})
    result, _ = build(project, config_with(project, ["data"], labels=["cat", "dog", "bird"]))
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert "`dgo` (did you mean `dog`?)" in message and "`fish`" in message and "`cat`" not in message
    assert "4 class folders but the model has 3 classes" in message
    assert not (project.root / "out").exists()
    # no labels and a count that is not the model's: the same refusal
    with pytest.raises(ReportgenError, match="cannot map to classes"):
        load(project, config_with(project, ["data"]))


def test_loose_images_beside_class_folders_are_an_error_naming_them(project):
    folder(project.root / "data", {"cat": 1, "dog": 1})
    make_image(project.root / "data" / "stray.png")
    (project.root / "data" / "README.txt").write_text("not an image: ignored")
    with pytest.raises(ReportgenError, match=r"holds images beside them: stray\.png"):
        find_entries((str(project.root / "data"),))
    result, _ = build(project, config_with(project, ["data"]))
    assert result.exit_code == 2 and "stray.png" in result.stderr


def test_a_plain_folder_keeps_its_meaning(project):
    (project.root / "images" / "empty_sub").mkdir()  # a sub-folder without images does not make it an ImageFolder
    images, _, notes = load(project, project.base())
    assert rel(images) == ["images/a.png", "images/b.jpg"] and [i.label for i in images] == [None, None]
    assert notes == []


# ---------------------------------------------------------------------------- manifests


def test_csv_manifest_labels_by_index_and_name_boxes_and_masks(project):
    data = project.root / "set"
    data.mkdir()
    for i in range(3):
        make_image(data / f"p{i}.png", size=(40, 32), seed=i)
    mask = np.zeros((32, 40), np.uint8)
    mask[8:24, 8:16] = 255  # rows 8..23, columns 8..15
    Image.fromarray(mask).save(data / "m0.png")
    (data / "set.csv").write_text(
        "path,label,x0,y0,x1,y1,mask\n"
        "p0.png,2,4,8,24,24,m0.png\n"
        "p1.png,Dog,,,,,\n"
        "p2.png,,0,0,4,32,\n")
    images, _, notes = load(project, config_with(project, ["set/set.csv"], labels=["cat", "dog", "bird"]))
    assert rel(images) == ["set/p0.png", "set/p1.png", "set/p2.png"]
    assert [img.label for img in images] == [2, 1, None]
    # 40x32 -> cover 16x16: resized to 20x16 (scale 0.5), centre crop 16x16 from the left 2
    # box (4, 8, 24, 24) -> scaled (2, 4, 12, 12) -> shifted by -2 in x: (0, 4, 10, 12)
    assert images[0].box == (0.0, 4.0, 10.0, 12.0)
    # mask: nearest downscale by 2 keeps source pixels 2i+1: columns 4..7, rows 4..11; the crop shifts x by -2
    expected = np.zeros((16, 16), bool)
    expected[4:12, 2:6] = True
    np.testing.assert_array_equal(images[0].mask, expected)
    assert images[1].box is None and images[1].mask is None
    # box (0, 0, 4, 32) -> (0, 0, 2, 16) -> (-2, 0, 0, 16): cropped away; the image stays, the report says so
    assert images[2].box is None
    assert len(notes) == 1 and "set/p2.png: its box [0, 0, 4, 32] lies outside the crop" in notes[0]


def test_boxes_follow_an_explicit_resize_and_crop(project):
    make_image(project.root / "p.png", size=(40, 32))
    (project.root / "set.jsonl").write_text('{"path": "p.png", "box": [8, 8, 32, 24], "label": 1}\n')
    config = config_with(project, ["set.jsonl"])
    config["inputs"]["preprocess"].update(resize=20, center_crop=16)
    images, batch, _ = load(project, config)
    # shorter side 32 -> 20: 25x20 (scale 0.625); crop 16: left round(4.5) = 4, top 2
    # (8, 8, 32, 24) * 0.625 = (5, 5, 20, 15) -> minus (4, 2) = (1, 3, 16, 13)
    assert images[0].box == (1.0, 3.0, 16.0, 13.0) and images[0].label == 1
    assert images[0].display.shape == (16, 16, 3)


def test_jsonl_manifest_box_as_keys_or_list_labels_by_name(project):
    data = project.root / "j"
    data.mkdir()
    make_image(data / "a.png", size=(32, 32))
    make_image(data / "b.png", size=(32, 32), seed=3)
    mask = np.zeros((32, 32), np.uint8)
    mask[0:4, 0:4] = 1  # a corner the crop keeps: 32x32 -> 16x16, no crop
    Image.fromarray(mask).save(data / "m.png")
    (data / "set.jsonl").write_text(
        '{"path": "a.png", "label": "bird", "x0": 0, "y0": 0, "x1": 16, "y1": 8}\n'
        "\n"
        '{"path": "b.png", "label": 0, "box": [16, 16, 32, 32], "mask": "m.png"}\n')
    images, _, notes = load(project, config_with(project, ["j/set.jsonl"], labels=["cat", "dog", "bird"]))
    assert [img.label for img in images] == [2, 0]
    assert images[0].box == (0.0, 0.0, 8.0, 4.0) and images[1].box == (8.0, 8.0, 16.0, 16.0)
    assert images[1].mask.sum() == 4 and images[1].mask[:2, :2].all()
    assert notes == []


@pytest.mark.parametrize("rows, expected", [
    ("p.png,0,1,1,5,5\nnope.png,1,1,1,5,5\n", "set.csv, line 3: nope.png does not exist"),
    ("p.png,0,1,1,5,5\np.png,1,1,one,5,5\n", "set.csv, line 3: box y0 must be a number, got 'one'"),
    ("p.png,0,5,1,5,5\n", "set.csv, line 2: a box needs x0 < x1 and y0 < y1, got [5, 1, 5, 5]"),
    ("p.png,0,1,1,5,\n", "set.csv, line 2: a box needs all four of x0, y0, x1, y1; y1 empty"),
    ("p.png,0,1,1,5,5\n\np.png,brid,1,1,5,5\n", "set.csv, line 4: unknown label `brid`. Did you mean `bird`?"),
    ("p.png,3,1,1,5,5\n", "set.csv, line 2: class index 3 is outside the model's 3 outputs"),
])
def test_manifest_errors_name_the_file_and_line_and_write_nothing(project, rows, expected):
    make_image(project.root / "p.png")
    (project.root / "set.csv").write_text("path,label,x0,y0,x1,y1\n" + rows)
    result, _ = build(project, config_with(project, ["set.csv"], labels=["cat", "dog", "bird"]))
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and result.stderr.count("error:") == 1, result.stderr
    assert not (project.root / "out").exists()


def test_jsonl_errors_name_the_line(project):
    make_image(project.root / "p.png")
    (project.root / "s.jsonl").write_text('{"path": "p.png"}\n{"path": "p.png", "box": [1, 2, 3]}\n')
    with pytest.raises(ReportgenError, match=r"s\.jsonl, line 2: `box` must be \[x0, y0, x1, y1\]"):
        load(project, config_with(project, ["s.jsonl"]))
    (project.root / "s.jsonl").write_text('{"path": "p.png"}\n{"file": "p.png"}\n')
    with pytest.raises(ReportgenError, match=r"s\.jsonl, line 2 has no `path` column"):
        load(project, config_with(project, ["s.jsonl"]))


def test_a_mask_of_another_size_is_an_error(project):
    make_image(project.root / "p.png", size=(40, 32))
    Image.fromarray(np.ones((10, 10), np.uint8)).save(project.root / "m.png")
    (project.root / "set.csv").write_text("path,mask\np.png,m.png\n")
    with pytest.raises(ReportgenError, match=r"set\.csv, line 2: the mask is 10x10 pixels but its image \(.*p\.png\) is 40x32"):
        load(project, config_with(project, ["set.csv"]))


# ---------------------------------------------------------------------------- limit and sampling


def test_limit_takes_the_first_images_in_entry_order(project):
    folder(project.root / "data", {"a": 3, "b": 3, "c": 1})
    images, batch, _ = load(project, config_with(project, ["images/b.jpg", "data"], limit=3))
    assert rel(images) == ["images/b.jpg", "data/a/a_0.png", "data/a/a_1.png"] and batch.shape[0] == 3


def test_per_class_sampling_is_reproducible(project):
    folder(project.root / "data", {"x": 6, "y": 6, "z": 2})

    def picked(**sample):
        config = config_with(project, ["data"], sample=sample)
        return rel(load(project, config)[0])

    first = picked(per_class=2, seed=1)
    assert first == picked(per_class=2, seed=1)
    assert len(first) == 6 and sum("/z/" in p for p in first) == 2  # a smaller class gives all it has
    assert first == sorted(first)  # kept in entry order
    assert any(picked(per_class=2, seed=s) != first for s in (2, 3, 4))
    config = config_with(project, ["data"], sample={"per_class": 2})
    config["seed"] = 1  # the default seed is the config's
    assert rel(load(project, config)[0]) == first
    # sampling, then the limit
    limited = rel(load(project, config_with(project, ["data"], sample={"per_class": 2, "seed": 1}, limit=3))[0])
    assert limited == first[:3]


def test_per_class_sampling_needs_labels(project):
    with pytest.raises(ReportgenError, match="sampling per class needs labels, but 2 of the 2 images have none"):
        load(project, config_with(project, ["images/"], sample={"per_class": 1}))
    result, _ = build(project, config_with(project, ["images/"], sample={"seed": 3}))
    assert result.exit_code == 2 and "needs `per_class: N`" in result.stderr


# ---------------------------------------------------------------------------- unreadable images


def test_a_broken_image_is_skipped_with_a_note_or_refused_when_strict(project):
    (project.root / "images" / "c.png").write_text("this is text")
    result, data = build(project, project.base())
    assert result.exit_code == 0, result.output
    assert [i["name"] for i in data["images"]] == ["a", "b"]
    html = (project.root / "out" / "report.html").read_text()
    assert "1 image could not be read and was skipped: images/c.png (not an image Pillow can read)" in html
    checked = CliRunner().invoke(main, ["validate", str(project.write(project.base()))])
    assert checked.exit_code == 0 and "warning: 1 image could not be read" in checked.stderr
    loud = CliRunner().invoke(main, ["build", str(project.write(project.base()))])  # progress on stderr says so too
    assert loud.exit_code == 0 and "note: 1 image could not be read and was skipped" in loud.stderr

    strict = config_with(project, ["images/"], strict=True)
    strict["output"]["dir"] = "out_strict"
    result = CliRunner().invoke(main, ["build", str(project.write(strict)), "-q"])
    assert result.exit_code == 2 and "c.png is not an image Pillow can read" in result.stderr
    assert result.stderr.count("error:") == 1 and not (project.root / "out_strict").exists()


def test_every_image_broken_is_an_error_either_way(project):
    for name in ("a.png", "b.jpg"):
        (project.root / "images" / name).write_bytes(b"broken")
    for strict in (False, True):
        result, _ = build(project, config_with(project, ["images/"], strict=strict))
        assert result.exit_code == 2, result.output
        assert ("none of the 2 images could be read" if not strict else "is not an image") in result.stderr


def test_limit_counts_readable_images(project):
    (project.root / "images" / "0.png").write_text("broken")  # first in order
    images, _, notes = load(project, config_with(project, ["images/"], limit=1))
    assert rel(images) == ["images/a.png"] and "images/0.png" in notes[0]


# ---------------------------------------------------------------------------- report.json


def test_report_json_gives_the_truth(project):
    folder(project.root / "data", {"cat": 1, "bird": 1})
    config = config_with(project, ["data", "images/a.png"], labels=["cat", "dog", "bird"])
    result, data = build(project, config)
    assert result.exit_code == 0, result.output
    truths = {i["source"]: i["truth"] for i in data["images"]}
    assert truths == {"data/bird/bird_0.png": {"index": 2, "label": "bird"},
                      "data/cat/cat_0.png": {"index": 0, "label": "cat"},
                      "images/a.png": None}


def test_entries_resolve_without_and_with_the_model(project):
    folder(project.root / "data", {"k2": 1, "k1": 1})
    entries = find_entries((str(project.root / "data"),))
    assert [e.label for e in entries] == ["k1", "k2"]  # raw names before the model is known
    assert [e.label for e in resolve_labels(list(entries), None, 2)] == [0, 1]
    with pytest.raises(ReportgenError, match="2 class folders but the model has 3 classes"):
        resolve_labels(list(entries), None, 3)


@pytest.mark.parametrize("row", ['{"path": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                 '{"path": "p.png", "label": ' + "9" * 5000 + "}"], ids=["deep", "long number"])
def test_a_jsonl_row_nested_thousands_deep_or_with_a_number_python_cannot_read_is_one_message(project, row):
    make_image(project.root / "p.png")
    (project.root / "set.jsonl").write_text('{"path": "p.png", "label": 1}\n' + row + "\n")
    result, _ = build(project, config_with(project, ["set.jsonl"], labels=["cat", "dog", "bird"]))
    assert result.exit_code == 2 and "set.jsonl, line 2: nested too deeply, or a number too long" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.output, result.output


def test_links_that_loop_or_repeat_a_folder_list_each_image_once_and_end(tmp_path):
    """`loop -> ..` inside a class folder, `self -> .`, and a recursive glob over them: each image once, at once."""
    for name in ("cat", "dog"):
        (tmp_path / "set" / name).mkdir(parents=True)
        make_image(tmp_path / "set" / name / f"{name}.png")
    (tmp_path / "set" / "cat" / "loop").symlink_to("..")
    (tmp_path / "set" / "dog" / "self").symlink_to(".")
    found = find_entries((str(tmp_path / "set"),))
    assert sorted((e.label, e.path.name) for e in found) == [("cat", "cat.png"), ("dog", "dog.png")]
    globbed = find_entries((str(tmp_path / "set" / "**" / "*.png"),))
    assert sorted(e.path.name for e in globbed) == ["cat.png", "dog.png"]
    hidden = tmp_path / "set" / "dog" / ".cache"
    hidden.mkdir()
    make_image(hidden / "no.png")
    assert sorted(e.path.name for e in find_entries((str(tmp_path / "set" / "**" / "*.png"),))) == ["cat.png",
                                                                                                  "dog.png"]


def test_a_folder_of_more_folders_than_a_data_set_has_is_refused(tmp_path, monkeypatch):
    import reportgen.entries

    monkeypatch.setattr(reportgen.entries, "FOLDER_LIMIT", 5)
    for i in range(8):
        (tmp_path / "root" / "a" / f"d{i}").mkdir(parents=True)
    make_image(tmp_path / "root" / "a" / "d0" / "x.png")
    with pytest.raises(ReportgenError, match=r"holds more than 5 folders: give the folder that holds your images"):
        find_entries((str(tmp_path / "root"),))
