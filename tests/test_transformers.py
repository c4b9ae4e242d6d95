"""Vision transformers from torchvision, timm and Hugging Face: their layers' token and channels-last layouts
become (N, C, H, W) maps, and every CAM method equals pytorch-grad-cam 1.5.7 run with the `reshape_transform`
that fits the layer's actual layout (Ablation-CAM with its `AblationLayerVit`); the gradient methods equal
Captum 0.9.0; parameter totals equal torchinfo 1.8.0's, and the FLOP total counts the attention matmuls that
torchinfo leaves out. Random weights, small inputs; nothing is downloaded."""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchinfo
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

import pytorch_grad_cam as pgc
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.config import CamConfig, Config, GradientsConfig, ModelConfig, TargetSpec
from reportgen.context import Context, ImageInput, ModelInfo
from reportgen.engine import Engine
from reportgen.errors import ReportgenError
from reportgen.layers import describe_model
from reportgen.models import load_model
from reportgen.stages import cam as C
from reportgen.stages import gradients as G
from reportgen.stages import summary as S

import timm
import transformers

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-3  # max |ours - pytorch-grad-cam|
REL = 1e-4  # max |ours - Captum| / max |Captum|
GRADIENT_CAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam")
REFERENCE = {
    "gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
    "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM,
}


# ---------------------------------------------------------------------------- models and contexts


def _load(source: str, name: str | None = None, size: int = 64, classes: int = 5, **kwargs) -> object:
    torch.manual_seed(0)
    cfg = ModelConfig(source=source, name=name, input_size=(3, size, size), labels=None, device="cpu", **kwargs)
    return load_model(cfg)


def _timm(name: str, size: int = 64, classes: int = 5, **kwargs):
    extra = {} if name.startswith("convnext") else {"img_size": size}
    return _load("timm", name, size, kwargs={"num_classes": classes, **extra, **kwargs})


def _torchvision(name: str, size: int = 64, classes: int = 5):
    extra = {"image_size": size} if name.startswith("vit") else {}
    return _load("torchvision", name, size, kwargs={"num_classes": classes, **extra})


def _hf_folder(root: Path, *, weights: bool = True, size: int = 32) -> Path:
    """A small ViTForImageClassification saved with its preprocessor config, as `save_pretrained` leaves it."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3,
                                    id2label={0: "cat", 1: "dog", 2: "<b>fox</b>"},
                                    label2id={"cat": 0, "dog": 1, "<b>fox</b>": 2})
    folder = root / "hf-vit"
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 2, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_rescale": True}))
    if not weights:
        for file in folder.glob("*.safetensors"):
            file.unlink()
    return folder


def _hf(root: Path, size: int = 32):
    return _load("huggingface", path=_hf_folder(root, size=size), size=size)


def _batch(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _context(adapter, x: torch.Tensor, config: Config | None = None) -> Context:
    """A build's context around a loaded adapter and a batch (as the pipeline makes it)."""
    config = config or Config()
    with torch.no_grad():
        logits = adapter.forward(x).float()
    layers = describe_model(adapter.model, x[:1])[0]
    info = ModelInfo(model=adapter.model, config=config, labels=None, num_classes=logits.shape[1], layers=layers,
                     adapter=adapter)
    display = [np.zeros((x.shape[2], x.shape[3], 3), np.uint8)] * len(x)
    images = [ImageInput(name=f"img{i}", source=f"img{i}.png", original=d, display=d) for i, d in enumerate(display)]
    engine = Engine(adapter.model, x, forward=adapter.forward)
    return Context(info=info, device=x.device, batch=x, images=images, logits=logits, engine=engine)


