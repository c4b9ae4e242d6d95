"""A segmenter end to end: the task from the model or the config, class masks from a VOC folder or a manifest,
maps equal to pytorch-grad-cam's SemanticSegmentationTarget and landing on the class, the data-set metrics equal
to torchmetrics, and the bad input a segmentation config can hold, refused with exit 2 and nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main
from tests.conftest import write_config
from reportgen.demo import segment

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "example_configs" / "segmentation"


def _config(tmp_path: Path, images, **over) -> Path:
    cfg = {
        "title": "segmenter",
        "model": {"source": "module", "factory": "reportgen.demo.segment:build_model", "kwargs": {"num_classes": 6},
                  "checkpoint": str(SHIPPED / "model.pt"), "input_size": [3, 64, 64],
                  "labels": str(SHIPPED / "labels.txt"), "task": "segmentation", "device": "cpu"},
        "inputs": {"images": [str(p) for p in images],
                   "preprocess": {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}, "batch_size": 8},
        "analyses": {"dataset": {}, "cam": {"methods": ["gradcam"], "target_layers": ["dec2"]}},
        "report": {"detail": {"budget": 3}},
        "output": {"dir": str(tmp_path / "out"), "save_arrays": True},
    }
    return write_config(tmp_path, cfg, over)


def _build(path: Path, *args: str):
    return CliRunner().invoke(main, ["build", str(path), "-q", *args])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """24 fresh scenes (seed 7, not the training seeds) in VOC layout, and a build over them."""
    root = tmp_path_factory.mktemp("scenes")
    data = segment.generate_scenes(24, seed=7)
    segment.write_samples(root / "voc", data)
    config = _config(root, [root / "voc"])
    result = _build(config)
    assert result.exit_code == 0, result.output
    return root, data


def test_the_maps_land_on_the_class(scenes):
    """Grad-CAM of each class inside its predicted region puts >= 0.6 of its energy inside the class's true
    region, averaged over every shape of 24 scenes (>= 50 instances), read from the report's own arrays."""
    root, data = scenes
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["model"]["task"] == "segmentation" and report["dataset"]["task"] == "segmentation"
    with np.load(root / "out" / "arrays.npz") as arrays:
        energy = []
        for i in range(len(data)):
            for c in range(1, segment.NUM_CLASSES):
                truth = data.masks[i] == c
                key = f"cam/gradcam/dec2/scene_{i:03d}/{c}"
                if truth.any() and key in arrays.files:
                    cam = arrays[key]
                    energy.append(cam[truth].sum() / max(cam.sum(), 1e-12))
    assert len(energy) >= 50
    assert np.mean(energy) >= 0.6, np.mean(energy)


def test_the_maps_equal_pytorch_grad_cam_semantic_segmentation_target(scenes):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    root, data = scenes
    model = segment.load_model(SHIPPED / "model.pt").eval()
    x = segment.to_input(data.images[:4])
    with torch.no_grad():
        pred = model(x).argmax(dim=1).numpy()
    pairs = [(i, c) for i in range(4) for c in np.unique(pred[i])]
    with GradCAM(model=model, target_layers=[model.get_submodule("dec2")]) as cam:
        expected = cam(input_tensor=x[[i for i, _ in pairs]],
                       targets=[SemanticSegmentationTarget(int(c), (pred[i] == c).astype(np.float32)) for i, c in pairs])
    with np.load(root / "out" / "arrays.npz") as arrays:
        for (i, c), want in zip(pairs, expected):
            np.testing.assert_allclose(arrays[f"cam/gradcam/dec2/scene_{i:03d}/{c}"], want, atol=1e-3,
                                       err_msg=f"scene {i}, class {c}")


