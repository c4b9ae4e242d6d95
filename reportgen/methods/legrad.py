"""LeGrad (Bousselham et al. 2024; torchcam 0.5.0's `LeGrad`) for vision transformers: per transformer block l, the
gradient of that block's class score s^l with respect to its post-softmax attention probabilities A^l (N, heads,
L, L); its positive part averaged over the heads and the query tokens gives each key token's relevance, the prefix
keys (class, distillation, register tokens) are dropped, the patches folded into their grid, and the blocks' maps
averaged. Attention values are not multiplied in. The map is non-negative; the report's shared post-processing
(min-max, resize; `methods.cam.postprocess`) follows, as for every CAM.

It reads the model's blocks, not the CAM target layer: like FullGrad, every target layer gets the same map
(k, N, h, w) at the patch grid. The blocks: the last `legrad_blocks` (the record's option), or every block (null,
the paper's choice; torchcam takes the blocks it is given).

The block's class score s^l (its "score projection") per family (`models.layouts` finds the family and its blocks):

- torchvision `VisionTransformer` (the parity reference): torchcam's own projection, `heads(encoder.ln(tokens.mean
  (dim=1)))` (the MEAN of all tokens, class token included, where the model itself reads the class token);
- timm `VisionTransformer` (DeiT included): the model's own readout, `forward_head(norm(tokens))` (its pooling:
  the class token, or the patches' mean), which is LeGrad's definition; torchcam refuses timm's blocks;
- Hugging Face `ViTForImageClassification`: likewise its own, `classifier(vit.layernorm(tokens)[:, 0])`.

The probabilities come from each attention's explicit path (torchvision: `need_weights=True`; timm: `fused_attn =
False`, read at `attn_drop`; Hugging Face: the eager implementation), as the `attention` stage reads them; the model
is restored after. Its forward and backward passes are its own, `job.batch_size` images each (`analyses.cam.
batch_size`): per pass one forward, then per target rank one backward per block (each to its own attention). Not a
vision transformer with global self-attention (a CNN, Swin): `NotApplicable`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..engine import for_rows
from ..models.layouts import Layout, declare_layouts
from ..ops import batches
from .cam import CamJob, NotApplicable
from .options import LeGradOptions

FAMILIES = ("torchvision ViT", "timm ViT", "Hugging Face ViT")
NOT_A_VIT = ("LeGrad needs a vision transformer with global self-attention (ViT or DeiT from torchvision, timm or "
             "Hugging Face): it differentiates each block's class score with respect to that block's attention "
             "probabilities. {what}")


@dataclass(frozen=True)
class Vit:
    """A vision transformer LeGrad reads: its module, its family, its blocks (names inside `module`, in order)
    with their token layouts, and the block score: tokens (N, L, C) -> class scores (N, K)."""

    module: nn.Module
    family: str
    blocks: tuple[str, ...]
    layouts: dict[str, Layout]
    project: Callable[[torch.Tensor], torch.Tensor]


def find_vit(model: nn.Module, input_size: tuple[int, ...]) -> Vit:
    """The vision transformer in `model` (the model itself or a module of it: a wrapper's), or NotApplicable."""
    for module in model.modules():
        layouts = declare_layouts(module, input_size)
        if not layouts.family:
            continue
        if "Swin" in layouts.family:
            raise NotApplicable(NOT_A_VIT.format(what=f"A {layouts.family}'s attention is windowed: there is no "
                                                      "global attention over the image to differentiate."))
        if layouts.family not in FAMILIES:
            raise NotApplicable(NOT_A_VIT.format(what=f"This model is a {layouts.family}."))
        return Vit(module=module, family=layouts.family, blocks=layouts.blocks,
                   layouts={name: layouts.layers[name] for name in layouts.blocks}, project=_projection(module,
                                                                                                      layouts.family))
    raise NotApplicable(NOT_A_VIT.format(what=f"{type(model).__name__} is not one (a CNN has no attention)."))


def _projection(vit: nn.Module, family: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if family == "torchvision ViT":
        return lambda tokens: vit.heads(vit.encoder.ln(tokens.mean(dim=1)))  # torchcam's
    if family == "timm ViT":
        return lambda tokens: vit.forward_head(vit.norm(tokens))
    return lambda tokens: vit.classifier(vit.vit.layernorm(tokens)[:, 0])


def legrad(job: CamJob) -> torch.Tensor:
    vit = find_vit(job.model, tuple(job.batch.shape[1:]))
    count = (job.options or LeGradOptions()).legrad_blocks
    names = vit.blocks[-count:] if count else vit.blocks
    n = job.batch.shape[0]
    out: torch.Tensor | None = None
    for rows in batches(n, job.batch_size):
        with _exposed(vit, names) as (tokens, probs), torch.enable_grad():
            x = job.batch[rows].detach().requires_grad_(True)  # a graph even when the parameters are frozen
            for_rows(job.forward, torch.arange(n)[rows])(x)
            scores = [vit.project(tokens[name]) for name in names]
            # torchvision hands over a view made after the probabilities were used: differentiate its base
            used = [a._base if a._base is not None and a._base.numel() == a.numel() else a
                    for a in (probs[name] for name in names)]
            for r, classes in enumerate(job.class_sets):
                target = torch.as_tensor(classes[rows], device=scores[0].device)[:, None]
                maps = []
                for name, score, a in zip(names, scores, used):
                    (g,) = torch.autograd.grad(score.gather(1, target).sum(), a, retain_graph=True)
                    relevance = g.reshape(probs[name].shape).clamp_min(0).float().mean(dim=(1, 2))  # (n, L) keys
                    layout = vit.layouts[name]
                    h, w = layout.grid_of(name, tuple(tokens[name].shape))
                    maps.append(relevance[:, layout.prefix:layout.prefix + h * w].reshape(-1, h, w))
                cam = torch.stack(maps).mean(dim=0)
                if out is None:
                    out = cam.new_zeros(len(job.class_sets), n, *cam.shape[1:])
                out[r, rows] = cam.detach()
    return out


@contextlib.contextmanager
def _exposed(vit: Vit, names: tuple[str, ...]) -> Iterator[tuple[dict, dict]]:
    """Inside the block: (block -> its output tokens, block -> its attention probabilities (N, heads, L, L)), both
    in the autograd graph, filled by each forward; the model is restored on exit."""
    tokens: dict[str, torch.Tensor] = {}
    probs: dict[str, torch.Tensor] = {}
    handles, restore = [], []

    def keep(store: dict, name: str, pick: Callable) -> Callable:
        return lambda module, inputs, output: store.__setitem__(name, pick(output))

    first = lambda output: output[0] if isinstance(output, tuple) else output  # noqa: E731 (a Hugging Face block)
    second = lambda output: output[1]  # noqa: E731
    implementation = None
    if vit.family == "Hugging Face ViT":
        implementation = vit.module.config._attn_implementation
        vit.module.set_attn_implementation("eager")
    try:
        for name in names:
            block = vit.module.get_submodule(name)
            handles.append(block.register_forward_hook(keep(tokens, name, first)))
            if vit.family == "torchvision ViT":  # its blocks call it with need_weights=False
                handles.append(block.self_attention.register_forward_pre_hook(
                    lambda m, args, kwargs: (args, kwargs | {"need_weights": True, "average_attn_weights": False}),
                    with_kwargs=True))
                handles.append(block.self_attention.register_forward_hook(keep(probs, name, second)))
            elif vit.family == "timm ViT":  # the explicit path's softmax goes through `attn_drop`
                attention = block.attn
                if not hasattr(attention, "fused_attn") or not hasattr(attention, "attn_drop"):
                    raise NotApplicable(NOT_A_VIT.format(what=f"timm block `{name}`'s attention "
                                                              f"({type(attention).__name__}) hands over no "
                                                              "probabilities."))
                restore.append((attention, attention.fused_attn))
                attention.fused_attn = False
                handles.append(attention.attn_drop.register_forward_hook(keep(probs, name, lambda o: o)))
            else:  # the eager implementation returns the probabilities beside the output
                handles.append(block.attention.register_forward_hook(keep(probs, name, second)))
        yield tokens, probs
    finally:
        for handle in handles:
            handle.remove()
        for attention, fused in restore:
            attention.fused_attn = fused
        if implementation is not None:
            vit.module.set_attn_implementation(implementation)