class Logits(nn.Module):
    """A model whose output holds `.logits` (Hugging Face), as the references want it: a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out if torch.is_tensor(out) else out.logits


def _reshape(layout):
    """pytorch-grad-cam's `reshape_transform` for a layer's ACTUAL layout, stated by each test: ("tokens", prefix,
    h, w), "nhwc", or None ((N, C, H, W) already)."""
    if layout is None:
        return None
    if layout == "nhwc":
        return lambda t: t.permute(0, 3, 1, 2)
    _, prefix, h, w = layout

    def tokens(t):  # pytorch-grad-cam's ViT example: drop the class token(s), fold, channels first
        result = t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return tokens


def _reference(adapter, x, method, layer, classes, layout, batch_size=32) -> np.ndarray:
    model = Logits(adapter.model).eval()
    kwargs = {"reshape_transform": _reshape(layout)}
    if method == "ablationcam":
        kwargs |= {"batch_size": batch_size}
        if layout is not None:
            kwargs["ablation_layer"] = AblationLayerVit()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        with REFERENCE[method](model, [adapter.model.get_submodule(layer)], **kwargs) as cam:
            if method == "scorecam":
                cam.batch_size = batch_size
            return cam(x, [ClassifierOutputTarget(int(c)) for c in classes])


def _check_cams(adapter, x, methods, layout, layer=None, batch_size=32) -> C.CamResult:
    """Our maps of `methods` on `layer` (None: the automatic one) against pytorch-grad-cam's with the reshape for
    `layout` (see `_reshape`), top-1 class."""
    ctx = _context(adapter, x)
    cfg = CamConfig(methods=tuple(methods), target_layers=(layer,) if layer else (), targets=TargetSpec(k=1),
                    batch_size=batch_size)
    result = C.run(ctx, cfg)
    (layer,) = result.layers
    classes = [t[0] for t in result.targets]
    for method in methods:
        ours = np.stack([result.maps[(method, layer, i, c)] for i, c in enumerate(classes)])
        ref = _reference(adapter, x, method, layer, classes, layout, batch_size)
        if method.startswith("eigen"):  # the sign of the principal component is LAPACK's choice in the reference
            both = _eigen_both_signs(ctx, method, layer)  # (2, N, H, W)
            diff = float(np.abs(both - ref[None]).reshape(2, len(x), -1).max(-1).min(0).max())
            assert min(np.abs(ours - b).max() for b in both) < 1e-6
        else:
            diff = np.abs(ours - ref).max()
        assert diff <= TOL, f"{method} on {layer}: max |ours - pytorch-grad-cam| = {diff:.2e}"
    return result


def _eigen_both_signs(ctx, method, layer) -> np.ndarray:
    """(2, N, H, W): an Eigen method's maps with the principal component as we fix it and flipped."""
    view = ctx.info.adapter.layer_view(layer) or (lambda t: t)
    passes = ctx.engine.cached_passes()
    if method == "eigengradcam":
        values = view(passes[0].activations[layer]).float() * view(passes[0].gradients[layer]).float()
    else:
        values = view(ctx.engine.activations([layer])[1][layer]).float()
    raw = C.project_2d(values)
    size = tuple(ctx.batch.shape[-2:])
    return np.stack([C.scale_cams(C.scale_cams((s * raw).clamp_min(0), size).clamp_min(0)).numpy() for s in (1, -1)])


# ---------------------------------------------------------------------------- parity with pytorch-grad-cam


def test_timm_vit_tiny_every_cam_on_the_recommended_layer() -> None:
    """ViT-Tiny: tokens (N, 1 + 4·4, 192); the automatic layer is the last block's norm1 and the report says why;
    every CAM method (Score-CAM and Ablation-CAM with AblationLayerVit included) equals pytorch-grad-cam."""
    adapter = _timm("vit_tiny_patch16_224")
    x = _batch(2, 64)
    result = _check_cams(adapter, x, GRADIENT_CAMS + ("eigencam", "scorecam", "ablationcam"), ("tokens", 1, 4, 4),
                         batch_size=64)
    assert result.layers == ("blocks.11.norm1",) and result.layer_auto
    assert result.layer_shapes["blocks.11.norm1"] == (192, 4, 4)
    assert any("pytorch-grad-cam's recommendation" in note and "tokens (N, 1 + 4·4, C)" in note
               for note in result.notes)


