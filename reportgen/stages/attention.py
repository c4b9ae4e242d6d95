"""The `attention` stage: where a vision transformer's class token looks, layer by layer and head by head, and
through all layers at once.

For models with global self-attention and a class token (ViT, DeiT; `models.layouts` says which): per layer and
head, the class token's attention over the patches (its row of the attention probabilities, class and
distillation columns dropped, folded into the patch grid); attention rollout (Abnar & Zuidema 2020: per layer the
heads fused by mean / max / min, optionally the lowest `discard_ratio` of the weights set to 0, the identity
added for the residual path, rows renormalised, the layers multiplied from the first to the last, the class
token's row read); and gradient-weighted rollout (Chefer, Gur & Wolf 2021: R = I, then per layer
R ← R + mean_heads(relu(∂y/∂A ⊙ A)) · R, for the top-1 class). Swin's windowed attention has no class token and
no global matrix: "not applicable".

Attention probabilities are not exposed by the fused kernels the models use by default, so for this stage only
each attention layer runs its explicit path (timm: `fused_attn = False`; torchvision: `need_weights=True`;
Hugging Face: the eager implementation) and hands its probabilities over; the stage checks that the logits agree
with the build's to 1e-5 and restores the model as it was.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..config.rules import known_colormap, setting
from ..errors import ReportgenError
from ..hooks import forward_hooks
from ..layers import spatial_shape
from . import Context, ModelInfo, Stage


@dataclass(frozen=True)
class AttentionConfig:
    """A vision transformer's attention: per layer and head the class token's attention, attention rollout and
    gradient-weighted rollout."""

    head_fusion: Literal["mean", "max", "min"] = "mean"  # how rollout fuses each layer's heads
    discard_ratio: float = setting(0.0, ge=0, lt=1)  # rollout: this fraction of each layer's lowest weights set to 0
    gradient_rollout: bool = True  # also the gradient-weighted rollout (Chefer et al. 2021) for the top-1 class
    alpha: float = setting(0.5, ge=0, le=1)  # heat-map weight in overlays
    colormap: str = setting("jet", check=known_colormap)


LOGIT_TOLERANCE = 1e-5  # max |explicit − build| / max |build| of the logits


@dataclass(frozen=True)
class AttentionResult:
    config: AttentionConfig
    images: tuple[str, ...]
    layers: tuple[str, ...]  # the attention layers, in forward order
    heads: int
    grid: tuple[int, int]  # (h, w) of the patches
    prefix: int  # class (+ distillation) tokens
    classes: tuple[int, ...]  # per image, the class of the gradient rollout (top-1)
    labels: dict[int, str]
    cls_maps: np.ndarray = field(repr=False)  # (N, layers, heads, h, w) float32: the class token's attention
    rollout: np.ndarray = field(repr=False)  # (N, h, w) float32, max-normalised
    grad_rollout: np.ndarray | None = field(repr=False)  # (N, h, w) float32, max-normalised, or None
    logit_difference: float = 0.0  # max |explicit − build| / max |build|
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- reading the probabilities


def attention_layers(info: ModelInfo) -> list[str]:
    """The model's global self-attention layers, in forward order; an error for a model that has none or whose
    attention is windowed (Swin) or has no class token."""
    family = info.adapter.layouts.family if info.adapter is not None else ""
    if "Swin" in family:
        raise ReportgenError("`analyses.attention` is not applicable to Swin: its attention is windowed (each window "
                             "attends only to itself) and it has no class token, so there is no class-token "
                             "attention over the image to show. Use `analyses.cam` instead.")
    kinds = {"timm ViT": "Attention", "torchvision ViT": "MultiheadAttention", "Hugging Face ViT": "ViTAttention"}
    kind = kinds.get(family)
    names = [] if kind is None else [n for n, m in info.model.named_modules() if type(m).__name__ == kind]
    names.sort(key=lambda n: info.layers[n].order if n in info.layers and info.layers[n].order is not None else 0)
    if not names:
        raise ReportgenError(f"`analyses.attention`: {type(info.model).__name__} has no global self-attention layers "
                             "that reportgen can read (ViT and DeiT from torchvision, timm or Hugging Face). Remove "
                             "`attention` from `analyses`.")
    if _prefix(info) < 1:
        raise ReportgenError("`analyses.attention`: the model has no class token (it pools its patch tokens), so "
                             "there is no class-token attention to show.")
    return names


def _prefix(info: ModelInfo) -> int:
    layout = info.adapter.layout(info.adapter.layouts.cam_layer)
    return layout.prefix if layout is not None else 0


@contextlib.contextmanager
def exposed(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each attention layer `names` runs its explicit (unfused) path and its probabilities
    (N, heads, L, L), in the autograd graph, go to the yielded dict; the model is restored on exit."""
    probs: dict[str, torch.Tensor] = {}
    restore = []
    hooks = []
    for name in names:
        module = model.get_submodule(name)
        if hasattr(module, "fused_attn"):  # timm: the explicit path's softmax goes through `attn_drop`
            restore.append((module, "fused_attn", module.fused_attn))
            module.fused_attn = False
            hooks.append((f"{name}.attn_drop", lambda m, i, o, n=name: probs.__setitem__(n, o)))
        elif isinstance(module, nn.MultiheadAttention):  # torchvision calls it with need_weights=False
            handle = module.register_forward_pre_hook(
                lambda m, args, kwargs: (args, kwargs | {"need_weights": True, "average_attn_weights": False}),
                with_kwargs=True)
            restore.append((handle, None, None))
            hooks.append((name, lambda m, i, o, n=name: probs.__setitem__(n, o[1])))
        else:  # Hugging Face: the eager implementation returns the weights beside the output
            hooks.append((name, lambda m, i, o, n=name: probs.__setitem__(n, o[1])))
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation is not None:
        model.set_attn_implementation("eager")
    try:
        with forward_hooks(model, hooks):
            yield probs
    finally:
        for obj, attribute, value in restore:
            if attribute is None:
                obj.remove()
            else:
                setattr(obj, attribute, value)
        if implementation is not None:
            model.set_attn_implementation(implementation)


