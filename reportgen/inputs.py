"""Find, read and preprocess the input images. Keeps the original pixels for overlays."""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import Normalize, Preprocess
from .errors import ReportgenError

IMAGE_SUFFIXES = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def find_images(patterns: tuple[str, ...]) -> list[Path]:
    """Files, folders (their image files, sorted) and globs, in the order given, without duplicates."""
    if not patterns:
        raise ReportgenError("`inputs.images` is empty: list image files, folders or globs (like images/*.jpg).")
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            raise ReportgenError(f"`inputs.images`: {pattern} does not exist.")
        if not matches:
            raise ReportgenError(f"`inputs.images`: no image matches {pattern}.")
        found.extend(m for m in matches if m not in found)
    return found


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
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, alpha, max_value)
    except UnidentifiedImageError:
        raise ReportgenError(f"`inputs.images`: {path} is not an image Pillow can read.") from None
    except Image.DecompressionBombError as exc:
        raise ReportgenError(f"`inputs.images`: {path} is too large to read safely ({exc}). Resize it first.") from None
    except OSError as exc:
        raise ReportgenError(f"`inputs.images`: cannot read {path}: {exc}.") from None
    except Exception as exc:  # Pillow raises SyntaxError, ValueError, ... for broken files
        raise ReportgenError(f"`inputs.images`: {path} is a broken image ({type(exc).__name__}: {exc}).") from None


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
    if not has_alpha:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    rgba = img.convert("RGBA")  # palette / grey transparency becomes an alpha channel
    if alpha == "drop":
        return np.asarray(rgba.convert("RGB"), dtype=np.uint8)
    background = Image.new("RGBA", img.size, (*ALPHA[alpha], 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class PreparedImage:
    display: np.ndarray  # (H, W, 3) uint8: resized and cropped, before normalisation
    tensor: torch.Tensor  # (C, H, W) float32, normalised


def prepare_image(pixels: np.ndarray, pre: Preprocess, input_size: tuple[int, ...]) -> PreparedImage:
    channels, height, width = input_size
    img = Image.fromarray(pixels)
    if pre.resize is None and pre.center_crop is None:
        # default: cover the model's input size keeping the aspect ratio, then centre-crop to it
        scale = max(height / img.height, width / img.width)
        img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))),
                         Image.BILINEAR)
        img = _center_crop(img, (height, width))
    else:
        if pre.resize is not None:
            img = _resize(img, pre.resize, RESAMPLE[pre.interpolation])
        if pre.center_crop is not None:
            crop = pre.center_crop
            img = _center_crop(img, (crop[0], crop[-1]))
    display = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if channels == 1:
        x = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]
    elif channels == 3:
        x = torch.from_numpy(display.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
    else:
        raise ReportgenError(f"`model.input_size`: images give 1 or 3 channels, not {channels}.")
    if pre.normalize is not None:
        mean, std = pre.normalize.mean, pre.normalize.std
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ReportgenError(f"`inputs.preprocess.normalize`: mean and std need 1 or {channels} values, "
                                 f"got {len(mean)} and {len(std)}.")
        x = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return PreparedImage(display=display, tensor=x.float())


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _resize(img: Image.Image, size: tuple[int, ...], resample: int = Image.BILINEAR) -> Image.Image:
    """torchvision semantics: one number = the shorter side; two = (height, width)."""
    if len(size) == 2:
        return img.resize((size[1], size[0]), resample)
    short, long = sorted((img.width, img.height))
    new_short, new_long = size[0], int(size[0] * long / short)
    w, h = (new_short, new_long) if img.width <= img.height else (new_long, new_short)
    return img.resize((w, h), resample)


def _center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision's CenterCrop on a PIL image (pads with black when the image is smaller)."""
    th, tw = size
    if img.width < tw or img.height < th:
        canvas = Image.new(img.mode, (max(tw, img.width), max(th, img.height)))
        canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
        img = canvas
    left = int(round((img.width - tw) / 2.0))
    top = int(round((img.height - th) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def unique_names(paths: list[Path]) -> list[str]:
    """File stems, made unique with a numeric suffix: the `<image>` part of arrays.npz keys."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = path.stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count + 1}")
    # a generated name may collide with a real stem: keep suffixing until unique
    out: list[str] = []
    for name in names:
        candidate, i = name, 2
        while candidate in out:
            candidate, i = f"{name}_{i}", i + 1
        out.append(candidate)
    return out
