"""Detection model sources (`reportgen.models`): torchvision's detectors built offline through `load_model` and
read as `Detections` equal to torchvision's own output; Hugging Face DETR (ResNet backbone, no timm) and YOLOS
folders read as their image processors' `post_process_object_detection`; a user's factory returning torchvision's
format; the recommended CAM layers; the messages for outputs that read as no detections."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from reportgen.config import Preprocess
from reportgen.errors import ReportgenError
from reportgen.models import (Detections, infer_task, internal_size, load_model, num_classes, pick_detections,
                              pick_output, resolve_task, weights_cache_path)
from reportgen.models.layouts import DETECTION_CAM_LAYERS
from tests.test_models_segmentation import _config, no_fetch  # noqa: F401 (no_fetch: a fixture)

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: a second thread only waits

def _images(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))  # 0-1, unnormalised


def _same(ours: list[Detections], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for detections, expected in zip(ours, theirs):
        assert isinstance(detections, Detections)
        assert torch.equal(detections.boxes, expected["boxes"])
        assert torch.equal(detections.scores, expected["scores"])
        assert torch.equal(detections.labels, expected["labels"]) and detections.labels.dtype == torch.int64


def _cam_layer(name: str) -> str:
    [layer] = [layer for names, layer in DETECTION_CAM_LAYERS.items() if name in names.split(", ")]
    return layer


# ---------------------------------------------------------------------------- torchvision


SMALL = {"min_size": 64, "max_size": 64}


@pytest.mark.parametrize("name, kwargs", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", {"num_classes": 3, "box_score_thresh": 0.0, **SMALL}),
    ("retinanet_resnet50_fpn", {"num_classes": 3, "score_thresh": 0.0, "detections_per_img": 7, **SMALL}),
    ("fcos_resnet50_fpn", {"num_classes": 4, "score_thresh": 0.0, **SMALL}),
    ("ssdlite320_mobilenet_v3_large", {"num_classes": 3, "score_thresh": 0.0}),  # resizes to 320² itself
])
def test_torchvision_detectors_load_offline_and_read_as_their_output(no_fetch, name, kwargs) -> None:
    torch.manual_seed(0)
    adapter = load_model(_config("torchvision", (64, 48), name=name, kwargs=kwargs))
    assert adapter.task == "detection" and not adapter.model.training
    assert adapter.description.startswith(f"torchvision {name}(num_classes=") and "(random weights)" in adapter.description
    x = _images(2, 64, 48)
    with torch.no_grad():
        theirs = adapter.model(list(x))  # torchvision's documented input, a list of 0-1 images
        ours = adapter.forward(x)
        assert [len(d) for d in adapter.pick_logits(theirs, threshold=0.3)] == \
            [int((t["scores"] > 0.3).sum()) for t in theirs]
    _same(ours, theirs)
    assert all(len(d) > 0 for d in ours)  # threshold 0: seeded random detectors return boxes
    if "detections_per_img" in kwargs:  # the kwargs reach the builder
        assert all(len(d) == kwargs["detections_per_img"] for d in ours)
    assert int(max(d.labels.max() for d in ours)) < kwargs["num_classes"] == num_classes(adapter.model)
    assert adapter.with_task(theirs) is adapter
    # the boxes are in the input's pixels: torchvision maps them back from its own resize
    assert all(float(d.boxes[:, 2].max()) <= 48 and float(d.boxes[:, 3].max()) <= 64 for d in ours)
    assert internal_size(adapter.model, (64, 48)) == tuple(adapter.model.transform(list(x))[0].image_sizes[0])
    assert adapter.layouts.cam_layer == _cam_layer(name) and adapter.layouts.pyramid == "backbone"
    modules = dict(adapter.model.named_modules())
    assert adapter.layouts.cam_layer in modules
    with torch.no_grad():  # the pyramid is the dict of levels pytorch-grad-cam's reshape transform reads
        levels = modules["backbone"](adapter.model.transform(list(x))[0].tensors)
    assert isinstance(levels, dict) and all(v.dim() == 4 for v in levels.values())


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                                  "fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn_v2", "ssd300_vgg16"])
def test_the_other_torchvision_detectors_build_offline(no_fetch, name) -> None:
    adapter = load_model(_config("torchvision", (64, 64), name=name, kwargs={"num_classes": 2}))
    assert adapter.task == "detection" and type(adapter.model).__module__.startswith("torchvision.models.detection")
    assert num_classes(adapter.model) == 2
    assert adapter.layouts.cam_layer == _cam_layer(name) in dict(adapter.model.named_modules())


def test_the_model_resize_is_the_identity_when_min_and_max_size_fit_the_input(no_fetch) -> None:
    adapter = load_model(_config("torchvision", (64, 48), name="fasterrcnn_mobilenet_v3_large_320_fpn",
                                 kwargs={"num_classes": 2, "min_size": 48, "max_size": 64}))
    x = _images(1, 64, 48)
    images, _ = adapter.model.transform(list(x))
    assert internal_size(adapter.model, (64, 48)) == (64, 48) == tuple(images.image_sizes[0])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    # its normalisation only (the batch is padded to a multiple of 32 on the right): no resampling
    assert torch.allclose(images.tensors[0, :, :, :48], (x[0] - mean[:, None, None]) / std[:, None, None], atol=1e-6)
    default = load_model(_config("torchvision", (64, 48), name="fasterrcnn_mobilenet_v3_large_320_fpn"))
    assert internal_size(default.model, (64, 48)) == (426, 320)  # its own 320 shorter side
    assert internal_size(nn.Conv2d(3, 3, 1), (64, 48)) is None


def test_a_detector_takes_unnormalised_images(no_fetch) -> None:
    adapter = load_model(_config("torchvision", (64, 64), name="fasterrcnn_mobilenet_v3_large_320_fpn",
                                 kwargs={"num_classes": 2, **SMALL}))
    with pytest.raises(ReportgenError, match=r"`inputs.preprocess.normalize`: torchvision's detectors take "
                                             r"unnormalised 0-1 images .* set `normalize: null`"):
        adapter.preprocess(Preprocess())  # ImageNet's mean and std, the default
    plain = Preprocess(normalize=None)
    assert adapter.preprocess(plain) is plain and adapter.normalize(plain) is None


def test_a_detector_with_weights_from_the_cache_gets_their_categories_and_no_normalisation(tmp_path: Path,
                                                                                          no_fetch) -> None:
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    try:
        weights = torchvision.models.detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1
        torch.manual_seed(3)
        saved = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=91, min_size=64, max_size=64).eval()
        path = weights_cache_path(weights)
        path.parent.mkdir(parents=True)
        torch.save(saved.state_dict(), path)
        adapter = load_model(_config("torchvision", (64, 64), name=name, weights="COCO_V1", kwargs=SMALL))
    finally:
        torch.hub.set_dir(before)
    assert adapter.task == "detection" and adapter.categories == list(weights.meta["categories"])
    assert len(adapter.categories) == 91  # COCO's ids with their gaps ("N/A")
    pre = adapter.preprocess(Preprocess(normalize=None, from_weights=True))
    assert pre.normalize is None and pre.resize is None and pre.center_crop is None
    x = _images(1, 64, 64)
    with torch.no_grad():
        _same(adapter.forward(x), saved(list(x)))


def test_a_detector_kwarg_that_downloads_or_a_mask_rcnn_is_refused(no_fetch) -> None:
    with pytest.raises(ReportgenError, match=r"`weights_backbone: IMAGENET1K_V1` makes torchvision download"):
        load_model(_config("torchvision", (64, 64), name="retinanet_resnet50_fpn",
                           kwargs={"weights_backbone": "IMAGENET1K_V1"}))
    with pytest.raises(ReportgenError, match=r"`maskrcnn_resnet50_fpn` is not a torchvision classification, "
                                             r"segmentation or detection model.*Mask and Keypoint R-CNN"):
        load_model(_config("torchvision", (64, 64), name="maskrcnn_resnet50_fpn"))
    with pytest.raises(ReportgenError, match=r"Did you mean `fcos_resnet50_fpn`"):
        load_model(_config("torchvision", (64, 64), name="fcos_resnet_50fpn"))


# ---------------------------------------------------------------------------- Hugging Face folders


def _detr(root: Path) -> tuple[Path, nn.Module, object]:
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                         out_features=["stage2"])
    config = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                                     d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=6,
                                     num_labels=3, id2label={0: "circle", 1: "square", 2: "triangle"})
    model = transformers.DetrForObjectDetection(config).eval()
    model.save_pretrained(root / "detr")
    return root / "detr", model, transformers.DetrImageProcessor()


def _yolos(root: Path) -> tuple[Path, nn.Module, object]:
    torch.manual_seed(0)
    config = transformers.YolosConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                                      image_size=[32, 32], patch_size=8, num_detection_tokens=5, num_labels=3)
    model = transformers.YolosForObjectDetection(config).eval()
    model.save_pretrained(root / "yolos")
    return root / "yolos", model, transformers.YolosImageProcessor()


def _rtdetr(root: Path) -> tuple[Path, nn.Module, object]:
    torch.manual_seed(0)
    backbone = transformers.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                               out_features=["stage2", "stage3", "stage4"])
    config = transformers.RTDetrConfig(backbone_config=backbone, use_pretrained_backbone=False, encoder_hidden_dim=16,
                                       encoder_in_channels=[16, 16, 16], decoder_in_channels=[16, 16, 16], d_model=16,
                                       encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_layers=1, decoder_layers=1,
                                       encoder_attention_heads=2, decoder_attention_heads=2, num_queries=6,
                                       num_denoising=0, num_labels=3)
    model = transformers.RTDetrForObjectDetection(config).eval()
    model.save_pretrained(root / "rtdetr")
    return root / "rtdetr", model, transformers.RTDetrImageProcessor()


@pytest.mark.parametrize("make, classes, cam, size", [
    (_detr, 3 + 1, "model.backbone.model.encoder.stages.1", (64, 48)),  # 3 classes + "no object"
    (_yolos, 3 + 1, "vit.encoder.layer.1.layernorm_before", (64, 48)),
    # a sigmoid per class, the best (query, class) pairs; sides of multiples of 32 (its encoder's levels must meet)
    (_rtdetr, 3, "model.backbone.model.encoder.stages.3", (64, 96)),
])
def test_hugging_face_detectors_read_as_their_processor_does(tmp_path: Path, make, classes, cam, size) -> None:
    folder, original, processor = make(tmp_path)
    adapter = load_model(_config("huggingface", size, path=folder))
    assert adapter.task == "detection" and type(adapter.model) is type(original)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))  # normalised, as their processor does
    with torch.no_grad():
        out = original(pixel_values=x)
        ours = adapter.forward(x)
        assert infer_task(adapter.model(x)) == "detection"
    queries = out.logits.shape[1]
    assert out.logits.shape[-1] == classes and num_classes(adapter.model) == 3
    every = processor.post_process_object_detection(out, threshold=-1.0, target_sizes=[size] * 2)
    threshold = float(torch.cat([d["scores"] for d in every]).median())
    for given, expected in ((None, -1.0), (threshold, threshold)):  # None: every query
        theirs = processor.post_process_object_detection(out, threshold=expected, target_sizes=[size] * 2)
        _same(adapter.pick_logits(out, size=size, threshold=given), theirs)
    assert [len(d) for d in ours] == [queries, queries]
    _same(ours, processor.post_process_object_detection(out, threshold=-1.0, target_sizes=[size] * 2))
    normalised = pick_detections(out)  # no size: the boxes stay normalised, as with no target_sizes
    _same(normalised, processor.post_process_object_detection(out, threshold=-1.0))
    assert adapter.layouts.cam_layer == cam and cam in dict(adapter.model.named_modules())


def test_the_cam_layers_of_hugging_face_detectors_at_their_defaults() -> None:
    from reportgen.models.layouts import declare_layouts
    with torch.device("meta"):  # the default sizes, no memory
        detr = transformers.DetrForObjectDetection(transformers.DetrConfig(
            use_timm_backbone=False, backbone_config=transformers.ResNetConfig(out_features=["stage4"]),
            use_pretrained_backbone=False))
        yolos = transformers.YolosForObjectDetection(transformers.YolosConfig())
        rtdetr = transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(use_pretrained_backbone=False))
    for model in (detr, yolos, rtdetr):
        assert declare_layouts(model, (3, 512, 512)).cam_layer == DETECTION_CAM_LAYERS[type(model).__name__]


def test_yolos_tokens_fold_into_the_patch_grid_without_its_detection_tokens(tmp_path: Path) -> None:
    folder, _, _ = _yolos(tmp_path)
    adapter = load_model(_config("huggingface", (64, 48), path=folder))
    name = "vit.encoder.layer.1.layernorm_before"
    captured = {}
    handle = dict(adapter.model.named_modules())[name].register_forward_hook(lambda m, i, o: captured.update(t=o))
    try:
        with torch.no_grad():
            adapter.forward(_images(1, 64, 48))
    finally:
        handle.remove()
    tokens = captured["t"]
    assert tokens.shape == (1, 1 + 8 * 6 + 5, 16)  # class token + 8×6 patches + 5 detection tokens
    folded = adapter.layer_view(name)(tokens)
    assert folded.shape == (1, 16, 8, 6)
    assert torch.equal(folded[0, :, 2, 3], tokens[0, 1 + 2 * 6 + 3])  # row 2, column 3: the patch's token
    assert adapter.is_map("vit.encoder.layer.1.attention.attention.query") is False


def test_a_hugging_face_detector_reportgen_does_not_read_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "dfine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "d_fine",
                                                    "architectures": ["DFineForObjectDetection"]}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ReportgenError, match=r"holds a DFineForObjectDetection, whose outputs reportgen does not "
                                             r"read; it reads the detectors DetrForObjectDetection, "
                                             r"YolosForObjectDetection and RTDetrForObjectDetection"):
        load_model(_config("huggingface", (64, 64), path=folder))


# ---------------------------------------------------------------------------- the user's factory


FACTORIES = '''
import torch
from torch import nn

class Boxes(nn.Module):
    """Two boxes per image: the image's brightest half, scored by its mean."""
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        out = []
        for image in x:
            h, w = image.shape[-2:]
            top, bottom = image[:, : h // 2].mean(), image[:, h // 2:].mean()
            out.append({"boxes": torch.tensor([[0.0, 0.0, w, h / 2], [0.0, h / 2, w, h]]),
                        "scores": self.scale * torch.stack([top, bottom]), "labels": torch.tensor([1, 2])})
        return out

class Nested(Boxes):
    def forward(self, x):
        return {"detections": super().forward(x), "features": x.mean((2, 3))}

def boxes():
    return Boxes()

def nested():
    return Nested()
'''


def _factory(tmp_path: Path, name: str, **kwargs) -> object:
    (tmp_path / "detfactories.py").write_text(textwrap.dedent(FACTORIES))
    return load_model(_config("module", (32, 32), factory=f"detfactories:{name}", **kwargs), base_dir=tmp_path)


def test_a_factory_returning_torchvision_format_is_a_detector(tmp_path: Path) -> None:
    adapter = _factory(tmp_path, "boxes")
    assert adapter.task is None  # unknown until it runs
    x = _images(2, 32, 32)
    with torch.no_grad():
        out = adapter.model(x)
    adapter = adapter.with_task(out)
    assert adapter.task == "detection"
    ours = adapter.forward(x)
    assert ours[0].scores.requires_grad  # the scores keep their graph: a box's score can be differentiated
    with torch.no_grad():
        ours = adapter.forward(x)
    _same(ours, out)
    assert adapter.preprocess(Preprocess()).normalize is not None  # not torchvision's: its inputs are its own
    assert num_classes(adapter.model) is None  # its labels say nothing of how many it has
    kept = ours[0].top(1)
    assert len(kept) == 1 and float(kept.scores[0]) == float(out[0]["scores"].max())
    nested = _factory(tmp_path, "nested", output="detections")
    with torch.no_grad():
        _same(nested.pick_logits(nested.model(x)), out)
        with pytest.raises(ReportgenError, match=r"the model returns a dict with keys 'detections' list, 'features' "
                                                 r"Tensor \(2, 3\), not detections: per image a dict with `boxes`.*"
                                                 r"Set `model.output: <index or key>`"):
            pick_output(nested.model(x), task="detection")


# ---------------------------------------------------------------------------- reading outputs and their messages


DetrOut = transformers.models.detr.modeling_detr.DetrObjectDetectionOutput
ONE = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]]), "labels": torch.tensor([3]), "scores": torch.tensor([0.9])}


@pytest.mark.parametrize("out, task", [
    ([ONE], "detection"),
    ((ONE, ONE), "detection"),
    (DetrOut(logits=torch.zeros(1, 5, 4), pred_boxes=torch.zeros(1, 5, 4)), "detection"),
    (DetrOut(logits=torch.zeros(1, 5, 4), pred_boxes=torch.zeros(1, 6, 4)), None),  # queries do not match
    ({"logits": torch.zeros(1, 5, 4)}, None),
    ([], None),
])
def test_infer_task_for_detections(out, task) -> None:
    assert infer_task(out) == task


def test_detections_and_their_messages() -> None:
    [one] = pick_output([ONE], task="detection")
    assert one.boxes.dtype == torch.float32 and one.labels.tolist() == [3] and len(one) == 1
    assert len(one.above(0.9)) == 0 and len(one.above(0.5)) == 1  # strictly more, as torchvision keeps them
    assert resolve_task([ONE]) == "detection" and resolve_task([ONE], task="detection") == "detection"
    with pytest.raises(ReportgenError, match=r"the model returns a tensor \[2, 3\], not detections: per image a dict "
                                             r"with `boxes` \(n, 4\), `labels` and `scores`.*DETR, YOLOS"):
        pick_detections(torch.zeros(2, 3))
    with pytest.raises(ReportgenError, match=r"the model's detections for image 0 have no tensor `scores`"):
        pick_detections([{"boxes": ONE["boxes"], "labels": ONE["labels"]}])
    with pytest.raises(ReportgenError, match=r"image 1 have `boxes` \[1, 5\], `labels` \[1\], `scores` \[1\]; "
                                             r"expected \(n, 4\), \(n,\), \(n,\)"):
        pick_detections([ONE, {**ONE, "boxes": torch.zeros(1, 5)}])
    with pytest.raises(ReportgenError, match=r"the model returns an empty list, not detections"):
        pick_detections([])
    with pytest.raises(ReportgenError, match=r"`model.output`: 'features' picks a tensor \[2, 3\], not detections"):
        pick_detections({"features": torch.zeros(2, 3), "detections": [ONE]}, "features")
    with pytest.raises(ReportgenError, match=r"`model.output`: 'detection' is not in the model's output.*"
                                             r"Did you mean `detections`"):
        pick_detections({"detections": [ONE]}, "detection")
    with pytest.raises(ReportgenError, match=r"`model.task` is keypoints; reportgen reads the outputs of "
                                             r"classification, segmentation and detection models"):
        pick_output([ONE], task="keypoints")
