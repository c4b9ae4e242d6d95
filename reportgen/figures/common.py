"""Small numpy/Pillow helpers shared by every figure: colour maps, overlays, PNG encoding."""
from __future__ import annotations

import hashlib
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image

from ..methods import grouped


@dataclass(frozen=True)
class Figure:
    """One image of the report. `thumb` (optional) is shown inline; the full `png` opens on click.

    An overlay keeps its two layers apart: `png` is the colour map alone and `under` the picture beneath it;
    the page lays `png` over `under` with opacity `alpha`, which is exactly `overlay()`'s blend. Every overlay
    of one image shares the same `under` bytes, and a map shown both alone and in its overlay (`layer`) the
    same `png` bytes, so the report carries each picture once, however often it appears."""

    png: bytes
    alt: str  # what it shows: method, layer, image, class
    caption: str = ""
    thumb: bytes | None = None
    width: int = 0
    height: int = 0
    under: bytes | None = None
    alpha: float = 1.0
    layer: bool = False  # `png` is a map also shown elsewhere (alone and in an overlay): the page carries it once


def make_figure(pixels: np.ndarray, alt: str, caption: str = "", thumb_side: int | None = None) -> Figure:
    """(H, W[, 3|4]) uint8 pixels -> Figure, with a thumbnail when the image is larger than `thumb_side`."""
    h, w = pixels.shape[:2]
    thumb = None
    if thumb_side is not None and max(h, w) > thumb_side:
        thumb = to_png(thumbnail(pixels, thumb_side))
    return Figure(png=to_png(pixels), alt=alt, caption=caption, thumb=thumb, width=w, height=h)


def overlay_figure(under: bytes, colour: np.ndarray, alpha: float, alt: str, caption: str = "",
                   min_side: int = 0) -> Figure:
    """A colour map (H, W, 3) uint8 to be laid with opacity `alpha` over the PNG `under` (same aspect ratio;
    the page stretches it to the colour map's size). Small maps are enlarged by whole pixels to `min_side`."""
    colour = upscale_nearest(colour, min_side)
    return Figure(png=to_png(colour), alt=alt, caption=caption, width=colour.shape[1], height=colour.shape[0],
                  under=under, alpha=float(alpha), layer=True)


def map_figure(colour: np.ndarray, alt: str, caption: str = "", min_side: int = 0) -> Figure:
    """A colour map shown alone that an `overlay_figure` shows too: the page carries its pixels once."""
    colour = upscale_nearest(colour, min_side)
    return Figure(png=to_png(colour), alt=alt, caption=caption, width=colour.shape[1], height=colour.shape[0],
                  layer=True)


def flatten(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8: the figure as the page shows it (an overlay composed as `overlay()` blends; a layer with
    an alpha channel weighted per pixel by it, over white when shown alone)."""
    top = _decode(fig.png)
    if fig.under is None:  # a layer with its own alpha shown alone lies over white (the page's `.layered`)
        return top[..., :3] if top.shape[2] == 3 else flatten(replace(fig, under=to_png(np.full_like(top[..., :3], 255)),
                                                                     alpha=1.0))
    under = _decode(fig.under)[..., :3]
    if under.shape[:2] != top.shape[:2]:  # the page stretches the picture beneath to the map (nearest for small inputs)
        rows = np.arange(top.shape[0]) * under.shape[0] // top.shape[0]
        cols = np.arange(top.shape[1]) * under.shape[1] // top.shape[1]
        under = under[rows][:, cols]
    if top.shape[2] == 4:  # a layer with its own alpha: each pixel's opacity is the figure's times its own
        weight = fig.alpha * top[..., 3:].astype(np.float32) / 255.0
        mixed = weight * top[..., :3].astype(np.float32) + (1.0 - weight) * under.astype(np.float32)
        return np.clip(mixed, 0, 255).round().astype(np.uint8)
    return blend(top, under, fig.alpha)


def _decode(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8, or (H, W, 4) for a picture with an alpha channel."""
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGBA" if img.has_transparency_data else "RGB"))


def matplotlib_classes() -> tuple[type, type]:
    """(matplotlib's Figure, its Agg canvas): the object API, no pyplot state, imported at the first call."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    return MplFigure, FigureCanvasAgg


def upscale_nearest(pixels: np.ndarray, min_side: int) -> np.ndarray:
    """Integer nearest-neighbour upscaling so tiny maps (7x7) stay crisp: smallest factor reaching `min_side`."""
    h, w = pixels.shape[:2]
    factor = max(1, -(-min_side // max(1, min(h, w))))
    if factor == 1:
        return pixels
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


@lru_cache(maxsize=None)
def _lut(name: str) -> np.ndarray:
    from matplotlib import colormaps  # no pyplot: no global state

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)  # (256, 3)


def apply_colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 RGB through matplotlib's colour map `name`."""
    index = np.clip(np.nan_to_num(values) * 255.0, 0, 255).astype(np.uint8)
    return _lut(name)[index]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Heat map (H, W) in [0, 1] over an RGB image (H, W, 3) uint8 -> (H, W, 3) uint8.

    `alpha` is the heat map's weight. The heat map is resized to the image when sizes differ.
    """
    if heat.shape != image.shape[:2]:
        heat = resize_float(heat, image.shape[:2])
    return blend(apply_colormap(heat, cmap), image[..., :3], alpha)


def blend(top: np.ndarray, under: np.ndarray, alpha: float) -> np.ndarray:
    """`top` laid with opacity `alpha` over `under`, both (H, W, 3) uint8 -> (H, W, 3) uint8: what a browser
    draws for an element of that opacity (see `flatten`)."""
    mixed = alpha * top.astype(np.float32) + (1.0 - alpha) * under.astype(np.float32)
    return np.clip(mixed, 0, 255).round().astype(np.uint8)


def resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (H, W) float map to size (h, w)."""
    h, w = size
    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32)