def test_timm_deit_distilled_drops_both_tokens() -> None:
    """DeiT distilled: a class and a distillation token (prefix 2); Score-CAM and Ablation-CAM too."""
    adapter = _timm("deit_tiny_distilled_patch16_224")
    assert adapter.layout("blocks.11.norm1").prefix == 2
    _check_cams(adapter, _batch(2, 64, seed=2), GRADIENT_CAMS + ("scorecam", "ablationcam"), ("tokens", 2, 4, 4),
                batch_size=96)


@pytest.mark.slow  # a Swin forward and backward per block layout
def test_timm_swin_channels_last_blocks() -> None:
    """timm 1.0.31's Swin blocks output (N, H, W, C): permuted, not the token sequence of pytorch-grad-cam's docs.
    Score-CAM and Ablation-CAM (AblationLayerVit on (N, H, W, C)) on the first stage's 96 channels."""
    adapter = _timm("swin_tiny_patch4_window7_224")
    x = _batch(2, 64, seed=3)
    result = _check_cams(adapter, x, GRADIENT_CAMS + ("eigencam",), "nhwc")
    assert result.layers == ("layers.3.blocks.1.norm1",)
    # an earlier stage's block, and a token layer inside a block (the MLP runs on (N, H·W, C))
    _check_cams(adapter, x, ("gradcam", "layercam"), "nhwc", layer="layers.2.blocks.5")
    _check_cams(adapter, x, ("gradcam",), ("tokens", 0, 4, 4), layer="layers.2.blocks.5.mlp")
    _check_cams(adapter, x[:1], ("scorecam", "ablationcam"), "nhwc", layer="layers.0.blocks.1.norm1", batch_size=96)


def test_timm_convnext_atto() -> None:
    """A ConvNeXt is a CNN: its automatic layer is the last map before pooling, (N, C, H, W) as it is."""
    adapter = _timm("convnext_atto")
    result = _check_cams(adapter, _batch(2, 64, seed=4), GRADIENT_CAMS + ("eigencam", "scorecam", "ablationcam"),
                         None, batch_size=160)
    assert result.layers == ("norm_pre",)  # the Identity after the last stage: the same (N, 320, 2, 2) tensor
    assert result.layer_shapes["norm_pre"] == (320, 2, 2)


def test_timm_convnext_channels_last_inside_blocks() -> None:
    """timm's ConvNeXt blocks without conv_mlp run their norm and MLP channels-last: declared, never a guessed shape."""
    adapter = _timm("convnext_atto", conv_mlp=False)
    assert adapter.layout("stages.3.blocks.1.norm").kind == "channels_last"
    assert adapter.layout("stages.3.blocks.1") is None  # the block's output is (N, C, H, W)
    _check_cams(adapter, _batch(1, 64, seed=5), ("gradcam", "hirescam"), "nhwc", layer="stages.2.blocks.1.mlp.fc1")


@pytest.mark.slow
def test_torchvision_vit_b_16() -> None:
    adapter = _torchvision("vit_b_16")
    result = _check_cams(adapter, _batch(2, 64, seed=6), GRADIENT_CAMS + ("eigencam",), ("tokens", 1, 4, 4))
    assert result.layers == ("encoder.layers.encoder_layer_11.ln_1",)


@pytest.mark.slow
def test_torchvision_swin_t() -> None:
    adapter = _torchvision("swin_t")
    result = _check_cams(adapter, _batch(2, 64, seed=7), GRADIENT_CAMS + ("eigencam",), "nhwc")
    assert result.layers == ("features.7.1.norm1",)
    assert result.layer_shapes["features.7.1.norm1"] == (768, 2, 2)


def test_huggingface_vit_from_a_saved_folder(tmp_path: Path) -> None:
    """A Hugging Face ViT saved to a folder: loaded offline, its labels from id2label, its preprocessing from
    preprocessor_config.json, its `.logits` used; every CAM method equals pytorch-grad-cam."""
    adapter = _hf(tmp_path)
    assert adapter.categories == ["cat", "dog", "<b>fox</b>"]
    assert adapter.prescribed.resize == (32, 32) and adapter.prescribed.normalize.mean == (0.5, 0.5, 0.5)
    result = _check_cams(adapter, _batch(2, 32, seed=8), GRADIENT_CAMS + ("eigencam", "scorecam", "ablationcam"),
                         ("tokens", 1, 4, 4), batch_size=8)
    assert result.layers == ("vit.layers.1.layernorm_before",)


