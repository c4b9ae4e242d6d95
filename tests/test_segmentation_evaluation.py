"""A segmenter's evaluation: deletion, insertion (and ROAD, the confidence change) of class c's mean softmax
probability over its predicted region, the region fixed from the unperturbed image; the sanity cascade recomputing
the maps in the SAME regions on each randomised copy; the metrics that do not apply refused with exit 2."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from torch import nn

from reportgen.cli import main
from reportgen.demo import segment
from reportgen.methods.gradients import image_generator
from reportgen.methods.regions import predicted_regions
from reportgen.metrics import perturbation, sanity, scoring
from reportgen.metrics.regions import RegionProbabilities

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "example_configs" / "segmentation"


def _config(tmp_path: Path, evaluation: dict, **analyses) -> Path:
    """The shipped segmenter on the first 3 images of its VOC folder, Grad-CAM and saliency, and `evaluation`."""
    cfg = {
        "title": "segmenter", "seed": 0,
        "model": {"source": "module", "factory": "reportgen.demo.segment:build_model", "kwargs": {"num_classes": 6},
                  "checkpoint": str(SHIPPED / "model.pt"), "input_size": [3, 64, 64],
                  "labels": str(SHIPPED / "labels.txt"), "task": "segmentation", "device": "cpu"},
        "inputs": {"images": [str(SHIPPED)], "limit": 3,
                   "preprocess": {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}},
        "analyses": {"cam": {"methods": ["gradcam"], "target_layers": ["dec2"]},
                     "gradients": {"methods": ["saliency"]}, "evaluation": evaluation, **analyses},
        "report": {"detail": {"budget": 2}},
        "output": {"dir": str(tmp_path / "out"), "save_arrays": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _build(path: Path):
    return CliRunner().invoke(main, ["build", str(path), "-q"])


def _input(name: str) -> torch.Tensor:
    """The shipped image `name` as the build feeds it: pixels / 255, normalised by mean 0.5 and sd 0.25."""
    pixels = np.asarray(Image.open(SHIPPED / "JPEGImages" / f"{name}.png").convert("RGB"), dtype=np.float32) / 255
    return ((torch.from_numpy(pixels).permute(2, 0, 1) - 0.5) / 0.25)[None]


def _saliency_in(model: nn.Module, x: torch.Tensor, region: torch.Tensor, c: int) -> np.ndarray:
    """|∂ Σ_{p in region} out[c, p] / ∂x| summed over channels, divided by its maximum (the report's map)."""
    x = x.clone().requires_grad_(True)
    (model(x)[0, c] * region).sum().backward()
    return scoring.gradient_map(x.grad[0].numpy())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_eval")
    done = _build(_config(root, {"images": 3, "step": 512, "sanity": {"images": 1}}))
    assert done.exit_code == 0, done.output
    report = json.loads((root / "out" / "report.json").read_text())
    with np.load(root / "out" / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k.startswith("evaluation/")}
    return report, arrays


def test_a_segmenter_build_scores_deletion_insertion_and_sanity(built):
    """Every metric that applies is scored; deletion and insertion are in [0, 1]; both curves start (deletion) and
    end (insertion) at each image's class-in-region probability, computed here directly from the model."""
    report, arrays = built
    evaluation = report["evaluation"]
    assert evaluation["metrics"] == ["deletion", "insertion", "road", "confidence_change", "sanity"]
    assert evaluation["images"] == 3
    for row in ("gradcam/dec2", "saliency"):
        for column in ("deletion_auc", "insertion_auc"):
            values = arrays[f"evaluation/{column}/{row}"]
            assert values.shape == (3,) and np.all((values >= 0) & (values <= 1)), (column, row, values)
    curves = {c["row"]: c for c in evaluation["curves"]["rows"]}
    assert set(curves) == {"gradcam/dec2", "saliency", "baseline_centre"}
    model = segment.load_model(SHIPPED / "model.pt")
    explained = {entry["image"]: entry["classes"][0] for entry in report["gradients"]["targets"]}  # detail images
    direct = []
    for name in ("scene_000", "scene_001", "scene_002"):  # the 3 scored: the folder's first, in name order
        x = _input(name)
        with torch.no_grad():
            out = model(x)
        regions = predicted_regions(out)[0]
        c = int(regions.flatten(1).sum(1).argmax())  # the class explained: the largest predicted region
        assert explained.get(name, c) == c
        direct.append(float(torch.softmax(out, dim=1)[0, c][regions[c]].mean()))
    for c in curves.values():
        values = np.array(c["deletion"] + c["insertion"])
        assert np.all((values >= 0) & (values <= 1))
        # rounded to 4 digits in report.json; the fast forward's logits are within 2e-5 of the model's
        assert c["deletion"][0] == pytest.approx(np.mean(direct), abs=2e-4)
        assert c["insertion"][-1] == pytest.approx(np.mean(direct), abs=2e-4)
    # the Grad-CAM of a trained segmenter deletes its class faster than the maps' average: a map worth scoring
    assert arrays["evaluation/deletion_auc/gradcam/dec2"].mean() < c["deletion"][0]
    assert evaluation["sanity"]["images"] and len(evaluation["sanity"]["blocks"]) >= 2
    assert {r["row"] for r in evaluation["sanity"]["rows"]} == {"gradcam/dec2", "saliency"}


def test_the_sanity_cascade_keeps_the_trained_models_regions(built):
    """The saliency kept after the last block equals the gradient of the randomised copy's logits summed over the
    TRAINED model's region, and not over the region the randomised copy predicts."""
    report, arrays = built
    s = report["evaluation"]["sanity"]
    name = s["image"] if "image" in s else s["images"][0]
    c = next(t["classes"][0] for t in report["gradients"]["targets"] if t["image"] == name)
    x = _input(name)
    trained = segment.load_model(SHIPPED / "model.pt")
    with torch.no_grad():
        region = predicted_regions(trained(x))[0, c]
    kept = arrays["evaluation/sanity/saliency"]  # (blocks + 1, H, W): trained, then after each block
    assert np.abs(kept[0] - _saliency_in(trained, x, region, c)).max() < 2e-3  # float16 kept
    randomised = copy.deepcopy(trained)
    for _, names in sanity.blocks(trained, s["mode"]):  # the cascade's order and seeding
        torch.manual_seed(s["seed"])
        for module in names:
            randomised.get_submodule(module).reset_parameters()
    assert np.abs(kept[-1] - _saliency_in(randomised, x, region, c)).max() < 2e-3
    with torch.no_grad():
        own = predicted_regions(randomised(x))[0, c]
    assert not torch.equal(own, region)
    assert np.abs(kept[-1] - _saliency_in(randomised, x, own, c)).max() > 0.05


class TinySegmenter(nn.Module):
    """4 classes per pixel from a 3x3 convolution and a 1x1 one: (N, 3, H, W) -> (N, 4, H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def two_images():
    """A tiny segmenter, two 16² images whose predicted regions differ, their regions and a target each."""
    model = TinySegmenter().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        regions = predicted_regions(model(x))
    targets = regions.flatten(2).sum(2).argmax(1).numpy()  # each image's largest region
    assert not torch.equal(regions[0], regions[1])
    return model, x, regions, targets


def test_the_class_in_region_score_equals_a_direct_computation(two_images):
    """On a hand-made perturbation (a square of image 1 set to zero), class c's score is the mean over c's region
    of the UNPERTURBED image of softmax(model(perturbed))[c]; and the same through `target_probabilities`."""
    model, x, regions, targets = two_images
    perturbed = x.clone()
    perturbed[1, :, 4:12, 2:10] = 0
    with torch.no_grad():
        probs = torch.softmax(model(perturbed), dim=1)
    score = RegionProbabilities(model, regions)(perturbed)  # (2, 4)
    for i in range(2):
        for c in range(4):
            region = regions[i, c]
            expected = probs[i, c][region].mean() if region.any() else torch.tensor(float("nan"))
            torch.testing.assert_close(score[i, c], expected, rtol=1e-6, atol=1e-7, equal_nan=True)
    got = perturbation.target_probabilities(RegionProbabilities(model, regions),
                                            [(int(targets[1]), perturbed[1], 1)], batch_size=4)
    assert got[0] == pytest.approx(float(probs[1, targets[1]][regions[1, targets[1]]].mean()), rel=1e-6)


def test_rows_of_two_images_in_one_forward_get_their_own_regions(two_images):
    """Deletion, insertion, the confidence change and ROAD of two images, their perturbed rows mixed in forwards of
    2 (image 0's steps scored as rows 0 and 1 if owners were ignored), equal each image scored alone."""
    model, x, regions, targets = two_images
    maps = {"m": np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)}
    both = RegionProbabilities(model, regions)
    together = perturbation.deletion_insertion(both, x, maps, targets, step=32, batch_size=2)["m"]
    changes = perturbation.confidence_change(both, x, maps, targets, batch_size=2)["m"]
    job = scoring.MapBatch(forward=both, x=x, indices=[0, 1], maps={("m", ""): maps["m"]},
                           targets={("m", ""): targets}, attributions={}, masks=[None, None], explain=None,
                           options=scoring.Options(batch_size=2), seed=0)
    road = scoring.SCORERS["road"](job)[("m", "")]["road"]
    for i in range(2):
        alone = RegionProbabilities(model, regions[i:i + 1])
        one = {"m": maps["m"][i:i + 1]}
        expected = perturbation.deletion_insertion(alone, x[i:i + 1], one, targets[i:i + 1], step=32)["m"]
        np.testing.assert_allclose(together.deletion[i], expected.deletion[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.insertion[i], expected.insertion[0], rtol=1e-5, atol=1e-6)
        change = perturbation.confidence_change(alone, x[i:i + 1], one, targets[i:i + 1])["m"]
        assert changes.p_masked[i] == pytest.approx(change.p_masked[0], rel=1e-5)
        road_alone = perturbation.road(alone, x[i:i + 1], one, targets[i:i + 1],
                                       generator=image_generator(0, i))["m"].combined[0]
        assert road[i] == pytest.approx(road_alone, rel=1e-5, abs=1e-6)
    assert together.deletion.min() >= 0 and together.deletion.max() <= 1
    # the two images' curves differ: each row was scored on its own image's region
    assert not np.allclose(together.deletion[0], together.deletion[1])


def test_rows_without_owners_are_refused(two_images):
    """A forward of 3 rows of two images with no owner is an error, not a score against the wrong region."""
    model, x, regions, _ = two_images
    with pytest.raises(ValueError, match="no owner"):
        RegionProbabilities(model, regions)(torch.cat([x, x[:1]]))


@pytest.mark.parametrize("setting, named", [
    ({"metrics": ["deletion", "localisation"]}, "`localisation`"),
    ({"metrics": ["infidelity", "sensitivity", "sanity"]}, "`infidelity`, `sensitivity`"),
    ({"tolerance": 15}, "`analyses.evaluation.tolerance`"),
])
def test_a_metric_that_does_not_apply_is_refused(tmp_path, setting, named):
    done = _build(_config(tmp_path, setting))
    assert done.exit_code == 2, done.output
    assert named in done.output and "segmentation" in done.output, done.output
    assert not (tmp_path / "out").exists()


def test_an_image_whose_explained_class_is_predicted_nowhere_is_left_out(tmp_path):
    """`targets: [star, circle]`: the images whose prediction holds no star have no star region to score; the
    others are scored, and a note says why some are left out."""
    path = _config(tmp_path, {"metrics": ["deletion"], "step": 512},
                   cam={"methods": ["gradcam"], "target_layers": ["dec2"], "targets": ["star", "circle"]},
                   gradients={"methods": ["saliency"], "targets": ["star", "circle"]})
    done = _build(path)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    model = segment.load_model(SHIPPED / "model.pt")
    with torch.no_grad():
        stars = [bool(predicted_regions(model(_input(f"scene_00{i}")))[0, 5].any()) for i in range(3)]
    assert 0 < sum(stars) < 3  # the test needs both kinds
    assert report["evaluation"]["images"] == sum(stars)
    assert any("left out" in note for note in report["evaluation"]["notes"])
    values = np.concatenate([np.load(tmp_path / "out" / "arrays.npz")[f"evaluation/deletion_auc/{row}"]
                             for row in ("gradcam/dec2", "saliency")])
    assert np.all(np.isfinite(values))


@pytest.mark.filterwarnings("ignore:inference_forward")  # fx cannot copy it: the eager model scores, as intended
def test_a_segformer_whose_logits_are_at_a_quarter_is_evaluated_at_the_input_size(tmp_path):
    """SegFormer's logits (16² for a 64² input) are upsampled to the input's size in the perturbation forward and
    in the sanity cascade's copies, as in its maps: every section is built and the curves are in [0, 1]."""
    import transformers

    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=6)
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "segformer")
    path = _config(tmp_path, {"metrics": ["deletion", "insertion", "sanity"], "step": 1024, "sanity": {"images": 1}},
                   cam={"methods": ["gradcam"], "target_layers": ["decode_head.activation"]})
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = {"source": "huggingface", "path": str(tmp_path / "segformer"), "input_size": [3, 64, 64],
                    "labels": str(SHIPPED / "labels.txt"), "device": "cpu"}
    cfg["inputs"]["limit"] = 2
    path.write_text(yaml.safe_dump(cfg))
    done = _build(path)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["task"] == "segmentation"
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "ok"], report["stages"]
    curves = report["evaluation"]["curves"]["rows"]
    assert curves and all(0 <= v <= 1 for c in curves for v in c["deletion"] + c["insertion"])
    assert report["evaluation"]["sanity"]["rows"]
