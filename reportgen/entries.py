"""What `inputs.images` lists, as entries (a path, its raw class, box and mask): files, globs, folders (plain or
in torchvision's `ImageFolder` layout) and manifests (`.csv`, `.jsonl`); see `datasets` for the layouts. Needs
no model, so it runs first and checks the files. A folder or a `**` glob is walked once per folder and file,
links followed but never round a loop, and within a bound (a stranger's config may name `/`)."""
from __future__ import annotations

import csv
import fnmatch
import glob
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ReportgenError, did_you_mean
from .inputs import IMAGE_SUFFIXES

MANIFEST_SUFFIXES = (".csv", ".jsonl")
BOX_KEYS = ("x0", "y0", "x1", "y1")
KEY = "`inputs.images`"
VOC_IMAGES, VOC_MASKS = "JPEGImages", "SegmentationClass"  # a Pascal VOC folder's images and class masks
FOLDER_LIMIT = 100_000  # folders walked under one entry of `inputs.images`


@dataclass(frozen=True, slots=True)
class Entry:
    """One image to read. `label`: raw (a class folder's name, a manifest's index or label) until
    `resolve_labels` makes it a class index; None: no ground truth.

    Small on purpose: a data set of 200 000 manifest rows keeps one per image. The path is kept as text (a
    `Path` holds each of its parts too) and made a `Path` when asked for; where it came from is one text shared
    by every row of its manifest or folder, plus the row's line."""

    file: str  # the image's path (`path` gives it as a Path)
    label: int | str | None = None
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) in original-image pixels
    mask: Path | None = None  # one object's mask (nonzero: the object)
    segmentation: Path | None = None  # a class-index mask, one class per pixel (255: ignored)
    segments: Path | None = None  # a feature mask: integer labels, one per segment (`reportgen.segments`)
    origin: str = field(default="", compare=False)  # the manifest, folder or argument it came from: for messages
    line: int = field(default=0, compare=False)  # its line in a manifest (0: none)
    classes: tuple[str, ...] | None = field(default=None, compare=False)  # an ImageFolder's class names, sorted
    root: Path | None = field(default=None, compare=False)  # the ImageFolder folder it came from
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)  # given in Python: (H, W, 3) uint8
    truth: object = field(default=None, compare=False, repr=False)  # a detector's true boxes (`annotations.ImageBoxes`)

    def __post_init__(self):
        if not isinstance(self.file, str):
            object.__setattr__(self, "file", os.fspath(self.file))

    @property
    def path(self) -> Path:
        return Path(self.file)

    @property
    def where(self) -> str:
        """Where it came from, for messages: "set.csv, line 4", a folder, "images[3]"."""
        return f"{self.origin}, line {self.line}" if self.line else self.origin


def listing(names: Iterable[str], most: int = 8, sep: str = ", ") -> str:
    names = list(names)
    shown = sep.join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


# ---------------------------------------------------------------------------- finding entries


def find_entries(patterns: tuple[str, ...], shown: Callable[[Path], str] = str) -> list[Entry]:
    """The entries of `inputs.images` (files, folders, ImageFolder folders, manifests and globs), in the order
    given, without repeats. `shown` turns a path into the text messages show. No model needed."""
    if not patterns:
        raise ReportgenError(f"{KEY} is empty: list image files, folders, manifests or globs (like images/*.jpg).")
    found: list[Entry] = []
    seen: set[Entry] = set()
    for pattern in patterns:
        path = Path(pattern)
        if glob.has_magic(pattern):
            matches = _recursive_glob(pattern) if "**" in pattern else \
                [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()]
            if not matches:
                raise ReportgenError(f"{KEY}: no image matches {pattern}.")
            entries = [e for m in matches for e in _file_entries(m, shown)]
        elif path.is_dir():
            entries = _folder_entries(path, shown)
        elif path.is_file():
            entries = _file_entries(path, shown)
        else:
            raise ReportgenError(f"{KEY}: {pattern} does not exist.")
        for entry in entries:
            if entry not in seen:
                seen.add(entry)
                found.append(entry)
    return found


def _file_entries(path: Path, shown: Callable[[Path], str]) -> list[Entry]:
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(path, shown)
    return [Entry(path)]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: Path, seen: set | None = None) -> list[Path]:
    """Image files anywhere under `folder`, in torchvision's `make_dataset` order (sorted walk, links followed);
    hidden folders skipped. `seen`: the (device, inode) of folders not to enter (shared by sibling walks)."""
    return [path for path in _walk(folder, seen) if path.suffix.lower() in IMAGE_SUFFIXES]