def normalize01(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map (or one of NaN only: a detector's box its randomised copy lost)
    becomes zeros."""
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0 or np.isnan(values).all():
        return np.zeros_like(values)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if not np.isfinite(lo) or hi - lo <= 0:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


_RECENT: dict[tuple, bytes] = {}  # (shape, digest of the pixels) -> their PNG, the most recent last
_RECENT_MAX = 128
_RECENT_LOCK = threading.Lock()  # figures may be encoded from several threads (feature-map grids)


def drawn_in_parallel(draw, items) -> list:
    """[draw(item) for item in items], on the machine's cores: a figure's time is mostly composing pixels with
    numpy and compressing PNGs with zlib, both outside the GIL (`to_png`'s cache is locked)."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as pool:
        return list(pool.map(draw, items))


def to_png(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3|4) uint8 -> PNG bytes (lossless, compressed, no timestamp); see `encode_png`.

    The same pixels give the same bytes, encoded once while they are recent: a map drawn alone and in its
    overlay, an input drawn beneath the overlays of several sections."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"to_png wants uint8 pixels, got {pixels.dtype}")
    key = (pixels.shape, hashlib.blake2b(pixels.data, digest_size=16).digest())
    with _RECENT_LOCK:
        png = _RECENT.pop(key, None)
    if png is None:
        png = encode_png(Image.fromarray(pixels))  # outside the lock: encodings run side by side
    with _RECENT_LOCK:
        _RECENT[key] = png
        if len(_RECENT) > _RECENT_MAX:
            del _RECENT[next(iter(_RECENT))]
    return png


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of `img`, lossless: an RGB or RGBA picture of at most 256 colours (maps through a colour map,
    a gradient overlay whose opacity follows its colour, kernel grids, flat charts) as a palette PNG, a third
    (a quarter) of the bytes to compress and to carry."""
    if img.mode in ("RGB", "RGBA") and img.getcolors(256) is not None:
        img = palette_image(np.asarray(img))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=img.mode == "P", compress_level=6)
    return buffer.getvalue()


def palette_image(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3|4) uint8 of at most 256 colours -> the same picture as a "P" image, its palette sorted by colour
    (with an alpha channel: an RGBA palette, which PNG writes as its tRNS chunk)."""
    channels = pixels.shape[2]
    packed = np.zeros(pixels.shape[:2], dtype=np.uint32)
    for c in range(channels):
        packed = (packed << 8) | pixels[..., c]
    colours, index = np.unique(packed, return_inverse=True)  # (K,) with K <= 256, (H*W,)
    shifts = [8 * (channels - 1 - c) for c in range(channels)]
    palette = np.stack([(colours >> shift) & 255 for shift in shifts], axis=1).astype(np.uint8)
    indexed = Image.fromarray(index.reshape(pixels.shape[:2]).astype(np.uint8), mode="P")
    indexed.putpalette(palette.tobytes(), rawmode="RGBA" if channels == 4 else "RGB")
    return indexed


def thumbnail(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most `max_side`."""
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels
    img = Image.fromarray(pixels)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return np.asarray(img)


def method_picker(method_ids) -> list[dict]:
    """The page's method picker for `method_ids`: their groups in order, each with its methods' ids and titles.
    Empty for fewer than two methods (nothing to choose)."""
    ids = list(dict.fromkeys(method_ids))
    if len(ids) < 2:
        return []
    return [{"title": group, "methods": [{"id": m.id, "title": m.title} for m in members]}
            for group, members in grouped(ids)]