# ---------------------------------------------------------------------------- gradients against Captum


def _relative(ours: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.detach().float().numpy()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("which", ["vit", "deit", "swin", "convnext", "hf"])
def test_gradient_methods_equal_captum(which: str, tmp_path: Path) -> None:
    adapter = {"vit": lambda: _timm("vit_tiny_patch16_224"), "deit": lambda: _timm("deit_tiny_distilled_patch16_224"),
               "swin": lambda: _timm("swin_tiny_patch4_window7_224"), "convnext": lambda: _timm("convnext_atto"),
               "hf": lambda: _hf(tmp_path)}[which]()
    size = 32 if which == "hf" else 64
    x = _batch(2, size, seed=9)
    cfg = GradientsConfig(methods=("saliency", "input_x_gradient", "integrated_gradients"), steps=8)
    ctx = _context(adapter, x)
    result = G.run(ctx, cfg)
    targets = torch.as_tensor(result.classes[:, 0])
    model = Logits(adapter.model).eval()
    reference = {"saliency": Saliency(model).attribute(x, target=targets),
                 "input_x_gradient": InputXGradient(model).attribute(x, target=targets),
                 "integrated_gradients": IntegratedGradients(model).attribute(x, target=targets, n_steps=8)}
    for method, ref in reference.items():
        assert _relative(result.maps[method][:, 0], ref) <= REL, method


# ---------------------------------------------------------------------------- summary: torchinfo and FLOPs


def test_summary_params_equal_torchinfo_and_flops_count_attention() -> None:
    """Parameter totals equal torchinfo's; its mult-adds miss the attention matmuls, the FLOP total has them."""
    for adapter, size in ((_timm("vit_tiny_patch16_224"), 64), (_timm("swin_tiny_patch4_window7_224"), 64),
                          (_timm("convnext_atto"), 64)):
        ours = S.compute_summary(adapter.model, (3, size, size), depth=2)
        ref = torchinfo.summary(adapter.model, input_size=(1, 3, size, size), verbose=0)
        assert ours.totals.total_params == ref.total_params
        assert ours.totals.total_mult_adds == ref.total_mult_adds
        if "convnext" in type(adapter.model).__name__.lower():  # 1x1 convolutions: torchinfo misses nothing
            assert ours.flops is None and "2 FLOPs each" in ours.flops_note
        else:
            assert ours.flops is not None and ours.flops > 0
    vit = _timm("vit_tiny_patch16_224", size=224)
    result = S.compute_summary(vit.model, (3, 224, 224), depth=1)
    attention = 12 * 2 * (2 * 197 * 197 * 192)  # per block: q·kᵀ and attn·v, 2 FLOPs per mult-add
    assert result.totals.total_mult_adds < 40e6  # torchinfo: 34.5 M
    assert result.flops >= 2 * 1.0e9 + attention * 0.99  # the linear layers and the attention
    assert "attention" in result.flops_note


# ---------------------------------------------------------------------------- layouts and layers


def test_layer_views_and_the_layers_listing(tmp_path: Path) -> None:
    """`reportgen layers` shows the raw shape and the map a layer gives."""
    from click.testing import CliRunner

    from reportgen.cli import main

    config = tmp_path / "vit.yaml"
    config.write_text("model:\n  source: timm\n  name: vit_tiny_patch16_224\n  kwargs: {img_size: 64, num_classes: 4}\n"
                      "  input_size: [3, 64, 64]\n  labels: null\n  device: cpu\n")
    out = CliRunner().invoke(main, ["layers", str(config)])
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if line.startswith("blocks.11.norm1 "))
    assert "1x17x192" in row and "192x4x4" in row
    attention = next(line for line in out.output.splitlines() if line.startswith("blocks.11.attn.q_norm "))
    assert "1x3x17x64" in attention and "192x" not in attention  # per-head queries: no map
    assert "default CAM layer: blocks.11.norm1" in out.output


