"""The shapes demo: generator, shipped checkpoint and training routine (reportgen.demo.shapes)."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reportgen.demo import shapes

SHIPPED = Path(__file__).resolve().parents[1] / "example_configs" / "shapes"
FRESH_SEED = 4242  # distinct from training (0..7, 999) and sample (2024) seeds


@pytest.fixture(scope="module")
def shipped_model() -> nn.Module:
    torch.set_num_threads(2)
    model = shapes.build_model(num_classes=5)
    model.load_state_dict(torch.load(SHIPPED / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def fresh() -> shapes.ShapesBatch:
    return shapes.generate(200, seed=FRESH_SEED)


# ---------------------------------------------------------------- data set


def test_generate_is_deterministic_for_a_seed() -> None:
    a, b = shapes.generate(12, seed=3), shapes.generate(12, seed=3)
    for field in ("images", "labels", "boxes", "masks"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, shapes.generate(12, seed=4).images)
    np.testing.assert_array_equal(shapes.generate(5, seed=3).images, a.images[:5])  # prefix-stable


@pytest.mark.parametrize("size", [64, 48])
def test_shapes_batch_types_and_shapes(size: int) -> None:
    batch = shapes.generate(10, seed=1, size=size)
    assert batch.images.shape == (10, size, size, 3) and batch.images.dtype == np.uint8
    assert batch.labels.shape == (10,) and batch.labels.dtype == np.int64
    assert batch.boxes.shape == (10, 4)
    assert batch.masks.shape == (10, size, size) and batch.masks.dtype == bool
    assert len(batch) == 10


def test_all_classes_occur() -> None:
    assert shapes.CLASSES == ("circle", "square", "triangle", "cross", "star")
    labels = shapes.generate(100, seed=5).labels
    assert set(labels.tolist()) == set(range(len(shapes.CLASSES)))


def test_masks_and_boxes_agree_with_pixels() -> None:
    batch = shapes.generate(60, seed=11)
    for image, mask, (x0, y0, x1, y1) in zip(batch.images, batch.masks, batch.boxes):
        inside = image[mask].astype(int)  # (M, 3)
        colour = inside[0]
        assert (inside == colour).all(), "every shape pixel has the shape colour"
        assert (image == colour).all(-1).sum() == mask.sum(), "no background pixel has the shape colour"
        background = np.median(image[~mask].astype(float), axis=0)
        assert np.linalg.norm(background - colour) >= shapes.MIN_COLOUR_DISTANCE - 20
        # the box is the tight, inclusive-exclusive box of the mask
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert mask[y0:y1, x0:x1].sum() == mask.sum()
        extent = max(x1 - x0, y1 - y0)
        assert 10 <= extent <= 40


# ---------------------------------------------------------------- model and shipped artefacts


def test_model_structure_suits_cam() -> None:
    model = shapes.build_model(num_classes=5).eval()
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 5
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    seen: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(shapes.CAM_LAYER).register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 64, 64))
    handle.remove()
    assert logits.shape == (2, 5)
    assert seen["out"].shape == (2, model.fc.in_features, 8, 8)
    assert len(shapes.MEAN) == len(shapes.STD) == 3


def test_shipped_artefacts_present() -> None:
    assert (SHIPPED / "model.pt").stat().st_size < 1_000_000
    assert (SHIPPED / "labels.txt").read_text().splitlines() == list(shapes.CLASSES)
    assert (SHIPPED / "train_log.csv").is_file() and (SHIPPED / "metrics.csv").is_file()
    assert "python -m reportgen.demo.shapes train --out example_configs/shapes" in (SHIPPED / "README.md").read_text()
    images = sorted((SHIPPED / "images").glob("*.png"))
    assert len(images) == 12
    assert {p.stem.rsplit("_", 1)[0] for p in images} == set(shapes.CLASSES)
    with open(SHIPPED / "metrics.csv") as f:
        assert float(list(csv.DictReader(f))[-1]["val_accuracy"]) >= 0.97


def test_shipped_checkpoint_accuracy(shipped_model: nn.Module, fresh: shapes.ShapesBatch) -> None:
    assert shapes.accuracy(shipped_model, fresh) >= 0.95


def test_shipped_sample_images_are_classified(shipped_model: nn.Module) -> None:
    paths = sorted((SHIPPED / "images").glob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # (12, 64, 64, 3) uint8
    expected = [shapes.CLASSES.index(p.stem.rsplit("_", 1)[0]) for p in paths]
    assert shapes.predict(shipped_model, images).tolist() == expected


def test_shipped_checkpoint_gradcam_points_at_the_object(shipped_model: nn.Module, fresh: shapes.ShapesBatch) -> None:
    assert shapes.pointing_game(shipped_model, fresh) >= 0.9


# ---------------------------------------------------------------- training


def test_training_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shapes"
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    shapes.main(["train", "--out", str(out), "--epochs", "1", "--train-size", "64", "--val-size", "32"])
    assert "val accuracy" in capsys.readouterr().out
    with open(out / "train_log.csv") as f:
        steps = list(csv.DictReader(f))
    assert [int(r["step"]) for r in steps] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) for r in steps)
    with open(out / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    assert len(epochs) == 1 and 0.0 <= float(epochs[0]["val_accuracy"]) <= 1.0
    model = shapes.load_model(out / "model.pt")
    assert isinstance(model, nn.Module)
    assert (out / "labels.txt").read_text().splitlines() == list(shapes.CLASSES)
    assert len(list((out / "images").glob("*.png"))) == 12
    if importlib.util.find_spec("tensorboard") is not None:
        assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before  # global setting restored


def test_training_is_deterministic(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        shapes.train(tmp_path / name, epochs=1, train_size=64, val_size=32, num_samples=5, tensorboard=False)
        runs.append(torch.load(tmp_path / name / "model.pt", weights_only=True))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert (tmp_path / "a" / "train_log.csv").read_text() == (tmp_path / "b" / "train_log.csv").read_text()


def test_watermark_off_is_todays_generator_and_on_marks_one_class():
    """`watermark=None` is byte-identical to the generator before the option existed (hashes taken then); with it,
    the same shapes, and the mark on `share` of one class only."""
    import hashlib

    from reportgen.demo.shapes import Watermark, generate

    for (n, seed, size), expected in {(40, 0, 64): "2e2ba24f8f63bc606b1ab4335c2183be9bb136c0b1928dc5112ac250696b414d",
                                      (30, 7, 32): "2b6bcbc210d1d6fbe1da0e7bed066f29e3c0e4776bd80cb8a368cf0ee703f8f3"}.items():
        batch = generate(n, seed, size)
        digest = hashlib.sha256()
        for array in (batch.images, batch.labels, batch.boxes, batch.masks):
            digest.update(array.tobytes())
        assert digest.hexdigest() == expected and batch.marked is None
    plain = generate(200, 3)
    mark = Watermark(label=1, share=0.5, corner="top-right")
    stamped = generate(200, 3, watermark=mark)
    assert not stamped.marked[plain.labels != 1].any()
    assert 0.3 < stamped.marked[plain.labels == 1].mean() < 0.7
    x0, y0, x1, y1 = mark.box(64)
    changed = (stamped.images != plain.images).any(-1)  # (N, H, W)
    assert not changed[~stamped.marked].any()
    outside = changed.copy()
    outside[:, y0:y1, x0:x1] = False
    assert not outside.any() and changed[stamped.marked].any()
    assert x1 == 63 and y0 == 1  # the top-right corner
    np.testing.assert_array_equal(stamped.labels, plain.labels)
