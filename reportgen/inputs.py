"""Find, read and preprocess the input images. Keeps the original pixels for overlays."""
from __future__ import annotations

import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import Normalize, Preprocess
from .errors import ReportgenError

IMAGE_SUFFIXES = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


class ImageReadError(ReportgenError):
    """An image (or mask) that cannot be decoded: `path` and a short `reason` beside the full message, so a
    non-strict build can skip it and say why."""

    def __init__(self, message: str, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def _read_error(path: Path, message: str, reason: str) -> ImageReadError:
    return ImageReadError(f"`inputs.images`: {message}", Path(path), reason)


ALPHA = {"white": (255, 255, 255), "black": (0, 0, 0)}  # and "drop": alpha discarded
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path: Path, alpha: str = "drop", max_value: int | None = None) -> np.ndarray:
    """Any image Pillow reads -> (H, W, 3) uint8 RGB: EXIF orientation applied, palette/grayscale/CMYK
    converted. Transparency (`inputs.alpha`): "drop" discards alpha as torchvision's ImageFolder loader
    does (`convert("RGB")`), "white" / "black" composite on that colour. 16-bit images ("I;16*", "I") are
    scaled from their full range (65535, or `max_value`, the `inputs.max_value` of 12-bit data in 16-bit
    files: 4095) to 8 bits, as torchvision's `to_dtype(..., scale=True)` does; float ("F") images from
    [0, 1] when they fit, else from 0..255 or 0..65535."""
    if alpha not in ("drop", *ALPHA):
        raise ValueError(f"alpha must be drop, white or black, not {alpha!r}")
    try:
        with Image.open(path) as img:
            img.seek(0)  # first frame of animations / multi-page files
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of the pixels when nothing turns
            return _to_rgb(img, alpha, max_value)
    except UnidentifiedImageError:
        raise _read_error(path, f"{path} is not an image Pillow can read.", "not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise _read_error(path, f"{path} is too large to read safely ({exc}). Resize it first.",
                          "too large to read safely") from None
    except OSError as exc:
        raise _read_error(path, f"cannot read {path}: {exc}.", str(exc)) from None
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, ... for broken files
        raise _read_error(path, f"{path} is a broken image ({type(exc).__name__}: {exc}).",
                          f"{type(exc).__name__}: {exc}") from None


def pixels_of(image: object, where: str, alpha: str = "drop") -> np.ndarray:
    """An image given in Python -> (H, W, 3) uint8 RGB, as `read_image` makes of a file: a PIL image (any mode),
    or raw pixels as a numpy array or tensor: uint8 (H, W) or (H, W, 1|3|4), or float (C, H, W) with C in 1, 3,
    4 and values in [0, 1] (what torchvision's `to_tensor` gives). `where` names it in messages."""
    if isinstance(image, Image.Image):
        return _to_rgb(image, alpha)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ReportgenError(f"{where} is a {type(image).__name__}: give a PIL image, or pixels as a numpy array or "
                             "tensor (uint8 H×W×C, or float C×H×W in [0, 1]).")
    if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        pixels = image
    elif np.issubdtype(image.dtype, np.floating) and image.ndim == 3 and image.shape[0] in (1, 3, 4):
        if image.size and not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
            raise ReportgenError(f"{where}: float pixels must lie in [0, 1] (found {np.nanmin(image):.3g} to "
                                 f"{np.nanmax(image):.3g}); give uint8 pixels or divide by the full scale.")
        pixels = (image.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)
    else:
        raise ReportgenError(f"{where}: {image.dtype} pixels of shape {list(image.shape)}; give uint8 (H, W) or "
                             "(H, W, 1|3|4), or float (C, H, W) in [0, 1] with C 1, 3 or 4.")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if 0 in pixels.shape[:2]:
        raise ReportgenError(f"{where} is {pixels.shape[1]} × {pixels.shape[0]} pixels: an image needs at least one.")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), alpha)


def read_mask(path: Path) -> np.ndarray:
    """A mask image -> (H, W) bool, True where the pixel is nonzero (the object); EXIF orientation applied, as
    for its image. Colour masks count a pixel as object when any colour channel is nonzero (alpha ignored)."""

    def nonzero(img: Image.Image) -> np.ndarray:
        if img.mode in ("1", "L", "I", "F", *SIXTEEN_BIT_MODES):
            return np.asarray(img) != 0
        return np.asarray(img.convert("RGB")).any(axis=2)

    return _read_mask_file(path, nonzero)


CLASS_MASK_MODES = ("P", "L", "1", *SIXTEEN_BIT_MODES)


