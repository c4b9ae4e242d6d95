"""A detector's target "box j": every gradient CAM on a tensor layer equals pytorch-grad-cam 1.5.7 with its
`FasterRCNNBoxScoreTarget([label_j], [box_j])`, one pytorch-grad-cam call per box rank against our one forward and
one backward per rank; Eigen-CAM and Ablation-CAM on the feature pyramid equal its EigenCAM with
`fasterrcnn_reshape_transform` and AblationCAM with `AblationLayerFasterRCNN`; on seeded random Faster R-CNN
MobileNet-320 and RetinaNet with thresholds 0 and each image's top 5 boxes as targets. D-RISE equals its formula
computed by hand on a tiny detector whose detections depend on the pixels kept."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, retinanet_resnet50_fpn

import pytorch_grad_cam as pgc
from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

from reportgen.engine import Engine
from reportgen.methods.boxes import (
    BoxScores, drise, drise_masks, fpn_cams, fpn_levels, fpn_reshape, size_level, torchvision_detect,
)
from reportgen.methods.cam import project_2d, scale_cams
from reportgen.methods.dispatch import Settings, explain

CAM_TOL = 1e-3  # max |ours - pytorch-grad-cam| on maps in [0, 1]
GRADIENT_CAMS = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
                 "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "eigengradcam": pgc.EigenGradCAM}
TOP = 5

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def faster_rcnn(proposals: int = 50):
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=4,
                                                  box_score_thresh=0, min_size=128, max_size=128,
                                                  rpn_pre_nms_top_n_test=proposals,
                                                  rpn_post_nms_top_n_test=proposals).eval()
    return model, "backbone.body.16"


def retinanet():
    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, score_thresh=0,
                                   min_size=64, max_size=64).eval()
    return model, "backbone.body.layer4"


def images(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))  # tqdm bars
    return stack


def pgc_map(cls, model, layer, x, scores: BoxScores, j: int, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's (N, H, W) for target box j of every image: one call."""
    targets = [FasterRCNNBoxScoreTarget(labels=scores.labels[i][j:j + 1], bounding_boxes=scores.boxes[i][j:j + 1])
               for i in range(len(x))]
    with quiet(), cls(model, [model.get_submodule(layer)], **kwargs) as cam:
        return cam(x, targets)


def signs(raw: torch.Tensor, size) -> torch.Tensor:
    """(2, ...) an eigen map post-processed with each sign of the principal component."""
    return scale_cams(scale_cams(torch.stack([raw, -raw]).clamp_min(0), size).clamp_min(0))


def eigen_diff(mine: torch.Tensor, ref: np.ndarray, flips: torch.Tensor) -> float:
    """Ours equals one sign per image, and the reference the closer one per image: that difference."""
    def per_image(other):
        return (flips - torch.as_tensor(other)[None]).abs().flatten(2).amax(2)  # (2, N)
    assert float(per_image(mine).min(0).values.max()) < 1e-6
    return float(per_image(ref).min(0).values.max())


@pytest.mark.parametrize("build", [faster_rcnn, retinanet])
def test_gradient_cams_of_every_box_equal_pytorch_grad_cam(build):
    model, layer = build()
    x = images()
    scores = BoxScores.of_detections(model, x, max_boxes=TOP)
    assert [len(b) for b in scores.boxes] == [TOP, TOP]  # thresholds 0: random weights detect
    assert scores.ranks() == [(j, j) for j in range(TOP)]
    with torch.no_grad():
        first = scores(x)
    assert (first > 1).all()  # each box matches itself: IoU 1 + its score
    engine = Engine(model, x, forward=scores)
    explained = explain(tuple(GRADIENT_CAMS), engine, scores.ranks(), Settings(layers=(layer,)))
    assert len(engine.cached_passes()) == TOP  # one forward, one backward per box rank
    cam = explained.cam
    worst, lit = {}, 0
    for method, cls in GRADIENT_CAMS.items():
        for j in range(TOP):
            mine = cam.final[layer][cam.layer_methods[layer].index(method), j]
            ref = pgc_map(cls, model, layer, x, scores, j)
            assert mine.shape == (2, 64, 64)
            lit += int((mine.amax((1, 2)) > 0.9).sum())
            if method == "eigengradcam":
                (p,) = [q for q in engine.cached_passes() if q.classes == (j, j)]
                raw = project_2d(p.activations[layer] * p.gradients[layer], fix_sign=False)
                diff = eigen_diff(mine, ref, signs(raw, (64, 64)))
            else:
                diff = float(np.abs(mine.numpy() - ref).max())
            assert diff <= CAM_TOL, f"{method}, box {j}: max |ours - pytorch-grad-cam| = {diff:.2e}"
            worst[method] = max(worst.get(method, 0.0), diff)
    assert lit >= 0.75 * len(GRADIENT_CAMS) * TOP * 2  # most (box, image) maps are not zero (Grad-CAM++ may weigh all < 0)
    print(build.__name__, {m: f"{d:.1e}" for m, d in worst.items()})


