"""torchcam 0.5.0's LeGrad (`reportgen.methods.legrad`) equals torchcam's normalised maps to 1e-3 on tiny seeded
torchvision `VisionTransformer`s (every block, or the last ones only; two ranks; passes in chunks). torchcam refuses
timm's blocks: a timm ViT is checked against torchcam on a torchvision copy with the same weights (the same
logits), torchcam given timm's own readout as its `score_projection`. A CNN is "not applicable", with the reason;
a build draws it on a tiny ViT, writes it and scores it."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torchcam.methods import LeGrad
from torchvision.models import VisionTransformer

from reportgen.hooks import count_hooks
from reportgen.methods import legrad as L
from reportgen.methods.cam import CamJob, compute_maps
from reportgen.methods.options import LeGradOptions

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-3  # max |ours − torchcam| of the normalised maps (the CAM tolerance)
SIZE, PATCH, CLASSES = 32, 8, 5


def tiny_vit(layers: int = 2, seed: int = 0) -> VisionTransformer:
    """A seeded torchvision ViT (32 px, 8 px patches: a 4 × 4 grid); its head is drawn too (torchvision zeroes it,
    which makes every block score constant)."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=layers, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=CLASSES)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def _batch(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _job(model, x, class_sets, batch_size=64, options=None) -> CamJob:
    with torch.no_grad():
        logits = model(x)
    return CamJob(model=model, forward=model, batch=x, layer="", activations=torch.zeros(0), raw_activations=None,
                  logits=logits, class_sets=[tuple(c) for c in class_sets], per_image=[], batch_size=batch_size,
                  head=None, options=options)


def _normalised(raw: torch.Tensor) -> np.ndarray:
    """torchcam's post-processing (`_normalize`: min-max per map, eps 1e-8) of our raw maps (non-negative)."""
    cam = raw - raw.amin(dim=(-2, -1), keepdim=True)
    return (cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-8)).numpy()


def _top2(model, x) -> list[list[int]]:
    with torch.no_grad():
        top = model(x).topk(2, dim=1).indices
    return [top[:, 0].tolist(), top[:, 1].tolist()]


def _torchcam(model, blocks, x, class_sets, **kwargs) -> list[np.ndarray]:
    """torchcam's normalised maps (N, h, w), one call per rank, as it is used."""
    out = []
    for classes in class_sets:
        with LeGrad(model, blocks, **kwargs) as extractor:
            scores = model(x)
            out.append(extractor(class_idx=[int(c) for c in classes], scores=scores)[0].detach().numpy())
    return out