def test_saliency_and_integrated_gradients_equal_captum_with_the_class_in_region_forward(tmp_path):
    """On the shipped segmenter: Captum's Saliency and IntegratedGradients (Gauss-Legendre, zero baseline) of
    forward x -> (model(x) * region).sum((2, 3)), the regions fixed from the unperturbed prediction and passed as
    additional_forward_args (expanded as Captum expands them), equal the report's: saliency to 1e-4 of the largest
    value, integrated gradients to 2e-3 (its steps run in other batches, and a background region sums the float32
    logits of thousands of pixels: the sum's rounding reaches the attributions)."""
    from captum.attr import IntegratedGradients, Saliency

    data = segment.generate_scenes(2, seed=21)
    segment.write_samples(tmp_path / "voc", data)
    analyses = {"gradients": {"methods": ["saliency", "integrated_gradients"], "steps": 8}}
    assert _build(_config(tmp_path, [tmp_path / "voc"], analyses=analyses)).exit_code == 0
    model = segment.load_model(SHIPPED / "model.pt").eval()
    x = segment.to_input(data.images)
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    regions = torch.nn.functional.one_hot(pred, segment.NUM_CLASSES).permute(0, 3, 1, 2).float()

    def forward(inputs, masks):
        return (model(inputs) * masks).sum(dim=(2, 3))

    with np.load(tmp_path / "out" / "arrays.npz") as arrays:
        for i in range(2):
            for c in pred[i].unique().tolist():
                ours = {m: arrays[f"gradients/{m}/scene_{i:03d}/{c}"] for m in ("saliency", "integrated_gradients")}
                xi, mi = x[i:i + 1], regions[i:i + 1]
                want = {"saliency": Saliency(forward).attribute(xi, target=c, abs=True, additional_forward_args=(mi,)),
                        "integrated_gradients": IntegratedGradients(forward).attribute(
                            xi, target=c, n_steps=8, method="gausslegendre", additional_forward_args=(mi,))}
                for method, value in want.items():
                    value = value[0].detach().numpy()
                    tolerance = 1e-4 if method == "saliency" else 2e-3
                    assert np.abs(ours[method] - value).max() <= tolerance * np.abs(value).max(), (i, c, method)


def test_the_data_set_metrics_equal_torchmetrics(scenes):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    root, data = scenes
    report = json.loads((root / "out" / "report.json").read_text())["dataset"]
    model = segment.load_model(SHIPPED / "model.pt").eval()
    with torch.no_grad():
        pred = model(segment.to_input(data.images)).argmax(dim=1)
    truth = torch.from_numpy(data.masks.astype(np.int64))
    k = segment.NUM_CLASSES
    miou = MulticlassJaccardIndex(k, average="macro", ignore_index=255)(pred, truth).item()
    per_class = MulticlassJaccardIndex(k, average=None, ignore_index=255)(pred, truth).numpy()
    accuracy = MulticlassAccuracy(k, average="micro", ignore_index=255)(pred, truth).item()
    assert report["miou"] == pytest.approx(miou, abs=1e-5)
    assert report["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-5)
    assert [c["iou"] for c in report["per_class"]] == pytest.approx(per_class.tolist(), abs=1e-5)
    # the detail images are those segmented worst
    records = [json.loads(line) for line in (root / "out" / "images.jsonl").read_text().splitlines()]
    scores = sorted(r["dataset"]["miou"] for r in records)
    assert sorted(r["dataset"]["miou"] for r in records if r["detail"]) == scores[:3]
    assert all(r["detail"] in (None, "lowest IoU") for r in records)


def test_a_manifest_segmentation_column_and_a_model_returning_a_dict(tmp_path):
    data = segment.generate_scenes(3, seed=11)
    segment.write_samples(tmp_path / "voc", data)
    (tmp_path / "set.csv").write_text("path,segmentation\n" + "".join(
        f"voc/JPEGImages/scene_{i:03d}.png,voc/SegmentationClass/scene_{i:03d}.png\n" for i in range(3)))
    (tmp_path / "wrapped.py").write_text(
        "from reportgen.demo import segment\nimport torch\n"
        "class Wrapped(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.net = segment.build_model()\n"
        "    def forward(self, x):\n        return {'out': self.net(x)}\n"
        "def build():\n    return Wrapped()\n")
    config = _config(tmp_path, [tmp_path / "set.csv"],
                     model__factory="wrapped:build", model__kwargs={}, model__checkpoint=None, model__task=None,
                     analyses={"dataset": {}, "gradients": {"methods": ["saliency"]}})
    result = _build(config)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["task"] == "segmentation" and report["dataset"]["labelled"] == 3


@pytest.mark.parametrize("change, said", [
    ({"analyses": {"cam": {"methods": ["gradcam"], "targets": "top3", "target_layers": ["dec2"]}}},
     ["`analyses.cam.targets`", "segmentation", "every class present"]),
    ({"analyses": {"dataset": {"top_confused": 5}}}, ["`analyses.dataset.top_confused`", "segmentation"]),
    ({"analyses": {"cam": {"methods": ["cam"]}}}, ["`cam`", "segmentation", "linear head"]),
    ({"analyses": {"attention": {}}}, ["`analyses.attention`", "segmentation"]),
    ("wrong size", ["class mask is 32x32", "64x64"]),
    ("bad value", ["value 9", "6 classes", "255"]),
    ("a tensor", ["model.task: segmentation"]),
])
def test_bad_segmentation_input_is_one_message_exit_2_and_nothing_written(tmp_path, change, said):
    data = segment.generate_scenes(2, seed=3)
    segment.write_samples(tmp_path / "voc", data)
    over = {}
    if change in ("wrong size", "bad value"):
        mask = np.zeros((32, 32), np.uint8) if change == "wrong size" else data.masks[1].copy()
        mask[0, 0] = 9
        indexed = Image.fromarray(mask, mode="P")
        indexed.putpalette(segment.voc_palette())  # with the whole palette the indices are kept as they are
        indexed.save(tmp_path / "voc/SegmentationClass/scene_001.png")
    elif change == "a tensor":
        (tmp_path / "plain.py").write_text("from reportgen.demo import segment\n"
                                           "def build():\n    return segment.build_model()\n")
        over = {"model__factory": "plain:build", "model__kwargs": {}, "model__checkpoint": None, "model__task": None}
    else:
        over = change
    result = _build(_config(tmp_path, [tmp_path / "voc"], **over))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in said:
        assert text in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_task_that_is_not_one_or_contradicts_the_source_is_refused(tmp_path):
    data = segment.generate_scenes(2, seed=5)
    segment.write_samples(tmp_path / "voc", data)
    refused = _build(_config(tmp_path, [tmp_path / "voc"], model__task="keypoints"))
    assert refused.exit_code == 2 and "`model.task`" in refused.stderr and "not a task" in refused.stderr
    refused = _build(_config(tmp_path, [tmp_path / "voc"], model__task="detection"))  # a segmenter's output
    assert refused.exit_code == 2 and "returns a tensor [1, 6, 64, 64], not detections" in refused.stderr
    classifier = {"source": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 6},
                  "input_size": [3, 64, 64], "labels": None, "task": "segmentation", "device": "cpu"}
    refused = _build(_config(tmp_path, [tmp_path / "voc"], model=classifier))
    assert refused.exit_code == 2 and "is segmentation, but the model is a classification" in refused.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["torchvision", "huggingface"])