def test_a_token_layer_of_the_wrong_length_names_the_layer_and_its_shape() -> None:
    adapter = _timm("vit_tiny_patch16_224")
    view = adapter.layer_view("blocks.3.norm1")
    assert view(torch.zeros(2, 17, 192)).shape == (2, 192, 4, 4)
    with pytest.raises(ReportgenError, match=r"layer `blocks.3.norm1` outputs shape \[2, 20, 192\], which is not "
                                             r"1 class token \+ a 4×4 grid of patches"):
        view(torch.zeros(2, 20, 192))


def test_feature_maps_of_token_and_channels_last_layers() -> None:
    from reportgen.stages import feature_maps as F

    adapter = _timm("swin_tiny_patch4_window7_224")
    x = _batch(1, 64)
    ctx = _context(adapter, x)
    result = F.run(ctx, F.FeatureMapsConfig(layers=("layers.1.blocks.0.norm1", "layers.1.blocks.0.mlp")))
    with torch.no_grad():
        norm1 = adapter.model.layers[1].blocks[0].norm1
        out = {}
        handle = norm1.register_forward_hook(lambda m, i, o: out.setdefault("a", o.detach().clone()))
        adapter.model(x)
        handle.remove()
    assert np.allclose(result.layers[0].maps, out["a"].permute(0, 3, 1, 2).numpy())
    assert result.layers[1].maps.shape == (1, 192, 8, 8)
    assert F.default_layers(ctx.info)  # stages of the channels-last model are maps


def test_max_channels_caps_the_masked_forwards_and_says_so() -> None:
    """`cam.max_channels: 16` on ViT-Tiny's 192 channels: 16 masked forwards per image and method, said in the
    notes; without a cap the report suggests one (192 channels × 8 images)."""
    adapter = _timm("vit_tiny_patch16_224")
    x = _batch(2, 64)
    seen: list[int] = []
    handle = adapter.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        ctx = _context(adapter, x)
        seen.clear()
        result = C.run(ctx, CamConfig(methods=("scorecam", "ablationcam"), max_channels=16, batch_size=8))
    finally:
        handle.remove()
    assert seen.count(8) == 2 * 2  # Score-CAM: per image, 16 masks in two batches of 8
    assert 2 * 2 <= seen.count(1) <= 2 * 2 + 1  # Ablation-CAM: per image two batches of 8 (+ a broadcast check)
    assert any("only the 16 channels of highest mean activation" in note for note in result.notes)
    assert all(np.isfinite(m).all() for m in result.maps.values())
    suggested = C.masked_forwards_notes(CamConfig(methods=("scorecam",)), {"blocks.11.norm1": (192, 4, 4)}, 8)
    assert len(suggested) == 1 and "`analyses.cam.max_channels` (say 64)" in suggested[0]
    assert not C.masked_forwards_notes(CamConfig(methods=("gradcam",)), {"blocks.11.norm1": (192, 4, 4)}, 8)


# ---------------------------------------------------------------------------- sources, checkpoints, bad input


