"""A detector's evaluation, per explained box: deletion and insertion of the box's score (pytorch-grad-cam's
`FasterRCNNBoxScoreTarget`, the oracle of each perturbed input's score), the pointing game against the true box each
explained box matches, and the sanity cascade recomputing the same boxes' maps on the randomised copies. On the
shipped detector (`example_configs/detection`) and 3 of its scenes."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from torchvision.ops import box_iou

from reportgen.config import Config
from reportgen.context import Context, ImageInput, ModelInfo
from reportgen.demo.detect import CAM_LAYER, load_model
from reportgen.engine import Engine
from reportgen.errors import ReportgenError
from reportgen.figures import evaluation as figures
from reportgen.methods.boxes import BoxScores
from reportgen.methods.dispatch import Settings, explain
from reportgen.models.detection import Detections, from_torchvision
from reportgen.render import _Images, make_environment, section_template
from reportgen.stages import evaluation_boxes as boxes_stage
from reportgen.stages.evaluation import EvaluationConfig, SanityConfig, SubstratesConfig, mean_curves, summarize

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(__file__).resolve().parents[1] / "example_configs" / "detection"
SCENES = ("scene_000", "scene_001", "scene_002")
ROW = f"gradcam/{CAM_LAYER}"


@dataclass(frozen=True)
class Truth:  # what the evaluation reads of `annotations.ImageBoxes`
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray


@dataclass(frozen=True)
class Found:  # the contract's `cam_detection.BoxMapsResult`, the fields the evaluation reads
    images: tuple[str, ...]
    maps: dict[str, tuple[np.ndarray, ...]]
    layers: dict[str, str]
    methods: tuple[str, ...]


def stand_in_box_maps(model, forward, batch, boxes, methods, cfg) -> dict[str, torch.Tensor]:
    """The detcam helper's `cam_detection.box_maps` for these tests: the methods on `CAM_LAYER` through
    `dispatch.explain` with the boxes' `BoxScores` over `forward`'s detections; method -> (J, N, H, W)."""
    detector = lambda x: [d.as_dict() for d in forward(x)]  # noqa: E731
    scores = BoxScores(detector, [b.boxes for b in boxes], [b.labels for b in boxes])
    found = explain(tuple(methods), Engine(model, batch, forward=scores), scores.ranks(),
                    Settings(layers=(CAM_LAYER,))).cam
    return {m: found.final[CAM_LAYER][k].detach() for k, m in enumerate(found.layer_methods[CAM_LAYER])}


@pytest.fixture(scope="module")
def shipped():
    model = load_model(SHIPPED / "model.pt")
    pixels = [np.asarray(Image.open(SHIPPED / "images" / f"{n}.png").convert("RGB")) for n in SCENES]
    x = torch.stack([torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255 for p in pixels])
    labels = (SHIPPED / "labels.txt").read_text().split()
    rows = {json.loads(line)["path"]: json.loads(line) for line in (SHIPPED / "boxes.jsonl").read_text().splitlines()}
    truths = [Truth(np.asarray(r["boxes"], np.float64), np.asarray([labels.index(c) for c in r["labels"]]),
                    np.zeros(len(r["boxes"]), bool)) for r in (rows[f"images/{n}.png"] for n in SCENES)]
    with torch.no_grad():
        found = [d.above(None).keep(d.scores >= 0.5).top(5) for d in from_torchvision(model(x))]
    return model, x, pixels, truths, found, labels


def context(shipped, boxes: list[Detections] | None = None) -> Context:
    model, x, pixels, _, found, labels = shipped
    boxes = found if boxes is None else boxes
    images = [ImageInput(name=n, source=f"{n}.png", original=p, display=p) for n, p in zip(SCENES, pixels)]
    info = ModelInfo(model=model, config=Config(), labels=labels, num_classes=len(labels), layers={}, task="detection")
    scores = BoxScores(model, [b.boxes for b in boxes], [b.labels for b in boxes])
    ctx = Context(info=info, device=x.device, batch=x, images=images, logits=scores(x).detach(),
                  engine=Engine(model, x, forward=scores))
    ctx.boxes = boxes  # the contract's new field
    return ctx


def gradcam_found(ctx: Context, methods=("gradcam",)) -> Found:
    maps = stand_in_box_maps(ctx.model, from_torchvision_of(ctx.model), ctx.batch, ctx.boxes, methods, None)
    return Found(images=SCENES, maps={m: tuple(v[:, i].numpy() for i in range(len(SCENES))) for m, v in maps.items()},
                 layers={m: CAM_LAYER for m in methods}, methods=tuple(methods))


def from_torchvision_of(model):
    return lambda x: from_torchvision(model(x))


def test_deletion_and_insertion_are_the_box_score_under_pytorch_grad_cams_target(shipped, monkeypatch):
    """Each box's deletion and insertion curve, point by point, is `FasterRCNNBoxScoreTarget([label], [box])` of the
    model's detections on the perturbed image (pixels in the map's order, most salient first; deletion to zeros,
    insertion from zeros), and its AUC the trapezoid over the fraction changed. Batched forwards against one image
    a forward: 1e-4 (float32 convolutions in other batch shapes). Scored 4 boxes at a time (parts across images)."""
    monkeypatch.setattr(boxes_stage, "BOXES", 4)
    model, x, _, _, found, _ = shipped
    ctx = context(shipped)
    cfg = EvaluationConfig(metrics=("deletion", "insertion", "confidence_change"), step=256, batch_size=16,
                           substrates=SubstratesConfig(deletion="zero", insertion="zero"))
    result = boxes_stage.evaluate(ctx, cfg, gradcam_found(ctx))
    counts = [len(b) for b in found]
    assert len(result.indices) == sum(counts) >= 8 and result.ranks == tuple(j for k in counts for j in range(k))
    maps = gradcam_found(ctx).maps["gradcam"]
    k, curves = 0, []
    for i, b in enumerate(found):
        for j in range(len(b)):
            target = FasterRCNNBoxScoreTarget(labels=b.labels[j:j + 1], bounding_boxes=b.boxes[j:j + 1])
            rank = np.empty(64 * 64, np.int64)
            rank[np.argsort(-maps[i][j].reshape(-1), kind="stable")] = np.arange(64 * 64)
            rank = torch.from_numpy(rank.reshape(1, 64, 64))
            with torch.no_grad():
                deletion = [float(target(model(torch.where(rank < s * 256, 0.0, x[i])[None])[0])) for s in range(17)]
                insertion = [float(target(model(torch.where(rank < s * 256, x[i], 0.0)[None])[0])) for s in range(17)]
                masked = float(target(model((x[i] * torch.from_numpy(maps[i][j]))[None])[0]))
            assert deletion[0] == pytest.approx(float(ctx.logits[i, j]), abs=1e-4)
            assert result.scores[ROW]["deletion_auc"][k] == pytest.approx(np.trapezoid(deletion, dx=1 / 16), abs=1e-4)
            assert result.scores[ROW]["insertion_auc"][k] == pytest.approx(np.trapezoid(insertion, dx=1 / 16), abs=1e-4)
            drop = max(0.0, deletion[0] - masked)
            assert result.scores[ROW]["drop_in_confidence"][k] == pytest.approx(drop, abs=1e-4)
            k += 1
            curves.append(deletion)
    np.testing.assert_allclose(mean_curves(result)[ROW][0], np.mean(curves, axis=0), atol=1e-4)
    # a trained detector's Grad-CAM: deleting its most salient pixels loses the box faster than restoring them finds it
    assert result.scores[ROW]["deletion_auc"].mean() < result.scores[ROW]["insertion_auc"].mean()
    # the result's forms: per image its boxes' scores, best box first; the summary over boxes
    records = boxes_stage.records(result)
    assert [len(r[ROW]["deletion_auc"]) for r in records] == counts
    assert records[1][ROW]["insertion_auc"][0] == pytest.approx(result.scores[ROW]["insertion_auc"][counts[0]], abs=1e-6)
    entry = boxes_stage.to_json(result)
    assert (entry["images"], entry["boxes"], entry["unit"]) == (3, sum(counts), "box")
    assert summarize(result)[0]["scores"]["deletion_auc"]["n"] == sum(counts)
    # the section says boxes, not images, and reads the box's score, not a probability
    section = figures.plot(result)
    html = section_template(make_environment(_Images(True)), boxes_stage.VARIANT).render(section=section)
    assert f"scored over {sum(counts)} explained boxes" in html and "softmax" not in html
    assert section["curves"].caption == f"Deletion and insertion, mean over {sum(counts)} boxes"


def test_streamed_batches_reduce_to_the_whole_batch(shipped):
    """Scoring the scenes as two batches (offsets) and reducing gives the one batch's scores, ranks and curves."""
    model, x, pixels, truths, found, labels = shipped
    cfg = EvaluationConfig(metrics=("deletion", "localisation"), step=512, batch_size=16)
    whole = context(shipped)
    one = boxes_stage.evaluate(whole, cfg, gradcam_found(whole), truths=truths)
    parts = []
    for start, stop in ((0, 1), (1, 3)):
        ctx = context(shipped)
        ctx = Context(info=ctx.info, device=ctx.device, batch=x[start:stop], images=ctx.images[start:stop],
                      logits=ctx.logits[start:stop], offset=start, count=3,
                      engine=Engine(model, x[start:stop], forward=BoxScores(
                          model, [b.boxes for b in found[start:stop]], [b.labels for b in found[start:stop]])))
        ctx.boxes = found[start:stop]
        whole_found = gradcam_found(whole)
        part_found = dataclasses.replace(whole_found, images=SCENES[start:stop],
                                         maps={m: v[start:stop] for m, v in whole_found.maps.items()})
        parts.append(boxes_stage.evaluate(ctx, cfg, part_found, truths=truths[start:stop]))
    reduced = boxes_stage.reduce(parts)
    assert reduced.indices == one.indices and reduced.ranks == one.ranks and reduced.truth == one.truth
    for column in ("deletion_auc", "pointing_game"):
        np.testing.assert_allclose(reduced.scores[ROW][column], one.scores[ROW][column], atol=1e-4)
    assert [len(r[ROW]["deletion_auc"]) for r in boxes_stage.records(parts[1])] == [len(found[1]), len(found[2])]
    # the centre-Gaussian baseline is a row of every box too, scored like a method and marked in the ranking
    centre = "baseline_centre"
    assert len(one.scores[centre]["deletion_auc"]) == len(one.scores[ROW]["deletion_auc"])
    np.testing.assert_allclose(reduced.scores[centre]["pointing_game"], one.scores[centre]["pointing_game"])
    table = {row["method"]: row for row in summarize(one)}
    assert table[centre]["baseline"] and not table["gradcam"]["baseline"]
    assert set(table["gradcam"]["not_better"]) <= {"deletion_auc", "insertion_auc", "pointing_game",
                                                   "energy_pointing_game", "top_iou"}


