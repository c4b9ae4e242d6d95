"""reportgen.metrics.segmentation against torchmetrics 1.9.0 (the confusion matrix, per-class IoU, mIoU, pixel and
class accuracy, the per-image score), and reading class-index masks (`inputs.read_class_mask`,
`inputs.transform_class_mask`).

Floats: torchmetrics divides in float32, we in float64, so scores agree to 1e-6 (a float32 rounding); the
confusion matrix is integer counts and agrees exactly."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex)
from torchmetrics.functional.classification import multiclass_jaccard_index
from torchmetrics.functional.segmentation import mean_iou

from reportgen.config import Preprocess
from reportgen.errors import ReportgenError
from reportgen.inputs import (ImageReadError, geometry, read_class_mask, transform_class_mask, transform_mask)
from reportgen.metrics.segmentation import Confusion, image_scores, iou_of

FLOAT32 = 1e-6  # torchmetrics' float32 division against our float64


def _maps(seed: int, k: int, batches: int = 4, shape=(3, 24, 20), ignored: float = 0.1):
    """`batches` (pred, truth) pairs of (N, H, W) int64 class maps over k >= 4 classes: the truth uses all classes
    but the last two, the prediction is right on ~60 % of pixels and otherwise any class but the last and the third
    from last, so that class k-1 is in neither (NaN), k-2 is only predicted (IoU 0), k-3 only true (IoU 0);
    `ignored` of the truth pixels are 255."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        truth = torch.randint(0, k - 2, shape, generator=gen)
        noise = torch.randint(0, k - 2, shape, generator=gen)
        noise[noise == k - 3] = k - 2  # k-3 is never predicted, k-2 is
        keep = torch.rand(shape, generator=gen) < 0.6
        pred = torch.where(keep & (truth != k - 3), truth, noise)
        truth = torch.where(torch.rand(shape, generator=gen) < ignored, 255, truth)
        out.append((pred, truth))
    return out


@pytest.mark.parametrize("k, seed", [(5, 0), (11, 1), (21, 2)])
def test_streamed_scores_equal_torchmetrics(k, seed):
    batches = _maps(seed, k)
    ours = Confusion(k)
    cm = MulticlassConfusionMatrix(k, ignore_index=255)
    per_class = MulticlassJaccardIndex(k, average=None, ignore_index=255, zero_division="nan")
    macro = MulticlassJaccardIndex(k, average="macro", ignore_index=255)
    pixel = MulticlassAccuracy(k, average="micro", ignore_index=255)
    recall = MulticlassAccuracy(k, average=None, ignore_index=255)
    for pred, truth in batches:
        ours.update(pred, truth)
        for metric in (cm, per_class, macro, pixel, recall):
            metric.update(pred, truth)

    np.testing.assert_array_equal(ours.matrix, cm.compute().numpy())
    assert ours.matrix.dtype == np.int64
    assert ours.pixels == sum(int((t != 255).sum()) for _, t in batches)
    iou = ours.iou()
    # the maps hold each case of the rule: a class in neither (NaN), one only predicted and one only true (0)
    assert np.isnan(iou[k - 1]) and iou[k - 2] == 0 and iou[k - 3] == 0
    np.testing.assert_allclose(iou, per_class.compute().numpy(), atol=FLOAT32, equal_nan=True)
    assert ours.miou() == pytest.approx(float(macro.compute()), abs=FLOAT32)
    # ... and the rule matters: counting the absent class as 0 (torchmetrics' default per class) lowers the mean
    assert ours.miou() > np.nan_to_num(iou).mean() + 1e-3
    assert ours.pixel_accuracy() == pytest.approx(float(pixel.compute()), abs=FLOAT32)
    present = ours.matrix.sum(axis=1) > 0  # torchmetrics gives 0 for a class absent from the truth, we NaN
    assert (~present).sum() == 2
    np.testing.assert_allclose(ours.class_accuracy()[present], recall.compute().numpy()[present], atol=FLOAT32)
    assert np.isnan(ours.class_accuracy()[~present]).all()


def test_streamed_merged_and_all_at_once_agree():
    batches = _maps(3, 7, batches=5)
    at_once = Confusion(7)
    at_once.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    streamed, rank0, rank1 = Confusion(7), Confusion(7), Confusion(7)
    for i, (pred, truth) in enumerate(batches):
        streamed.update(pred, truth)
        (rank0 if i < 2 else rank1).update(pred.numpy(), truth.numpy().astype(np.uint8))  # numpy, VOC's uint8
    one_by_one = Confusion(7)
    for pred, truth in batches:
        for p, t in zip(pred, truth):  # (H, W) maps
            one_by_one.update(p, t)
    merged = rank1 + rank0
    for other in (streamed, merged, one_by_one, Confusion.from_matrix(merged.matrix)):
        np.testing.assert_array_equal(other.matrix, at_once.matrix)
        np.testing.assert_array_equal(other.iou(), at_once.iou())
    assert rank0.pixels + rank1.pixels == at_once.pixels > 0
    with pytest.raises(ValueError, match="5 classes"):
        at_once.merge(Confusion(5))


