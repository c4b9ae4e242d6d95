"""Labelled inputs: what `inputs.images` lists, as entries (a path, its raw class, box and mask), then resolved
against the model's labels, sampled, read and prepared.

An entry of `inputs.images` is an image file, a glob, a folder, or a manifest:

- a plain folder (image files, no sub-folder holding images): its images, unlabelled;
- a folder in torchvision `ImageFolder` layout (sub-folders, one per class, holding images): each image's class
  is its sub-folder's name, resolved by `resolve_labels` (a label of the model, or the name's index in sorted
  order, as `ImageFolder` assigns it);
- a manifest, `.csv` with a header row or `.jsonl`: `path` (relative to the manifest's folder), optional
  `label` (a class index or a label), box `x0, y0, x1, y1` (original-image pixels; JSONL also `box: [...]`)
  and `mask` (a grayscale image, nonzero = object), and `segmentation` (a class-index PNG: one class per pixel,
  255 ignored; for a segmenter), and `segments` (a feature mask, `reportgen.segments`: integer labels);
- a Pascal VOC folder (`JPEGImages/`, `SegmentationClass/`): the images that have a class mask, with it.

`entries.find_entries` needs no model (so it runs first and checks the files); `resolve_labels` needs the
model's labels and class count; `load` does the whole chain for the pipeline.
"""
from __future__ import annotations

import random
import warnings
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .entries import KEY, Entry, find_entries, listing, numbers_text
from .errors import ConfigWarning, ReportgenError, did_you_mean
from .progress import plural
from .segments import MAX_FEATURES, read_segments, relabel
from .inputs import (ImageReadError, geometry, pixels_of, prepare_image, read_ahead, read_class_mask, read_image,
                     read_mask, transform_box, transform_class_mask, transform_mask, unique_names)

RESIZED_LIMIT = 2**26  # pixels of an image resized for the model (8192 x 8192): more is a stranger's bomb

# ---------------------------------------------------------------------------- labels


def _match_label(name: str, labels: list[str]) -> int | None:
    """The index of label `name`: exact, else the one label equal ignoring case; None otherwise."""
    if name in labels:
        return labels.index(name)
    folded = [label.casefold() for label in labels]
    return folded.index(name.casefold()) if folded.count(name.casefold()) == 1 else None


def folder_classes(names: tuple[str, ...], labels: list[str] | None, num_classes: int | None,
                   where: str) -> dict[str, int]:
    """An ImageFolder's class names -> class indices: every name a label of the model (exact, else ignoring case);
    else, when no name is a label and there are as many names as classes, the index of the name in sorted order
    (torchvision's `ImageFolder`, and ImageNet's WordNet-id folders); anything else is an error."""
    matched = {n: _match_label(n, labels) for n in names} if labels else dict.fromkeys(names)
    unmatched = [n for n, i in matched.items() if i is None]
    if not unmatched:
        indices = list(matched.values())
        twice = [n for n, i in matched.items() if indices.count(i) > 1]
        if twice:
            raise ReportgenError(f"{KEY}: the class folders of {where} {', '.join(twice)} name the same label.")
        return matched  # type: ignore[return-value]
    if len(unmatched) == len(names) and (num_classes is None or len(names) == num_classes):
        return {n: i for i, n in enumerate(sorted(names))}
    count = (f"there are {len(names)} class folders but the model has {num_classes} classes"
             if num_classes is not None and len(names) != num_classes else
             "some names are labels and some are not")
    if labels:
        listed = ", ".join(f"`{n}`" + (f" ({hint.strip()[0].lower()}{hint.strip()[1:]})" if hint else "")
                           for n in unmatched[:12] for hint in [did_you_mean(n, labels)])
        more = f" and {len(unmatched) - 12} more" if len(unmatched) > 12 else ""
        raise ReportgenError(f"{KEY}: the class folders of {where} do not match the model's labels: {listed}{more}. "
                             f"They cannot map by sorted index either ({count}). Rename the folders, or set "
                             "`model.labels` to a file naming the classes.")
    raise ReportgenError(f"{KEY}: the class folders of {where} ({listing(names)}) cannot map to classes: the model "
                         f"has no labels to match them against, and {count}. Set `model.labels` to a file naming "
                         "the classes, one a line.")


