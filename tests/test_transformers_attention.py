"""The attention stage: the class token's attention per layer and head, attention rollout against a hand-written
implementation of Abnar & Zuidema's formula on a tiny transformer built here, gradient rollout against Chefer et
al.'s rule, the explicit attention path leaving the logits and the model as they were, and "not applicable"
where there is no global attention with a class token."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reportgen.config import AttentionConfig
from reportgen.errors import ReportgenError
from reportgen.hooks import count_hooks
from reportgen.models import ModelAdapter, declare_layouts
from reportgen.stages import attention as A
from tests.test_transformers import _batch, _context, _hf_folder, _invoke, _load, _timm, _torchvision, _write

import timm

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny_vit(size: int = 16) -> ModelAdapter:
    """A two-block, two-head ViT with 8-dim tokens on a 2×2 grid, built here."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=size, patch_size=8, embed_dim=8, depth=2, num_heads=2, num_classes=3).eval()
    return ModelAdapter(model=model, source="module", layouts=declare_layouts(model, (3, size, size)))


def _attention_by_hand(model, x: torch.Tensor) -> list[np.ndarray]:
    """Each block's attention probabilities (N, heads, L, L), computed from its weights: softmax(q·kᵀ / √d)."""
    out = []
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for block in model.blocks:
            y = block.norm1(h)
            n, length, c = y.shape
            heads = block.attn.num_heads
            qkv = (y @ block.attn.qkv.weight.T + block.attn.qkv.bias).reshape(n, length, 3, heads, c // heads)
            q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
            out.append(torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1).numpy().astype(np.float64))
            h = block(h)
    return out


