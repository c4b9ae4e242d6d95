"""Segmentation model sources (`reportgen.models`): torchvision's FCN, DeepLabV3 and LRASPP built offline through
`load_model`, Hugging Face `...ForSemanticSegmentation` folders (SegFormer, MobileViT) whose logits are upsampled
as their image processors do, user factories returning {"out": ...} or a tensor; `infer_task`, and the messages
for outputs that read as no task."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reportgen.config import ModelConfig
from reportgen.errors import ReportgenError
from reportgen.models import (ModelAdapter, infer_task, load_model, pick_output, pick_segmentation, resolve_task,
                              weights_cache_path)
from reportgen.models.layouts import SEGMENTATION_CAM_LAYERS

transformers = pytest.importorskip("transformers")

# torchvision's seg builders' ImageNet backbone weights: what `weights_backbone` left at its default fetches
BACKBONE_FETCH = "torchvision.models._api.load_state_dict_from_url"


def _batch(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _config(source: str, size: tuple[int, int], **kwargs) -> ModelConfig:
    return ModelConfig(source=source, input_size=(3, *size), labels=None, device="cpu", **kwargs)


@pytest.fixture
def no_fetch(monkeypatch):
    """Any torchvision weights fetch (download or cache read of a backbone) fails the test."""
    def fetch(url, *args, **kwargs):
        raise AssertionError(f"torchvision fetched {url}")
    monkeypatch.setattr(BACKBONE_FETCH, fetch)


# ---------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name, size, kwargs, cam", [
    ("fcn_resnet50", (32, 32), {"num_classes": 3}, "backbone.layer4"),
    ("deeplabv3_mobilenet_v3_large", (48, 64), {"num_classes": 4, "aux_loss": True}, "backbone.16"),
    ("lraspp_mobilenet_v3_large", (64, 48), {"num_classes": 2}, "backbone.16"),
])
def test_torchvision_segmenters_load_offline_and_return_logits_at_input_resolution(no_fetch, name, size, kwargs,
                                                                                   cam) -> None:
    torch.manual_seed(0)
    adapter = load_model(_config("torchvision", size, name=name, kwargs=kwargs))
    assert adapter.task == "segmentation" and not adapter.model.training
    assert adapter.description == f"torchvision {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) " \
                                  "(random weights)"
    x = _batch(2, *size)
    with torch.no_grad():
        out = adapter.model(x)
        logits = adapter.forward(x)
    assert logits.shape == (2, kwargs["num_classes"], *size)
    assert torch.equal(logits, out["out"])  # torchvision's logits are at the input's resolution already
    assert ("aux" in out) == kwargs.get("aux_loss", False)  # `aux_loss` reaches the builder
    assert adapter.with_task(out) is adapter
    assert adapter.layouts.cam_layer == cam and cam in dict(adapter.model.named_modules())
    assert [layer for names, layer in SEGMENTATION_CAM_LAYERS.items() if name in names.split(", ")] == [cam]


def test_a_segmenter_with_weights_from_the_cache_gets_their_classes_aux_head_and_resize(tmp_path: Path,
                                                                                       no_fetch) -> None:
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        weights = torchvision.models.segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1
        torch.manual_seed(3)
        saved = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
        path = weights_cache_path(weights)
        path.parent.mkdir(parents=True)
        torch.save(saved.state_dict(), path)
        adapter = load_model(_config("torchvision", (32, 32), name="deeplabv3_mobilenet_v3_large",
                                     weights="COCO_WITH_VOC_LABELS_V1"))
    finally:
        torch.hub.set_dir(before)
    assert adapter.task == "segmentation" and adapter.categories == list(weights.meta["categories"])
    assert len(adapter.categories) == 21 and adapter.model.aux_classifier is not None  # implied by the weights
    state = adapter.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.state_dict().items())
    pre = adapter.prescribed  # torchvision's SemanticSegmentation: the shorter side to 520, no crop
    assert pre.resize == (520,) and pre.center_crop is None and pre.normalize.mean == (0.485, 0.456, 0.406)


def test_a_backbone_weights_kwarg_is_refused_not_downloaded(no_fetch) -> None:
    cfg = _config("torchvision", (32, 32), name="fcn_resnet50", kwargs={"weights_backbone": "IMAGENET1K_V1"})
    with pytest.raises(ReportgenError, match=r"`model.kwargs`: `weights_backbone: IMAGENET1K_V1` makes torchvision "
                                             r"download weights, and reportgen never downloads"):
        load_model(cfg)
    adapter = load_model(_config("torchvision", (32, 32), name="lraspp_mobilenet_v3_large",
                                 kwargs={"weights_backbone": None, "num_classes": 2}))  # null: as always
    assert adapter.forward(_batch(1, 32, 32)).shape == (1, 2, 32, 32)


def test_a_segmenter_takes_its_checkpoint(tmp_path: Path, no_fetch) -> None:
    torch.manual_seed(5)
    saved = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=2)
    torch.save(saved.state_dict(), tmp_path / "lraspp.pt")
    adapter = load_model(_config("torchvision", (32, 32), name="lraspp_mobilenet_v3_large",
                                 kwargs={"num_classes": 2}, checkpoint=tmp_path / "lraspp.pt"))
    x = _batch(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(adapter.forward(x), saved.eval()(x)["out"])
    assert adapter.description.endswith("(random weights), checkpoint lraspp.pt")


def test_an_unknown_name_lists_segmenters_too() -> None:
    with pytest.raises(ReportgenError, match=r"`deeplabv3_resnet5` is not a torchvision classification, "
                                             r"segmentation or detection model. Did you mean `deeplabv3_resnet50`"):
        load_model(_config("torchvision", (32, 32), name="deeplabv3_resnet5"))


# ---------------------------------------------------------------------------- Hugging Face folders


def _segformer(root: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=3,
                                          id2label={0: "sky", 1: "road", 2: "car"})
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    model.save_pretrained(root / "segformer")
    return root / "segformer", model


def _mobilevit(root: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    config = transformers.MobileViTConfig(hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                                          num_labels=4, aspp_out_channels=16)
    model = transformers.MobileViTForSemanticSegmentation(config).eval()
    model.save_pretrained(root / "mobilevit")
    return root / "mobilevit", model


@pytest.mark.parametrize("make, processor, reduced, cam", [
    (_segformer, "SegformerImageProcessor", (16, 12), "decode_head.activation"),  # 1/4 of the input
    (_mobilevit, "MobileViTImageProcessor", (2, 2), "mobilevit.encoder.layer.4"),  # 1/32
])
def test_hugging_face_segmenters_are_upsampled_as_their_processor_does(tmp_path: Path, make, processor, reduced,
                                                                       cam) -> None:
    folder, original = make(tmp_path)
    adapter = load_model(_config("huggingface", (64, 48), path=folder))
    assert adapter.task == "segmentation" and type(adapter.model) is type(original)
    x = _batch(2, 64, 48)
    with torch.no_grad():
        ours = adapter.forward(x)
        out = original(pixel_values=x)
    assert tuple(out.logits.shape[-2:]) == reduced  # the upsampling is real
    # the oracle: the image processor's own post-processing, to the input's size
    scores = getattr(transformers, processor)().post_process_semantic_segmentation(
        out, target_sizes=[(64, 48)] * 2, return_segmentation_scores=True)
    expected = torch.stack([s.segmentation_scores for s in scores])
    assert ours.shape == (2, out.logits.shape[1], 64, 48)
    # per image (theirs) against batched (ours), same kernel: equal to float rounding
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert adapter.layouts.cam_layer == cam == SEGMENTATION_CAM_LAYERS[type(original).__name__]


def test_segformer_declares_its_token_layers_and_a_classifier_folder_stays_a_classifier(tmp_path: Path) -> None:
    folder, _ = _segformer(tmp_path)
    adapter = load_model(_config("huggingface", (64, 48), path=folder))
    assert adapter.categories == ["sky", "road", "car"]
    x = _batch(1, 64, 48)
    captured = {}
    layer = dict(adapter.model.named_modules())["segformer.stages.1.layer_norm"]
    handle = layer.register_forward_hook(lambda m, i, o: captured.update(tokens=o))
    try:
        with torch.no_grad():
            stage = adapter.model.segformer(pixel_values=x, output_hidden_states=True).hidden_states[1]
    finally:
        handle.remove()
    view = adapter.layer_view("segformer.stages.1.layer_norm")  # tokens (1, 8·6, 16) folded to (1, 16, 8, 6)
    assert torch.equal(view(captured["tokens"]), stage)  # the stage's map is its norm's tokens, folded
    assert adapter.layer_view("segformer.stages.1") is None  # a stage outputs a map already

    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          num_attention_heads=[1, 2], num_labels=5)
    transformers.SegformerForImageClassification(config).save_pretrained(tmp_path / "classifier")
    classifier = load_model(_config("huggingface", (64, 48), path=tmp_path / "classifier"))
    assert classifier.task == "classification"
    assert classifier.forward(x).shape == (1, 5)


# ---------------------------------------------------------------------------- the user's factory


FACTORIES = '''
import torch
from torch import nn

class Seg(nn.Module):
    def __init__(self, as_dict, stride):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=stride)
        self.as_dict = as_dict

    def forward(self, x):
        out = self.conv(x)
        return {"out": out, "aux": out.mean()} if self.as_dict else out

def as_dict(stride=1):
    return Seg(True, stride)

def as_tensor(stride=1):
    return Seg(False, stride)
'''


def _factory(tmp_path: Path, name: str, task: str | None = None, **kwargs) -> ModelAdapter:
    (tmp_path / "segfactories.py").write_text(textwrap.dedent(FACTORIES))
    return load_model(_config("module", (32, 32), factory=f"segfactories:{name}", kwargs=kwargs), base_dir=tmp_path,
                      task=task)


def test_a_factory_returning_a_dict_with_out_is_a_segmenter(tmp_path: Path) -> None:
    adapter = _factory(tmp_path, "as_dict")
    assert adapter.task is None  # unknown until it runs
    x = _batch(2, 32, 32)
    with torch.no_grad():
        out = adapter.model(x)
        assert torch.equal(adapter.forward(x), out["out"])
    assert adapter.with_task(out).task == "segmentation"


def test_a_factory_returning_a_tensor_needs_the_task_and_is_upsampled(tmp_path: Path) -> None:
    adapter = _factory(tmp_path, "as_tensor", stride=2)
    x = _batch(2, 32, 32)
    with torch.no_grad():
        out = adapter.model(x)  # (2, 4, 16, 16)
        with pytest.raises(ReportgenError, match=r"output is \[2, 4, 16, 16\]; reportgen explains classifiers .*"
                                                 r"set `model.task: segmentation`"):
            adapter.forward(x)
        with pytest.raises(ReportgenError, match=r"set `model.task: segmentation`"):
            adapter.with_task(out)
        given = _factory(tmp_path, "as_tensor", task="segmentation", stride=2)
        assert given.task == "segmentation"
        expected = F.interpolate(out, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.equal(given.forward(x), expected)
        assert torch.equal(given.pick_logits(out), out)  # no size given: as the model returned them


def test_a_task_the_source_contradicts_is_an_error() -> None:
    with pytest.raises(ReportgenError, match=r"`model.task` is segmentation, but the model is a classification "
                                             r"model \(torchvision resnet18\(num_classes=3\).*Set `model.task: "
                                             r"classification` or leave it out"):
        load_model(_config("torchvision", (32, 32), name="resnet18", kwargs={"num_classes": 3}), task="segmentation")
    adapter = load_model(_config("torchvision", (32, 32), name="resnet18", kwargs={"num_classes": 3}),
                         task="classification")
    assert adapter.task == "classification" and adapter.forward(_batch(1, 32, 32)).shape == (1, 3)


# ---------------------------------------------------------------------------- infer_task and reading outputs


SegOut = transformers.modeling_outputs.SemanticSegmenterOutput
ClsOut = transformers.modeling_outputs.ImageClassifierOutput
MAPS, LOGITS = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3)


@pytest.mark.parametrize("out, output, task", [
    (LOGITS, None, "classification"),
    (MAPS, None, None),  # a segmenter's logits or a feature map: the config must say
    ({"out": MAPS, "aux": MAPS}, None, "segmentation"),
    ({"out": LOGITS}, None, None),
    (SegOut(logits=MAPS), None, "segmentation"),
    (ClsOut(logits=LOGITS), None, "classification"),
    ([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}], None, "detection"),
    ((LOGITS, MAPS), 0, "classification"),
    ((LOGITS, MAPS), 1, None),
    ((LOGITS, MAPS), 5, None),
    ((LOGITS, MAPS), None, None),
    ("text", None, None),
])
def test_infer_task(out, output, task) -> None:
    assert infer_task(out, output) == task


def test_segmentation_outputs_and_their_messages() -> None:
    assert torch.equal(pick_segmentation({"seg": MAPS, "edges": LOGITS}, "seg"), MAPS)
    assert pick_output(SegOut(logits=MAPS), task="segmentation", size=(16, 12)).shape == (2, 3, 16, 12)
    assert torch.equal(pick_output(LOGITS, task="classification"), LOGITS)
    with pytest.raises(ReportgenError, match=r"the model's output is \[2, 3\]; a segmentation model \(`model.task: "
                                             r"segmentation`\) returns logits of shape \(N, num_classes, H, W\)"):
        pick_segmentation(LOGITS)
    with pytest.raises(ReportgenError, match=r"the model returns a tuple of 2: \[0\] Tensor \(2, 3, 8, 8\), \[1\] "
                                             r"Tensor \(2, 3\), not segmentation logits .* Set `model.output: "
                                             r"<index or key>` to the one that holds the logits: `0` or `1`"):
        pick_segmentation((MAPS, LOGITS))
    with pytest.raises(ReportgenError, match=r"`model.output`: 'sge' is not in the model's output.*"
                                             r"Did you mean `seg`"):
        pick_segmentation({"seg": MAPS}, "sge")
    with pytest.raises(ReportgenError, match=r"`model.output`: 'aux' picks a list .* not segmentation logits"):
        pick_segmentation({"seg": MAPS, "aux": [MAPS]}, "aux")
    with pytest.raises(ReportgenError, match=r"the model returns None, not a logits tensor"):
        resolve_task(None)
    with pytest.raises(ReportgenError, match=r"`model.task` is keypoints; reportgen reads the outputs of "
                                             r"classification, segmentation and detection models"):
        pick_output(LOGITS, task="keypoints")
    assert resolve_task({"out": MAPS}) == "segmentation" and resolve_task(ClsOut(logits=LOGITS)) == "classification"
    with pytest.raises(ReportgenError, match=r"the model's output `logits` is \[2, 3\]; a segmentation model"):
        resolve_task(ClsOut(logits=LOGITS), task="segmentation")  # a given task is checked against the output

