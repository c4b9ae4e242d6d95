"""A segmenter's data-set numbers (reportgen.stages.dataset_segmentation) against torchmetrics 1.9.0 and a
Confusion over every pixel at once, over any batching; what it keeps (flat memory, masks of the detail images
only); its figures (reportgen.figures.dataset_segmentation) and templates.

Floats: torchmetrics divides in float32, we in float64, so scores agree to 1e-6; counts are exact."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from reportgen.config import AnalysesConfig, Config, DatasetConfig
from reportgen.errors import ReportgenError
from reportgen.figures import dataset_segmentation as figures
from reportgen.metrics.segmentation import Confusion, image_scores
from reportgen import render
from reportgen.stages import dataset_segmentation as seg
from tests.helpers import make_context

FLOAT32 = 1e-6  # torchmetrics' float32 division against our float64
K = 5
CFG = DatasetConfig()


def seg_context(n=7, k=K, side=16, seed=0, unlabelled=(), labels=None):
    """A context around a 1x1-conv segmenter ((N, K, H, W) logits) whose images carry truth masks: the
    prediction moved on about a third of the pixels, a few pixels ignored (255), the last class neither true nor
    predicted."""
    torch.manual_seed(seed)
    model = nn.Conv2d(3, k, 1)
    with torch.no_grad():
        model.bias[k - 1] = -1e3  # never the argmax
    ctx = make_context(model, torch.randn(n, 3, side, side), labels=labels,
                       config=Config(analyses=AnalysesConfig(dataset=CFG)))
    rng = np.random.default_rng(seed)
    pred = ctx.logits.argmax(dim=1).numpy()
    truth = np.where(rng.random(pred.shape) < 0.35, rng.integers(0, k - 1, pred.shape), np.minimum(pred, k - 2))
    truth[rng.random(pred.shape) < 0.05] = 255
    ctx.images = [dataclasses.replace(im, segmentation=None if i in unlabelled else truth[i].astype(np.uint8))
                  for i, im in enumerate(ctx.images)]
    return ctx


def rendered(template, **context):
    """A template rendered in the report's own environment (its filters, the real `figure` macro)."""
    env = render.make_environment(render._Images(True))
    return env.get_template(template).render(report={}, **context)


def render_section(name, section):
    return rendered(f"sections/{name}.html.jinja2", section=section)


def batches(ctx, cuts):
    return [seg.run(ctx.for_batch(ctx.images[a:b], ctx.batch[a:b], ctx.logits[a:b], a), CFG)
            for a, b in zip(cuts[:-1], cuts[1:])]


def test_batches_reduce_to_one_run_to_a_confusion_of_every_pixel_and_to_torchmetrics():
    ctx = seg_context()
    whole = seg.run(ctx, CFG)
    parts = seg.reduce(batches(ctx, [0, 3, 4, 7]))
    twice = seg.reduce([seg.reduce(batches(ctx, [0, 2, 4])), seg.reduce(batches(ctx, [4, 7]))])  # ranks' reductions
    for other in (parts, twice):
        assert seg.to_json(other) == seg.to_json(whole)
        assert np.array_equal(other.confusion, whole.confusion)
        np.testing.assert_array_equal(other.score, whole.score)
        assert other.images == whole.images
    pred = ctx.logits.argmax(dim=1)
    truth = torch.from_numpy(np.stack([im.segmentation for im in ctx.images]).astype(np.int64))
    every = Confusion(K)
    every.update(pred, truth)
    assert np.array_equal(whole.confusion, every.matrix)
    assert whole.scores.pixels == int((truth != 255).sum()) > 0
    per_class = MulticlassJaccardIndex(K, average=None, ignore_index=255, zero_division="nan")(pred, truth).numpy()
    iou = np.array([math.nan if row["iou"] is None else row["iou"] for row in seg.to_json(whole)["per_class"]])
    np.testing.assert_allclose(iou, per_class, atol=FLOAT32)  # NaN where torchmetrics has NaN: the absent class
    assert np.isnan(iou).tolist() == [False] * (K - 1) + [True]
    data = seg.to_json(whole)
    assert data["miou"] == pytest.approx(float(MulticlassJaccardIndex(K, average="macro", ignore_index=255)(
        pred, truth)), abs=FLOAT32)
    assert data["pixel_accuracy"] == pytest.approx(float(MulticlassAccuracy(K, average="micro", ignore_index=255)(
        pred, truth)), abs=FLOAT32)
    # each image's score is its own mIoU, as metrics.segmentation.image_scores computes it
    np.testing.assert_allclose(whole.score, image_scores(pred, truth, K), atol=1e-12)
    assert seg.arrays(parts)["dataset/confusion"].dtype == np.float32
    assert np.array_equal(seg.arrays(parts)["dataset/confusion"], every.matrix.astype(np.float32))
    assert seg.headline(parts) == {"images": 7.0, "miou": whole.scores.miou(),
                                   "pixel_accuracy": whole.scores.pixel_accuracy()}


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    ctx = seg_context(n=2, side=8)
    # one image only: truth and prediction both only of classes 0 and 1
    logits = torch.zeros(1, K, 8, 8)
    logits[0, 1, :, :4] = 1.0
    truth = np.zeros((8, 8), np.uint8)
    truth[:, 4:] = 1
    one = ctx.for_batch([dataclasses.replace(ctx.images[0], segmentation=truth)], ctx.batch[:1], logits, 0)
    result = seg.run(one, CFG)
    rows = seg.to_json(result)["per_class"]
    assert [r["absent"] for r in rows] == [False, False, True, True, True]
    assert [r["iou"] for r in rows] == [0.0, 0.0, None, None, None]
    assert seg.headline(result)["miou"] == 0.0 and seg.headline(result)["pixel_accuracy"] == 0.0
    assert [r["truth_pixels"] for r in rows[:2]] == [32, 32] and [r["predicted_pixels"] for r in rows[:2]] == [32, 32]