def _peak_at(row: float, col: float) -> np.ndarray:
    m = np.zeros((64, 64), np.float32)
    m[int(row), int(col)] = 1.0
    return m


def test_pointing_game_scores_true_positives_against_their_true_box(shipped, monkeypatch):
    """Hand-placed maps: a box whose map peaks at the centre of its matched true box is a hit, one peaking 2 px
    outside it a miss (a hit with `tolerance: 3`); a false positive (a star where there is none) and the boxes of an
    image without annotations are not scored; the hit rate is over the boxes scored. Scored 3 boxes at a time (the
    last parts without any truth)."""
    monkeypatch.setattr(boxes_stage, "BOXES", 3)
    _, _, _, truths, found, _ = shipped
    star = Detections(torch.tensor([[0.0, 0.0, 12.0, 12.0]]), torch.tensor([0.4]), torch.tensor([5]))
    boxes = [Detections(torch.cat([found[0].boxes, star.boxes]), torch.cat([found[0].scores, star.scores]),
                        torch.cat([found[0].labels, star.labels])), found[1], found[2]]
    truth = [None if i == 2 else truths[i] for i in range(3)]  # the third scene has no annotations
    ctx = context(shipped, boxes)
    maps, expected, matched = [], [], []
    for i, b in enumerate(boxes):
        per_box = []
        for j in range(len(b)):
            if truth[i] is None or int(b.labels[j]) not in truth[i].labels:  # not scored: peak anywhere
                per_box.append(_peak_at(5, 5))
                expected.append(np.nan)
                matched.append(-1)
                continue
            same = np.flatnonzero(truth[i].labels == int(b.labels[j]))
            t = int(same[box_iou(b.boxes[j:j + 1], torch.as_tensor(truth[i].boxes[same])).argmax()])
            x0, y0, x1, y1 = truth[i].boxes[t]
            miss = (i, j) == (1, 0)
            per_box.append(_peak_at((y0 + y1) / 2, x1 + 1) if miss else _peak_at((y0 + y1) / 2, (x0 + x1) / 2))
            expected.append(0.0 if miss else 1.0)
            matched.append(t)
        maps.append(np.stack(per_box))
    found_maps = Found(images=SCENES, maps={"gradcam": tuple(maps)}, layers={"gradcam": CAM_LAYER},
                       methods=("gradcam",))
    cfg = EvaluationConfig(metrics=("localisation",))
    result = boxes_stage.evaluate(ctx, cfg, found_maps, truths=truth)
    assert result.truth == tuple(matched)
    np.testing.assert_array_equal(result.scores[ROW]["pointing_game"], np.asarray(expected))
    summary = summarize(result)[0]["scores"]["pointing_game"]
    scored = int(np.isfinite(expected).sum())
    assert summary["n"] == scored == len(found[0]) + len(found[1])
    assert summary["mean"] == pytest.approx((scored - 1) / scored)
    assert boxes_stage.to_json(result)["localisation"]["matched"] == scored
    tolerant = boxes_stage.evaluate(ctx, dataclasses.replace(cfg, tolerance=3.0), found_maps, truths=truth)
    assert np.nanmin(tolerant.scores[ROW]["pointing_game"]) == 1.0
    # without any truth: no pointing game, and a note says why
    none = boxes_stage.evaluate(ctx, cfg, found_maps, truths=[None] * 3)
    assert "pointing_game" not in none.columns and any("no pointing game" in n for n in none.notes)
    assert not any("manifest" in n for n in figures.plot(none)["notes"])  # not the classifier's advice