# ---------------------------------------------------------------------------- rollout


def fuse_heads(attention: torch.Tensor, how: str) -> torch.Tensor:
    """(N, heads, L, L) -> (N, L, L): the heads' mean, max or min."""
    if how == "mean":
        return attention.mean(dim=1)
    return attention.amax(dim=1) if how == "max" else attention.amin(dim=1)


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) over layers in forward order: (N, L, L), row i = how much token
    i's final representation draws on each input token. Per layer: heads fused; with `discard_ratio`, that
    fraction of each image's lowest fused weights set to 0 (the class token's attention to itself kept);
    identity added (the residual path), rows renormalised; the layers multiplied, the last on the left."""
    result = None
    for attention in attentions:
        fused = fuse_heads(attention.double(), head_fusion)  # (N, L, L)
        n, length, _ = fused.shape
        if discard_ratio > 0:
            flat = fused.reshape(n, -1).clone()
            drop = int(flat.shape[1] * discard_ratio)
            lowest = flat.topk(drop, dim=1, largest=False).indices
            lowest = torch.where(lowest == 0, torch.ones_like(lowest), lowest)  # never the [0, 0] entry
            flat.scatter_(1, lowest, 0.0)
            flat[:, 0] = fused.reshape(n, -1)[:, 0]
            fused = flat.reshape(n, length, length)
        a = fused + torch.eye(length, dtype=fused.dtype, device=fused.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def gradient_rollout(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer, Gur & Wolf (2021), self-attention rule: R = I; per layer in forward order
    R ← R + mean_heads(relu(∇A ⊙ A)) · R. (N, L, L)."""
    result = None
    for attention, grad in zip(attentions, gradients):
        a_bar = (grad.double() * attention.double()).clamp_min(0).mean(dim=1)  # (N, L, L)
        if result is None:
            result = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device).expand_as(a_bar).clone()
        result = result + a_bar @ result
    return result