def _manifest_label(entry: Entry, labels: list[str] | None, num_classes: int | None) -> int:
    label = entry.label
    if isinstance(label, str):
        index = _match_label(label, labels) if labels else None
        if index is not None:
            return index
        if not re.fullmatch(r"[+-]?\d+", label):
            if not labels:
                raise ReportgenError(f"{KEY}: {entry.where}: label `{label}` is a name, but the model has no labels: "
                                     "set `model.labels` or give class indices.")
            raise ReportgenError(f"{KEY}: {entry.where}: unknown label `{label}`.{did_you_mean(label, labels)}")
        label = int(label)
    if num_classes is not None and not 0 <= label < num_classes:
        raise ReportgenError(f"{KEY}: {entry.where}: class index {label} is outside the model's {num_classes} "
                             f"outputs (0 to {num_classes - 1}).")
    if label < 0:
        raise ReportgenError(f"{KEY}: {entry.where}: class index {label} is negative.")
    return label


def resolve_labels(entries: list[Entry], labels: list[str] | None, num_classes: int | None) -> list[Entry]:
    """The entries with class indices for labels (ImageFolder names and manifest labels), checked against the
    model (`num_classes` None: indices are not range-checked). Replaces them in `entries` (one entry at a time:
    a data set's entries are not kept twice) and returns it."""
    folders: dict[Path, dict[str, int]] = {}
    for i, entry in enumerate(entries):
        if entry.label is None:
            continue
        if entry.root is not None:
            if entry.root not in folders:
                folders[entry.root] = folder_classes(entry.classes or (), labels, num_classes, entry.where)
            entries[i] = replace(entry, label=folders[entry.root][entry.label])
        else:
            entries[i] = replace(entry, label=_manifest_label(entry, labels, num_classes))
    return entries


# ---------------------------------------------------------------------------- sampling


def sample_per_class(entries: list[Entry], per_class: int, seed: int) -> list[Entry]:
    """`per_class` entries of each class (all of a smaller class), drawn with `seed`, kept in entry order. Needs
    every entry labelled (class indices, as `resolve_labels` gives)."""
    unlabelled = [e for e in entries if e.label is None]
    if unlabelled:
        raise ReportgenError(
            f"`inputs.sample`: sampling per class needs labels, but {len(unlabelled)} of the {len(entries)} images "
            f"have none ({listing([e.path.name for e in unlabelled], 3)}). Use an ImageFolder-layout folder or a "
            "manifest with a `label` column, or `inputs.limit` instead.")
    by_class: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        by_class.setdefault(int(entry.label), []).append(i)  # type: ignore[arg-type]
    rng = random.Random(seed)
    chosen: set[int] = set()
    for cls in sorted(by_class):
        rows = by_class[cls]
        chosen.update(rows if len(rows) <= per_class else rng.sample(rows, per_class))
    return [e for i, e in enumerate(entries) if i in chosen]


# ---------------------------------------------------------------------------- reading


