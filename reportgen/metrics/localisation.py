"""Does a map point at the object? Pointing game, energy-based pointing game, IoU of the map's top pixels.

Inputs are maps (N, H, W) float and masks (N, H, W) bool of the same size (the object's pixels; a box
becomes a mask with `box_mask`). Results are lists with one entry per image, `None` where the image's
mask is empty (nothing to point at: the image is excluded, not counted as a miss).

- `pointing_game` (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): a hit when
  the map's maximum lies in the mask, or within `tolerance` pixels of it (Euclidean distance to the
  nearest mask pixel; the paper uses 15 px at the image's resolution). With several pixels at the maximum,
  any one of them counts, as in Quantus 0.6.0's `PointingGame` (which has no tolerance). Unlike Quantus, a
  constant map (an all-zero CAM, say) is a miss: it points nowhere, while Quantus counts every pixel as
  "at the maximum" and so calls it a hit.
- `energy_pointing_game` (Wang et al. 2020, Score-CAM, section 5.1.2): the share of the map's mass inside
  the mask, sum(m in mask) / sum(m), after shifting the map so its minimum is 0 (Score-CAM min-max
  normalises its maps before this; the scale cancels). A constant map has no mass and scores 0.
- `top_iou`: intersection over union of the mask and the pixels at or above the map's `percentile`-th
  percentile (85 by default; numpy's linear interpolation). A constant map selects every pixel.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the pixels whose centres lie in the box (x0, y0, x1, y1), in pixel coordinates
    with pixel (row i, column j) covering [j, j+1) x [i, i+1): centre (j + 0.5, i + 0.5), inside when
    x0 <= j + 0.5 < x1 and y0 <= i + 0.5 < y1. An integer, end-exclusive box gives mask[y0:y1, x0:x1]
    (the shapes demo's boxes); a box under half a pixel wide may cover nothing."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cols = np.arange(shape[1]) + 0.5
    rows = np.arange(shape[0]) + 0.5
    return ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> list[bool | None]:
    """Per image: True (hit), False (miss, or constant map) or None (empty mask)."""
    return [_point(m, k, tolerance) for m, k in zip(*_checked(maps, masks))]


def energy_pointing_game(maps: np.ndarray, masks: np.ndarray) -> list[float | None]:
    """Per image: the share in [0, 1] of the min-shifted map's mass inside the mask, or None (empty mask)."""
    out: list[float | None] = []
    for m, k in zip(*_checked(maps, masks)):
        shifted = m - m.min()
        total = shifted.sum()
        out.append(None if not k.any() else float(shifted[k].sum() / total) if total > 0 else 0.0)
    return out


def top_iou(maps: np.ndarray, masks: np.ndarray, percentile: float = 85.0) -> list[float | None]:
    """Per image: IoU in [0, 1] of the mask and the pixels >= the map's percentile, or None (empty mask)."""
    out: list[float | None] = []
    for m, k in zip(*_checked(maps, masks)):
        top = m >= np.percentile(m, percentile)
        out.append(float((top & k).sum() / (top | k).sum()) if k.any() else None)
    return out


def _point(m: np.ndarray, mask: np.ndarray, tolerance: float) -> bool | None:
    if not mask.any():
        return None
    if m.max() == m.min():
        return False
    peaks = np.argwhere(m == m.max())  # (P, 2) row, column
    if tolerance <= 0:
        return bool(mask[peaks[:, 0], peaks[:, 1]].any())
    inside = np.argwhere(mask)  # (K, 2)
    dist2 = ((peaks[:, None, :] - inside[None, :, :]) ** 2).sum(-1)  # (P, K)
    return bool(dist2.min() <= tolerance * tolerance)


def _checked(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape or masks.dtype != bool:
        raise ValueError(f"maps (N, H, W) and bool masks of the same shape expected, got {maps.shape} and "
                         f"{masks.shape} {masks.dtype}")
    return maps, masks