def _class_row(matrix: torch.Tensor, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """(N, L, L) -> (N, h, w): the class token's row over the patches, divided by its maximum."""
    row = matrix[:, 0, prefix:].reshape(-1, *grid).float()
    return (row / row.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------- stage contract


def check(info: ModelInfo, cfg: AttentionConfig) -> None:
    attention_layers(info)


def run(ctx: Context, cfg: AttentionConfig) -> AttentionResult:
    info = ctx.info
    names = attention_layers(info)
    prefix = _prefix(info)
    grid = tuple(spatial_shape(info, info.adapter.layouts.cam_layer)[2:])  # the patches' (h, w)
    with exposed(ctx.model, names) as probs, torch.enable_grad():
        logits = ctx.forward(ctx.batch)
        attentions = [probs[name] for name in names]
        difference = float((logits.detach().float().cpu() - ctx.logits).abs().max()
                           / ctx.logits.abs().max().clamp_min(1e-12))
        if difference > LOGIT_TOLERANCE:
            raise ReportgenError(f"`analyses.attention`: the explicit attention path changes the logits by "
                                 f"{difference:.1e} (relative), more than {LOGIT_TOLERANCE:g}: its maps would not "
                                 "explain the model as it runs.")
        classes = logits.argmax(dim=1)
        grad_map = None
        if cfg.gradient_rollout and logits.requires_grad:
            score = logits.gather(1, classes[:, None]).sum()
            # torchvision hands over a view made after the probabilities were used: differentiate its base
            used = [a._base if a._base is not None and a._base.numel() == a.numel() else a for a in attentions]
            grads = [g.reshape(a.shape) for g, a in zip(torch.autograd.grad(score, used), attentions)]
            grad_map = _class_row(gradient_rollout([a.detach() for a in attentions], grads), prefix, grid)
    attentions = [a.detach() for a in attentions]
    cls_maps = torch.stack([a[:, :, 0, prefix:] for a in attentions], dim=1)  # (N, layers, heads, h·w)
    cls_maps = cls_maps.reshape(*cls_maps.shape[:3], *grid).float().cpu().numpy()
    notes = [f"Attention read from {len(names)} layers ({attentions[0].shape[1]} heads each) through their explicit "
             f"path; the logits agree with the build's to {difference:.1e} (relative). Rollout: heads fused by "
             f"{cfg.head_fusion}" + (f", the lowest {cfg.discard_ratio:.0%} of the weights discarded" if cfg.discard_ratio
                                     else "") + "."]
    if prefix > 1:
        notes.append(f"The model has {prefix} prefix tokens (class and distillation): the maps show the class "
                     "token's attention over the patches.")
    return AttentionResult(
        config=cfg, images=tuple(im.name for im in ctx.images), layers=tuple(names), heads=attentions[0].shape[1],
        grid=tuple(grid), prefix=prefix, classes=tuple(int(c) for c in classes),
        labels={int(c): ctx.label(int(c)) for c in classes},
        cls_maps=cls_maps.astype(np.float32),
        rollout=_class_row(rollout(attentions, cfg.head_fusion, cfg.discard_ratio), prefix, grid),
        grad_rollout=grad_map, logit_difference=difference, notes=tuple(notes))


def arrays(result: AttentionResult) -> dict[str, np.ndarray]:
    """`attention/<layer>/<image>` (heads, h, w); `attention/rollout/<image>` (h, w);
    `attention/grad_rollout/<image>/<class>` (h, w)."""
    out = {}
    for i, image in enumerate(result.images):
        for j, layer in enumerate(result.layers):
            out[f"attention/{layer}/{image}"] = result.cls_maps[i, j]
        out[f"attention/rollout/{image}"] = result.rollout[i]
        if result.grad_rollout is not None:
            out[f"attention/grad_rollout/{image}/{result.classes[i]}"] = result.grad_rollout[i]
    return out


def to_json(result: AttentionResult) -> dict:
    return {"layers": list(result.layers), "heads": result.heads, "grid": list(result.grid), "prefix": result.prefix,
            "head_fusion": result.config.head_fusion, "discard_ratio": result.config.discard_ratio,
            "gradient_rollout": result.grad_rollout is not None, "logit_difference": result.logit_difference,
            "notes": list(result.notes)}


SPEC = Stage(name="attention", title="Attention", order=70, options=AttentionConfig, run=run, check=check,
             arrays=arrays,
             to_json=to_json, needs_hooks=True)
