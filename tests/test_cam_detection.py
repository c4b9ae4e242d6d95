"""A detector's cam stage (`stages/cam_detection.py`), run on hand-made detector contexts: its maps equal
pytorch-grad-cam 1.5.7 with `FasterRCNNBoxScoreTarget([label], [box])` per box (GradCAM on the tensor layer; EigenCAM
and AblationCAM on the feature pyramid with `fasterrcnn_reshape_transform`, or on the tensor layer of the shipped
detector, which has no pyramid) to ≤ 1e-3, on seeded random Faster R-CNN MobileNet-320 and RetinaNet (thresholds 0,
top 5 boxes) and on the shipped detector; D-RISE maps are its formula's (`methods.boxes.drise`) min-max'd; true
boxes are matched as COCOeval matches them; the section renders the boxes as SVG the page draws, each box with one
map per method, and no script or style attribute.

A box's own IoU with the detection it targets is 1: the IoU sits on a kink there (its min/max ties), and which side
its gradient takes follows the forward's last bits, which change with the batch around an image. So a gradient
map is compared with pytorch-grad-cam's on the same batch (one call per box rank, as tests/test_box_targets.py
does); the methods without gradients with its tutorial's one call per image and box."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pytorch_grad_cam as pgc
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

from reportgen import methods, render
from reportgen.annotations import ImageBoxes
from reportgen.config import CamConfig, Config
from reportgen.context import Context, ImageInput, ModelInfo
from reportgen.demo.detect import CAM_LAYER, SAMPLE_SEED, load_model, scene_boxes, to_tensors
from reportgen.demo.segment import LABELS, generate_scenes
from reportgen.engine import Engine
from reportgen.figures import cam_detection as figures
from reportgen.hooks import capture_outputs
from reportgen.layers import describe_model
from reportgen.methods.boxes import BoxScores, drise, drise_boxes, fpn_levels, fpn_reshape
from reportgen.methods.cam import NotApplicable, project_2d
from reportgen.methods.dispatch import Settings, explain
from reportgen.metrics.detection import match_boxes
from reportgen.models.detection import Detections, from_torchvision
from reportgen.stages import cam_detection as D
from tests.test_browser import driver  # noqa: F401  (the Chromium fixture)
from tests.test_box_targets import (CAM_TOL, AblationLayerAnyPyramid, eigen_diff, faster_rcnn, images, pgc_map, quiet,
                                    retinanet, signs)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "example_configs" / "detection" / "model.pt"
TOP = 5

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def detector_context(model, x: torch.Tensor, boxes: list[Detections], truth: list[ImageBoxes | None] | None = None,
                     labels=None, display: np.ndarray | None = None) -> Context:
    """The detector's batch context of the contract, by hand: `ctx.boxes`, an engine whose forward is the box
    scores of those boxes, and each image's true boxes."""
    model.eval()
    info = ModelInfo(model=model, config=Config(), labels=list(labels) if labels else None, num_classes=len(labels or ()),
                     layers=describe_model(model, x[:1])[0], task="detection")
    scores = BoxScores(model, [d.boxes for d in boxes], [d.labels for d in boxes])
    with torch.no_grad():
        logits = scores(x)
    if display is None:
        display = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    images = [ImageInput(name=f"img{i}", source=f"img{i}.png", original=display[i], display=display[i])
              for i in range(len(x))]
    for image, t in zip(images, truth or [None] * len(x)):
        object.__setattr__(image, "boxes", t)  # the lead's new ImageInput field
    ctx = Context(info=info, device=x.device, batch=x, images=images, logits=logits,
                  engine=Engine(model, x, forward=scores))
    ctx.boxes = boxes  # the lead's new Context field
    return ctx


def detections(model, x: torch.Tensor, threshold: float | None = None, top: int = TOP) -> list[Detections]:
    with torch.no_grad():
        return [d.above(threshold).top(top) for d in from_torchvision(model(x))]


