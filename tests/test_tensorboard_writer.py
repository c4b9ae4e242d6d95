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
    # file order is name order: within one second, a process's 10th writer's file sorts before its 9th's
    events = sorted(acc.Tensors("a/text_summary"), key=lambda e: e.step)
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


def test_a_build_writes_every_section_into_tensorboard(project):
    """`reportgen build` with output.tensorboard: the figures of each section (overlays composed), the conv
    weight histograms and the summary text, read back with TensorBoard's reader."""
    from click.testing import CliRunner

    from reportgen.cli import main

    config = project.base()
    config["analyses"].update(kernels={}, feature_maps={}, cam={"methods": ["gradcam"]},
                              gradients={"methods": ["saliency"]})
    config["output"]["tensorboard"] = "tb"
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    (event_file,) = (project.root / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    tags = acc.Tags()
    sections = {tag.split("/")[0] for tag in tags["images"]}
    assert {"kernels", "feature_maps", "cam", "gradients"} <= sections
    overlay = next(tag for tag in tags["images"] if tag.startswith("cam/") and "over the image" in tag)
    pixels = _decode(acc.Images(overlay)[0].encoded_image_string)
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 0  # the composed overlay, not blank
    assert {"0.weight", "3.weight"} <= set(tags["histograms"])
    assert any(tag.startswith("summary") for tag in tags["tensors"])


def test_a_tensorboard_folder_that_cannot_be_written_stops_the_build_before_anything_runs(project):
    from click.testing import CliRunner

    from reportgen.cli import main

    assert CliRunner().invoke(main, ["build", str(project.write()), "-q"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (project.root / "out").iterdir()}
    (project.root / "tb").write_text("a file, not a folder")
    config = project.base()
    config["output"]["tensorboard"] = "tb"
    config["title"] = "changed"
    for command in ("validate", "build"):
        result = CliRunner().invoke(main, [command, str(project.write(config))])
        assert result.exit_code == 2 and "`output.tensorboard`" in result.stderr and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in (project.root / "out").iterdir()} == before