def test_select_keeps_the_masks_of_the_detail_rows_only_and_records_every_image():
    ctx = seg_context(n=6, unlabelled=(2,))
    first, second = batches(ctx, [0, 3, 6])
    entries = seg.records(first) + seg.records(second)
    assert len(entries) == 6 and entries[2] == {"truth": None}
    kept = seg.reduce([seg.select(first, [1, 2]), seg.select(second, [])])
    assert [d.name for d in kept.details] == ["img1", "img2"]
    assert kept.images == tuple(f"img{i}" for i in range(6)) and kept.labelled.tolist() == [1, 1, 0, 1, 1, 1]
    assert seg.to_json(kept) == seg.to_json(seg.reduce([first, second]))  # all images' numbers stay
    assert np.array_equal(kept.details[0].pred, ctx.logits[1].argmax(dim=0).numpy())
    assert np.array_equal(kept.details[0].truth, ctx.images[1].segmentation) and kept.details[1].truth is None
    # a record: the image's mIoU and the IoU of each class in its truth or prediction
    pred = ctx.logits[0].argmax(dim=0)
    truth = torch.from_numpy(ctx.images[0].segmentation.astype(np.int64))
    reference = MulticlassJaccardIndex(K, average=None, ignore_index=255, zero_division="nan")(pred, truth).numpy()
    present = [c for c in range(K) if not np.isnan(reference[c])]
    assert [e["index"] for e in entries[0]["iou"]] == present
    np.testing.assert_allclose([e["iou"] for e in entries[0]["iou"]], reference[present], atol=FLOAT32)
    assert entries[0]["miou"] == pytest.approx(float(np.nanmean(reference)), abs=FLOAT32)
    json.dumps(entries, allow_nan=False)
    with pytest.raises(ValueError, match="before `select`"):
        seg.records(kept)


def test_without_truth_only_prediction_stats_and_bad_masks_name_the_image():
    ctx = seg_context(n=3, unlabelled=(0, 1, 2), labels=list("abcde"))
    result = seg.run(ctx, CFG)
    data = seg.to_json(result)
    assert data["labelled"] == 0 and data["unlabelled"] == 3 and "miou" not in data and seg.arrays(result) == {}
    pred = ctx.logits.argmax(dim=1).numpy()
    assert sum(p["pixels"] for p in data["predicted"]) == pred.size
    assert {p["label"]: p["pixels"] for p in data["predicted"]} == \
        {"abcde"[c]: int((pred == c).sum()) for c in np.unique(pred)}
    assert seg.headline(result) == {"images": 3.0}
    wrong = ctx.for_batch([dataclasses.replace(ctx.images[0], name="cat_7", segmentation=np.zeros((8, 16), np.uint8))],
                          ctx.batch[:1], ctx.logits[:1], 0)
    with pytest.raises(ValueError, match=r"cat_7.*8×16.*16×16"):
        seg.run(wrong, CFG)
    bad = np.zeros((16, 16), np.uint8)
    bad[3, 3] = 9
    wrong = ctx.for_batch([dataclasses.replace(ctx.images[0], name="dog_2", segmentation=bad)], ctx.batch[:1],
                          ctx.logits[:1], 0)
    with pytest.raises(ReportgenError, match="dog_2.*value 9"):
        seg.run(wrong, CFG)


