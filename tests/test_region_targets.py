"""A segmenter's target "class c inside its region": every CAM method equals pytorch-grad-cam 1.5.7 with its
`SemanticSegmentationTarget(c, mask)`, every gradient method equals Captum 0.9.0 given the same forward
(x -> (out(x) * mask).sum((2, 3)), the masks passed as `additional_forward_args`), on a tiny segmenter that
predicts two classes in different regions and on a seeded LRASPP-MobileNetV3 (which predicts one class everywhere,
so a second class gets a region given by the test). The rows of derived forwards (chunks, Score-CAM / Ablation-CAM
copies, SmoothGrad noise, IG steps mixing images) are scored against their own image's regions: the images'
regions differ, so a row scored against another image's would break the parity (for Score-CAM and Ablation-CAM
on the tiny segmenter: on the random LRASPP their weights hardly depend on the region). A target whose region is empty
gets zero maps; `cam` says it does not apply."""
from __future__ import annotations

import contextlib
import io
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import (
    Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients, NoiseTunnel, Saliency,
)
from torch import nn

import pytorch_grad_cam as pgc
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from reportgen.engine import Engine, for_rows
from reportgen.methods.cam import FUSED, project_2d, scale_cams
from reportgen.methods.dispatch import Settings, explain
from reportgen.methods.regions import RegionScores, predicted_regions

CAM_TOL = 1e-3  # max |ours - pytorch-grad-cam| on maps in [0, 1]
GRAD_TOL = 1e-4  # max |ours - Captum| / max |Captum|
REFERENCE = {
    "gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
    "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM,
}
GRADIENT_CAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
EIGEN = ("eigencam", "eigengradcam")
GRADIENTS = ("saliency", "input_x_gradient", "guided_backprop", "deconvnet", "guided_gradcam", "smoothgrad",
             "integrated_gradients")
MASKED_BATCH = 3  # Score-CAM / Ablation-CAM forwards per batch: partial batches, the same in both tools
OPTIONS = SimpleNamespace(steps=4, baseline="zero", internal_batch_size=None, samples=3, stdev=0.15,
                          batch_size=MASKED_BATCH, max_channels=None)  # the stages' options the methods read

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinySeg(nn.Module):
    """conv-ReLU, strided conv (`body`, pre-activation), ReLU (`act`), 1x1 classifier, bilinear upsampling."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        y = self.head(self.act(self.body(self.stem(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class Scored(nn.Module):
    """Captum's forward: each class's output summed over its region (the masks come as an additional argument)."""

    def __init__(self, net: nn.Module, dict_output: bool = False):
        super().__init__()
        self.net = net
        self.dict_output = dict_output

    def segment(self, x):
        out = self.net(x)
        return out["out"] if self.dict_output else out

    def forward(self, x, masks):
        return (self.segment(x) * masks).sum(dim=(2, 3))


class Segment(nn.Module):
    """What pytorch-grad-cam is given: the segmenter's (N, K, H, W) output."""

    def __init__(self, scored: Scored):
        super().__init__()
        self.scored = scored

    def forward(self, x):
        return self.scored.segment(x)


def tiny_case():
    """TinySeg and two images whose halves are bright and dark the other way round: classes 0 and 1 are each
    predicted over a part of each image, at different places; class 2 nowhere."""
    torch.manual_seed(0)
    scored = Scored(TinySeg().eval())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.3
    x[0, :, :, :16] += 1
    x[0, :, :, 16:] -= 1
    x[1, :, :, :16] -= 1
    x[1, :, :, 16:] += 1
    with torch.no_grad():
        masks = predicted_regions(scored.segment(x))
    return scored, x, masks


