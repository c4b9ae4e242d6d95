"""User feature masks (`reportgen.segments`, `methods.ablation.feature_mask`): a .npy label map of
`analyses.gradients.feature_mask` (the model's input pixels, every image) or a manifest's `segments` column (per
image, original pixels, moved with the image) replaces SLIC's superpixels, relabelled so gaps cost nothing; the maps
equal Captum's with that mask; the evaluation recomputes with the same segments; every bad file is one message
naming it and the expected shape, exit 2, nothing written."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, ShapleyValueSampling
from click.testing import CliRunner
from PIL import Image
from torch import nn

from reportgen.cli import main
from reportgen.config import GradientsConfig, TargetSpec
from reportgen.segments import MAX_FEATURES, load_feature_mask
from reportgen.stages import gradients as G
from tests.helpers import make_context

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-4  # max |ours − Captum| relative to max |Captum| (float32 forwards of other batch compositions)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)).eval()


def halves(h: int, w: int, left: int = 3, right: int = 7) -> np.ndarray:
    """Two labels with a gap (3, 7): the left and the right half."""
    labels = np.full((h, w), right, dtype=np.int64)
    labels[:, : w // 2] = left
    return labels


def test_a_two_label_mask_file_gives_feature_ablation_two_values_equal_to_captums(tmp_path):
    """With a 2-label .npy (labels 3 and 7), each image's map takes exactly 2 values, equal to Captum's
    FeatureAblation given that very mask (Captum skips the labels no pixel has); shapley_value_sampling equals Captum's
    over the relabelled mask (0, 1) under the same per-image seed."""
    model = tiny()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "halves.npy"
    np.save(path, halves(24, 24))
    ctx = make_context(model, x)
    cfg = GradientsConfig(methods=("feature_ablation", "shapley_value_sampling"), targets=TargetSpec(k=2),
                          feature_mask=path, shapley_samples=3, internal_batch_size=4)
    result = G.run(ctx, cfg)
    fast = G.fast_forward(ctx.info, model, x)
    mask = torch.as_tensor(halves(24, 24)).expand(2, 24, 24)
    for r in range(2):
        targets = result.classes[:, r].tolist()
        ours = torch.from_numpy(result.maps["feature_ablation"][:, r])
        for i in range(2):
            assert len(torch.unique(ours[i])) == 2  # one value per segment
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = FeatureAblation(fast).attribute(x, baselines=0, target=targets, feature_mask=mask[:, None],
                                                  perturbations_per_eval=4)
        assert (ours - ref).abs().max() <= TOL * ref.abs().max()
        shapley = torch.from_numpy(result.maps["shapley_value_sampling"][:, r])
        for i in range(2):
            torch.manual_seed(0 + i)  # the config's seed 0, image i's own draws
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = ShapleyValueSampling(fast).attribute(x[i:i + 1], baselines=0, target=targets[i],
                                                           feature_mask=(mask[i:i + 1] == 7).long()[:, None],
                                                           n_samples=3, perturbations_per_eval=4)
            assert (shapley[i] - ref[0]).abs().max() <= TOL * ref.abs().max()


def test_each_images_own_segments_come_first_then_the_file(tmp_path):
    """`ImageInput.segments` (the manifest's column) for image 0 only: image 0's map follows its 4 quadrants, image 1
    (without) the file's halves."""
    model = tiny()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ctx = make_context(model, x)
    quadrants = np.zeros((16, 16), dtype=np.int32)
    quadrants[8:, :8], quadrants[:8, 8:], quadrants[8:, 8:] = 1, 2, 3
    ctx.images[0] = dataclasses.replace(ctx.images[0], segments=quadrants)
    segments = G.image_segments(ctx.images, x)
    assert segments.shape == (2, 16, 16) and (segments[1] == -1).all()
    path = tmp_path / "halves.npy"
    np.save(path, halves(16, 16))
    cfg = GradientsConfig(methods=("feature_ablation",), targets=TargetSpec(k=1), feature_mask=path)
    maps = G.run(ctx, cfg).maps["feature_ablation"][:, 0, 0]  # (N, H, W)
    for r in (0, 8):  # each quadrant of image 0: one value
        for c in (0, 8):
            assert (maps[0, r:r + 8, c:c + 8] == maps[0, r, c]).all()
    assert len(np.unique(maps[0])) == 4 and len(np.unique(maps[1])) == 2
    assert (maps[1][:, :8] == maps[1][0, 0]).all() and (maps[1][:, 8:] == maps[1][0, 15]).all()


def test_a_file_of_labels_is_relabelled_in_order(tmp_path):
    path = tmp_path / "gaps.npy"
    np.save(path, np.array([[5, 5, 900, 900]] * 4, dtype=np.uint16))
    labels = load_feature_mask(path, (4, 4))
    assert labels.dtype == np.int32 and labels.tolist() == [[0, 0, 1, 1]] * 4


def test_segments_move_with_the_image_and_a_crops_padding_is_a_segment_of_its_own(tmp_path):
    """An 8 × 8 image centre-cropped to 12 × 12 (padded by 2 px): its halves (labels 4, 9) land in the middle,
    relabelled 0 and 1; the padding is segment 2."""
    from reportgen.config import Preprocess
    from reportgen.datasets import moved_segments
    from reportgen.entries import Entry
    from reportgen.inputs import geometry

    np.save(tmp_path / "s.npy", halves(8, 8, 4, 9))
    geo = geometry(8, 8, Preprocess(center_crop=(12, 12)), (3, 12, 12))
    moved = moved_segments(Entry(str(tmp_path / "a.png"), segments=tmp_path / "s.npy"), (8, 8), geo, "a.png")
    expected = np.full((12, 12), 2)
    expected[2:10, 2:6], expected[2:10, 6:10] = 0, 1
    assert moved.dtype == np.int32 and (moved == expected).all()


# ---------------------------------------------------------------------------- a build, from a manifest


def manifest_project(project, segments: dict[str, str]) -> dict:
    """`project`'s two images (a.png 40 × 32, b.jpg) through a manifest with a `segments` column."""
    rows = "".join(f"images/{name},{'images/' + segments[name] if name in segments else ''}\n"
                   for name in ("a.png", "b.jpg"))
    (project.root / "set.csv").write_text("path,segments\n" + rows)
    config = project.base()
    config["inputs"]["images"] = ["set.csv"]
    return config


def test_a_build_takes_each_images_segments_from_the_manifest_and_the_evaluation_reuses_them(project):
    """a.png's segments: a label PNG of its left and right halves (values 10 and 200) in its 40 × 32 pixels, moved to
    the 16 × 16 input; b.jpg's: a .npy of 4 quadrants. Each map follows its image's segments, and the sanity
    cascade's first map (the trained model's, recomputed by the evaluation) is the stage's."""
    labels = halves(32, 40, 10, 200).astype(np.uint8)
    Image.fromarray(labels, mode="L").save(project.root / "images" / "a_segments.png")
    quadrants = np.zeros((32, 40), dtype=np.int64)
    quadrants[16:, :20], quadrants[:16, 20:], quadrants[16:, 20:] = 1, 2, 3
    np.save(project.root / "images" / "b_segments.npy", quadrants)
    config = manifest_project(project, {"a.png": "a_segments.png", "b.jpg": "b_segments.npy"})
    config["analyses"] = {"gradients": {"methods": ["feature_ablation"], "targets": "top1"},
                          "evaluation": {"metrics": ["deletion", "sensitivity", "sanity"], "images": 2,
                                         "recompute": "always"}}  # bounded: too costly for the default 50 segments
    config["output"]["save_arrays"] = True
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    arrays = np.load(project.root / "out" / "arrays.npz")
    (a,) = [arrays[k][0] for k in arrays.files if k.startswith("gradients/feature_ablation/a/")]
    (b,) = [arrays[k][0] for k in arrays.files if k.startswith("gradients/feature_ablation/b/")]
    assert len(np.unique(a)) == 2 and (a[:, :8] == a[0, 0]).all() and (a[:, 8:] == a[0, 15]).all()
    assert len(np.unique(b)) == 4 and all((b[r:r + 8, c:c + 8] == b[r, c]).all() for r in (0, 8) for c in (0, 8))
    sanity = [k for k in arrays.files if k.startswith("evaluation/sanity/") and "feature_ablation" in k]
    assert sanity, arrays.files
    first = arrays[sanity[0]][0].astype(np.float32)  # the trained model's map of the first image (a), recomputed
    assert len(np.unique(first)) <= 2 and (first[:, :8] == first[0, 0]).all()
    # max-sensitivity recomputes on noisy copies with the image's own segments: the map moves by the noise only
    # (0.03 here; SLIC's superpixels of the noisy copies would move it by 0.43)
    rows = {r["method"]: r for r in json.loads((project.root / "out" / "report.json").read_text())["evaluation"]["rows"]}
    assert rows["feature_ablation"]["scores"]["sensitivity"]["mean"] < 0.1


# ---------------------------------------------------------------------------- bad input


def _refused(project, config, *said: str) -> None:
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.output, done.output
    for text in said:
        assert re.search(text, lines[0]), lines[0]
    assert not (project.root / "out").exists()


def _file_config(project, array: np.ndarray | bytes, size: int = 16) -> dict:
    path = project.root / "mask.npy"
    if isinstance(array, bytes):
        path.write_bytes(array)
    else:
        np.save(path, array)
    config = project.base()
    config["model"]["input_size"] = [3, size, size]
    config["analyses"]["gradients"] = {"methods": ["feature_ablation"], "feature_mask": "mask.npy"}
    return config


@pytest.mark.parametrize("array, said", [
    (np.zeros((16, 15), dtype=np.int64), r"has shape \(16, 15\)"),
    (np.zeros((16, 16), dtype=np.float32), "float32 values"),
    (b"not a numpy file at all", "cannot read it as a .npy"),
    (np.full((16, 16), -1, dtype=np.int64), "negative label -1"),
    (np.zeros((3, 16, 16), dtype=np.int8), r"has shape \(3, 16, 16\)"),
    (np.zeros((64, 64), dtype=np.int64), "larger than"),
    (np.array([{"a": 1}], dtype=object), "cannot read it as a .npy"),  # a pickle is never loaded
])
def test_a_bad_feature_mask_file_is_one_message_at_validation(project, array, said):
    _refused(project, _file_config(project, array), "analyses.gradients.feature_mask", "mask.npy", said,
             r"\(H, W\) = \(16, 16\)" if said != "larger than" else "")


def test_a_feature_mask_file_with_too_many_labels_is_refused(project):
    labels = np.arange(48 * 48).reshape(48, 48)  # every pixel its own label: 2304 > MAX_FEATURES
    _refused(project, _file_config(project, labels, size=48), "mask.npy", "2304 distinct labels", str(MAX_FEATURES))


def test_a_missing_feature_mask_file_is_one_message(project):
    config = project.base()
    config["analyses"]["gradients"] = {"methods": ["shapley_value_sampling"], "feature_mask": "nowhere.npy"}
    _refused(project, config, "nowhere.npy", "not an existing .npy file")


def _bad_segments(project, name: str, write) -> dict:
    write(project.root / "images" / name)
    config = manifest_project(project, {"b.jpg": name})  # a.png reads fine first
    config["analyses"]["gradients"] = {"methods": ["feature_ablation"]}
    return config


@pytest.mark.parametrize("name, write, said", [
    ("s.npy", lambda p: np.save(p, np.zeros((32, 39), dtype=np.int64)), r"has shape \(32, 39\)"),
    ("s.png", lambda p: Image.new("RGB", (40, 32)).save(p), "is a RGB image"),
    ("s.png", lambda p: p.write_bytes(b"\x89PNG broken"), "cannot be read"),
    ("s.npy", lambda p: np.save(p, np.full((32, 40), -3, dtype=np.int32)), "negative label -3"),
    ("s.npy", lambda p: np.save(p, np.full((32, 40), 0.5)), "float64 values"),
    ("s.npy", lambda p: np.save(p, np.arange(32 * 40).reshape(32, 40)), "1280 distinct labels"),
    ("s.png", lambda p: Image.new("L", (20, 16)).save(p), r"has shape \(16, 20\)"),
])
def test_bad_manifest_segments_are_one_message_naming_the_file(project, name, write, said):
    _refused(project, _bad_segments(project, name, write), "set.csv, line 3", name, said,
             r"\(H, W\) = \(32, 40\)" if "RGB" not in said else r"\(32, 40\)")


@pytest.mark.parametrize("over, said", [({"occlusion_window": 17}, "occlusion_window.*larger than the input"),
                                        ({"occlusion_stride": 0}, "occlusion_stride")])
def test_a_build_with_an_occlusion_window_larger_than_the_image_or_stride_0_writes_nothing(project, over, said):
    config = project.base()  # 16 × 16 inputs
    config["analyses"]["gradients"] = {"methods": ["occlusion"], **over}
    _refused(project, config, said)


def test_lime_and_kernel_shap_take_the_mask_file_and_count_its_labels_at_validation(project):
    """The surrogate methods read the same mask: with a 2-label file KernelShap needs 3 samples (a value per label and
    an intercept), counted from the file at validation; without it, `slic_segments` + 1."""
    np.save(project.root / "halves.npy", halves(16, 16))
    config = project.base()
    config["analyses"] = {"gradients": {"methods": ["lime", "kernel_shap"], "feature_mask": "halves.npy",
                                        "kernel_shap_samples": 3, "lime_samples": 8, "lime_alpha": 0.0}}
    config["output"]["save_arrays"] = True
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    arrays = np.load(project.root / "out" / "arrays.npz")
    for method in ("lime", "kernel_shap"):
        maps = [arrays[k][0] for k in arrays.files if k.startswith(f"gradients/{method}/")]
        assert maps and all(len(np.unique(m)) <= 2 and (m[:, :8] == m[0, 0]).all() for m in maps)
    del config["analyses"]["gradients"]["feature_mask"]
    shutil.rmtree(project.root / "out")
    _refused(project, config, "kernel_shap_samples", "3 is too few for 50 superpixels", "at least 51")