def _write(tmp_path: Path, model: dict, analyses: dict | None = None) -> Path:
    import yaml

    from tests.conftest import make_image

    (tmp_path / "images").mkdir(exist_ok=True)
    make_image(tmp_path / "images" / "a.png", size=(80, 64), seed=1)
    make_image(tmp_path / "images" / "b.png", size=(64, 80), seed=2)
    config = {"title": "<script>alert(1)</script> ViT", "model": {"labels": None, "device": "cpu", **model},
              "inputs": {"images": ["images/"], "preprocess": "from_weights"},
              "analyses": analyses or {"summary": {"depth": 2}}, "output": {"dir": "out"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _invoke(*args: str):
    from click.testing import CliRunner

    from reportgen.cli import main

    return CliRunner().invoke(main, list(args))


def test_a_timm_vit_builds_end_to_end_with_a_safetensors_checkpoint(tmp_path: Path) -> None:
    """A timm ViT-Tiny with its weights from a .safetensors file (safe: no `trust_checkpoint`): the logits are the
    checkpoint's, the preprocessing timm's, the CAM layer named in the report, the FLOP total beside torchinfo's."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=64).eval()
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    config = _write(tmp_path, {"source": "timm", "name": "vit_tiny_patch16_224", "checkpoint": "vit.safetensors",
                               "kwargs": {"num_classes": 4, "img_size": 64}, "input_size": [3, 64, 64]},
                    {"summary": {"depth": 1}, "feature_maps": {"layers": ["blocks.5", "blocks.11"]},
                     "cam": {"methods": ["gradcam", "scorecam"], "max_channels": 8}})
    result = _invoke("build", str(config), "-q", "--save-arrays")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all(s["status"] == "ok" for s in data["stages"]), data["stages"]
    assert data["versions"]["timm"] == timm.__version__  # the model source's package is named with the numbers
    cam = data["cam"]
    assert cam["layers"] == ["blocks.11.norm1"] and cam["layer_shapes"]["blocks.11.norm1"] == [192, 4, 4]
    assert any("pytorch-grad-cam's recommendation" in note for note in cam["notes"])
    assert data["summary"]["flops"]["total"] > 2 * data["summary"]["totals"]["total_mult_adds"]
    arrays = np.load(tmp_path / "out" / "arrays.npz")
    assert arrays["feature_maps/blocks.11/a"].shape == (192, 4, 4)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "FLOPs" in html and "<script>alert(1)</script>" not in html
    with torch.no_grad():  # the checkpoint's weights gave the logits: the same model, our preprocessing aside
        reloaded = _load("timm", "vit_tiny_patch16_224", kwargs={"num_classes": 4, "img_size": 64},
                         checkpoint=tmp_path / "vit.safetensors")
        x = _batch(1, 64)
        assert torch.equal(reloaded.forward(x), source(x))


def test_timm_preprocessing_is_its_data_config() -> None:
    adapter = _timm("deit_tiny_distilled_patch16_224", size=224)
    pre = adapter.prescribed  # timm: crop_pct 0.875 -> resize 256, bicubic, ImageNet mean/std
    data = timm.data.resolve_model_data_config(adapter.model)
    assert pre.center_crop == (224, 224) and pre.resize == (int(224 / data["crop_pct"]),)
    assert pre.interpolation == data["interpolation"] and pre.normalize.mean == tuple(data["mean"])


@pytest.mark.parametrize("model, message", [
    ({"source": "timm", "name": "vit_tiny_patch16"},
     r"`model.name`[^:]*: `vit_tiny_patch16` is not a timm model. Did you mean `vit_tiny_patch16_\d+`"),
    ({"source": "timm", "name": "vit_tiny_patch16_224", "weights": "IMAGENET1K_V1"},
     r"`model.weights`.* takes its weights from `checkpoint:`"),
    ({"source": "timm", "name": "vit_tiny_patch16_224", "kwargs": {"no_such_option": 1}},
     r"`model.kwargs`[^:]*: timm.create_model\('vit_tiny_patch16_224', no_such_option=1\) failed"),
    ({"source": "huggingface", "path": "missing"}, r"`model.path`[^:]*: .*missing is not a folder"),
    ({"source": "huggingface"}, r"source `huggingface` needs `path:`"),
])
def test_bad_sources_exit_2_with_one_message(tmp_path: Path, model: dict, message: str) -> None:
    result = _invoke("validate", str(_write(tmp_path, {"input_size": [3, 64, 64], **model})))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    import re
    assert re.search(message, result.output), result.output


def test_bad_huggingface_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportgenError, match=r"has no config.json"):
        _load("huggingface", path=empty, size=32)
    no_weights = _hf_folder(tmp_path / "nw", weights=False)
    with pytest.raises(ReportgenError, match=r"has no weights: expected one of model.safetensors"):
        _load("huggingface", path=no_weights, size=32)


def test_a_checkpoint_whose_keys_do_not_match(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64)
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(ReportgenError, match=r"`model.checkpoint`: other.safetensors does not match the model: "
                                             r"wrong shape \(file vs model\): head.weight \(3, 192\) vs \(4, 192\)"):
        _load("timm", "vit_tiny_patch16_224", kwargs={"num_classes": 4, "img_size": 64},
              checkpoint=tmp_path / "other.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ReportgenError, match=r"is not a readable .safetensors file"):
        _load("timm", "vit_tiny_patch16_224", kwargs={"num_classes": 4, "img_size": 64},
              checkpoint=tmp_path / "bad.safetensors")


@pytest.mark.parametrize("package, source", [("timm", "timm"), ("transformers", "huggingface")])
def test_a_missing_package_says_what_to_install(tmp_path: Path, package: str, source: str) -> None:
    """Without the package (its import blocked in a fresh interpreter) the build exits 2 with the pip command."""
    import subprocess
    import sys

    folder = _hf_folder(tmp_path) if source == "huggingface" else None
    model = {"source": source, "input_size": [3, 32, 32]} | (
        {"name": "vit_tiny_patch16_224"} if source == "timm" else {"path": str(folder)})
    config = _write(tmp_path, model)
    code = (f"import sys; sys.modules[{package!r}] = None\n"
            "from reportgen.cli import main\nmain(['validate', sys.argv[1]])")
    run = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"pip install 'reportgen[{source}]'" in run.stderr and "Traceback" not in run.stderr


def test_a_hugging_face_folder_never_runs_its_own_code(tmp_path: Path) -> None:
    with pytest.raises(ReportgenError, match=r"trust_remote_code would run Python code from the model folder"):
        _load("huggingface", path=_hf_folder(tmp_path), size=32, kwargs={"trust_remote_code": True})


def test_a_hugging_face_folder_without_a_preprocessor_config(tmp_path: Path) -> None:
    from reportgen.config import Preprocess

    folder = _hf_folder(tmp_path)
    (folder / "preprocessor_config.json").unlink()
    adapter = _load("huggingface", path=folder, size=32)
    with pytest.raises(ReportgenError, match=r"`inputs.preprocess: from_weights` needs the model folder's "
                                             r"preprocessor_config.json"):
        adapter.preprocess(Preprocess(from_weights=True))


def test_guided_gradcam_on_a_vit_token_layer_is_grad_cam_on_its_grid_times_guided_backprop() -> None:
    """guided_gradcam's layer may be a token layer: Grad-CAM on its grid (the layer's declared view), ReLU'd and
    upsampled by nearest as Captum's GuidedGradCam does, times guided backprop (ViT has no nn.ReLU: the plain
    input gradient)."""
    adapter = _timm("vit_tiny_patch16_224")
    x = _batch(2, 64, seed=3)
    ctx = _context(adapter, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = G.run(ctx, GradientsConfig(methods=("guided_backprop", "guided_gradcam")))
    classes = torch.as_tensor(result.classes[:, 0])
    layer = adapter.model.get_submodule("blocks.11.norm1")
    kept = {}
    handle = layer.register_forward_hook(lambda m, i, out: kept.update(out=out))
    xg = x.clone().requires_grad_()
    score = adapter.model(xg).gather(1, classes.view(-1, 1)).sum()
    handle.remove()
    tokens = kept["out"]
    grad_tokens, grad_input = torch.autograd.grad(score, [tokens, xg])
    grid, grad_grid = _reshape(("tokens", 1, 4, 4))(tokens.detach()), _reshape(("tokens", 1, 4, 4))(grad_tokens)
    cam = torch.relu((grad_grid.mean(dim=(2, 3), keepdim=True) * grid).sum(dim=1, keepdim=True))
    expected = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="nearest") * grad_input
    assert _relative(result.maps["guided_gradcam"][:, 0], expected) <= REL
