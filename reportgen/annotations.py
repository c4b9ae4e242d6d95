"""A detection data set's true boxes: a COCO file (`instances.json` with the folder of its images) or a JSONL
manifest with `boxes` and `labels` per row, read into plain records (`ImageBoxes`), one per image, with the
categories mapped to the model's label indices. No torch: the files are checked before any model is built.

Boxes come out as (n, 4) float64 x0, y0, x1, y1 in the pixels of the image as read (EXIF orientation applied,
as `inputs.read_image` does); COCO's [x, y, w, h] is converted. Each box must lie inside its image with
x0 ≤ x1 and y0 ≤ y1 (a zero-width box is kept: COCOeval keeps it). The `area` of a box decides its COCO size
range (small, medium, large): a COCO file's `area` field when it has one (in COCO's own files the area of the
object's segment, which COCOeval uses), else the box's area w·h (a manifest's boxes, a COCO file without areas).

Categories to the model's labels (`category_map`), the rule:

1. by NAME when the name of every category used by an annotation is one of the model's labels (compared
   without case and surrounding spaces; a label that the model repeats, like torchvision's "N/A", names none);
2. else by ID when every such id is a label index of the model (0 ≤ id < number of labels) and no category
   whose name IS a label has another id than that label's index (torchvision's COCO models keep COCO's 91 ids,
   gaps and all, so both rules agree on them);
3. else a ReportgenError naming the first categories that match neither.

A manifest's labels are names (matched as in 1) or label indices. Categories no annotation uses are not mapped.

A build reads its images' boxes with `annotations_for` (from `detection.annotations`): an image the annotations do
not list has no truth (a note says so), an annotated image the build does not use is ignored, and annotations that
list none of the build's images are an error naming both.
A stranger's file is bounded: at most MAX_BYTES read, JSON nested at most as deep as Python's parser allows.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ReportgenError, did_you_mean

MAX_BYTES = 2**28  # 256 MiB: COCO 2017's val annotations are 25 MB; a file this size already takes GBs to parse
SHOWN = 5  # names a message lists
_SWAPPED = {5, 6, 7, 8}  # EXIF orientations that turn the image a quarter: width and height swap


@dataclass(frozen=True)
class ImageBoxes:
    """One image's true boxes."""

    path: str  # the image file
    boxes: np.ndarray  # (n, 4) float64 x0, y0, x1, y1 in the image's pixels
    labels: np.ndarray  # (n,) int64: the model's label index of each box
    names: tuple[str, ...]  # each box's category name as the file gives it (a COCO id's name, a manifest label)
    iscrowd: np.ndarray  # (n,) bool: COCO's crowd regions (ignored by AP); all False in a manifest
    area: np.ndarray  # (n,) float64: COCO's `area` when given, else the box's w·h
    size: tuple[int, int]  # (h, w) of the image as read
    image_id: int | str  # the COCO image id; a manifest's line number
    category_ids: tuple[int, ...] = ()  # each box's COCO category id (empty for a manifest)
    annotation_ids: tuple[int, ...] = ()  # each box's COCO annotation id (empty for a manifest)

    def truths(self) -> dict[str, np.ndarray]:
        """The `truths` of `metrics.detection.DetectionEval.update`."""
        return {"boxes": self.boxes, "labels": self.labels, "iscrowd": self.iscrowd, "area": self.area}


@dataclass(frozen=True)
class Annotations:
    """A data set's boxes, and how its categories were mapped (`rule`: "name", "id" or "index" for a manifest's
    label indices; "name" when a manifest gives names)."""

    images: tuple[ImageBoxes, ...]
    rule: str
    mapping: dict[int, int]  # COCO category id -> the model's label index (empty for a manifest)


# ---------------------------------------------------------------------------- COCO