def _compare(ours: np.ndarray, refs: list[np.ndarray]) -> float:
    worst = 0.0
    for r, ref in enumerate(refs):
        assert ours[r].shape == ref.shape == (ref.shape[0], SIZE // PATCH, SIZE // PATCH)
        assert ref.max() > 0.99 and ref.std() > 0.05  # a map, not a blank one
        worst = max(worst, float(np.abs(ours[r] - ref).max()))
    assert worst <= TOL, f"max |ours − torchcam| = {worst:.2e}"
    return worst


@pytest.mark.parametrize("layers, blocks, batch_size", [(2, None, 64), (3, 2, 2)])
def test_parity_torchvision_vit(layers, blocks, batch_size) -> None:
    """Every block, or the last `legrad_blocks`; three images in one pass, or in passes of two (the last partial);
    two ranks."""
    model = tiny_vit(layers)
    x = _batch(3)
    class_sets = _top2(model, x)
    ours = L.legrad(_job(model, x, class_sets, batch_size, LeGradOptions(legrad_blocks=blocks)))
    assert ours.shape == (2, 3, 4, 4) and ours.min() >= 0
    chosen = list(model.encoder.layers)[-blocks:] if blocks else list(model.encoder.layers)
    _compare(_normalised(ours), _torchcam(model, chosen, x, class_sets))
    assert count_hooks(model) == 0
    if blocks:  # the option matters: every block gives another map
        every = _normalised(L.legrad(_job(model, x, class_sets, batch_size)))
        assert np.abs(every - _normalised(ours)).max() > 1e-2


def _timm_vit():
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(2)
    model = TimmViT(img_size=SIZE, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                    num_classes=CLASSES).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model


def _torchvision_copy(timm_model) -> VisionTransformer:
    """A torchvision ViT with the timm ViT's weights: the same function (timm's blocks are torchvision's, its qkv
    torchvision's in_proj, both LayerNorms eps 1e-6)."""
    t = timm_model.state_dict()
    copy = {"class_token": t["cls_token"], "conv_proj.weight": t["patch_embed.proj.weight"],
            "conv_proj.bias": t["patch_embed.proj.bias"], "encoder.pos_embedding": t["pos_embed"],
            "encoder.ln.weight": t["norm.weight"], "encoder.ln.bias": t["norm.bias"],
            "heads.head.weight": t["head.weight"], "heads.head.bias": t["head.bias"]}
    names = {"ln_1": "norm1", "self_attention.in_proj": "attn.qkv", "self_attention.out_proj": "attn.proj",
             "ln_2": "norm2", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}
    for i in range(len(timm_model.blocks)):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                sep = "_" if ours == "self_attention.in_proj" else "."
                copy[f"encoder.layers.encoder_layer_{i}.{ours}{sep}{kind}"] = t[f"blocks.{i}.{theirs}.{kind}"]
    model = tiny_vit(len(timm_model.blocks))
    model.load_state_dict(copy)
    return model.eval()


def test_a_timm_vit_equals_torchcam_on_its_torchvision_copy() -> None:
    """torchcam refuses timm's blocks; on a torchvision copy of the same weights, with timm's readout (norm, class
    token, head) as torchcam's `score_projection`, it gives ours for the timm model."""
    timm_model = _timm_vit()
    copy = _torchvision_copy(timm_model)
    x = _batch(2, seed=3)
    with torch.no_grad():
        assert torch.allclose(timm_model(x), copy(x), atol=1e-5)
    with pytest.raises((TypeError, ValueError)):
        LeGrad(timm_model, list(timm_model.blocks))
    fused = [b.attn.fused_attn for b in timm_model.blocks]
    class_sets = _top2(timm_model, x)
    ours = _normalised(L.legrad(_job(timm_model, x, class_sets)))
    refs = _torchcam(copy, list(copy.encoder.layers), x, class_sets,
                     score_projection=lambda tokens: copy.heads(copy.encoder.ln(tokens)[:, 0]))
    _compare(ours, refs)
    assert [b.attn.fused_attn for b in timm_model.blocks] == fused and count_hooks(timm_model) == 0


def test_a_cnn_is_not_applicable_with_the_reason() -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    maps = compute_maps(model, x, ["layer4"], ["gradcam", "legrad"], [[0]])
    assert maps.methods == ("gradcam",)
    why = maps.not_applicable["legrad"]
    assert "LeGrad needs a vision transformer" in why and "ResNet" in why
    with pytest.raises(L.NotApplicable, match="Swin"):
        L.find_vit(torchvision.models.swin_t(), (3, 32, 32))


VIT_FACTORY = f"""
import torch
from torchvision.models import VisionTransformer


def build(num_classes=3):
    torch.manual_seed(0)
    model = VisionTransformer(image_size={SIZE}, patch_size={PATCH}, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=num_classes)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    return model
"""


def test_a_build_draws_writes_and_scores_it_on_a_vit(project) -> None:
    """The record alone puts LeGrad in a build of a tiny torchvision ViT: arrays.npz holds its maps at the input's
    size and the evaluation scores it beside Grad-CAM."""
    from tests.test_evaluation_stage import BOXES, boxed_project, build

    (project.root / "tinyvit.py").write_text(VIT_FACTORY)
    config = boxed_project(project)
    config["model"]["factory"] = "tinyvit:build"
    config["analyses"]["cam"] = {"methods": ["gradcam", "legrad"], "legrad_blocks": 1}
    config["analyses"]["gradients"] = {"methods": ["saliency"]}
    config["analyses"]["evaluation"]["sanity"] = {"images": 1}
    done = build(project, config)
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["cam"]["methods"] == ["gradcam", "legrad"] and data["cam"]["not_applicable"] == {}
    layer = data["cam"]["layers"][0]
    with np.load(out / "arrays.npz") as npz:
        maps = [npz[k] for k in npz.files if k.startswith(f"cam/legrad/{layer}/")]
    assert len(maps) == len(BOXES) and all(m.shape == (SIZE, SIZE) and 0 <= m.min() and m.max() <= 1 for m in maps)
    assert max(float(m.max()) for m in maps) > 0.99
    rows = {r["method"]: r for r in data["evaluation"]["rows"]}
    for column in ("deletion_auc", "insertion_auc", "sanity_spearman"):  # the sanity cascade recomputes it
        score = rows["legrad"]["scores"][column]
        assert score is not None and np.isfinite(score["mean"]), column


def _huggingface_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(4)
    config = ViTConfig(image_size=SIZE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=CLASSES, layer_norm_eps=1e-6)
    model = ViTForImageClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    return model


def _torchvision_copy_of_huggingface(hf) -> VisionTransformer:
    t = hf.state_dict()
    e = "vit.embeddings."
    copy = {"class_token": t[e + "cls_token"], "conv_proj.weight": t[e + "patch_embeddings.projection.weight"],
            "conv_proj.bias": t[e + "patch_embeddings.projection.bias"],
            "encoder.pos_embedding": t[e + "position_embeddings"], "encoder.ln.weight": t["vit.layernorm.weight"],
            "encoder.ln.bias": t["vit.layernorm.bias"], "heads.head.weight": t["classifier.weight"],
            "heads.head.bias": t["classifier.bias"]}
    for i in range(hf.config.num_hidden_layers):
        ours, theirs = f"encoder.layers.encoder_layer_{i}.", f"vit.layers.{i}."
        for kind in ("weight", "bias"):
            copy[f"{ours}self_attention.in_proj_{kind}"] = torch.cat(
                [t[f"{theirs}attention.{p}_proj.{kind}"] for p in "qkv"])
            for a, b in (("self_attention.out_proj", "attention.o_proj"), ("ln_1", "layernorm_before"),
                         ("ln_2", "layernorm_after"), ("mlp.0", "mlp.fc1"), ("mlp.3", "mlp.fc2")):
                copy[f"{ours}{a}.{kind}"] = t[f"{theirs}{b}.{kind}"]
    model = tiny_vit(hf.config.num_hidden_layers)
    model.load_state_dict(copy)
    return model.eval()


def test_a_huggingface_vit_equals_torchcam_on_its_torchvision_copy() -> None:
    """As timm's: Hugging Face's ViT (through a wrapper that returns its logits, as a build runs it) against torchcam
    on a torchvision copy with its readout (layernorm, class token, classifier); its attention implementation is
    restored after."""
    hf = _huggingface_vit()
    copy = _torchvision_copy_of_huggingface(hf)
    x = _batch(2, seed=5)
    forward = lambda batch: hf(pixel_values=batch).logits  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(forward(x), copy(x), atol=1e-5)
    implementation = hf.config._attn_implementation
    class_sets = _top2(copy, x)
    job = dataclasses.replace(_job(copy, x, class_sets), model=hf, forward=forward)
    ours = _normalised(L.legrad(job))
    refs = _torchcam(copy, list(copy.encoder.layers), x, class_sets,
                     score_projection=lambda tokens: copy.heads(copy.encoder.ln(tokens)[:, 0]))
    _compare(ours, refs)
    assert hf.config._attn_implementation == implementation and count_hooks(hf) == 0
