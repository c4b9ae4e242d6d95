"""The pointing game of per-box maps against true boxes (`reportgen.demo.detect`'s `eval`; issue 25, item 6).

For each true-positive detection of some scenes, does the maximum of its map lie in the box's true box? `hits`
also scores the same maps against another shape's box of the scene, a control that the game can be lost.
Numbers: `example_configs/detection/README.md`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BoxMaps:
    """The maps of the true-positive detections of some scenes: `image[j]` the scene, `label[j]`
    the class, `box[j]` the detected box, `truth[j]` the index of its true box in `scene_boxes`,
    `maps[j]` (H, W) the CAM."""

    image: np.ndarray  # (J,) int64
    label: np.ndarray  # (J,) int64
    box: np.ndarray  # (J, 4) float32
    truth: np.ndarray  # (J,) int64
    maps: np.ndarray  # (J, H, W) float32


def points_into(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """1.0 where the maximum of maps[j] (H, W) (its first, in row-major order) lies in the pixels of
    boxes[j] `x0, y0, x1, y1` (x1, y1 exclusive), else 0.0."""
    flat = maps.reshape(len(maps), -1).argmax(1)
    r, c = np.unravel_index(flat, maps.shape[1:])
    x0, y0, x1, y1 = np.asarray(boxes).reshape(-1, 4).T
    return ((x0 <= c) & (c < x1) & (y0 <= r) & (r < y1)).astype(float)


def hits(found: BoxMaps, truth: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The pointing game of `found` against each box's own true box (`truth`: per scene its boxes and labels, as
    `detect.scene_boxes` gives them), and, as a control that the game can be lost, against the next shape's
    true box of the same scene (a scene has 2 to 4 shapes)."""
    own = [truth[i][0][t] for i, t in zip(found.image, found.truth)]
    other = [truth[i][0][(t + 1) % len(truth[i][1])] for i, t in zip(found.image, found.truth)]
    return points_into(found.maps, own), points_into(found.maps, other)


def in_boxes(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's tutorial's `renormalize_cam_in_bounding_boxes`, one box a map: maps[j] zero outside
    boxes[j] (rounded to whole pixels) and min-max scaled to [0, 1] inside it."""
    out = np.zeros_like(maps)
    for j, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).round().astype(int)):
        part = maps[j, max(y0, 0):y1, max(x0, 0):x1]
        if part.size:
            out[j, max(y0, 0):y1, max(x0, 0):x1] = (part - part.min()) / max(part.max() - part.min(), 1e-7)
    return out