def _new(path, seen: set) -> bool:
    """Whether `path`, links followed, is a folder or file not met before (by device and inode); records it.
    One that cannot be read is not new."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    identity = info.st_dev, info.st_ino
    if identity in seen:
        return False
    seen.add(identity)
    return True


def _walk(folder: Path, seen_folders: set | None = None) -> list[Path]:
    """Every file under `folder`, in sorted walk order, links followed but each folder and each file once (by
    device and inode: a link `loop -> ..` or `self -> .` neither loops nor repeats), hidden folders skipped, and
    at most FOLDER_LIMIT folders visited (`inputs.images: /` is an error, not an hour's walk)."""
    seen_folders = set() if seen_folders is None else seen_folders
    _new(folder, seen_folders)
    walked = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        if len(walked) == FOLDER_LIMIT:
            raise ReportgenError(f"{KEY}: {folder} holds more than {FOLDER_LIMIT:,} folders: give the folder that "
                                 "holds your images (or a manifest).")
        dirs[:] = [name for name in sorted(d for d in dirs if not d.startswith("."))
                   if _new(os.path.join(root, name), seen_folders)]
        walked.append((root, files))
    seen_files: set = set()  # each path made once, as text first: pathlib's parsing was most of a walk's time
    return [Path(path) for root, files in sorted(walked) for name in sorted(files)
            if _new(path := os.path.join(root, name), seen_files)]


def _recursive_glob(pattern: str) -> list[Path]:
    """The files a pattern with `**` matches (as glob.glob's recursive=True: hidden names matched only by a
    part that starts with "."), walked with `_walk`, which neither loops through links nor repeats a file."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    if not root.is_dir():
        return []
    return sorted(path for path in _walk(root)
                  if path.is_file() and _matches(path.relative_to(root).parts, parts[fixed:]))


def _matches(names: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not parts:
        return not names
    head, rest = parts[0], parts[1:]
    if head == "**":
        return any(_matches(names[i:], rest) for i in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:i]))
    return bool(names) and (not names[0].startswith(".") or head.startswith(".")) \
        and fnmatch.fnmatchcase(names[0], head) and _matches(names[1:], rest)


def _folder_entries(folder: Path, shown: Callable[[Path], str]) -> list[Entry]:
    """A plain folder (its image files, unlabelled), a Pascal VOC folder (`JPEGImages/` and `SegmentationClass/`)
    or an ImageFolder-layout folder (class sub-folders)."""
    if (folder / VOC_IMAGES).is_dir() and (folder / VOC_MASKS).is_dir():
        return _voc_entries(folder, shown)
    subfolders = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    seen: set = set()  # the folder and its class folders: a link back to them is not walked
    for path in (folder, *subfolders):
        _new(path, seen)
    per_class = {sub.name: _images_under(sub, seen) for sub in subfolders}
    loose = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
    if not any(per_class.values()):  # no sub-folder holds images: today's plain folder
        if not loose:
            raise ReportgenError(f"{KEY}: no image matches {folder}.")
        return [Entry(p) for p in loose]
    if loose:
        raise ReportgenError(
            f"{KEY}: {shown(folder)} has class sub-folders ({listing(per_class)}), so it is read as an ImageFolder "
            f"layout, but it also holds images beside them: {listing(p.name for p in loose)}. Move them into a "
            "class folder (or elsewhere).")
    classes = tuple(sorted(per_class))  # every class folder counts, as in torchvision's ImageFolder
    origin = shown(folder)
    return [Entry(path, label=name, origin=origin, classes=classes, root=folder)
            for name in classes for path in per_class[name]]


def _voc_entries(folder: Path, shown: Callable[[Path], str]) -> list[Entry]:
    """The images of `JPEGImages/` that have a class mask `SegmentationClass/<stem>.png` (VOC's JPEGImages also
    holds the images of its detection task, without one), in name order."""
    masks = {p.stem: p for p in (folder / VOC_MASKS).iterdir() if p.suffix.lower() == ".png" and p.is_file()}
    images = sorted((p for p in (folder / VOC_IMAGES).iterdir() if _is_image(p) and p.stem in masks),
                    key=lambda p: p.name)
    if not images:
        raise ReportgenError(f"{KEY}: {shown(folder)} is a Pascal VOC folder, but no image of {VOC_IMAGES}/ has a "
                             f"class mask of the same name in {VOC_MASKS}/ (<name>.png).")
    origin = shown(folder)
    return [Entry(p, segmentation=masks[p.stem], origin=origin) for p in images]


# ---------------------------------------------------------------------------- manifests


def read_manifest(path: Path, shown: Callable[[Path], str] = str) -> list[Entry]:
    """A `.csv` (header row) or `.jsonl` manifest -> its entries; a bad row is an error naming the manifest
    and its line. The file is read row by row: what stays is the entries, not the text or the rows."""
    origin = shown(path)  # one text for every row's messages
    entries = []
    try:
        with path.open(encoding="utf-8-sig", newline="" if path.suffix.lower() == ".csv" else None) as lines:
            rows = _csv_rows(lines, path, shown) if path.suffix.lower() == ".csv" else _jsonl_rows(lines, path, shown)
            entries = [_entry(values, line, path, origin, shown) for line, values in rows]
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportgenError(f"{KEY}: cannot read the manifest {origin}: {exc}.") from None
    if not entries:
        raise ReportgenError(f"{KEY}: the manifest {origin} lists no image.")
    return entries


def _csv_rows(lines: Iterable[str], path: Path, shown: Callable[[Path], str]) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        if header is None:
            raise ReportgenError(f"{KEY}: the manifest {shown(path)} is empty: it needs a header row with a "
                                 "`path` column.")
        header = [h.strip().lower() for h in header]  # column names in any case
        _check_columns(header, path, shown)
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise ReportgenError(f"{KEY}: {shown(path)}, line {start}: {len(row)} values, but the header names "
                                     f"{len(header)} columns.")
            yield start, {k: v.strip() for k, v in zip(header, row) if k}
    except csv.Error as exc:
        raise ReportgenError(f"{KEY}: {shown(path)}, line {reader.line_num}: not valid CSV ({exc}).") from None


def _check_columns(columns: list[str], path: Path, shown: Callable[[Path], str], line: int | None = None) -> None:
    where = f"{shown(path)}, line {line}" if line else shown(path)
    if "path" not in columns:
        names = [c for c in columns if c]
        hint = did_you_mean("path", names) if names else ""
        raise ReportgenError(f"{KEY}: {where} has no `path` column{' (' + ', '.join(names) + ')' if names else ''}."
                             f"{hint}")
    present = [k for k in BOX_KEYS if k in columns]
    if present and len(present) < 4:
        raise ReportgenError(f"{KEY}: {where}: a box needs all four of x0, y0, x1, y1; "
                             f"missing {', '.join(k for k in BOX_KEYS if k not in present)}.")


def _jsonl_rows(lines: Iterable[str], path: Path, shown: Callable[[Path], str]) -> Iterator[tuple[int, dict]]:
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReportgenError(f"{KEY}: {shown(path)}, line {n}: not valid JSON ({exc.msg}).") from None
        except (RecursionError, ValueError):  # nested thousands deep; an integer of more digits than Python reads
            raise ReportgenError(f"{KEY}: {shown(path)}, line {n}: nested too deeply, or a number too long, for a "
                                 'manifest row like {"path": "a.jpg", "label": 3}.') from None
        if not isinstance(values, dict):
            raise ReportgenError(f"{KEY}: {shown(path)}, line {n}: expected an object like "
                                 f'{{"path": "a.jpg", "label": 3}}, got {type(values).__name__}.')
        _check_columns(list(values), path, shown, n)
        yield n, values


def _entry(values: dict, line: int, manifest: Path, origin: str, shown: Callable[[Path], str]) -> Entry:
    where = f"{origin}, line {line}"
    folder = os.fspath(manifest.parent)

    def fail(message: str) -> ReportgenError:
        return ReportgenError(f"{KEY}: {where}: {message}")

    def file(key: str) -> str | None:
        value = values.get(key)
        if value is None or value == "":
            if key == "path":
                raise fail("`path` is empty.")
            return None
        if not isinstance(value, str):
            raise fail(f"`{key}` must be a path, got {value!r}.")
        # text, not Path objects: a Path interns each of its parts, and a manifest has many
        resolved = os.path.normpath(os.path.join(folder, os.path.expanduser(value)))
        if not os.path.isfile(resolved):
            raise fail(f"{'' if key == 'path' else key + ' '}{value} does not exist ({shown(resolved)}).")
        return resolved

    image = file("path")
    label = values.get("label")
    if isinstance(label, str):
        label = label.strip() or None
    elif isinstance(label, bool) or not (label is None or isinstance(label, int)):
        raise fail(f"`label` must be a class index or a label, got {label!r}.")
    mask, segmentation, segments = file("mask"), file("segmentation"), file("segments")
    return Entry(image, label=label, box=_box(values, fail), mask=mask and Path(mask),
                 segmentation=segmentation and Path(segmentation), segments=segments and Path(segments),
                 origin=origin, line=line)


def _box(values: dict, fail: Callable[[str], ReportgenError]) -> tuple[float, float, float, float] | None:
    box = values.get("box")
    parts = [values.get(k) for k in BOX_KEYS]
    given = [p for p in parts if p is not None and p != ""]
    if box is not None and given:
        raise fail("give the box as `box` or as x0, y0, x1, y1, not both.")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise fail(f"`box` must be [x0, y0, x1, y1], got {box!r}.")
        parts = box
    elif not given:
        return None
    elif len(given) < 4:
        empty = ", ".join(k for k, p in zip(BOX_KEYS, parts) if p is None or p == "")
        raise fail(f"a box needs all four of x0, y0, x1, y1; {empty} empty.")
    numbers = []
    for key, value in zip(BOX_KEYS, parts):
        if isinstance(value, bool):
            value = None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise fail(f"box {key} must be a number, got {value!r}.") from None
        if not math.isfinite(number):
            raise fail(f"box {key} must be a finite number, got {value!r}.")
        numbers.append(number)
    x0, y0, x1, y1 = numbers
    if x1 <= x0 or y1 <= y0:
        raise fail(f"a box needs x0 < x1 and y0 < y1, got {numbers_text(numbers)}.")
    return (x0, y0, x1, y1)


def numbers_text(numbers: Iterable[float]) -> str:
    return "[" + ", ".join(f"{n:g}" for n in numbers) + "]"