def test_the_cascade_loses_similarity_as_layers_are_randomised(shipped):
    """The sanity cascade, head first (roi_heads, rpn, backbone), on the same boxes: Eigen-CAM on the backbone's
    last block does not change while only the heads are random (Spearman 1 for every box) and falls once the
    backbone is."""
    ctx = context(shipped)
    cfg = EvaluationConfig(metrics=("sanity",), sanity=SanityConfig(images=2, seed=0))
    found = gradcam_found(ctx, ("gradcam", "eigencam"))
    result = boxes_stage.evaluate(ctx, cfg, found, box_maps=stand_in_box_maps)
    cascade = result.sanity.cascade
    assert cascade.blocks == ("roi_heads", "rpn", "backbone")
    assert result.sanity.images == SCENES[:2]
    eigen, grad = cascade.spearman[f"eigencam/{CAM_LAYER}"], cascade.spearman[ROW]
    assert eigen.shape == grad.shape == (3, len(ctx.boxes[0]) + len(ctx.boxes[1]))
    np.testing.assert_allclose(eigen[:2], 1.0, atol=1e-9)
    assert np.nanmean(eigen[2]) < 0.5
    # the shipped detector's class-evidence layer reaches a box's score only through its class logit, a scale of
    # the evidence inside the box: a random box head rescales that logit and leaves the map's order (Spearman ~1)
    # for the boxes it still finds; a random backbone loses them all (their maps constant: NaN, left out)
    assert np.isfinite(grad[0]).any() and np.nanmin(grad[0]) > 0.5
    assert np.isnan(grad[2]).sum() >= np.isnan(grad[0]).sum()
    assert result.sanity.maps[ROW].shape == (4, 64, 64)  # the first box's map: trained, then each block
    assert "sanity_spearman" in result.columns and any("still compared" in n for n in result.notes)