def _rollout_by_hand(attentions: list[np.ndarray], fusion: str) -> np.ndarray:
    """Abnar & Zuidema (2020): per layer Â = 0.5·A + 0.5·I (A: heads fused), rows renormalised; the layers
    multiplied, last on the left; the class token's row over the patches, divided by its maximum."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    maps = []
    for i in range(attentions[0].shape[0]):
        joint = None
        for layer in attentions:
            a = fuse(layer[i], axis=0)
            a = 0.5 * a + 0.5 * np.eye(a.shape[0])
            a = a / a.sum(axis=1, keepdims=True)
            joint = a if joint is None else a @ joint
        row = joint[0, 1:]
        maps.append((row / row.max()).reshape(2, 2))
    return np.stack(maps)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_the_formula_by_hand(fusion: str) -> None:
    adapter = _tiny_vit()
    x = _batch(3, 16)
    result = A.run(_context(adapter, x), AttentionConfig(head_fusion=fusion))
    by_hand = _attention_by_hand(adapter.model, x)
    assert result.layers == ("blocks.0.attn", "blocks.1.attn") and result.heads == 2 and result.grid == (2, 2)
    for j, layer in enumerate(by_hand):  # the class token's row per layer and head
        assert np.abs(result.cls_maps[:, j] - layer[:, :, 0, 1:].reshape(3, 2, 2, 2)).max() < 1e-6
    assert np.abs(result.rollout - _rollout_by_hand(by_hand, fusion)).max() < 1e-6
    assert result.logit_difference <= 1e-5
    assert adapter.model.blocks[0].attn.fused_attn == timm.layers.use_fused_attn()  # restored
    assert count_hooks(adapter.model) == 0


def test_discard_ratio_zeroes_the_lowest_weights_but_keeps_the_class_token() -> None:
    attention = torch.softmax(torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    kept = A.rollout([attention], "mean", discard_ratio=0.0)
    dropped = A.rollout([attention], "mean", discard_ratio=0.4)
    fused = attention.double().mean(dim=1)[0]
    lowest = fused.flatten().argsort()[:10]  # 40 % of 25
    expected = fused.clone().flatten()
    expected[lowest[lowest != 0]] = 0
    expected = expected.reshape(5, 5) + torch.eye(5, dtype=torch.float64)
    assert torch.allclose(dropped[0], expected / expected.sum(-1, keepdim=True))
    assert not torch.allclose(kept, dropped)


def test_gradient_rollout_follows_chefer_et_al() -> None:
    """R = I; per layer R ← R + mean_heads(relu(∇A ⊙ A))·R, written out with numpy."""
    g = torch.Generator().manual_seed(1)
    attentions = [torch.softmax(torch.randn(2, 3, 5, 5, generator=g), dim=-1) for _ in range(3)]
    grads = [torch.randn(2, 3, 5, 5, generator=g) for _ in range(3)]
    ours = A.gradient_rollout(attentions, grads).numpy()
    for i in range(2):
        r = np.eye(5)
        for a, grad in zip(attentions, grads):
            a_bar = np.maximum(grad[i].numpy().astype(np.float64) * a[i].numpy(), 0).mean(axis=0)
            r = r + a_bar @ r
        assert np.abs(ours[i] - r).max() < 1e-9


def test_gradient_rollout_of_a_stage_run() -> None:
    adapter = _timm("deit_tiny_distilled_patch16_224")
    x = _batch(2, 64)
    result = A.run(_context(adapter, x), AttentionConfig())
    assert result.prefix == 2 and result.cls_maps.shape == (2, 12, 3, 4, 4)
    assert result.grad_rollout.shape == (2, 4, 4) and np.isclose(result.grad_rollout.max(axis=(1, 2)), 1).all()
    assert result.logit_difference <= 1e-5 and any("distillation" in note for note in result.notes)


def test_torchvision_and_hugging_face_expose_their_attention(tmp_path: Path) -> None:
    for adapter, size in ((_torchvision("vit_b_16"), 64), (_load("huggingface", path=_hf_folder(tmp_path), size=32), 32)):
        before = getattr(getattr(adapter.model, "config", None), "_attn_implementation", None)
        result = A.run(_context(adapter, _batch(1, size)), AttentionConfig())
        assert getattr(getattr(adapter.model, "config", None), "_attn_implementation", None) == before  # restored
        assert result.grad_rollout is not None and np.isfinite(result.grad_rollout).all()
        assert result.logit_difference <= 1e-5
        rows = result.cls_maps.reshape(*result.cls_maps.shape[:3], -1)
        assert (rows.sum(-1) < 1 + 1e-5).all() and (rows >= 0).all()  # a probability row without its class column
        assert count_hooks(adapter.model) == 0


def test_not_applicable_to_swin_and_an_error_for_a_cnn() -> None:
    swin = _timm("swin_tiny_patch4_window7_224")
    with pytest.raises(ReportgenError, match=r"not applicable to Swin: its attention is windowed"):
        A.check(_context(swin, _batch(1, 64)).info, AttentionConfig())
    cnn = _timm("convnext_atto")
    with pytest.raises(ReportgenError, match=r"`analyses.attention`: ConvNeXt has no global self-attention layers"):
        A.check(_context(cnn, _batch(1, 64)).info, AttentionConfig())


def test_attention_in_a_build(tmp_path: Path) -> None:
    config = _write(tmp_path, {"source": "timm", "name": "vit_tiny_patch16_224", "input_size": [3, 64, 64],
                               "kwargs": {"num_classes": 4, "img_size": 64}},
                    {"attention": {"head_fusion": "max", "discard_ratio": 0.5}})
    result = _invoke("build", str(config), "-q", "--save-arrays")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["attention"]["layers"][0] == "blocks.0.attn" and data["attention"]["head_fusion"] == "max"
    arrays = np.load(tmp_path / "out" / "arrays.npz")
    assert arrays["attention/blocks.11.attn/a"].shape == (3, 4, 4) and arrays["attention/rollout/b"].shape == (4, 4)
    assert '<section id="attention"' in (tmp_path / "out" / "report.html").read_text()
    swin = _write(tmp_path, {"source": "timm", "name": "swin_tiny_patch4_window7_224", "input_size": [3, 64, 64],
                             "kwargs": {"num_classes": 4, "img_size": 64}}, {"attention": None})
    refused = _invoke("validate", str(swin))
    assert refused.exit_code == 2 and "not applicable to Swin" in refused.output
