"""`output.tensorboard`: what the report shows, written as a TensorBoard event file.

Images (kernels, feature maps, CAM and gradient overlays, charts), weight histograms and texts (the
summary table as markdown) go into one new event file under `logdir`, so `tensorboard --logdir`
shows them beside the run's own logs. Needs the `tensorboard` package (`reportgen[tensorboard]`).
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ReportgenError

TENSORBOARD_MISSING = ("writing `output.tensorboard` needs the tensorboard package: "
                       "pip install 'reportgen[tensorboard]'")
EVENT_FILES = "events.out.tfevents.*"


def write_tensorboard(
    logdir: Path,
    images: Mapping[str, np.ndarray | bytes] | None = None,
    histograms: Mapping[str, np.ndarray] | None = None,
    texts: Mapping[str, str] | None = None,
    step: int = 0,
) -> Path:
    """Write one event file into `logdir` (created if needed) and return its path.

    images: tag -> (H, W, 3|4) or (H, W) uint8 pixels, or PNG bytes (a report Figure's `png`).
    histograms: tag -> values of any shape (conv weights: (out, in, kh, kw)), binned as TensorBoard does.
    texts: tag -> markdown (TensorBoard's text tab renders it; the tag gets TensorBoard's `/text_summary`).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ReportgenError(TENSORBOARD_MISSING) from None
    pixels = {tag: _pixels(tag, image) for tag, image in (images or {}).items()}  # validated before any writing
    logdir = Path(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        before = set(logdir.glob(EVENT_FILES))
        writer = SummaryWriter(log_dir=str(logdir))
    except OSError as exc:
        raise ReportgenError(f"cannot write TensorBoard logs to `{logdir}`: {exc}") from None
    try:
        for tag, image in pixels.items():
            writer.add_image(tag, image, step, dataformats="HWC")
        for tag, values in (histograms or {}).items():
            values = np.asarray(values, dtype=np.float64).reshape(-1)
            values = values[np.isfinite(values)]
            if values.size:
                writer.add_histogram(tag, values, step)
        for tag, text in (texts or {}).items():
            writer.add_text(tag, text, step)
    finally:
        writer.close()
    new = sorted(set(logdir.glob(EVENT_FILES)) - before)
    return new[-1] if new else logdir


def _pixels(tag: str, image: np.ndarray | bytes) -> np.ndarray:
    """(H, W, 3|4) uint8 from pixels or PNG bytes; grey (H, W) becomes RGB."""
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image

        with Image.open(io.BytesIO(image)) as img:
            image = np.asarray(img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image `{tag}`: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise TypeError(f"image `{tag}`: expected (H, W), (H, W, 3) or (H, W, 4) pixels, got {image.shape}")
    return np.ascontiguousarray(image)