@dataclass
class Scan:
    """What a scan of `inputs.images` found: the entries read (at most `inputs.limit`), their unique names, and
    notes for the report (images skipped, annotations cropped away)."""
    entries: list[Entry] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    failed: list[tuple[Entry, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Loaded:
    """What `load` read: the images (ImageInput), their prepared tensors, and notes for the report."""
    images: list = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def select(config, labels: list[str] | None, num_classes: int | None) -> list[Entry]:
    """The entries a build reads, before `inputs.limit`: found, labels resolved, sampled per class."""
    inputs = config.inputs
    boxes = getattr(config, "detection", None) is not None and config.detection.annotations is not None
    if boxes and not inputs.images:  # a detector's data set: the images its annotations list
        return with_boxes(config, None, labels, num_classes)
    entries = resolve_labels(find_entries(inputs.images, shown=config.shown_path), labels, num_classes)
    if boxes:
        entries = with_boxes(config, entries, labels, num_classes)
    if inputs.sample is not None:
        seed = inputs.sample.seed if inputs.sample.seed is not None else config.seed
        entries = sample_per_class(entries, inputs.sample.per_class, seed)
    return entries


def with_boxes(config, entries: list[Entry] | None, labels: list[str] | None, num_classes: int | None) -> list[Entry]:
    """`entries` each with its true boxes (`Entry.truth`) from `detection.annotations`: a COCO .json (file names
    relative to `detection.image_root`) or a .jsonl of `path`, `boxes` and `labels` (`annotations.annotations_for`:
    an image they do not list has none, said once); None: the images the annotations list."""
    from . import annotations

    path = config.detection.annotations
    names = labels if labels is not None else [str(i) for i in range(num_classes or 0)]
    if not path.is_file():
        raise ReportgenError(f"`detection.annotations`: {config.shown_path(path)} does not exist: give a COCO "
                             "instances .json or a .jsonl of boxes and labels.")
    root = config.detection.image_root
    if root is None:
        one = len(config.inputs.images) == 1 and Path(config.inputs.images[0]).is_dir()
        root = Path(config.inputs.images[0]) if one else path.parent
    try:
        if entries is None:
            found = (annotations.read_coco(path, root, names, shown=config.shown_path) if path.suffix.lower() == ".json"
                     else annotations.read_box_manifest(path, names, shown=config.shown_path)).images
            return [Entry(b.path, origin=config.shown_path(path), truth=b) for b in found]
        notes: list[str] = []
        found = annotations.annotations_for(config, names, entries, notes, root=root)
    except ReportgenError as exc:
        message = str(exc).replace("as the image root", "as the image root (`detection.image_root`)")
        raise ReportgenError(message if message.startswith("`") else f"`detection.annotations`: {message}") from None
    for note in notes:  # images without true boxes: the build goes on, and says so once
        warnings.warn(note, ConfigWarning, stacklevel=2)
    return [replace(e, truth=found.get(e.file)) for e in entries]


def read_entry(entry: Entry, config, pre, name: str = ""):
    """(ImageInput, prepared (C, H, W) tensor, what of its annotation the crop lost or None) of one entry.
    Raises ImageReadError for a file that cannot be decoded, ReportgenError for a mask of the wrong size."""
    from .context import ImageInput

    inputs = config.inputs
    # the path as text: a Path per image interns its parts, and the table of interned text never shrinks
    pixels = entry.pixels if entry.pixels is not None else read_image(entry.file, alpha=inputs.alpha,
                                                                       max_value=inputs.max_value)
    mask = read_mask(entry.mask) if entry.mask is not None else None
    classes = read_class_mask(entry.segmentation) if entry.segmentation is not None else None
    shown = config.shown_path(entry.file)
    for what, found in (("mask", mask), ("class mask", classes)):
        if found is not None and found.shape != pixels.shape[:2]:
            raise ReportgenError(f"{KEY}: {entry.where or shown}: the {what} is {found.shape[1]}x{found.shape[0]} "
                                 f"pixels but its image ({shown}) is {pixels.shape[1]}x{pixels.shape[0]}: a mask "
                                 "must cover its image pixel for pixel.")
    geo = geometry(pixels.shape[1], pixels.shape[0], pre, config.model.input_size)
    if geo.resized is not None and geo.resized[0] * geo.resized[1] > RESIZED_LIMIT:  # 100 000 x 1 px: 15 GB
        w, h = geo.resized
        raise ImageReadError(f"{KEY}: {shown} is {pixels.shape[1]} x {pixels.shape[0]} pixels: resized for the model "
                             f"it would be {w:,} x {h:,}. Crop it to the part that matters, or set "
                             "`inputs.preprocess.resize` to [height, width].", entry.path,
                             f"resized it would be {w:,} x {h:,} pixels")
    prepared = prepare_image(pixels, pre, config.model.input_size)
    box = transform_box(entry.box, geo) if entry.box is not None else None
    lost = None
    if entry.box is not None and box is None:
        lost = f"{shown}: its box {numbers_text(entry.box)} lies outside the crop"
    if mask is not None:
        mask = transform_mask(mask, geo)
        if not mask.any():
            lost = f"{shown}: its mask has no object pixel inside the crop"
            mask = None
    segments = moved_segments(entry, pixels.shape[:2], geo, shown) if entry.segments is not None else None
    truth = None
    if entry.truth is not None:
        truth, cut = display_boxes(entry.truth, geo, prepared.display.shape[:2])
        if cut:
            lost = f"{shown}: {plural(cut, 'true box', 'true boxes')} of it lie outside the crop"
    image = ImageInput(name=name, source=shown, original=pixels, display=prepared.display, label=entry.label,
                       box=box, mask=mask, boxes=truth, segments=segments,
                       segmentation=transform_class_mask(classes, geo) if classes is not None else None)
    return image, prepared.tensor, lost


def moved_segments(entry: Entry, shape: tuple[int, int], geo, shown: str) -> np.ndarray:
    """An entry's `segments` (original pixels, `shape` (H0, W0)) in the prepared image's pixels: nearest resize, the
    same crop, the padding of a crop larger than the image one segment of its own; relabelled 0 … K − 1 (int32)."""
    labels = read_segments(entry.segments, shape, entry.where or shown)
    moved, count = relabel(transform_class_mask(labels, geo, ignore_index=int(labels.max(initial=0)) + 1))
    if count > MAX_FEATURES:  # the padding's segment: one more than the file's (at most MAX_FEATURES) labels
        raise ReportgenError(f"{KEY}: {entry.where or shown}: segments {entry.segments} hold {count} segments once "
                             f"the image is cropped (its padding is one); at most {MAX_FEATURES}.")
    return moved


def display_boxes(truth, geo, size: tuple[int, int]):
    """A detector's true boxes (`annotations.ImageBoxes`, original pixels) in the prepared image's pixels: each box
    as `transform_box` moves it, its area scaled as its box's; boxes the crop leaves nothing of dropped. -> (the
    boxes, how many were dropped)."""
    kept, boxes, areas = [], [], []
    for i, box in enumerate(truth.boxes):
        moved = transform_box(tuple(float(v) for v in box), geo)
        if moved is None:
            continue
        w0, h0 = box[2] - box[0], box[3] - box[1]
        scale = ((moved[2] - moved[0]) * (moved[3] - moved[1]) / (w0 * h0)) if w0 * h0 > 0 else \
            (geo.resized[0] / geo.size[0] * geo.resized[1] / geo.size[1] if geo.resized else 1.0)
        kept.append(i)
        boxes.append(moved)
        areas.append(float(truth.area[i]) * scale)
    keep = np.array(kept, dtype=np.int64)
    return replace(truth, boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4), labels=truth.labels[keep],
                   names=tuple(truth.names[i] for i in kept), iscrowd=truth.iscrowd[keep],
                   area=np.array(areas, dtype=np.float64), size=tuple(size)), len(truth.boxes) - len(kept)


def scan(config, pre, entries: list[Entry], found: Scan, progress: Callable = lambda items, **kw: items,
         readers: int | None = None):
    """Read `entries` in order, the first `inputs.limit` that can be read, and yield them in batches of
    `inputs.batch_size` as lists of (entry, ImageInput, tensor); the ImageInputs have no name yet. `found`
    collects the entries read and what went wrong; its names and notes are set once the scan is done. An image
    that cannot be decoded is skipped with a note (`inputs.strict: false`) or is an error (`strict: true`);
    none readable is an error either way. `readers`: `read_ahead`'s (None: the cores torch leaves free)."""
    inputs = config.inputs
    wanted = len(entries) if inputs.limit is None else min(inputs.limit, len(entries))
    batch: list = []  # the next batch is read ahead while the caller's model runs on this one
    reads = read_ahead(lambda entry: read_entry(entry, config, pre), entries, ahead=inputs.batch_size,
                       readers=readers)
    for entry, read in progress(reads, total=wanted, desc="reading images", unit="image"):
        if len(found.entries) >= wanted:
            break
        try:
            image, tensor, lost = read.result()
        except ImageReadError as exc:
            if inputs.strict:
                raise
            found.failed.append((entry, exc.reason))
            continue
        if lost:
            found.lost.append(lost)
        found.entries.append(entry)
        batch.append((entry, image, tensor))
        if len(batch) == inputs.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
    failed = found.failed
    if not found.entries:
        reasons = "; ".join(f"{config.shown_path(e.path)} ({why})" for e, why in failed[:5])
        raise ReportgenError(f"{KEY}: none of the {len(failed)} images could be read: {reasons}"
                             f"{' and more' if len(failed) > 5 else ''}.")
    if failed:
        n = len(failed)
        shown = listing((f"{config.shown_path(e.path)} ({why})" for e, why in failed), 20)
        found.notes.append(f"{n} image{'s' if n > 1 else ''} could not be read and {'were' if n > 1 else 'was'} "
                           f"skipped: {shown}.")
    if found.lost:
        n = len(found.lost)
        found.notes.append(f"{n} annotation{'s' if n > 1 else ''} cropped away entirely by the preprocessing (the "
                           f"images are kept, without them): {listing(found.lost, 20, sep='; ')}.")


def given(images, config) -> list[Entry]:
    """The entries of images given in Python (`reportgen.build(config, images=...)`): `image0`, `image1`, ...,
    their pixels converted now (`inputs.pixels_of`), so a bad one is refused before any work."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = list(images) if images.ndim == 4 else [images]  # a batch (N, ...), or one image
    elif not isinstance(images, (list, tuple)):
        images = [images]  # one image
    if len(images) == 0:
        raise ReportgenError("`images` is empty: give PIL images or pixel arrays, or leave it out to read "
                             "`inputs.images`.")
    width = len(str(len(images) - 1))
    return [Entry(f"image{i:0{width}d}", origin=f"images[{i}]",
                  pixels=pixels_of(image, f"images[{i}]", config.inputs.alpha)) for i, image in enumerate(images)]


def load(config, pre, labels: list[str] | None = None, num_classes: int | None = None,
         progress: Callable = lambda items, **kw: items) -> Loaded:
    """Find, resolve, sample and read the images of `config.inputs` with the resolved preprocessing `pre`,
    all at once (`scan` reads them batch by batch)."""
    found = Scan()
    read = [item for batch in scan(config, pre, select(config, labels, num_classes), found, progress) for item in batch]
    found.names = unique_names([e.file for e, _, _ in read])
    return Loaded(images=[replace(image, name=name) for (_, image, _), name in zip(read, found.names)],
                  tensors=[tensor for _, _, tensor in read], notes=found.notes)