class AblationLayerAnyPyramid(AblationLayerFasterRCNN):
    """pytorch-grad-cam's `AblationLayerFasterRCNN` with the level of channel c read from the levels' order: its own
    names five levels ('0' to '3', 'pool': ResNet-50's pyramid) and raises KeyError on MobileNet-320's '0', '1',
    'pool'. Everything else is its code."""

    def __call__(self, x):
        result = self.activations
        layers = dict(enumerate(result))  # pytorch-grad-cam: {0: '0', 1: '1', 2: '2', 3: '3', 4: 'pool'}
        for i in range(result["pool"].size(0)):
            result[layers[int(self.indices[i] / 256)]][i, int(self.indices[i] % 256), :, :] = -1000
        return result


def test_fpn_eigencam_and_ablationcam_equal_pytorch_grad_cam():
    model, _ = faster_rcnn(proposals=8)  # the ablated forwards run the heads on 256 copies: few proposals
    x = images(1, 48)
    scores = BoxScores.of_detections(model, x, max_boxes=2)
    maps = fpn_cams(("eigencam", "ablationcam"), scores, model, x, batch_size=256)
    levels = fpn_levels(model, x)
    assert size_level(levels) == "pool"
    assert torch.equal(fpn_reshape(levels), fasterrcnn_reshape_transform(levels))
    flips = signs(project_2d(fpn_reshape(levels), fix_sign=False), (48, 48))
    ref = pgc_map(pgc.EigenCAM, model, "backbone", x, scores, 0, reshape_transform=fasterrcnn_reshape_transform)
    for j in range(2):
        assert eigen_diff(maps["eigencam"][j], ref, flips) <= CAM_TOL
    for j in range(2):
        ref = pgc_map(pgc.AblationCAM, model, "backbone", x, scores, j, reshape_transform=fasterrcnn_reshape_transform,
                      ablation_layer=AblationLayerAnyPyramid(), ratio_channels_to_ablate=1.0, batch_size=256)
        mine = maps["ablationcam"][j].numpy()
        diff = float(np.abs(mine - ref).max())
        assert mine.max() > 0.99 and diff <= CAM_TOL, f"Ablation-CAM box {j}: {diff:.2e}"


