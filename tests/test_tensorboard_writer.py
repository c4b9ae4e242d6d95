"""`output.tensorboard`: what write_tensorboard writes, read back with TensorBoard's own EventAccumulator."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from tensorboard.util import tensor_util

from reportgen.errors import ReportgenError
from reportgen.figures.common import to_png
from reportgen.tensorboard import write_tensorboard


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_images_histograms_and_text_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    kernels = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(8, 6), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    weights = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    summary = "| layer | params |\n|---|---|\n| conv1 | 224 |"
    path = write_tensorboard(
        tmp_path / "runs" / "reportgen",
        images={"kernels/conv1": kernels, "cam/gradcam/img0": grey, "charts/loss": to_png(rgba)},
        histograms={"weights/conv1": weights, "weights/empty": np.array([np.nan])},
        texts={"summary": summary},
        step=3,
    )
    assert path.parent == tmp_path / "runs" / "reportgen" and path.name.startswith("events.out.tfevents.")

    acc = EventAccumulator(str(path.parent), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
    tags = acc.Tags()
    assert sorted(tags["images"]) == ["cam/gradcam/img0", "charts/loss", "kernels/conv1"]
    for tag, expected in [("kernels/conv1", kernels), ("cam/gradcam/img0", np.repeat(grey[..., None], 3, axis=2)),
                          ("charts/loss", rgba)]:
        (event,) = acc.Images(tag)
        assert event.step == 3 and (event.height, event.width) == expected.shape[:2]
        np.testing.assert_array_equal(_decode(event.encoded_image_string), expected)  # lossless, pixel for pixel

    assert tags["histograms"] == ["weights/conv1"]  # no finite values: nothing to bin, no histogram
    (hist,) = acc.Histograms("weights/conv1")
    h = hist.histogram_value
    assert hist.step == 3 and h.num == weights.size and sum(h.bucket) == weights.size
    assert h.min == pytest.approx(float(weights.min())) and h.max == pytest.approx(float(weights.max()))
    assert h.sum == pytest.approx(float(weights.astype(np.float64).sum()), rel=1e-6)

    (text,) = acc.Tensors("summary/text_summary")
    assert text.step == 3 and tensor_util.make_ndarray(text.tensor_proto).tolist() == [summary.encode()]


def test_each_call_adds_a_new_event_file(tmp_path):
    first = write_tensorboard(tmp_path, texts={"a": "one"})
    second = write_tensorboard(tmp_path, texts={"a": "two"}, step=1)
    assert first != second and first.exists() and second.exists()
    acc = EventAccumulator(str(tmp_path), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
    events = acc.Tensors("a/text_summary")
    assert [(e.step, tensor_util.make_ndarray(e.tensor_proto).tolist()) for e in events] == [(0, [b"one"]),
                                                                                               (1, [b"two"])]


def test_bad_pixels_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="`x`: expected uint8"):
        write_tensorboard(tmp_path / "tb", images={"x": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(TypeError, match=r"`y`: expected \(H, W\)"):
        write_tensorboard(tmp_path / "tb", images={"y": np.zeros((4, 4, 2), np.uint8)})
    assert not (tmp_path / "tb").exists()


def test_without_tensorboard_the_message_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ReportgenError, match=r"needs the tensorboard package: pip install 'reportgen\[tensorboard\]'"):
        write_tensorboard(tmp_path / "tb", texts={"a": "b"})
    assert not (tmp_path / "tb").exists()