def truth_of(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> ImageBoxes:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return ImageBoxes(path="", boxes=boxes, labels=np.asarray(labels, np.int64), names=tuple(map(str, labels)),
                      iscrowd=np.zeros(len(boxes), bool), area=(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                      size=size, image_id=0)


def pgc_box(cls, model, layer, x: torch.Tensor, box: torch.Tensor, label: int, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's (H, W) map of one image and one box, as its Faster R-CNN tutorial computes it."""
    module = layer if isinstance(layer, torch.nn.Module) else model.get_submodule(layer)
    with quiet(), cls(model, [module], **kwargs) as cam:
        return cam(x[None], [FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box])])[0]


def eigen_flips(model, layer: str, x: torch.Tensor) -> torch.Tensor:
    """(2, N, H, W) pytorch-grad-cam's Eigen-CAM of the layer with each sign of the principal component."""
    with torch.no_grad(), capture_outputs(model, [layer]) as out:
        model(x)
    return signs(project_2d(out[layer].float(), fix_sign=False), tuple(x.shape[-2:]))


# ---------------------------------------------------------------------------- the shipped detector


@pytest.fixture(scope="module")
def shipped():
    model = load_model(SHIPPED)
    scenes = generate_scenes(3, SAMPLE_SEED)
    x = to_tensors(scenes.images)
    boxes = detections(model, x, threshold=0.5)
    truth = [truth_of(b, c, (64, 64)) for b, c in scene_boxes(scenes)]
    return model, x, boxes, truth, scenes


def test_shipped_detector_maps_equal_pytorch_grad_cam_per_box(shipped):
    model, x, boxes, truth, scenes = shipped
    assert sorted(len(d) for d in boxes) == [3, 4, 4]  # an image with fewer boxes than the batch's most
    ctx = detector_context(model, x, boxes, truth, LABELS, display=scenes.images)
    cfg = CamConfig(methods=("gradcam", "gradcampp", "eigencam", "ablationcam", "cam"), target_layers=(CAM_LAYER,))
    result = D.run(ctx, cfg)
    assert result.methods == ("gradcam", "gradcampp", "eigencam", "ablationcam")
    assert "not such a layer" in result.not_applicable["cam"]
    assert set(result.layers.values()) == {CAM_LAYER}  # no pyramid: Eigen- and Ablation-CAM on the tensor layer
    flips = eigen_flips(model, CAM_LAYER, x)
    worst = {}
    for method, cls in (("gradcam", pgc.GradCAM), ("gradcampp", pgc.GradCAMPlusPlus)):
        for j in range(4):  # one pytorch-grad-cam call per box rank on the batch: the same forward (see the module)
            ref = pgc_map(cls, model, CAM_LAYER, x, ctx.engine.forward, j)
            for i, d in enumerate(boxes):
                if j < len(d):
                    diff = float(np.abs(result.maps[method][i][j] - ref[i]).max())
                    assert diff <= CAM_TOL, f"{method}, image {i}, box {j}: {diff:.2e}"
                    worst[method] = max(worst.get(method, 0.0), diff)
                    assert result.maps[method][i][j].max() > 0.99  # a real map, not a zero one
    for i, d in enumerate(boxes):
        for j in range(len(d)):  # as pytorch-grad-cam's tutorial: one image and one box a call
            for method, cls in (("ablationcam", pgc.AblationCAM), ("eigencam", pgc.EigenCAM)):
                mine = result.maps[method][i][j]
                assert mine.shape == (64, 64) and mine.dtype == np.float32
                ref = pgc_box(cls, model, CAM_LAYER, x[i], d.boxes[j], int(d.labels[j]))
                if method == "eigencam":
                    diff = eigen_diff(torch.from_numpy(mine)[None], ref[None], flips[:, i:i + 1])
                else:
                    diff = float(np.abs(mine - ref).max())
                assert diff <= CAM_TOL, f"{method}, image {i}, box {j}: {diff:.2e}"
                worst[method] = max(worst.get(method, 0.0), diff)
    print({m: f"{v:.1e}" for m, v in worst.items()})
    # the true boxes, matched as COCOeval matches them: the trained detector finds every shape of these scenes
    for i, d in enumerate(boxes):
        m = match_boxes(d.boxes.numpy(), d.scores.numpy(), d.labels.numpy(), truth[i].boxes, truth[i].labels)
        assert np.array_equal(result.truth_of[i], m.truth_of) and np.array_equal(result.missed[i], m.missed)
    records = D.records(result)
    assert [r["missed"] for r in records] == [int(m.sum()) for m in result.missed]
    assert records[0]["boxes"][0]["match"] == "tp" and records[0]["boxes"][0]["name"] in LABELS
    arrays = D.arrays(result)
    assert [arrays[f"cam/gradcam/img{i}"].shape for i in range(3)] == [(len(d), 64, 64) for d in boxes]


def test_drise_maps_are_its_formula_scaled_and_box_maps_pads_missing_boxes(shipped):
    model, x, boxes, truth, scenes = shipped
    cfg = CamConfig(methods=("drise", "gradcam"), target_layers=(CAM_LAYER,), drise_masks=24, drise_cells=4, drise_p=0.5)
    maps = D.box_maps(model, model, x, boxes, cfg.methods, cfg)
    assert list(maps) == ["drise", "gradcam"]
    assert maps["drise"].shape == (4, 3, 64, 64) and maps["gradcam"].shape == (4, 3, 64, 64)
    short = min(range(3), key=lambda i: len(boxes[i]))  # the image with 3 boxes: its 4th maps are zeros
    assert len(boxes[short]) == 3 and not maps["drise"][3, short].any() and not maps["gradcam"][3, short].any()
    detect = lambda images: [{"boxes": d["boxes"], "probs": torch.nn.functional.one_hot(d["labels"], 6).float(),  # noqa: E731
                              "objectness": d["scores"]} for d in model(images)]
    full = max(range(3), key=lambda i: len(boxes[i]))
    raw = drise(detect, x[full], boxes[full].boxes, boxes[full].labels, masks=24, cell=16, p=0.5, seed=0)
    expected = (raw - raw.amin((1, 2), keepdim=True)) / (1e-7 + (raw - raw.amin((1, 2), keepdim=True)).amax((1, 2), keepdim=True))
    assert torch.allclose(maps["drise"][:4, full], expected, atol=1e-5)
    assert maps["drise"].amax((2, 3))[:3].min() > 0.99
    # the same maps from the stage on a context, and from a forward returning Detections
    ctx = detector_context(model, x, boxes, truth, LABELS)
    result = D.run(ctx, cfg)
    assert result.layers == {"drise": "", "gradcam": CAM_LAYER}
    for i in range(3):
        assert np.allclose(result.maps["drise"][i], maps["drise"][:len(boxes[i]), i].numpy(), atol=1e-6)
    again = D.box_maps(model, lambda images: from_torchvision(model(images)), x, boxes, ("gradcam",), cfg)
    assert torch.allclose(again["gradcam"], maps["gradcam"], atol=1e-6)


def test_a_batch_without_boxes_has_empty_maps_and_every_true_box_missed(shipped):
    model, x, boxes, truth, scenes = shipped
    none = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * 3
    ctx = detector_context(model, x, none, truth, LABELS)
    result = D.run(ctx, CamConfig(methods=("ablationcam", "drise"), target_layers=(CAM_LAYER,)))
    assert result.layers == {"ablationcam": CAM_LAYER, "drise": ""} and result.seconds == {}  # nothing ran
    assert [v.shape for v in result.maps["drise"]] == [(0, 64, 64)] * 3
    assert [r["missed"] for r in D.records(result)] == [len(t.boxes) for t in truth]


def test_drise_of_a_label_no_masked_image_detects_is_zero():
    """The one-hot of D-RISE's similarity covers the targets' labels even when the masked images' detections are all
    of lower labels (cos 0: the weight of every mask is 0)."""
    def detector(images):
        return [{"boxes": torch.tensor([[0.0, 0, 8, 8]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
                for _ in images]

    scores = BoxScores(detector, [torch.tensor([[0.0, 0, 8, 8], [0, 0, 8, 8]])], [torch.tensor([1, 3])])
    maps = drise_boxes(scores, torch.rand(1, 3, 16, 16), masks=6, cells=4)
    assert maps.shape == (2, 1, 16, 16) and maps[0].amax() > 0 and not maps[1].any()


def test_drise_is_a_cam_method_id_with_options_and_not_applicable_to_a_classifier():
    assert methods.canonical("D-RISE", "cam") == "drise" and not methods.get("drise").hooks
    cfg = CamConfig(methods=("drise",))
    assert (cfg.drise_masks, cfg.drise_cells, cfg.drise_p) == (500, 8, 0.5)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 16, 16)
    explained = explain(("drise",), Engine(classifier, x), [(0, 1)], Settings(layers=("0",)))
    assert "D-RISE explains a detector's boxes" in explained.cam.not_applicable["drise"]
    with pytest.raises(NotApplicable):
        methods.get("drise").function()(type("Job", (), {"forward": classifier})())


# ---------------------------------------------------------------------------- torchvision's detectors


@pytest.mark.slow
def test_faster_rcnn_fpn_maps_equal_pytorch_grad_cam():
    """Grad-CAM on the body's last block; Eigen-CAM and Ablation-CAM on the pyramid (`backbone`, found by itself)."""
    model, layer = faster_rcnn(proposals=8)  # Ablation-CAM's forwards run the heads on 256 copies: few proposals
    x = images(1, 48)
    boxes = detections(model, x)
    assert [len(d) for d in boxes] == [TOP]
    ctx = detector_context(model, x, boxes)
    result = D.run(ctx, CamConfig(methods=("gradcam", "eigencam", "ablationcam"), target_layers=(layer,),
                                  batch_size=256))
    assert result.layers == {"gradcam": layer, "eigencam": "backbone", "ablationcam": "backbone"}
    assert "its levels 0, 1, pool, each resized to the size of `pool`" in " ".join(result.notes)
    assert D.plan_layers(ctx.info, CamConfig(target_layers=(layer, "backbone"))) == ((layer,), "backbone")
    flips = signs(project_2d(fpn_reshape(fpn_levels(model, x)), fix_sign=False), (48, 48))
    d = boxes[0]
    for j in range(TOP):
        ref = pgc_box(pgc.GradCAM, model, layer, x[0], d.boxes[j], int(d.labels[j]))
        assert np.abs(result.maps["gradcam"][0][j] - ref).max() <= CAM_TOL
        ref = pgc_box(pgc.EigenCAM, model, "backbone", x[0], d.boxes[j], int(d.labels[j]),
                      reshape_transform=fasterrcnn_reshape_transform)
        assert eigen_diff(torch.from_numpy(result.maps["eigencam"][0][j])[None], ref[None], flips) <= CAM_TOL
    for j in range(2):  # pytorch-grad-cam ablates all 768 channels once per box: two boxes suffice
        ref = pgc_box(pgc.AblationCAM, model, "backbone", x[0], d.boxes[j], int(d.labels[j]),
                      reshape_transform=fasterrcnn_reshape_transform, ablation_layer=AblationLayerAnyPyramid(),
                      ratio_channels_to_ablate=1.0, batch_size=256)
        mine = result.maps["ablationcam"][0][j]
        assert mine.max() > 0.99 and np.abs(mine - ref).max() <= CAM_TOL, j


def retinanet_reshape_transform(levels):
    """pytorch-grad-cam's `fasterrcnn_reshape_transform` with the size of level "1" instead of "pool" (RetinaNet has
    none: `methods.boxes.size_level`): every level's absolute value, resized bilinearly, concatenated."""
    size = levels["1"].size()[-2:]
    return torch.cat([torch.nn.functional.interpolate(torch.abs(v), size, mode="bilinear") for v in levels.values()],
                     dim=1)


@pytest.mark.slow
def test_retinanet_maps_equal_pytorch_grad_cam():
    model, layer = retinanet()
    x = images(2, 64)
    boxes = detections(model, x)
    assert [len(d) for d in boxes] == [TOP, TOP]
    result = D.run(detector_context(model, x, boxes), CamConfig(methods=("gradcam", "eigencam")))
    assert result.layers == {"gradcam": layer, "eigencam": "backbone"}  # the default layer: the body's last block
    assert "its levels 0, 1, 2, p6, p7, each resized to the size of `1` (it has no `pool` level" in \
        " ".join(result.notes)
    flips = signs(project_2d(retinanet_reshape_transform(fpn_levels(model, x)), fix_sign=False), (64, 64))
    for j in range(TOP):  # per box rank on the batch (see the module)
        ref = pgc_map(pgc.GradCAM, model, layer, x, BoxScores(model, [d.boxes for d in boxes],
                                                               [d.labels for d in boxes]), j)
        for i in range(2):
            assert np.abs(result.maps["gradcam"][i][j] - ref[i]).max() <= CAM_TOL, (i, j)
    for i, d in enumerate(boxes):
        ref = pgc_box(pgc.EigenCAM, model, "backbone", x[i], d.boxes[0], int(d.labels[0]),
                      reshape_transform=retinanet_reshape_transform)
        for j in range(TOP):
            mine = torch.from_numpy(result.maps["eigencam"][i][j])[None]
            assert eigen_diff(mine, ref[None], flips[:, i:i + 1]) <= CAM_TOL


# ---------------------------------------------------------------------------- batches, records, the page


def made_result(with_truth: bool = True) -> D.BoxMapsResult:
    """A result by hand: two images, the second with no box; image 0: a true positive, a false positive, a miss."""
    rng = np.random.default_rng(0)
    maps = {m: (rng.random((2, 16, 16), dtype=np.float32), np.zeros((0, 16, 16), np.float32))
            for m in ("gradcam", "drise")}
    return D.BoxMapsResult(
        images=("a<b", "c"), boxes=(np.array([[1, 1, 8, 8], [9, 2, 15, 6]], np.float32), np.zeros((0, 4), np.float32)),
        labels=(np.array([1, 2]), np.zeros(0, np.int64)), scores=(np.array([0.9, 0.6], np.float32), np.zeros(0, np.float32)),
        maps=maps, layers={"gradcam": "backbone.body.block4", "drise": ""}, methods=("gradcam", "drise"),
        config=CamConfig(methods=("gradcam", "drise")), class_names={1: "circle", 2: "square & co", 3: "cross"},
        input_size=(16, 16),
        truth_boxes=(np.array([[1, 1, 8, 9], [2, 10, 6, 15]], np.float32), None) if with_truth else (None, None),
        truth_labels=(np.array([1, 3]), None) if with_truth else (None, None),
        truth_of=(np.array([0, -1]), None) if with_truth else (None, None),
        missed=(np.array([False, True]), None) if with_truth else (None, None), image_count=2)


def test_select_reduce_records_and_json():
    result = made_result()
    both = D.reduce([D.select(result, [1]), D.select(result, [0])])
    assert both.images == ("c", "a<b") and both.maps["gradcam"][1].shape == (2, 16, 16) and both.image_count == 4
    rows = D.records(result)
    assert rows[0]["missed"] == 1 and rows[1] == {"boxes": [], "missed": None}
    assert [(b["match"], b.get("truth")) for b in rows[0]["boxes"]] == [("tp", 0), ("fp", None)]
    data = D.to_json(result)
    assert data["layers"] == {"gradcam": "backbone.body.block4", "drise": ""}
    assert data["images"][0]["truth"][1] == {"index": 1, "label": 3, "name": "cross", "box": [2.0, 10.0, 6.0, 15.0],
                                             "missed": True}
    assert set(D.arrays(result)) == {"cam/gradcam/a<b", "cam/gradcam/c", "cam/drise/a<b", "cam/drise/c"}


def rendered(section) -> str:
    env = render.make_environment(render._Images(True))
    return env.get_template("sections/cam_detection.html.jinja2").render(report={}, section=section)


def test_the_card_draws_boxes_truth_and_one_map_per_box_and_method_without_script_or_style():
    result = made_result()
    display = np.zeros((2, 16, 16, 3), np.uint8)
    ctx = type("Ctx", (), {"images": [ImageInput(name=n, source="", original=display[i], display=display[i])
                                      for i, n in enumerate(result.images)]})()
    section = figures.plot(result, ctx)
    card = section["images"][0]
    assert card["width"] == figures.VIEW and card["view_height"] > card["height"] == figures.VIEW
    assert [b["colour"] for b in card["boxes"]] == [figures.COLOURS["tp"], figures.COLOURS["fp"]]
    assert card["boxes"][1]["text"] == "2 square & co 0.60 FP" and card["missed"] == 1
    assert card["boxes"][0]["x"] == pytest.approx(18.0) and card["boxes"][0]["w"] == pytest.approx(7 * 18.0)
    html = rendered(section)
    assert "<script" not in html and "style=" not in html and "&lt;" in html and "a<b" not in html
    assert html.count('class="bx') == 2 and html.count('class="bx d"') == 1  # the best box's maps show first
    assert html.count('<g class="p" visibility="hidden">') == 2
    assert html.count('stroke-dasharray="5 3"') == 2 and "missed: cross" in html and "square &amp; co" in html
    assert len(re.findall(r'<image href="data:image/png;base64,[^"]+" x=', html)) == 2 * 2  # boxes × methods
    assert html.count("<symbol") == 2 and "No detection was explained" in html  # image c has none
    assert html.count('tabindex="0"') == 2 and "Grad-CAM" in html and "D-RISE" in html
    no_truth = rendered(figures.plot(made_result(with_truth=False), ctx))
    assert "stroke-dasharray" not in no_truth and "No true boxes for this image" in no_truth


def test_the_variant_names_its_figures_and_template():
    variant = D.VARIANT
    variant.check_files()
    assert variant.name == "cam" and variant.run is D.run and variant.records is D.records
    css = (render.templates_dir() / "style.css").read_text()
    assert ".bx:is(:hover,:focus)>.p" in css  # the maps of the box hovered or focused show (no script)


def test_in_chromium_the_maps_follow_hover_then_focus_then_the_best_box_and_fit_a_phone(driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from tests.test_browser import PHONE, open_page

    result = made_result()
    display = np.zeros((2, 16, 16, 3), np.uint8)
    ctx = type("Ctx", (), {"images": [ImageInput(name=n, source="", original=display[i], display=display[i])
                                      for i, n in enumerate(result.images)]})()
    images = render._Images(True)
    html = render.make_environment(images).get_template("sections/cam_detection.html.jinja2").render(
        report={}, section=figures.plot(result, ctx))
    css = (render.templates_dir() / "style.css").read_text() + "\n" + images.css()
    page = tmp_path / "page.html"
    page.write_text(f'<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
                    f'content="{render.page_policy(css, "", "data:")}"><meta name="viewport" content="width=device-width">'
                    f'<style>{css}</style></head><body><main><section class="section"><h2>CAM</h2>{html}</section>'
                    '</main></body></html>', encoding="utf-8")
    shown = ("return [...document.querySelectorAll('.det')[0].querySelectorAll('.bx')].filter("
             "g => getComputedStyle(g.querySelector('.p')).visibility === 'visible').map(g => g.getAttribute('aria-label'))")
    for width, height in ((1300, 1000), PHONE):
        events = open_page(driver, page, width=width, height=height, scripts=False)
        assert events["errors"] == []  # nothing refused by the page's policy
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        boxes = driver.find_elements(By.CSS_SELECTOR, ".det")[0].find_elements(By.CSS_SELECTOR, ".bx")
        driver.execute_script("arguments[0].scrollIntoView()", boxes[0])
        best = "Box 1: circle, score 0.90, true positive: its maps"
        other = "Box 2: square & co, score 0.60, false positive: its maps"
        assert driver.execute_script(shown) == [best]  # nothing hovered or focused: the best box's
        driver.execute_script("arguments[0].focus()", boxes[1])
        assert driver.execute_script(shown) == [other]  # focused (Tab, or a tap)
        ActionChains(driver).move_to_element(boxes[0].find_element(By.TAG_NAME, "rect")).perform()
        assert driver.execute_script(shown) == [best]  # hovered, although another box has the focus