def test_palette_is_pascal_voc_and_mask_overlay_paints_classes_but_not_ignored_pixels():
    colours = figures.palette(21)
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert colours[15].tolist() == [192, 128, 128] and colours[20].tolist() == [0, 64, 128]  # person, tv monitor
    display = np.full((6, 6, 3), 200, np.uint8)
    classes = np.zeros((6, 6), np.int64)
    classes[:, 3:] = 2
    classes[0, 0] = 255
    out = figures.mask_overlay(display, classes, colours)
    assert out[0, 0].tolist() == [200, 200, 200]  # ignored: untouched
    assert out[3, 0].tolist() == [100, 100, 100]  # background inside its region: black at alpha 0.5
    assert out[3, 5].tolist() == [100, 164, 100]  # class 2 inside its region
    assert out[3, 2].tolist() == [0, 0, 0] and out[3, 3].tolist() == [0, 128, 0]  # the boundary, full colour
    assert figures.legend(classes, [f"c{i}" for i in range(21)], colours) == [
        {"index": 0, "label": "c0", "colour": "#000000"}, {"index": 2, "label": "c2", "colour": "#008000"}]


def test_the_section_and_the_cards_draw_and_render_escaped():
    hostile = '<script>alert("x")</script>'
    ctx = seg_context(n=4, unlabelled=(3,), labels=[hostile, "b$c$", "c", "d", "never"])
    first, second = batches(ctx, [0, 2, 4])
    result = seg.reduce([seg.select(first, [0]), seg.select(second, [1])])
    section = figures.plot(result, ctx)
    (matrix,) = section["figures"]
    assert matrix.png.startswith(b"\x89PNG") and "per cent" in matrix.alt
    m = section["metrics"]
    assert m["absent"] == ["never"] and m["present"] == 4 and m["miou"] == pytest.approx(result.scores.miou() * 100)
    assert set(section["cards"]) == {"img0", "img3"}
    card = section["cards"]["img0"]
    assert card["truth"] is not None and card["predicted"].width >= figures.MIN_SIDE  # 16 px enlarged
    assert card["miou"] == pytest.approx(result.score[0] * 100)
    pred = ctx.logits[0].argmax(dim=0)
    truth = torch.from_numpy(ctx.images[0].segmentation.astype(np.int64))
    reference = MulticlassJaccardIndex(K, average=None, ignore_index=255, zero_division="nan")(pred, truth).numpy()
    shown = sorted(set(pred.unique().tolist()) | set(truth.unique().tolist()) - {255})
    assert [row["index"] for row in card["rows"]] == [item["index"] for item in card["legend"]] == shown
    np.testing.assert_allclose([np.nan if row["iou"] is None else row["iou"] for row in card["rows"]],
                               reference[shown] * 100, atol=1e-4)
    assert card["rows"][0]["colour"] == "#000000" and card["rows"][1]["colour"] == "#800000"
    assert section["cards"]["img3"]["truth"] is None
    html = render_section("dataset_segmentation", section)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "1 of 4 images have no truth mask" in html and "left out of the mean" in html and "absent" in html
    assert html.count("<figure") == 1
    text = rendered("partials/segmentation_card.html.jinja2", card=card)
    assert text.count("<figure") == 2 and text.count("<svg") == len(card["legend"]) >= 2
    assert "<script>" not in text and "&lt;script&gt;" in text and "mIoU" in text
    assert "No truth mask" in rendered("partials/segmentation_card.html.jinja2", card=section["cards"]["img3"])
    # without any truth: the predicted pixels only
    none = figures.plot(seg.run(seg_context(n=2, unlabelled=(0, 1)), CFG), None)
    assert none["metrics"] is None and none["figures"] == [] and none["cards"] == {}
    assert "No image has a truth mask" in render_section("dataset_segmentation", none)


def test_many_classes_keep_the_matrix_in_the_arrays_but_do_not_draw_it_and_an_ignored_mask_scores_nothing():
    ctx = seg_context(n=3)
    cfg = DatasetConfig(max_matrix_classes=4)  # K = 5
    result = seg.run(ctx, cfg)
    assert "confusion" not in seg.to_json(result) and seg.arrays(result)["dataset/confusion"].shape == (K, K)
    section = figures.plot(result, None)
    assert section["figures"] == [] and not section["metrics"]["matrix_shown"]
    assert "too many to draw the confusion matrix" in render_section("dataset_segmentation", section)
    void = ctx.for_batch([dataclasses.replace(ctx.images[0], segmentation=np.full((16, 16), 255, np.uint8))],
                         ctx.batch[:1], ctx.logits[:1], 0)
    result = seg.run(void, CFG)
    assert result.count == 1 and result.scores.pixels == 0 and seg.headline(result) == {"images": 1.0}
    assert seg.records(result) == [{"miou": None, "pixel_accuracy": None, "iou": []}]
    section = figures.plot(result, void)
    assert section["metrics"]["miou"] is None and section["cards"]["img0"]["miou"] is None
    assert "–" in render_section("dataset_segmentation", section)