def lraspp_case():
    """A seeded LRASPP predicts one class p everywhere: targets p in its predicted region and q != p in a region
    the test gives (left half of image 0, top half of image 1); class r has no region."""
    torch.manual_seed(0)
    net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                    num_classes=4).eval()
    scored = Scored(net, dict_output=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = predicted_regions(scored.segment(x))
    present = predicted.flatten(2).any(2).any(0).nonzero().view(-1).tolist()
    assert len(present) == 1  # the premise: one class everywhere
    p = present[0]
    q, r = [c for c in range(4) if c != p][:2]
    masks = torch.zeros_like(predicted)
    masks[:, p] = predicted[:, p]
    masks[0, q, :, :16] = True
    masks[1, q, :16, :] = True
    return scored, x, masks, (p, q, r)


# ---------------------------------------------------------------- the references


def pgc_map(scored: Scored, x, masks, method, layers, classes) -> np.ndarray:
    """pytorch-grad-cam's grayscale_cam (N, H, W), one SemanticSegmentationTarget per image."""
    model = Segment(scored)
    targets = [SemanticSegmentationTarget(int(c), masks[i, c].float().numpy()) for i, c in enumerate(classes)]
    kwargs = {"batch_size": MASKED_BATCH} if method == "ablationcam" else {}
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # tqdm bars
        warnings.simplefilter("ignore")
        with REFERENCE[method](model, [scored.net.get_submodule(name) for name in layers], **kwargs) as cam:
            if method == "scorecam":
                cam.batch_size = MASKED_BATCH
            return cam(x, targets)


def captum_maps(scored: Scored, x, masks, classes, layer) -> dict[str, torch.Tensor]:
    """Captum's attribution of each gradient method, the same forward and options as ours."""
    args = (masks.float(),)
    module = scored.net.get_submodule(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about its ReLU hooks
        out = {
            "saliency": Saliency(scored).attribute(x, target=classes, additional_forward_args=args),
            "input_x_gradient": InputXGradient(scored).attribute(x, target=classes, additional_forward_args=args),
            "guided_backprop": GuidedBackprop(scored).attribute(x, target=classes, additional_forward_args=args),
            "deconvnet": Deconvolution(scored).attribute(x, target=classes, additional_forward_args=args),
            "guided_gradcam": GuidedGradCam(scored, module).attribute(x, target=classes,
                                                                      additional_forward_args=args),
            "integrated_gradients": IntegratedGradients(scored).attribute(
                x, target=classes, n_steps=OPTIONS.steps, additional_forward_args=args),
        }

        def smoothgrad(i: int) -> torch.Tensor:
            torch.manual_seed(i)  # image i's seed (seed 0 + i), as ours
            return NoiseTunnel(Saliency(scored)).attribute(
                x[i:i + 1], nt_type="smoothgrad", nt_samples=OPTIONS.samples, target=classes[i],
                stdevs=OPTIONS.stdev * float(x[i].max() - x[i].min()), additional_forward_args=(args[0][i:i + 1],))

        out["smoothgrad"] = torch.cat([smoothgrad(i) for i in range(len(classes))])
    return out


# ---------------------------------------------------------------- ours


def ours(scored: Scored, x, masks, class_sets, layers, *, chunk=None, shared=False, head=None):
    """`explain` with every CAM and gradient method through an engine over the class-in-region scores. `shared`:
    the engine's CAM pass also takes the input gradients and the ReLU rules' gradients (as in a build)."""
    forward = RegionScores(scored.segment, masks)
    engine = Engine(scored.net, x, chunk=chunk, forward=forward, input_grad_wanted=shared,
                    relu_rules=("guided", "deconv") if shared else ())
    settings = Settings(layers=tuple(layers), masked_batch_size=MASKED_BATCH, cam_layer=layers[-1], batch_size=3,
                        seed=0, baseline=lambda: torch.zeros_like(x), options=OPTIONS, head=head)
    return explain(("cam",) + tuple(REFERENCE) + GRADIENTS, engine, class_sets, settings)


def eigen_flips(scored, x, masks, method, layer, classes) -> torch.Tensor:
    """(2, N, H, W) the eigen method's map on one layer with each sign of the principal component (the
    reference's is LAPACK's choice), post-processed as pytorch-grad-cam does."""
    engine = Engine(scored.net, x, forward=RegionScores(scored.segment, masks))
    (grad_pass,) = engine.passes([layer], [classes])
    a = grad_pass.activations[layer]
    raw = project_2d(a if method == "eigencam" else a * grad_pass.gradients[layer], fix_sign=False)
    signed = torch.stack([raw, -raw])
    return scale_cams(scale_cams(signed.clamp_min(0), tuple(x.shape[-2:])).clamp_min(0))


def check_cams(scored, x, masks, explained, class_sets, layers, empty_rank) -> dict[str, float]:
    """Every CAM method's maps against pytorch-grad-cam (per layer, and fused for all but the eigen methods,
    whose sign is checked per layer); the rank `empty_rank` has zero maps. Returns the worst difference."""
    cam = explained.cam
    worst: dict[str, float] = {}
    keys = list(layers) + ([FUSED] if len(layers) > 1 else [])
    for method in REFERENCE:
        for r, classes in enumerate(class_sets):
            for key in keys if method not in EIGEN else layers:
                mine = cam.final[key][cam.layer_methods[key].index(method), r].numpy()  # (N, H, W)
                assert mine.shape == tuple(x.shape[:1] + x.shape[2:])
                if r == empty_rank:
                    assert not mine.any(), (method, key)
                    if method in GRADIENT_CAMS:  # pytorch-grad-cam: a constant score, zero gradients, zero maps
                        ref = pgc_map(scored, x, masks, method, layers if key == FUSED else [key], classes)
                        assert not ref.any(), (method, key)
                    continue
                ref = pgc_map(scored, x, masks, method, layers if key == FUSED else [key], classes)
                if method in EIGEN:
                    flips = eigen_flips(scored, x, masks, method, key, classes).numpy()
                    per_image = lambda other: np.abs(flips - other[None]).reshape(2, len(ref), -1).max(-1)  # noqa: E731
                    assert per_image(mine).min(0).max() < 1e-6  # ours is one sign per image
                    diff = float(per_image(ref).min(0).max())  # the reference is one sign per image
                else:
                    diff = float(np.abs(mine - ref).max())
                assert diff <= CAM_TOL, f"{method} on {key}, rank {r}: max |ours - pytorch-grad-cam| = {diff:.2e}"
                worst[method] = max(worst.get(method, 0.0), diff)
    return worst


def check_gradients(scored, x, masks, explained, class_sets, layer, empty_rank) -> dict[str, float]:
    worst: dict[str, float] = {}
    for r, classes in enumerate(class_sets):
        ref = captum_maps(scored, x, masks, list(classes), layer)
        for method in GRADIENTS:
            mine, theirs = explained.gradients[method][r], ref[method].detach()
            assert mine.shape == x.shape
            if r == empty_rank:
                assert not mine.any() and not theirs.any(), method
                continue
            assert theirs.abs().max() > 0, method
            diff = float((mine - theirs).abs().max() / theirs.abs().max())
            assert diff <= GRAD_TOL, f"{method}, rank {r}: max |ours - Captum| / max |Captum| = {diff:.2e}"
            worst[method] = max(worst.get(method, 0.0), diff)
    return worst


# ---------------------------------------------------------------- the tests


def test_region_scores_bind_rows_to_their_images():
    scored, x, masks = tiny_case()
    forward = RegionScores(scored.segment, masks)
    with torch.no_grad():
        out = scored.segment(x)
        scores = forward(x)
        # one-hot of the argmax, and pytorch-grad-cam's target on each image
        assert masks.dtype == torch.bool and torch.equal(masks.sum(1), torch.ones_like(masks[:, 0], dtype=torch.long))
        assert torch.equal(masks.float().argmax(1), out.argmax(1))
        for i in range(2):
            for c in range(3):
                target = SemanticSegmentationTarget(c, masks[i, c].float().numpy())
                torch.testing.assert_close(scores[i, c], target(out[i]))
        # derived rows are scored against their own image's regions: bound, and bound again
        rows = torch.tensor([1, 0, 1])
        torch.testing.assert_close(forward(x[rows], owner=rows), scores[rows])
        torch.testing.assert_close(for_rows(forward, rows)(x[rows]), scores[rows])
        torch.testing.assert_close(for_rows(for_rows(forward, rows), [2, 2])(x[[1, 1]]), scores[[1, 1]])
        assert not torch.allclose(forward(x[[1, 0]]), scores)  # the images' regions differ: the owner matters
        with pytest.raises(ValueError, match="no owner says which image"):
            forward(x[rows])
        with pytest.raises(ValueError, match="were said to derive from images"):
            forward(x, owner=[0])
        with pytest.raises(ValueError, match="regions are"):
            RegionScores(scored.segment, masks[:, :2])(x)
    # a classifier's forward takes no owner and is not touched
    classify = scored.net.head
    assert for_rows(classify, rows) is classify
    # a streamed build's next batch gets its own predicted regions; given regions refuse another batch
    engine = Engine(scored.net, x, forward=RegionScores.of_predictions(scored.segment, x))
    assert torch.equal(engine.forward.masks, masks)
    flipped = engine.with_batch(x.flip(-1))
    assert torch.equal(flipped.forward.masks, predicted_regions(scored.segment(x.flip(-1))))
    with pytest.raises(ValueError, match="cannot serve another"):
        Engine(scored.net, x, forward=forward).with_batch(x)
    torch.testing.assert_close(forward.empty([(0, 2), (2, 1)]), torch.tensor([[False, True], [True, False]]))


def test_tiny_segmenter_every_method_equals_pytorch_grad_cam_and_captum():
    """Two layers and their fusion; the engine in chunks of one image sharing its CAM pass with the gradient
    methods (input and ReLU-rule gradients); per-image classes per rank; the third rank's class has no region."""
    scored, x, masks = tiny_case()
    area = masks.flatten(2).float().mean(2)  # (N, K) share of each class
    assert (area[:, :2] > 0.2).all() and (area[:, 2] == 0).all()
    assert not torch.equal(masks[0], masks[1])
    class_sets = [(0, 1), (1, 0), (2, 2)]
    layers = ["body", "act"]
    explained = ours(scored, x, masks, class_sets, layers, chunk=1, shared=True, head=nn.Linear(8, 3))
    assert "segmenter" in explained.cam.not_applicable["cam"]
    assert explained.reused_input_grad == (True, True, True)  # the gradients came from the chunked CAM pass
    check_cams(scored, x, masks, explained, class_sets, layers, empty_rank=2)
    check_gradients(scored, x, masks, explained, class_sets, layers[-1], empty_rank=2)


def test_lraspp_two_named_classes_equal_pytorch_grad_cam_and_captum():
    """torchvision's LRASPP-MobileNetV3 (Hardswish, in-place ReLUs, a dict output), one engine pass for all
    images; the class it predicts and a class with a given region, and a class with none."""
    scored, x, masks, (p, q, r) = lraspp_case()
    class_sets = [(p, q), (q, p), (r, r)]
    explained = ours(scored, x, masks, class_sets, ["backbone.4"])
    assert "cam" in explained.cam.not_applicable
    check_cams(scored, x, masks, explained, class_sets, ["backbone.4"], empty_rank=2)
    check_gradients(scored, x, masks, explained, class_sets, "backbone.4", empty_rank=2)