def read_coco(path: Path, root: Path, labels: Sequence[str], images: Iterable[Path] | None = None,
              shown: Callable[[Path], str] = str, partial: bool = False) -> Annotations:
    """A COCO `instances.json` -> the boxes of each of its images under `root` (its `file_name`s are relative to
    `root`), mapped to the model's `labels` (its class names, index = label). `images`: the image files the
    build uses; each must be one of the file's images (with `partial`: those that are not are left out, but one
    at least must be), and only those are returned, in that order (default: every image of the file, in its
    order, each of which must exist). `shown` turns a path into the text messages show. Bad input: a
    ReportgenError naming what is wrong and how to fix it."""
    origin = shown(path)
    data = _load_json(path, origin)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ReportgenError(f"{origin} is not a COCO annotation file: it needs the lists `images`, `annotations` and "
                             "`categories` (as COCO's instances_*.json).")
    table = _coco_images(data["images"], origin)  # id -> (file_name, (h, w) or None)
    categories = _coco_categories(data["categories"], origin)  # id -> name
    per_image = _coco_annotations(data["annotations"], table, categories, origin)
    used = {a[1] for anns in per_image.values() for a in anns}
    rule, mapping = category_map({c: categories[c] for c in sorted(used)}, labels, origin)
    by_file = {os.path.normpath(name): image_id for image_id, (name, _) in table.items()}
    if images is None:
        chosen = list(table)
        missing = [table[i][0] for i in chosen if not (root / table[i][0]).is_file()]
        if missing:
            raise ReportgenError(f"{origin}: {len(missing)} of its {len(chosen)} images are not in {shown(root)}: "
                                 f"{_first(missing)}. Give the folder that holds its images as the image root.")
    else:
        files = [Path(p) for p in images]
        relative = [_relative(f, root) for f in files]
        unknown = [shown(f) for f, r in zip(files, relative) if r is None or r not in by_file]
        if unknown and (not partial or len(unknown) == len(files)):
            listed = _first([name for name, _ in table.values()])
            raise ReportgenError(f"{origin} has no image {_first(unknown)} (file names are matched relative to the "
                                 f"image root {shown(root)}; it lists {listed or 'none'}): give the annotation file "
                                 "of these images, or its root.")
        chosen = [by_file[r] for r in relative if r is not None and r in by_file]
    out = []
    for image_id in chosen:
        name, size = table[image_id]
        file = root / name
        actual = image_size(file, shown)
        if size is not None and size != actual:
            raise ReportgenError(f"{origin}: image {image_id} ({name}) is {size[1]}×{size[0]} in the file but "
                                 f"{actual[1]}×{actual[0]} on disk ({shown(file)}): the annotations are of other images.")
        anns = per_image.get(image_id, [])
        boxes = np.array([a[2] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # [x, y, w, h] -> x0, y0, x1, y1
        _check_boxes(boxes, actual, lambda row: f"{origin}: annotation {anns[row][0]} of image {image_id} ({name})")
        box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        area = np.array([a[4] if a[4] is not None else box_area[i] for i, a in enumerate(anns)], dtype=np.float64)
        out.append(ImageBoxes(
            path=os.fspath(file), boxes=boxes, labels=np.array([mapping[a[1]] for a in anns], dtype=np.int64),
            names=tuple(categories[a[1]] for a in anns), iscrowd=np.array([a[3] for a in anns], dtype=bool),
            area=area, size=actual, image_id=image_id, category_ids=tuple(a[1] for a in anns),
            annotation_ids=tuple(a[0] for a in anns)))
    return Annotations(tuple(out), rule, mapping)


def _coco_images(images: list, origin: str) -> dict[int, tuple[str, tuple[int, int] | None]]:
    table: dict[int, tuple[str, tuple[int, int] | None]] = {}
    names: dict[str, int] = {}
    for n, image in enumerate(images):
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not isinstance(image.get("file_name"), str) \
                or not image["file_name"].strip():
            raise ReportgenError(f"{origin}: images[{n}] needs an integer `id` and a `file_name`, got {_short(image)}.")
        image_id, name = image["id"], os.path.normpath(image["file_name"])
        if image_id in table:
            raise ReportgenError(f"{origin}: two images have the id {image_id} ({table[image_id][0]}, {name}): ids "
                                 "must be unique.")
        if name in names:
            raise ReportgenError(f"{origin}: the images {names[name]} and {image_id} are both {name}.")
        if Path(name).is_absolute() or name.split(os.sep)[0] == "..":
            raise ReportgenError(f"{origin}: image {image_id}'s file_name {name} is not inside the image root: "
                                 "give it relative to the root.")
        h, w = image.get("height"), image.get("width")
        size = (h, w) if _is_int(h) and _is_int(w) else None
        table[image_id] = (name, size)
        names[name] = image_id
    return table


def _coco_categories(categories: list, origin: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise ReportgenError(f"{origin}: categories[{n}] needs an integer `id`, got {_short(category)}.")
        if category["id"] in out:
            raise ReportgenError(f"{origin}: two categories have the id {category['id']}.")
        name = category.get("name")
        out[category["id"]] = name.strip() if isinstance(name, str) else str(category["id"])
    return out


def _coco_annotations(annotations: list, table: dict, categories: dict, origin: str) -> dict[int, list]:
    """image id -> [(annotation id, category id, [x, y, w, h], iscrowd, area or None)], checked."""
    per_image: dict[int, list] = {}
    no_image, no_category = [], []
    for n, ann in enumerate(annotations):
        where = f"{origin}: annotation {ann.get('id', f'[{n}]') if isinstance(ann, dict) else f'[{n}]'}"
        if not isinstance(ann, dict) or not _is_int(ann.get("image_id")) or not _is_int(ann.get("category_id")):
            raise ReportgenError(f"{where} needs an integer `image_id` and `category_id`, got {_short(ann)}.")
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise ReportgenError(f"{where}: `bbox` must be [x, y, width, height] (COCO's order), got {_short(box)}.")
        if box[2] < 0 or box[3] < 0:
            raise ReportgenError(f"{where}: `bbox` {box} has a negative width or height (x1 < x0 or y1 < y0): COCO "
                                 "boxes are [x, y, width, height].")
        area = ann.get("area")
        if area is not None and not (_is_number(area) and area >= 0):
            raise ReportgenError(f"{where}: `area` must be a number ≥ 0, got {_short(area)}.")
        if ann["image_id"] not in table:
            no_image.append(str(ann.get("id", f"[{n}]")))
            continue
        if ann["category_id"] not in categories:
            no_category.append(f"{ann.get('id', f'[{n}]')} (category {ann['category_id']})")
            continue
        ann_id = ann.get("id") if _is_int(ann.get("id")) else n
        per_image.setdefault(ann["image_id"], []).append(
            (ann_id, ann["category_id"], [float(v) for v in box], bool(ann.get("iscrowd", 0)),
             None if area is None else float(area)))
    if no_image:
        raise ReportgenError(f"{origin}: {len(no_image)} annotations are of image ids that `images` does not list: "
                             f"{_first(no_image)}. Give the file's images, or drop those annotations.")
    if no_category:
        raise ReportgenError(f"{origin}: {len(no_category)} annotations are of category ids that `categories` does "
                             f"not list: {_first(no_category)}.")
    return per_image


# ---------------------------------------------------------------------------- categories


def category_map(categories: dict[int, str], labels: Sequence[str], origin: str = "the annotations") \
        -> tuple[str, dict[int, int]]:
    """(rule, {category id: the model's label index}) for `categories` ({id: name}), by the module's rule:
    by name when every name is a label, else by id when every id is a label index and no name contradicts it."""
    index = _label_index(labels)
    named = {c: index.get(_key(name)) for c, name in categories.items()}
    if all(v is not None for v in named.values()):
        return "name", {c: int(v) for c, v in named.items()}
    in_range = all(0 <= c < len(labels) for c in categories)
    contradicted = [c for c, v in named.items() if v is not None and v != c]
    if in_range and not contradicted:
        return "id", {c: c for c in categories}
    if contradicted:
        bad = [f"{c} {categories[c]!r} (the model's label {named[c]})" for c in contradicted]
        raise ReportgenError(f"{origin}: categories name the model's labels but with other ids: {_first(bad)}. "
                             "Give every category the model's name for it, or its label index as its id.")
    unknown = [c for c, v in named.items() if v is None]
    bad = [f"{c} {categories[c]!r}{did_you_mean(categories[c], [str(x) for x in labels])}" for c in unknown]
    raise ReportgenError(f"{origin}: {len(unknown)} categories are not the model's: {_first(bad, sep='; ')}. A category "
                         f"maps to a label of the same name, or else to the label whose index is its id (the model "
                         f"has {len(labels)} labels: 0 to {len(labels) - 1}).")


def _label_index(labels: Sequence[str]) -> dict[str, int]:
    """name -> index for the labels the model names once (torchvision repeats "N/A": those name nothing)."""
    index: dict[str, int] = {}
    repeated = set()
    for i, label in enumerate(labels):
        key = _key(str(label))
        if key in index:
            repeated.add(key)
        index.setdefault(key, i)
    return {k: v for k, v in index.items() if k not in repeated}


def _key(name: str) -> str:
    return name.strip().casefold()


# ---------------------------------------------------------------------------- JSONL manifest


def read_box_manifest(path: Path, labels: Sequence[str], shown: Callable[[Path], str] = str,
                      only: Iterable[Path] | None = None) -> Annotations:
    """A JSONL manifest, one image per line: {"path": "a.jpg", "boxes": [[x0, y0, x1, y1], ...], "labels": ["cat",
    3, ...]}, paths relative to the manifest's folder, labels the model's names or label indices; optional
    "iscrowd": [0, 1, ...]. -> its images' boxes, in its order. `only`: the image files the build uses; the rows of
    other files are skipped unread (one row at least must be of them). Bad input: a ReportgenError naming the line."""
    origin = shown(path)
    _check_size(path, origin)
    index = _label_index(labels)
    wanted = None if only is None else {os.path.abspath(f) for f in only}
    out, rules, seen, paths = [], set(), {}, []
    try:
        with path.open(encoding="utf-8-sig") as lines:
            for line, raw in enumerate(lines, 1):
                if raw.strip():
                    row = _manifest_row(raw, line, path, origin, labels, index, rules, seen, shown, wanted, paths)
                    out += [row] if row is not None else []
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportgenError(f"cannot read the manifest {origin}: {exc}.") from None
    if not out and wanted is not None and paths:
        raise ReportgenError(f"the manifest {origin} lists none of the images: it lists {_first(paths)}, the images "
                             f"are {_first([shown(Path(f)) for f in sorted(wanted)])} (paths relative to the manifest's folder).")
    if not out:
        raise ReportgenError(f"the manifest {origin} lists no image.")
    return Annotations(tuple(out), " and ".join(sorted(rules)) or "name", {})


def _manifest_row(raw: str, line: int, manifest: Path, origin: str, labels: Sequence[str], index: dict[str, int],
                  rules: set, seen: dict, shown: Callable[[Path], str], wanted: set | None = None,
                  paths: list | None = None) -> ImageBoxes | None:
    where = f"{origin}, line {line}"
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ReportgenError(f"{where}: not valid JSON ({exc.msg}).") from None
    except (RecursionError, ValueError):
        raise ReportgenError(f"{where}: nested too deeply, or a number too long.") from None
    example = '{"path": "a.jpg", "boxes": [[x0, y0, x1, y1]], "labels": ["cat"]}'
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"].strip():
        raise ReportgenError(f"{where}: expected an object like {example}.")
    boxes, names = row.get("boxes"), row.get("labels")
    if not isinstance(boxes, list) or not isinstance(names, list) or len(boxes) != len(names):
        raise ReportgenError(f"{where}: `boxes` and `labels` must be lists of one length, like {example}.")
    file = Path(os.path.normpath(manifest.parent / Path(row["path"]).expanduser()))
    if wanted is not None and os.path.abspath(file) not in wanted:  # an image the build does not use
        paths.append(row["path"])
        return None
    if not file.is_file():
        raise ReportgenError(f"{where}: {row['path']} does not exist ({shown(file)}).")
    if file in seen:
        raise ReportgenError(f"{where}: {row['path']} is already on line {seen[file]}: give each image one line.")
    seen[file] = line
    for n, box in enumerate(boxes):
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise ReportgenError(f"{where}: box {n} must be [x0, y0, x1, y1], got {_short(box)}.")
    array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    size = image_size(file, shown)
    _check_boxes(array, size, lambda n: f"{where}: box {n}")
    indices = []
    for n, label in enumerate(names):
        if _is_int(label) and 0 <= label < len(labels):
            indices.append(label)
            rules.add("index")
        elif isinstance(label, str) and _key(label) in index:
            indices.append(index[_key(label)])
            rules.add("name")
        else:
            hint = did_you_mean(label, [str(x) for x in labels]) if isinstance(label, str) else ""
            raise ReportgenError(f"{where}: label {n} {_short(label)} is not one of the model's labels (a name, or an "
                                 f"index 0 to {len(labels) - 1}).{hint}")
    crowd = row.get("iscrowd", [0] * len(boxes))
    if not isinstance(crowd, list) or len(crowd) != len(boxes) or not all(_is_int(c) and c in (0, 1) for c in crowd):
        raise ReportgenError(f"{where}: `iscrowd` must be a list of 0 or 1, one per box.")
    return ImageBoxes(path=os.fspath(file), boxes=array, labels=np.array(indices, dtype=np.int64),
                      names=tuple(str(labels[i]) for i in indices), iscrowd=np.array(crowd, dtype=bool),
                      area=(array[:, 2] - array[:, 0]) * (array[:, 3] - array[:, 1]), size=size, image_id=line)


# ---------------------------------------------------------------------------- a build's


def annotations_for(config, labels: Sequence[str], entries: Iterable, notes: list[str] | None = None,
                    root: Path | None = None) -> dict[str, ImageBoxes]:
    """{entry's file (as the entry gives it): its true boxes} for the build's image `entries` (`entries.Entry`, or
    paths) from `config.detection.annotations` ({} when none is given): a COCO `.json` whose `file_name`s are
    relative to `root` (default: the JSON's folder), or a `.jsonl` manifest (`read_box_manifest`), categories mapped to `labels`.

    Which images, the rule: an image of the build that the annotations list gets its boxes (none listed: an
    empty ImageBoxes, scored); one they do not list has no truth (not in the result: counted, not scored), said
    once in `notes`; an annotated image the build does not use is ignored (not read: it need not exist). When
    the annotations list none of the build's images, they are of other images: a ReportgenError naming the first
    few of both. Call it before any work: every other mismatch (categories, image sizes, boxes outside their
    image) is a ReportgenError naming the first few too."""
    path = getattr(getattr(config, "detection", None), "annotations", None)
    if path is None:
        return {}
    path, files = Path(path), [getattr(e, "file", e) for e in entries]
    shown = getattr(config, "shown_path", str)
    if path.suffix.lower() == ".json":
        found = read_coco(path, root or path.parent, labels, [Path(f) for f in files], shown, partial=True)
    elif path.suffix.lower() == ".jsonl":
        found = read_box_manifest(path, labels, shown, only=[Path(f) for f in files])
    else:
        raise ReportgenError(f"`detection.annotations`: {shown(path)} is neither a COCO file (.json) nor a manifest of "
                             "boxes (.jsonl): give one of those.")
    by_file = {os.path.abspath(image.path): image for image in found.images}
    out = {os.fspath(f): by_file[os.path.abspath(f)] for f in files if os.path.abspath(f) in by_file}
    missing = [shown(Path(f)) for f in files if os.fspath(f) not in out]
    if missing and notes is not None:
        notes.append(f"{len(missing)} of {len(files)} images are not in {shown(path)} ({_first(missing)}): they have "
                     "no true boxes, and count in no AP.")
    return out


# ---------------------------------------------------------------------------- shared


def image_size(path: Path, shown: Callable[[Path], str] = str) -> tuple[int, int]:
    """(h, w) of an image as `inputs.read_image` reads it (EXIF orientation applied), from its header alone."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112)
    except FileNotFoundError:
        raise ReportgenError(f"the image {shown(path)} does not exist.") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ReportgenError(f"the image {shown(path)} cannot be read: {exc}.") from None
    return (w, h) if orientation in _SWAPPED else (h, w)


def _check_boxes(boxes: np.ndarray, size: tuple[int, int], where: Callable[[int], str]) -> None:
    """Refuse a box outside its (h, w) image or with x1 < x0 or y1 < y0, naming the first."""
    h, w = size
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
    if flipped.any():
        row = int(np.argmax(flipped))
        raise ReportgenError(f"{where(row)}: the box {_numbers(boxes[row])} has x1 < x0 or y1 < y0: give x0, y0 (top "
                             "left) before x1, y1 (bottom right).")
    if outside.any():
        row = int(np.argmax(outside))
        raise ReportgenError(f"{where(row)}: the box {_numbers(boxes[row])} is outside the {w}×{h} image: boxes are in "
                             "the pixels of the image as stored.")


def _check_size(path: Path, origin: str) -> None:
    try:
        if not path.is_file():
            raise ReportgenError(f"{origin} does not exist or is not a plain file.")
        if path.stat().st_size > MAX_BYTES:
            raise ReportgenError(f"{origin} is {path.stat().st_size:,} bytes, more than the {MAX_BYTES:,} read: "
                                 "give the annotations of the images to evaluate only.")
    except OSError as exc:
        raise ReportgenError(f"cannot read {origin}: {exc}.") from None


def _load_json(path: Path, origin: str):
    _check_size(path, origin)
    try:
        with path.open("rb") as f:
            return json.loads(f.read(MAX_BYTES + 1))
    except json.JSONDecodeError as exc:
        raise ReportgenError(f"{origin} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") \
            from None
    except UnicodeDecodeError as exc:
        raise ReportgenError(f"{origin} is not UTF-8 text (byte {exc.start}).") from None
    except (RecursionError, ValueError):  # nested thousands deep; an integer of more digits than Python reads
        raise ReportgenError(f"{origin}: nested too deeply, or a number too long, for COCO annotations.") from None
    except OSError as exc:
        raise ReportgenError(f"cannot read {origin}: {exc}.") from None


def _relative(file: Path, root: Path) -> str | None:
    try:
        return os.path.normpath(os.path.relpath(os.path.abspath(file), os.path.abspath(root)))
    except ValueError:  # another drive
        return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box.tolist()) + "]"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first(names: list[str], sep: str = ", ") -> str:
    shown = sep.join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