def test_metrics_that_do_not_apply_to_a_detector_are_refused():
    assert boxes_stage.applies() == ("deletion", "insertion", "road", "confidence_change", "localisation", "sanity")
    with pytest.raises(ReportgenError, match=r"`infidelity`, `sensitivity` do not apply to a detector.*gradient"):
        boxes_stage.refuse(["deletion", "infidelity", "sensitivity"])
    boxes_stage.refuse(["deletion", "localisation", "sanity"])
    assert boxes_stage.VARIANT.name == "evaluation" and boxes_stage.VARIANT.run is boxes_stage.run
    info = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(input_size=(3, 64, 64)),
                                                  detection=SimpleNamespace(annotations=None)))
    with pytest.raises(ReportgenError, match=r"`infidelity` does not apply to a detector"):
        boxes_stage.check(info, EvaluationConfig(metrics=("infidelity",)))
    with pytest.raises(ReportgenError, match=r"localisation.*no true boxes: set `detection.annotations`"):
        boxes_stage.check(info, EvaluationConfig(metrics=("deletion", "localisation")))
    boxes_stage.check(info, EvaluationConfig())  # null: localisation where true boxes exist
    info.config.detection.annotations = Path("boxes.jsonl")
    boxes_stage.check(info, EvaluationConfig(metrics=("localisation",)))
    with pytest.raises(ReportgenError, match=r"4096 pixels a step is the whole 64×64 input"):
        boxes_stage.check(info, EvaluationConfig(step=4096))
