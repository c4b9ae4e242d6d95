"""Image reading and preprocessing, model loading and checkpoints."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from reportgen.config import ModelConfig, Normalize, Preprocess
from reportgen.errors import ReportgenError
from reportgen.datasets import find_entries
from reportgen.inputs import prepare_image, read_image, unique_names
from reportgen.models import load_checkpoint, load_labels, load_model, weights_cache_path

RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)  # 2x2


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    img = Image.fromarray(RGB).convert(mode)
    if mode == "I;16":
        img = Image.fromarray((np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)))
    suffix = ".tiff" if mode in ("CMYK", "I;16") else ".png"
    path = tmp_path / f"x{suffix}"
    img.save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 2, 3)
    if mode == "RGB":
        np.testing.assert_array_equal(pixels, RGB)
    if mode == "I;16":
        np.testing.assert_array_equal(pixels[..., 0], [[0, 255], [128, 4]])  # 16 bits scaled to 8


def _transparent_images(tmp_path):
    """The same two pixels, opaque red and fully transparent red, as RGBA, LA-like grey and palette images."""
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [255, 0, 0, 0]  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=1)  # colour 1 (red, at x=1) transparent
    Image.fromarray(np.array([[[200, 255], [200, 0]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    return tmp_path / "a.png", tmp_path / "p.png", tmp_path / "la.png"


def test_alpha_is_dropped_by_default_like_torchvisions_loader(tmp_path):
    from torchvision.datasets.folder import pil_loader

    for path in _transparent_images(tmp_path):
        ours = read_image(path)
        np.testing.assert_array_equal(ours, np.asarray(pil_loader(str(path))), err_msg=path.name)
    a, p, la = _transparent_images(tmp_path)
    np.testing.assert_array_equal(read_image(a)[0], [[255, 0, 0], [255, 0, 0]])
    np.testing.assert_array_equal(read_image(la)[0], [[200, 200, 200], [200, 200, 200]])


@pytest.mark.parametrize("alpha, colour", [("white", 255), ("black", 0)])
def test_alpha_white_or_black_composites_on_that_colour_palette_transparency_honoured(tmp_path, alpha, colour):
    a, p, la = _transparent_images(tmp_path)
    np.testing.assert_array_equal(read_image(a, alpha=alpha)[0], [[255, 0, 0], [colour] * 3])
    np.testing.assert_array_equal(read_image(p, alpha=alpha)[0], [[255, 0, 0], [colour] * 3])
    np.testing.assert_array_equal(read_image(la, alpha=alpha)[0], [[200] * 3, [colour] * 3])
    rgb = tmp_path / "rgb.png"
    Image.fromarray(RGB).save(rgb)
    np.testing.assert_array_equal(read_image(rgb, alpha=alpha), RGB)  # no alpha: nothing composited


def test_16_bit_images_scale_by_their_full_range_or_max_value(tmp_path):
    """torchvision's to_dtype(scale=True): 16-bit data over 65535, whatever the content; `max_value` (12-bit
    data: 4095) overrides the full scale. Dark 16-bit images stay dark (no stretching to their own max)."""
    from torchvision.transforms.v2 import functional as F

    data = np.array([[0, 1000], [2048, 4095]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    ours = read_image(tmp_path / "d.png")
    ref = F.to_dtype(torch.from_numpy(data), torch.float32, scale=True)
    np.testing.assert_array_equal(ours[..., 0], (ref * 255).round().numpy().astype(np.uint8))
    np.testing.assert_array_equal(ours[..., 0], [[0, 4], [8, 16]])
    np.testing.assert_array_equal(read_image(tmp_path / "d.png", max_value=4095)[..., 0], [[0, 62], [128, 255]])
    Image.fromarray(data.astype(np.int32)).save(tmp_path / "i.tiff")  # mode "I"
    assert Image.open(tmp_path / "i.tiff").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "i.tiff")[..., 0], [[0, 4], [8, 16]])
    np.testing.assert_array_equal(read_image(tmp_path / "i.tiff", max_value=4095)[..., 0], [[0, 62], [128, 255]])
    over = np.array([[5000, 0]], dtype=np.uint16)  # above max_value: clipped to full white
    Image.fromarray(over).save(tmp_path / "o.png")
    np.testing.assert_array_equal(read_image(tmp_path / "o.png", max_value=4095)[..., 0], [[255, 0]])


def test_float_images_keep_their_scaling(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)).save(tmp_path / "f.tiff")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff", max_value=4095)[..., 0], [[0, 128], [255, 64]])


def test_exif_orientation_is_honoured(tmp_path):
    wide = np.zeros((10, 20, 3), dtype=np.uint8)
    wide[:, :10] = 255  # left half white
    img = Image.fromarray(wide)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    pixels = read_image(tmp_path / "r.jpg")
    assert pixels.shape == (20, 10, 3)
    assert pixels[:8].mean() > 200 and pixels[12:].mean() < 50  # white on top after rotation


def test_preprocess_matches_torchvision_transforms():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    pre = Preprocess(resize=(256,), center_crop=(224,), normalize=Normalize())
    ours = prepare_image(pixels, pre, (3, 224, 224))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(Image.fromarray(pixels))
    assert ours.tensor.shape == (3, 224, 224) and ours.display.shape == (224, 224, 3)
    torch.testing.assert_close(ours.tensor, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["EfficientNet_B0_Weights", "ResNet50_Weights"])
def test_preprocess_from_weights_is_the_weights_own_transform(name):
    """EfficientNet-B0 resizes bicubic to 256 and crops 224; ResNet-50 V2 bilinear 232 -> 224."""
    from reportgen.models import ModelAdapter, preprocess_from_weights

    weights = getattr(torchvision.models, name).DEFAULT
    pixels = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    adapter = ModelAdapter(model=torch.nn.Identity(), source="torchvision", prescribed=preprocess_from_weights(weights))
    pre = adapter.preprocess(Preprocess(from_weights=True))
    assert pre.interpolation == weights.transforms().interpolation.value
    ours = prepare_image(pixels, pre, (3, 224, 224)).tensor
    torch.testing.assert_close(ours, weights.transforms()(Image.fromarray(pixels)), atol=1e-5, rtol=0)


def test_default_preprocess_fits_the_input_size_and_grayscale_models_get_one_channel():
    pixels = np.zeros((50, 80, 3), dtype=np.uint8)
    out = prepare_image(pixels, Preprocess(normalize=None), (1, 32, 24))
    assert out.tensor.shape == (1, 32, 24) and out.display.shape == (32, 24, 3)


def test_find_images_folders_globs_and_unique_names(tmp_path):
    for sub, name in [("a", "x.png"), ("b", "x.png"), ("a", "y.jpg")]:
        (tmp_path / sub).mkdir(exist_ok=True)
        Image.fromarray(RGB).save(tmp_path / sub / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = [entry.path for entry in find_entries((str(tmp_path / "a"), str(tmp_path / "*" / "x.png")))]
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.png", "a/y.jpg", "b/x.png"]
    assert unique_names(found) == ["a/x", "y", "b/x"]  # a stem in two folders: each says its folder
    assert unique_names([tmp_path / "x.png", tmp_path / "x.jpg", tmp_path / "x_2.png"]) == ["x", "x_2", "x_2_2"]


def test_checkpoint_wrappers_and_dataparallel_prefix(tmp_path):
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    source(torch.zeros(1, 3, 5, 5))
    state = source.state_dict()
    for i, wrapped in enumerate([state, {"state_dict": state, "epoch": 1}, {"model": state},
                                 {f"module.{k}": v for k, v in state.items()}]):
        torch.save(wrapped, tmp_path / f"c{i}.pt")
        target = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(18, 2))
        load_checkpoint(target, tmp_path / f"c{i}.pt")
        for k, v in target.state_dict().items():
            torch.testing.assert_close(v, state[k])
    wrong = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(36, 2))
    with pytest.raises(ReportgenError, match=r"wrong shape \(file vs model\): 0.weight \(2, 3, 3, 3\) vs \(4, 3, 3, 3\)"):
        load_checkpoint(wrong, tmp_path / "c0.pt")


def test_torchvision_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(ReportgenError) as err:
            load_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V1", device="cpu"))
        expected = weights_cache_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        assert str(expected) in str(err.value) and "never downloads" in str(err.value)
        # a file in the cache is used
        expected.parent.mkdir(parents=True)
        torch.save(torchvision.models.resnet18().state_dict(), expected)
        loaded = load_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V1", device="cpu"))
        assert "(ResNet18_Weights.IMAGENET1K_V1)" in loaded.description and not loaded.model.training
        assert loaded.categories == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
        with pytest.raises(ReportgenError, match="Did you mean `IMAGENET1K_V1`"):
            load_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V2", device="cpu"))
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_cached_weights_go_through_torchvisions_builder(tmp_path):
    """DenseNet's published file has old key names (`norm.1`) that torchvision's builder renames; GoogLeNet's
    weights switch on `transform_input`. Both come out as torchvision builds them, from the local file only."""
    import re

    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        reference = torchvision.models.densenet121()
        old = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$")
        published = {}
        for key, value in reference.state_dict().items():
            match = old.match(key)
            published[f"{match.group(1)}.{match.group(2)}" if match else key] = value
        assert any(".norm.1." in key for key in published)
        path = weights_cache_path(torchvision.models.DenseNet121_Weights.IMAGENET1K_V1)
        path.parent.mkdir(parents=True)
        torch.save(published, path)
        loaded = load_model(ModelConfig(name="densenet121", weights="IMAGENET1K_V1", device="cpu")).model
        for (key, value), (ref_key, ref_value) in zip(loaded.state_dict().items(), reference.state_dict().items()):
            assert key == ref_key and torch.equal(value, ref_value), key
        google = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)  # as published
        torch.save(google.state_dict(), weights_cache_path(torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1))
        assert load_model(ModelConfig(name="googlenet", weights="IMAGENET1K_V1", device="cpu")).model.transform_input
        path.write_bytes(b"truncated")
        with pytest.raises(ReportgenError, match="`model.weights`: .* is not a PyTorch checkpoint"):
            load_model(ModelConfig(name="densenet121", weights="IMAGENET1K_V1", device="cpu"))
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_torchscript_model(tmp_path):
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.save(str(tmp_path / "m.ts"))
    loaded = load_model(ModelConfig(source="torchscript", path=tmp_path / "m.ts", device="cpu"))
    assert loaded.model(torch.zeros(1, 3, 8, 8)).shape == (1, 2)
    (tmp_path / "bad.ts").write_text("nope")
    with pytest.raises(ReportgenError, match="is not a TorchScript model"):
        load_model(ModelConfig(source="torchscript", path=tmp_path / "bad.ts", device="cpu"))


def test_labels():
    labels, note = load_labels("imagenet", 1000)
    assert labels[0] == "tench" and len(labels) == 1000 and note == ""
    labels, note = load_labels("imagenet", 10)
    assert labels is None and "do not fit" in note