def read_class_mask(path: Path) -> np.ndarray:
    """A class-index mask (Pascal VOC's SegmentationClass PNGs) -> (H, W) class indices, 255 where ignored: the
    palette indices of a palette ("P") image, not its colours; the values of a grayscale one ("L", "1": uint8;
    16- or 32-bit "I": int64). EXIF orientation applied, as for its image; Pillow's pixel-count (decompression
    bomb) limit, as for images. An RGB(A) or other colour mask is refused (ReportgenError): a colour is no class
    index. Values are checked against the class count where they are counted (`metrics.segmentation`)."""

    def classes(img: Image.Image) -> np.ndarray:
        if img.mode not in CLASS_MASK_MODES:
            raise ReportgenError(f"`inputs.images`: mask {path} is a {img.mode} image, not a class-index PNG: class "
                                 "masks are palette (mode P, as Pascal VOC ships them) or grayscale (mode L) images "
                                 "whose pixel values are the class numbers, 255 for pixels to ignore. An RGB colour "
                                 "mask cannot be read as classes (a colour is not a class index): save the indices.")
        values = np.asarray(img)
        return values.astype(np.uint8) if img.mode in ("P", "L", "1") else values.astype(np.int64)

    return _read_mask_file(path, classes)


def _read_mask_file(path: Path, decode: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """`decode` of the mask image at `path` (its first frame, EXIF orientation applied); a file that cannot be
    decoded is an ImageReadError."""
    try:
        with Image.open(path) as img:
            img.seek(0)
            return decode(ImageOps.exif_transpose(img))
    except ReportgenError:
        raise
    except UnidentifiedImageError:
        raise _read_error(path, f"mask {path} is not an image Pillow can read.",
                          f"mask {Path(path).name}: not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise _read_error(path, f"mask {path} is too large to read safely.",
                          f"mask {Path(path).name}: too large to read safely") from None
    except Exception as exc:
        raise _read_error(path, f"mask {path} cannot be read ({type(exc).__name__}: {exc}).",
                          f"mask {Path(path).name}: {type(exc).__name__}: {exc}") from None


def _to_rgb(img: Image.Image, alpha: str = "drop", max_value: int | None = None) -> np.ndarray:
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if mode == "F":
            peak = values.max() if values.size else 0.0
            top = 1.0 if peak <= 1.0 else (255.0 if peak <= 255 else 65535.0)
        else:
            top = float(max_value) if max_value is not None else 65535.0
        gray = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if not has_alpha:  # an RGB image as it is (convert would copy it first)
        return np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    rgba = img.convert("RGBA")  # palette / grey transparency becomes an alpha channel
    if alpha == "drop":
        return np.asarray(rgba.convert("RGB"), dtype=np.uint8)
    background = Image.new("RGBA", img.size, (*ALPHA[alpha], 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class PreparedImage:
    display: np.ndarray  # (H, W, 3) uint8: resized and cropped, before normalisation
    tensor: torch.Tensor  # (C, H, W) float32, normalised


@dataclass(frozen=True)
class Geometry:
    """Where preprocessing puts the pixels of an image of `size` (w, h): resized to `resized` (w, h) with
    `resample` (None: not resized), then centre-cropped to `crop` (h, w) (None: not cropped)."""

    size: tuple[int, int]
    resized: tuple[int, int] | None
    crop: tuple[int, int] | None
    resample: int = Image.BILINEAR


def geometry(width: int, height: int, pre: Preprocess, input_size: tuple[int, ...]) -> Geometry:
    """The resize and crop `prepare_image` applies to an image of width x height."""
    _, h, w = input_size
    if pre.resize is None and pre.center_crop is None:
        # default: cover the model's input size keeping the aspect ratio, then centre-crop to it
        scale = max(h / height, w / width)
        return Geometry((width, height), (max(w, round(width * scale)), max(h, round(height * scale))), (h, w))
    resized = _resize_size(width, height, pre.resize) if pre.resize is not None else None
    crop = (pre.center_crop[0], pre.center_crop[-1]) if pre.center_crop is not None else None
    return Geometry((width, height), resized, crop, RESAMPLE[pre.interpolation])


def apply_geometry(img: Image.Image, geo: Geometry, resample: int | None = None, fill: int = 0) -> Image.Image:
    """`img` resized and cropped as `geo` says (`resample` overrides its filter: NEAREST for masks; `fill` is the
    value of the padding of a crop larger than the image)."""
    if geo.resized is not None and geo.resized != img.size:  # to its own size Pillow would return a copy
        img = img.resize(geo.resized, geo.resample if resample is None else resample)
    if geo.crop is not None and geo.crop != (img.height, img.width):  # the whole image: a copy too
        img = _center_crop(img, geo.crop, fill)
    return img


def transform_box(box: tuple[float, float, float, float], geo: Geometry) -> tuple[float, float, float, float] | None:
    """A box (x0, y0, x1, y1) in original-image pixels -> the same box in the prepared image's pixels: scaled by
    the resize, shifted by the crop (and its padding), clipped to the image inside the crop. None when nothing of
    it is left."""
    w0, h0 = geo.size
    w, h = geo.resized if geo.resized is not None else geo.size
    sx, sy = w / w0, h / h0
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    lo_x, lo_y, hi_x, hi_y = 0.0, 0.0, float(w), float(h)  # where the image's pixels lie
    if geo.crop is not None:
        th, tw = geo.crop
        cw, ch = max(tw, w), max(th, h)  # _center_crop pads a smaller image, centred
        dx = (cw - w) // 2 - int(round((cw - tw) / 2.0))
        dy = (ch - h) // 2 - int(round((ch - th) / 2.0))
        x0, x1, lo_x, hi_x = x0 + dx, x1 + dx, max(0.0, lo_x + dx), min(float(tw), hi_x + dx)
        y0, y1, lo_y, hi_y = y0 + dy, y1 + dy, max(0.0, lo_y + dy), min(float(th), hi_y + dy)
    x0, x1 = min(max(x0, lo_x), hi_x), min(max(x1, lo_x), hi_x)
    y0, y1 = min(max(y0, lo_y), hi_y), min(max(y1, lo_y), hi_y)
    if x1 <= x0 or y1 <= y0:
        return None
    return (float(x0), float(y0), float(x1), float(y1))


def transform_mask(mask: np.ndarray, geo: Geometry) -> np.ndarray:
    """An (H0, W0) bool mask -> (H, W) bool in the prepared image's pixels: nearest resize, the same crop."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(apply_geometry(img, geo, resample=Image.NEAREST)) > 0


def transform_class_mask(mask: np.ndarray, geo: Geometry, ignore_index: int = 255) -> np.ndarray:
    """An (H0, W0) class-index mask (`read_class_mask`) -> (H, W) of the same dtype in the prepared image's pixels:
    nearest resize (each pixel keeps one of the classes there, never a blend of two indices), the same crop. The
    padding of a crop larger than the image is `ignore_index`, as torchvision's segmentation references pad
    their targets (`pad_if_smaller(target, fill=255)`): those pixels have no truth."""
    wide = mask.dtype != np.uint8  # read from a 16- or 32-bit image: Pillow's 32-bit integer mode holds them
    img = Image.fromarray(mask.astype(np.int32) if wide else mask)
    return np.asarray(apply_geometry(img, geo, resample=Image.NEAREST, fill=ignore_index)).astype(mask.dtype)


def prepare_image(pixels: np.ndarray, pre: Preprocess, input_size: tuple[int, ...]) -> PreparedImage:
    """The math in numpy, not torch: images are read in threads beside the model (`read_ahead`), and a torch op
    on a large tensor there would start an OpenMP team of its own in each of them."""
    channels = input_size[0]
    geo = geometry(pixels.shape[1], pixels.shape[0], pre, input_size)
    if geo.resized in (None, geo.size) and geo.crop in (None, pixels.shape[:2]):
        img, display = None, pixels  # nothing moves: the display is the pixels (one array, never written to)
    else:
        img = apply_geometry(Image.fromarray(pixels), geo)
        display = np.asarray(img, dtype=np.uint8)  # RGB already: made from (H, W, 3) pixels
    if channels == 1:
        grey = (img if img is not None else Image.fromarray(pixels)).convert("L")
        x = (np.asarray(grey, dtype=np.float32) / np.float32(255.0))[None]
    elif channels == 3:
        x = (display.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)
    else:
        raise ReportgenError(f"`model.input_size`: images give 1 or 3 channels, not {channels}.")
    if pre.normalize is not None:
        mean, std = pre.normalize.mean, pre.normalize.std
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ReportgenError(_normalize_mismatch(pre.normalize, channels))
        x = (x - np.asarray(mean, np.float32).reshape(-1, 1, 1)) / np.asarray(std, np.float32).reshape(-1, 1, 1)
    return PreparedImage(display=display, tensor=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))


def _normalize_mismatch(normalize: Normalize, channels: int) -> str:
    """What is wrong when mean and std do not fit the model's channels, and the two ways out."""
    given = f"have {len(normalize.mean)} and {len(normalize.std)} values"
    if normalize == Normalize():  # `imagenet`, or the default: the likely case on a 1-channel model
        given = "are ImageNet's, 3 values each for red, green and blue"
    each = "1 value each" if channels == 1 else f"1 or {channels} values each"
    return (f"`inputs.preprocess.normalize`: the model takes {channels}-channel images (`model.input_size`), but "
            f"the mean and std {given}. Give your training data's statistics, {each} (like "
            f"`normalize: {{mean: [0.5], std: [0.5]}}`), or `normalize: none` for pixels in [0, 1].")


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _resize_size(width: int, height: int, size: tuple[int, ...]) -> tuple[int, int]:
    """torchvision semantics: one number = the shorter side; two = (height, width). Returns (w, h)."""
    if len(size) == 2:
        return size[1], size[0]
    short, long = sorted((width, height))
    new_short, new_long = size[0], int(size[0] * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(img: Image.Image, size: tuple[int, int], fill: int = 0) -> Image.Image:
    """torchvision's CenterCrop on a PIL image (pads with black, or `fill`, when the image is smaller)."""
    th, tw = size
    if img.width < tw or img.height < th:
        canvas = Image.new(img.mode, (max(tw, img.width), max(th, img.height)), fill)
        canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
        img = canvas
    left = int(round((img.width - tw) / 2.0))
    top = int(round((img.height - th) / 2.0))
    return img.crop((left, top, left + tw, top + th))


T = TypeVar("T")
R = TypeVar("R")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
MAX_READERS = 4


def free_readers(cores: int | None = None, torch_threads: int | None = None,
                 device: torch.device | str | None = None) -> int:
    """How many reader threads `read_ahead` starts: the cores (None: the usable ones, CORES) that torch's threads
    (None: `torch.get_num_threads()`) leave free, at most MAX_READERS. With torch on every core, readers would
    only take cores from the model (on 2 cores its forward ran 2x slower beside them): 0, the caller reads. A
    model on another `device` (a GPU) keeps one core busy, the caller's, which launches its kernels."""
    cores = CORES if cores is None else cores
    threads = torch.get_num_threads() if torch_threads is None else torch_threads
    if device is not None and torch.device(device).type != "cpu":
        threads = 1
    return max(0, min(MAX_READERS, cores - threads))


def read_ahead(read: Callable[[T], R], items: Iterable[T], ahead: int,
               readers: int | None = None) -> Iterator[tuple[T, Future[R]]]:
    """(item, the future of `read(item)`) for each of `items`, in their order. With `readers` threads (None:
    `free_readers()`) a pool reads up to `ahead` items beyond the one handed out: Pillow's decoding and resizing
    release the GIL, so the next images are read while the model runs on these; an item whose read has not
    started when it is wanted is read in the caller's thread. With 0 readers each item is read in the caller's
    thread when it is wanted, and no thread is started. `future.result()` is `read`'s value, or raises what
    `read` raised. The memory held is bounded by `ahead` items. When the loop ends (done, left early, an
    exception, Ctrl-C) the reads not started are cancelled and the pool is shut down without waiting for the few
    that run (each ends with its image)."""
    readers = free_readers() if readers is None else readers
    if readers < 1:
        yield from ((item, _read_here(read, item)) for item in items)
        return
    pool = ThreadPoolExecutor(max_workers=max(1, min(readers, ahead)), thread_name_prefix="reportgen-read")
    pending: deque[tuple[T, Future[R]]] = deque()
    source = iter(items)
    try:
        while True:
            for item in source:  # top the queue up: `ahead` reads besides the one handed out next
                pending.append((item, pool.submit(read, item)))
                if len(pending) > ahead:
                    break
            if not pending:
                return
            item, future = pending.popleft()
            if future.cancel():  # not started: the readers are behind (no free core); reading it here beats waiting
                future = _read_here(read, item)
            yield item, future
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_here(read: Callable[[T], R], item: T) -> Future[R]:
    """`read(item)` done in the caller's thread, as a finished future: its value, or what it raised (handed out
    as the pool's reads are: raised by `result()`)."""
    future: Future[R] = Future()
    try:
        future.set_result(read(item))
    except Exception as exc:
        future.set_exception(exc)
    return future


def unique_names(paths: list[Path] | list[str]) -> list[str]:
    """File stems: the `<image>` part of arrays.npz keys. A stem that files in several folders share is
    `<folder>/<stem>` for each of them (an ImageFolder's `cat/0` and `dog/0`: the class says which it is), and
    what still repeats takes a numeric suffix (`x` and `x_2` of x.png and x.jpg)."""
    paths = [os.fspath(p) for p in paths]  # text, not Path objects: a data set has many
    stems = [os.path.splitext(os.path.basename(p))[0] or "image" for p in paths]
    parents = [sys.intern(os.path.basename(os.path.dirname(p))) for p in paths]  # a few folders, shared
    folders = set(zip(stems, parents))
    shared = {stem for stem, n in Counter(stem for stem, _ in folders).items() if n > 1}
    del folders
    seen: dict[str, int] = {}
    names = []
    for parent, stem in zip(parents, stems):
        if stem in shared and parent:
            stem = f"{parent}/{stem}"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count + 1}")
    del stems, parents, seen
    if len(set(names)) == len(names):
        return names
    # a generated name may collide with a real stem: keep suffixing until unique
    out: list[str] = []
    taken: set[str] = set()
    for name in names:
        candidate, i = name, 2
        while candidate in taken:
            candidate, i = f"{name}_{i}", i + 1
        out.append(candidate)
        taken.add(candidate)
    return out
