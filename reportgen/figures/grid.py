"""Image grids with numpy and Pillow: many small tiles into ONE picture, fast.

A 64-tile grid is one numpy copy and one PNG encode, not 64 matplotlib axes
(`benchmarks/figures.py` measures the difference). Reusable by any figure module:

    tiles = to_uint8(scale_tiles(maps, "channel"))          # (N, h, w) uint8
    tiles = resize_tiles(tiles, min_side=48, max_side=96)    # crisp tiny maps, capped big ones
    grid = compose_grid(apply_colormap(tiles / 255), cols=grid_cols(len(tiles)))
    grid = label_tiles(grid, [str(c) for c in channels], tile_shape=tiles.shape[1:3], cols=..., pad=...)
    picture = hstack([grid, colorbar_image("viridis", lo, hi, grid.shape[0])])
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .common import apply_colormap

PAD_VALUE = 255  # white gaps between tiles


def grid_cols(n: int, aspect: float = 1.0) -> int:
    """Columns for `n` tiles: about sqrt(n * aspect), preferring an exact divisor of n (32 -> 8 x 4, 64 -> 8 x 8)."""
    if n <= 0:
        return 1
    cols = max(1, math.ceil(math.sqrt(n * aspect)))
    for d in range(cols, min(n, 2 * cols) + 1):
        if n % d == 0:
            return d
    return min(cols, n)


def grid_size(n: int, tile_shape: tuple[int, int], cols: int, pad: int) -> tuple[int, int]:
    """(height, width) in pixels of `compose_grid` for n tiles of tile_shape (h, w)."""
    rows = max(1, math.ceil(n / cols))
    h, w = tile_shape
    return rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad


def compose_grid(tiles: np.ndarray, cols: int, pad: int = 2, pad_value: int = PAD_VALUE) -> np.ndarray:
    """(N, h, w[, 3]) uint8 tiles -> one (H, W[, 3]) uint8 picture, row-major, `pad` px between and around tiles.

    H = rows*h + (rows+1)*pad, W = cols*w + (cols+1)*pad, rows = ceil(N / cols); empty cells are `pad_value`.
    """
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8:
        raise TypeError(f"compose_grid wants uint8 tiles, got {tiles.dtype}")
    if tiles.ndim not in (3, 4):
        raise ValueError(f"compose_grid wants (N, h, w) or (N, h, w, C) tiles, got shape {tiles.shape}")
    n, h, w = tiles.shape[:3]
    extra = tiles.shape[3:]
    cols = max(1, min(cols, max(n, 1)))
    rows = max(1, math.ceil(n / cols))
    cells = np.full((rows * cols, h + pad, w + pad) + extra, pad_value, dtype=np.uint8)
    cells[:n, :h, :w] = tiles
    # (rows, cols, h+pad, w+pad, ...) -> (rows, h+pad, cols, w+pad, ...) -> (rows*(h+pad), cols*(w+pad), ...)
    body = cells.reshape((rows, cols, h + pad, w + pad) + extra).swapaxes(1, 2)
    body = body.reshape((rows * (h + pad), cols * (w + pad)) + extra)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad) + extra, pad_value, dtype=np.uint8)
    out[pad:, pad:] = body
    return out


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (NaN -> 0) -> uint8 in [0, 255]."""
    return (np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def scale_tiles(maps: np.ndarray, mode: str = "channel") -> tuple[np.ndarray, float, float]:
    """(N, h, w) floats -> ((N, h, w) float32 in [0, 1], lo, hi).

    mode "channel": each tile min-max scaled on its own (lo, hi are the overall extremes, for captions);
    "shared": one linear scale [lo, hi] = [min, max] over all tiles, so brightness compares across tiles.
    A constant tile becomes 0.
    """
    maps = np.asarray(maps, dtype=np.float32)
    lo, hi = (float(maps.min()), float(maps.max())) if maps.size else (0.0, 0.0)
    if mode == "shared":
        span = hi - lo
        scaled = (maps - lo) / span if span > 0 else np.zeros_like(maps)
        return scaled.astype(np.float32), lo, hi
    if mode != "channel":
        raise ValueError(f"unknown scale mode {mode!r}")
    tile_lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - tile_lo
    scaled = np.divide(maps - tile_lo, span, out=np.zeros_like(maps), where=span > 0)
    return scaled, lo, hi


def symmetric_scale(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Signed values -> (values mapped [-m, m] -> [0, 1], m) with m = max |value| (0 stays at 0.5)."""
    values = np.asarray(values, dtype=np.float32)
    m = float(np.abs(values).max()) if values.size else 0.0
    if m <= 0:
        return np.full_like(values, 0.5), 0.0
    return (values / (2 * m) + 0.5).astype(np.float32), m


def resize_tiles(tiles: np.ndarray, min_side: int = 48, max_side: int = 96) -> np.ndarray:
    """(N, h, w[, 3]) uint8: nearest-neighbour upscaling by an integer factor until the short side reaches
    `min_side` (a 3x3 kernel stays crisp), or box-filter downscaling so the long side is at most `max_side`."""
    n, h, w = tiles.shape[:3]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.stack([np.asarray(Image.fromarray(t).resize(size, Image.BOX)) for t in tiles]) if n else tiles
    factor = max(1, -(-min_side // max(1, min(h, w))))
    factor = max(1, min(factor, max_side // max(h, w)))
    if factor == 1:
        return tiles
    return np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) uint8 -> (H, W, 3) uint8."""
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def hstack(images: Sequence[np.ndarray], gap: int = 8, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Place RGB images side by side, top-aligned, `gap` px apart -> (H, W, 3) uint8."""
    return _stack(images, 1, gap, pad_value)


def vstack(images: Sequence[np.ndarray], gap: int = 8, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Stack RGB images top to bottom, left-aligned, `gap` px apart -> (H, W, 3) uint8."""
    return _stack(images, 0, gap, pad_value)


def _stack(images: Sequence[np.ndarray], axis: int, gap: int, pad_value: int) -> np.ndarray:
    """RGB images one after another along `axis` (0: down, 1: across), `gap` px apart, aligned at the
    start of the other axis -> (H, W, 3) uint8."""
    images = [as_rgb(im) for im in images]
    shape = [0, 0, 3]
    shape[axis] = sum(im.shape[axis] for im in images) + gap * (len(images) - 1)
    shape[1 - axis] = max(im.shape[1 - axis] for im in images)
    out = np.full(tuple(shape), pad_value, dtype=np.uint8)
    at = 0
    for im in images:
        place = [slice(0, im.shape[0]), slice(0, im.shape[1])]
        place[axis] = slice(at, at + im.shape[axis])
        out[tuple(place)] = im
        at += im.shape[axis] + gap
    return out


def fit_height(pixels: np.ndarray, height: int) -> np.ndarray:
    """Resize an RGB image to `height` px tall, keeping its aspect (bilinear down, nearest-ish up)."""
    h, w = pixels.shape[:2]
    if h == height:
        return pixels
    width = max(1, round(w * height / h))
    method = Image.LANCZOS if height < h else Image.BICUBIC
    return np.asarray(Image.fromarray(as_rgb(pixels)).resize((width, height), method))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def label_tiles(grid: np.ndarray, labels: Sequence[str], tile_shape: tuple[int, int], cols: int, pad: int,
                size: int = 10) -> np.ndarray:
    """Write a small label (a channel or filter index) into the top-left corner of each tile of a grid
    made by `compose_grid` with the same `tile_shape`, `cols` and `pad`. Returns a new RGB image."""
    img = Image.fromarray(as_rgb(grid))
    draw = ImageDraw.Draw(img)
    font = _font(size)
    h, w = tile_shape
    for i, text in enumerate(labels):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + pad)
        left, top, right, bottom = draw.textbbox((x + 1, y), text, font=font)
        if right - x > w or bottom - y > h:
            continue  # tile too small for a readable label
        draw.rectangle((x, y, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((x + 1, y), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def colorbar_image(cmap: str, lo: float, hi: float, height: int, width: int = 12, size: int = 10) -> np.ndarray:
    """A vertical colour bar (top = `hi`, bottom = `lo`) with three tick labels -> (height, W, 3) uint8."""
    height = max(height, 3 * (size + 4))
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)  # (height, width)
    bar = apply_colormap(ramp, cmap)
    ticks = [(hi, 0), ((lo + hi) / 2, height // 2), (lo, height - 1)]
    texts = [_fmt(v) for v, _ in ticks]
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in texts)
    img = Image.new("RGB", (width + 6 + text_w + 2, height), (PAD_VALUE,) * 3)
    img.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(80, 80, 80))
    for text, (_, y) in zip(texts, ticks):
        box = draw.textbbox((0, 0), text, font=font)
        th = box[3] - box[1]
        ty = min(max(0, y - th // 2 - box[1]), height - th - box[1] - 1)
        draw.line((width, y, width + 3, y), fill=(80, 80, 80))
        draw.text((width + 6, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"
