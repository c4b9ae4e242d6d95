"""User feature masks (the segments of an image the mask-taking perturbation methods turn on and off): read from a
file a stranger may hand over, checked and relabelled.

- `analyses.gradients.feature_mask`: ONE .npy file, an (H, W) integer label map in the model's input pixels
  (`model.input_size`, after resizing and cropping), applied to every image (`load_feature_mask`);
- the manifest column `segments`: per image, a label image (a PNG of integer labels: palette indices or grayscale
  values, 8 or 16 bit) or a .npy, in the ORIGINAL image's pixels like the `mask` column, moved with the image by the
  preprocessing (nearest resize, the same crop; `read_segments`, then `inputs.transform_class_mask`).

Labels are any non-negative integers; they are relabelled 0 … K − 1 in order (`relabel`), so gaps cost no forward.
Each label costs forwards (feature_ablation: one per label and image; shapley_value_sampling: one per label, order
and image), so a map may hold at most MAX_FEATURES labels: a stranger's file cannot cost unbounded forwards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ReportgenError
from .inputs import CLASS_MASK_MODES, ImageReadError, _read_mask_file

# labels per image at most: a feature mask of 1024 segments costs feature_ablation 1024 forwards per image, about
# RISE's default masks (1000) and more than occlusion's positions at 224² (27² = 729); every pixel of a 32 × 32 input
MAX_FEATURES = 1024
HEADER = 4096  # bytes of a .npy header, at most: a file larger than its (H, W) int64 array and this is not that array
KEY = "`analyses.gradients.feature_mask`"


def relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """An integer label map -> (the same map with labels 0 … K − 1 in the order of the old ones, int32; K)."""
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32), len(values)


def checked(labels: np.ndarray, what: str, shape: tuple[int, int], where: str) -> np.ndarray:
    """`labels` (a map read from `what`) checked: an integer (or bool) (H, W) array of `shape` (`where`: the shape
    in words), no negative label, at most MAX_FEATURES labels. -> relabelled 0 … K − 1, int32."""
    expected = f"an (H, W) = {tuple(shape)} integer label map in {where}"
    if labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if tuple(labels.shape) != tuple(shape):
        raise ReportgenError(f"{what} has shape {tuple(labels.shape)}; a feature mask is {expected}.")
    if labels.dtype.kind not in "iub":
        raise ReportgenError(f"{what} holds {labels.dtype} values; a feature mask is {expected} (save it with "
                             "`np.save(path, labels.astype(np.int64))`).")
    if labels.size and labels.min() < 0:
        raise ReportgenError(f"{what} holds the negative label {int(labels.min())}; a feature mask is {expected}, "
                             "its labels non-negative (0, 1, 2, …), one per segment.")
    out, count = relabel(labels)
    if count > MAX_FEATURES:
        raise ReportgenError(f"{what} holds {count} distinct labels; a feature mask is {expected} of at most "
                             f"{MAX_FEATURES} labels (each costs forwards of the model per image): merge segments.")
    return out


def read_npy(path: Path, what: str, shape: tuple[int, int], where: str) -> np.ndarray:
    """The (H, W) integer array of a .npy file, its size bounded before reading and no pickle."""
    expected = f"a feature mask is an (H, W) = {tuple(shape)} integer label map in {where}"
    if not path.is_file():
        raise ReportgenError(f"{what} is not an existing .npy file; {expected}.")
    return load_array(path, 8 * shape[0] * shape[1] + HEADER, what, expected)


def load_array(path: Path, limit: int, what: str, expected: str) -> np.ndarray:
    """The one array of the .npy file `path` (a stranger's, maybe): refused unread when larger than `limit` bytes,
    read without unpickling anything. Errors name `what` and say what it should be (`expected`)."""
    if path.stat().st_size > limit:
        raise ReportgenError(f"{what} is larger than it can be: {expected}.")
    try:
        array = np.load(path, allow_pickle=False)
        if not isinstance(array, np.ndarray):  # an .npz: a zip of several arrays
            array.close()
            raise ValueError("it holds several arrays (an .npz); save the one array with np.save")
    except (OSError, ValueError, EOFError) as exc:
        # numpy's word for a file it does not know, or one of Python objects, suggests unpickling: never here
        reason = "not a .npy array of numbers" if "pickle" in str(exc) else str(exc)
        raise ReportgenError(f"{what}: cannot read it as a .npy array ({reason}); {expected}.") from None
    return array


def load_feature_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The config's feature mask: (H, W) = `size` (the model's input) labels 0 … K − 1, int32."""
    what = f"{KEY}: `{path}`"
    where = "the model's input pixels (`model.input_size`)"
    return checked(read_npy(Path(path), what, size, where), what, size, where)


def read_segments(path: Path, shape: tuple[int, int], where: str) -> np.ndarray:
    """A manifest's `segments` file for an image of `shape` (H0, W0) (`where`: the manifest row, for messages):
    a .npy, else a label image (palette indices or grayscale values; EXIF orientation applied, as for its image).
    -> (H0, W0) labels 0 … K − 1, int32."""
    what = f"`inputs.images`: {where}: segments {path}"
    pixels = "its image's pixels (before resizing and cropping)"
    if Path(path).suffix.lower() == ".npy":
        return checked(read_npy(Path(path), what, shape, pixels), what, shape, pixels)

    def labels(img) -> np.ndarray:
        if img.mode not in CLASS_MASK_MODES:
            raise ReportgenError(f"{what} is a {img.mode} image; segments are a PNG of integer labels (palette "
                                 f"or grayscale, 8 or 16 bit) or a .npy: an (H, W) = {tuple(shape)} integer label "
                                 f"map in {pixels}.")
        if img.size != (shape[1], shape[0]):  # before decoding: a stranger's huge PNG costs no memory
            raise ReportgenError(f"{what} has shape {(img.size[1], img.size[0])}; a feature mask is an (H, W) = "
                                 f"{tuple(shape)} integer label map in {pixels}.")
        return np.asarray(img).astype(np.int64)

    try:
        found = _read_mask_file(Path(path), labels)
    except ImageReadError as exc:  # unreadable: an error, not an image skipped (the user asked for these segments)
        reason = exc.reason.removeprefix(f"mask {Path(path).name}: ")
        raise ReportgenError(f"{what} cannot be read ({reason}); segments are a PNG of integer labels or a .npy: "
                             f"an (H, W) = {tuple(shape)} integer label map in {pixels}.") from None
    return checked(found, what, shape, pixels)