def test_a_torchvision_or_hugging_face_segmenter_says_its_task_and_builds(tmp_path, source):
    """LRASPP-MobileNetV3 built with no weights (none downloaded), and a SegFormer folder whose logits are at a
    quarter of the input: each says it segments, and a report with its data-set metrics and maps is built."""
    import transformers

    data = segment.generate_scenes(3, seed=9)
    segment.write_samples(tmp_path / "voc", data)
    if source == "torchvision":
        model = {"source": "torchvision", "name": "lraspp_mobilenet_v3_large", "kwargs": {"num_classes": 6}}
        layer = "backbone.4"
    else:
        torch.manual_seed(0)
        config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                                              hidden_sizes=[8, 16], num_attention_heads=[1, 2], decoder_hidden_size=16,
                                              num_labels=6)
        transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "segformer")
        model = {"source": "huggingface", "path": str(tmp_path / "segformer")}
        layer = "decode_head.activation"
    model |= {"input_size": [3, 64, 64], "labels": str(SHIPPED / "labels.txt"), "device": "cpu"}
    analyses = {"dataset": {}, "cam": {"methods": ["gradcam"], "target_layers": [layer]},
                "gradients": {"methods": ["saliency"]}}
    result = _build(_config(tmp_path, [tmp_path / "voc"], model=model, analyses=analyses))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["task"] == "segmentation" and report["dataset"]["labelled"] == 3
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "ok"]
    assert 0.0 <= report["dataset"]["pixel_accuracy"] <= 1.0
    # each image's classes once, though images with fewer classes fill the batch's ranks by repeating one
    records = [json.loads(line) for line in (tmp_path / "out" / "images.jsonl").read_text().splitlines()]
    for record in records:
        classes = record["gradients"]["classes"]
        assert len(set(classes)) == len(classes) and {t["index"] for t in record["top_k"]} <= set(classes)


@pytest.mark.slow  # two processes start torch
def test_two_processes_under_torchrun_segment_what_one_segments(tmp_path):
    """Each rank counts its shard's pixels; the matrices are summed: the same report as one process."""
    from tests.test_scale import assert_same_build, torchrun_build

    segment.write_samples(tmp_path / "voc", segment.generate_scenes(7, seed=13))
    path = _config(tmp_path, [tmp_path / "voc"], inputs__batch_size=2)
    one = tmp_path / "one"
    assert _build(path, "-o", str(one)).exit_code == 0
    assert_same_build(one, torchrun_build(path, tmp_path / "two"))