def test_retinanet_pyramid_has_no_pool_level_and_uses_the_levels_it_has():
    model, _ = retinanet()
    x = images(1, 64)
    levels = fpn_levels(model, x)
    assert [tuple(v.shape[-2:]) for v in levels.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert list(levels) == ["0", "1", "2", "p6", "p7"]
    assert size_level(levels) == "1"  # the coarsest at least 4 x 4
    assert fpn_reshape(levels).shape == (1, 5 * 256, 4, 4)
    scores = BoxScores.of_detections(model, x, max_boxes=2)
    maps = fpn_cams(("eigencam",), scores, model, x)["eigencam"]
    assert maps.shape == (2, 1, 64, 64) and torch.equal(maps[0], maps[1])  # one map for every box


def test_box_scores_bind_rows_and_pad_missing_boxes():
    model, _ = faster_rcnn()
    x = images()
    full = BoxScores.of_detections(model, x, max_boxes=3)
    scores = BoxScores(model, [full.boxes[0], full.boxes[1][:1]], [full.labels[0], full.labels[1][:1]])
    with torch.no_grad():
        s = scores(x)
        swapped = scores.for_rows([1, 0])(x.flip(0))  # row 0 is image 1, scored against image 1's boxes
    assert s.shape == (2, 3) and (s[1, 1:] == 0).all() and (s[:, :1] > 1).all()
    assert torch.equal(swapped, s.flip(0))
    assert scores.empty(scores.ranks()).tolist() == [[False, False], [False, True], [False, True]]
    with pytest.raises(ValueError, match="owner"):
        scores(x[:1])
    explained = explain(("cam", "gradcam"), Engine(model, x, forward=scores), scores.ranks(),
                        Settings(layers=("backbone.body.16",)))
    assert "a detector's box score is not such a layer" in explained.cam.not_applicable["cam"]
    maps = explained.cam.final["backbone.body.16"][0]  # (3, 2, H, W)
    assert not maps[1:, 1].any() and maps[:, 0].amax((1, 2)).min() > 0.9


def test_box_score_is_pytorch_grad_cams_target():
    """A box matched by IoU > 0.5 and the same label scores IoU + score; another label, or IoU ≤ 0.5, scores 0."""
    det = {"boxes": torch.tensor([[0., 0, 10, 10], [0, 0, 10, 20]]), "labels": torch.tensor([1, 2]),
           "scores": torch.tensor([0.3, 0.9])}
    targets = torch.tensor([[0., 0, 10, 11], [0, 0, 10, 19], [0, 0, 10, 10], [0, 0, 10, 30]])
    labels = torch.tensor([1, 1, 2, 2])
    scores = BoxScores(lambda x: [det], [targets], [labels])
    mine = scores(torch.zeros(1, 3, 8, 8))[0]
    ref = [float(FasterRCNNBoxScoreTarget([c], [b])(det)) for b, c in zip(targets, labels)]
    assert torch.allclose(mine, torch.tensor(ref)) and mine[0] > 1 and mine[1] == 0 and mine[2] == 0


# ---------------------------------------------------------------------------- D-RISE


def tiny_detect(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Two candidate boxes, the left and right halves of a 16² image; each is found when the mean kept brightness
    of its half is > 0.2, grown by that mean, with class probabilities softmax([m, 1 - m, 0.5]) and objectness m."""
    out = []
    for img in x:
        boxes, probs, objectness = [], [], []
        for x0 in (0, 8):
            m = img[:, :, x0:x0 + 8].mean()
            if m > 0.2:
                boxes.append(torch.tensor([x0, 0, x0 + 8 * m, 8 + 8 * m]))
                probs.append(torch.softmax(torch.stack([m, 1 - m, torch.tensor(0.5)]), 0))
                objectness.append(m)
        out.append({"boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                    "probs": torch.stack(probs) if probs else torch.zeros(0, 3),
                    "objectness": torch.stack(objectness) if objectness else torch.zeros(0)})
    return out


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_drise_equals_its_formula_by_hand():
    image = torch.ones(3, 16, 16)
    boxes = torch.tensor([[0., 0, 6, 12], [8, 0, 14, 12]])
    labels = torch.tensor([0, 1])
    mine = drise(tiny_detect, image, boxes, labels, masks=40, cell=4, p=0.5, seed=3, batch=7)
    masks = drise_masks(40, (16, 16), 4, 0.5, seed=3).numpy()
    expected = np.zeros((2, 16, 16))
    used = 0
    for m in masks:
        for t in range(2):
            best = 0.0
            for x0 in (0, 8):
                k = float(m[:, x0:x0 + 8].mean())  # the image is all ones: the kept brightness is the mask's mean
                if k <= 0.2:
                    continue
                box = (x0, 0, x0 + 8 * k, 8 + 8 * k)
                p = np.exp([k, 1 - k, 0.5])
                p /= p.sum()
                cos = p[int(labels[t])] / np.linalg.norm(p)
                best = max(best, iou(boxes[t].tolist(), box) * cos * k)
            used += best > 0
            expected[t] += best * m
    assert used > 10  # the weights are not all zero
    np.testing.assert_allclose(mine.numpy(), expected, rtol=1e-5, atol=1e-5)
    again = drise(tiny_detect, image, boxes, labels, masks=40, cell=4, p=0.5, seed=3, batch=40)
    assert torch.allclose(mine, again, atol=1e-5)  # the batching changes only the summation order
    assert not torch.equal(mine, drise(tiny_detect, image, boxes, labels, masks=40, cell=4, p=0.5, seed=4))


def test_drise_masks_are_seeded_soft_grids():
    masks = drise_masks(200, (20, 24), 8, 0.3, seed=0)
    assert masks.shape == (200, 20, 24) and masks.min() >= 0 and masks.max() <= 1
    assert torch.equal(masks, drise_masks(200, (20, 24), 8, 0.3, seed=0))
    assert abs(float(masks.mean()) - 0.3) < 0.05


def test_drise_on_a_torchvision_detector_runs_forward_only():
    model, _ = faster_rcnn()
    x = images(1, 48)[0]
    scores = BoxScores.of_detections(model, x[None], max_boxes=2)
    with torch.no_grad():
        maps = drise(torchvision_detect(model, 4), x, scores.boxes[0], scores.labels[0], masks=8, cell=16, batch=8)
    assert maps.shape == (2, 48, 48) and (maps >= 0).all() and maps.amax((1, 2)).min() > 0
    assert torchvision.ops.box_iou(scores.boxes[0], scores.boxes[0]).diag().eq(1).all()