@pytest.mark.gpu
def test_cuda_maps_count_as_cpu_ones():
    """A prediction on the GPU (the model's argmax) with a truth read from disk (numpy uint8) counts on the GPU."""
    batches = _maps(6, 21, batches=2)
    cpu, cuda = Confusion(21), Confusion(21)
    for pred, truth in batches:
        cpu.update(pred, truth)
        cuda.update(pred.cuda(), truth.numpy().astype(np.uint8))
    np.testing.assert_array_equal(cuda.matrix, cpu.matrix)
    np.testing.assert_array_equal(image_scores(pred.cuda(), truth.cuda(), 21), image_scores(pred, truth, 21))


def test_a_hand_counted_example():
    pred = np.array([[0, 0, 1, 1],
                     [2, 2, 2, 0]])
    truth = np.array([[0, 1, 1, 255],
                      [2, 2, 0, 0]])
    c = Confusion(4)
    c.update(pred, truth)
    # rows truth, columns prediction; the ignored pixel (truth 255, predicted 1) counts nowhere
    assert c.matrix.tolist() == [[2, 0, 1, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    # IoU = diagonal / (row + column - diagonal): 0 = 2/(3+3-2), 1 = 1/(2+1-1), 2 = 2/(2+3-2), 3 in neither
    np.testing.assert_allclose(c.iou(), [1 / 2, 1 / 2, 2 / 3, np.nan], equal_nan=True)
    assert c.miou() == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert c.pixel_accuracy() == pytest.approx(5 / 7)
    np.testing.assert_allclose(c.class_accuracy(), [2 / 3, 1 / 2, 1, np.nan], equal_nan=True)
    assert image_scores(pred, truth, 4).tolist() == [pytest.approx(c.miou())]


def test_nothing_counted_is_nan_without_warnings():
    c = Confusion(3)
    c.update(np.zeros((4, 4), np.int64), np.full((4, 4), 255))
    with np.testing.assert_no_warnings():
        assert np.isnan(c.iou()).all() and np.isnan(c.miou()) and np.isnan(c.pixel_accuracy())
        assert np.isnan(image_scores(np.zeros((4, 4), np.int64), np.full((4, 4), 255), 3)).all()
    assert c.pixels == 0


def test_image_scores_are_each_images_miou_as_torchmetrics():
    k = 6
    pred, truth = _maps(4, k, batches=1, shape=(8, 16, 16), ignored=0.0)[0]
    pred[0] = truth[0]  # a perfect image scores 1
    scores = image_scores(pred, truth, k)
    assert scores.shape == (8,) and scores[0] == 1.0
    # without ignored pixels: torchmetrics' segmentation mean_iou per sample (over the classes with a union)
    expected = mean_iou(pred, truth, num_classes=k, input_format="index").numpy()
    np.testing.assert_allclose(scores, expected, atol=FLOAT32)
    # with ignored pixels: the macro Jaccard index of each image alone
    truth = torch.where(torch.rand(truth.shape, generator=torch.Generator().manual_seed(5)) < 0.2, 255, truth)
    scores = image_scores(pred, truth, k)
    for i in range(len(pred)):
        one = multiclass_jaccard_index(pred[i], truth[i], k, average="macro", ignore_index=255)
        assert scores[i] == pytest.approx(float(one), abs=FLOAT32)
    assert len(set(np.round(scores, 6))) > 4  # the images differ: the order means something


def test_a_truth_value_beyond_the_classes_is_an_error():
    pred = np.zeros((2, 3), np.int64)
    for value in (21, 254, -1):
        truth = np.zeros((2, 3), np.int64)
        truth[1, 2] = value
        with pytest.raises(ReportgenError) as err:
            Confusion(21).update(pred, truth)
        message = str(err.value)
        assert f"value {value}" in message and "21 classes" in message and "255" in message and "ignore" in message
    with pytest.raises(ReportgenError, match="value 9"):
        image_scores(pred, np.full((2, 3), 9), 5)
    c = Confusion(21)
    c.update(pred, np.full((2, 3), 255, np.uint8))  # 255 is no class, but it is allowed
    assert c.pixels == 0


def test_bad_calls_are_bugs_not_data_errors():
    c = Confusion(4)
    with pytest.raises(ValueError, match="one shape"):
        c.update(np.zeros((4, 4), np.int64), np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match="argmax"):
        c.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="0..3"):
        c.update(np.full((4, 4), 4), np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="would drop"):
        Confusion(300)
    assert c.pixels == 0
    assert np.isnan(iou_of(np.zeros((2, 2), np.int64))).all()


# --- reading class masks ---------------------------------------------------------------------------------------

def _voc_palette() -> list[int]:
    """Pascal VOC's colour map (its devkit's `labelcolormap`): index i's colour from the bits of i; 255 is cream."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _classes(shape=(37, 50), seed=0, values=(0, 3, 7, 15, 20, 255)) -> np.ndarray:
    """Blocky class indices (5 x 5 blocks), as a segmentation's regions, of the given values."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(values, size=(shape[0] // 5 + 1, shape[1] // 5 + 1)).astype(np.uint8)
    return np.kron(blocks, np.ones((5, 5), np.uint8))[:shape[0], :shape[1]]


def test_a_voc_palette_png_reads_as_indices_not_colours(tmp_path):
    classes = _classes()
    img = Image.fromarray(classes, mode="P")
    img.putpalette(_voc_palette())
    img.save(tmp_path / "2007_000032.png")
    with Image.open(tmp_path / "2007_000032.png") as saved:  # what VOC ships: a palette PNG, person (15) in pink
        row, col = np.argwhere(classes == 15)[0]
        assert saved.mode == "P" and saved.convert("RGB").getpixel((int(col), int(row))) == (192, 128, 128)
    out = read_class_mask(tmp_path / "2007_000032.png")
    assert out.dtype == np.uint8 and out.shape == classes.shape
    np.testing.assert_array_equal(out, classes)
    Image.fromarray(classes, mode="L").save(tmp_path / "gray.png")  # grayscale: its values
    np.testing.assert_array_equal(read_class_mask(tmp_path / "gray.png"), classes)
    wide = classes.astype(np.int32) * 100  # a 16-bit PNG: values above 255 come through, for the check to name
    Image.fromarray(wide.astype(np.uint16)).save(tmp_path / "wide.png")
    out = read_class_mask(tmp_path / "wide.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, wide)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_colour_mask_is_refused(tmp_path, mode):
    rgb = np.array(_voc_palette(), np.uint8).reshape(256, 3)[_classes()]
    Image.fromarray(rgb).convert(mode).save(tmp_path / "colour.png")
    with pytest.raises(ReportgenError) as err:
        read_class_mask(tmp_path / "colour.png")
    message = str(err.value)
    assert "colour.png" in message and f"a {mode} image" in message and "class-index PNG" in message
    assert "palette" in message and "grayscale" in message and "cannot be read as classes" in message
    # not an unreadable file that a non-strict build would skip: every mask of such a folder would be
    assert not isinstance(err.value, ImageReadError)


def test_unreadable_and_oversized_masks_are_read_errors(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image Pillow can read"):
        read_class_mask(tmp_path / "text.png")
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 3, 0, 0, 0)  # a palette PNG claiming 20000 x 20000 pixels

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", bytes(768))
                                        + chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match="too large to read safely"):
        read_class_mask(tmp_path / "bomb.png")


@pytest.mark.parametrize("pre", [Preprocess(), Preprocess(resize=(40,), center_crop=(32,)),
                                 Preprocess(resize=(45, 45), interpolation="bicubic")])
def test_the_image_geometry_moves_classes_without_blending_them(pre):
    classes = _classes()
    geo = geometry(classes.shape[1], classes.shape[0], pre, (3, 32, 32))
    out = transform_class_mask(classes, geo)
    assert out.dtype == np.uint8 and out.shape == transform_mask(classes > 0, geo).shape
    assert set(np.unique(out)) <= set(np.unique(classes))  # no index between two classes
    assert len(np.unique(out)) >= 4
    for value in np.unique(classes):  # each class lands where its binary mask does
        np.testing.assert_array_equal(out == value, transform_mask(classes == value, geo))
    wide = classes.astype(np.int64) * 100  # 16-bit values keep their dtype and values
    np.testing.assert_array_equal(transform_class_mask(wide, geo), out.astype(np.int64) * 100)


def test_padding_of_a_crop_larger_than_the_image_is_ignored():
    classes = np.full((10, 12), 3, np.uint8)
    geo = geometry(12, 10, Preprocess(center_crop=(16, 16)), (3, 16, 16))
    out = transform_class_mask(classes, geo)
    assert out.shape == (16, 16)
    inside = transform_mask(np.ones_like(classes, bool), geo)
    assert inside.sum() == 120 and (out[inside] == 3).all() and (out[~inside] == 255).all()
