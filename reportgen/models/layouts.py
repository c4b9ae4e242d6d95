"""Layer layouts: how a transformer's layer outputs become (N, C, H, W) maps, declared per model family.

A CNN's layers output (N, C, H, W) already. A vision transformer's do not, and their shape does not say
which layout they have (a (N, H, W, C) Swin block and a (N, C, H, W) convolution are both 4-D; timm's
ConvNeXt blocks are channels-last inside), so each family declares its layers by module name and type:

- `tokens`: (N, prefix + h·w, C); the `prefix` class (and distillation) tokens are dropped and the patches
  folded into the (h, w) grid of the patch embedding (pytorch-grad-cam's ViT `reshape_transform`);
- `channels_last`: (N, H, W, C), permuted (Swin, timm ConvNeXt blocks without `conv_mlp`);
- `channels_first`: (N, C, H, W) as it is (the patch embedding's convolution).

In a family marked `only`, the declared layers are the only maps: the other layers' outputs (attention
weights (N, heads, L, L), windowed tokens, per-head queries) are not images of the input. A family also
names the CAM target layer pytorch-grad-cam's documentation recommends for it.

`FAMILIES` maps a model class, "module.QualName" (its subclasses included), to the function that declares
the layouts of such a model for an input of (C, H, W). Adding a family is one function and one record.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..errors import ReportgenError


@dataclass(frozen=True)
class Layout:
    """The layout of one layer's output (see the module docstring)."""

    kind: Literal["tokens", "channels_last", "channels_first"]
    prefix: int = 0  # tokens: class / distillation tokens before the patches
    grid: tuple[int, int] | None = None  # tokens: (h, w) of the patches; None: a square grid

    def describe(self) -> str:
        if self.kind == "tokens":
            grid = "h·w" if self.grid is None else f"{self.grid[0]}·{self.grid[1]}"
            return f"tokens (N, {self.prefix} + {grid}, C)" if self.prefix else f"tokens (N, {grid}, C)"
        return "channels-last (N, H, W, C)" if self.kind == "channels_last" else "(N, C, H, W)"

    def view(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function that turns this layer's output into (N, C, H, W) (a view, no copy)."""
        if self.kind == "channels_first":
            return lambda x: x
        if self.kind == "channels_last":
            def channels_last(x: torch.Tensor) -> torch.Tensor:
                if x.dim() != 4:
                    raise ReportgenError(f"layer `{name}` outputs shape {list(x.shape)}; its declared layout is "
                                         "channels-last (N, H, W, C).")
                return x.permute(0, 3, 1, 2)
            return channels_last

        def tokens(x: torch.Tensor) -> torch.Tensor:
            h, w = self.grid_of(name, tuple(x.shape))
            n, _, c = x.shape
            return x[:, self.prefix:, :].reshape(n, h, w, c).permute(0, 3, 1, 2)
        return tokens

    def grid_of(self, name: str, shape: tuple) -> tuple[int, int]:
        """(h, w) of the patches in a token output of `shape`; an error naming the layer when the length is
        not prefix + the grid."""
        length = shape[1] - self.prefix if len(shape) == 3 else -1
        if self.grid is not None and length == self.grid[0] * self.grid[1]:
            return self.grid
        side = math.isqrt(max(length, 0))
        if self.grid is None and length > 0 and side * side == length:
            return side, side
        expected = (f"{self.prefix} class token{'s' if self.prefix != 1 else ''} + " if self.prefix else "") + (
            f"a {self.grid[0]}×{self.grid[1]} grid of patches" if self.grid else "a square grid of patches")
        raise ReportgenError(f"layer `{name}` outputs shape {list(shape)}, which is not {expected} (N, L, C): it "
                             "cannot be shown as a map. Check `model.input_size` against the model's image size, "
                             "or choose another layer.")

    def spatial_shape(self, name: str, shape: tuple) -> tuple:
        """The (N, C, H, W) shape of the view of an output of `shape`."""
        if self.kind == "channels_first":
            return tuple(shape)
        if self.kind == "channels_last":
            return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape)
        return (shape[0], shape[2], *self.grid_of(name, tuple(shape)))


@dataclass(frozen=True)
class Layouts:
    """What a family declares: `layers` (name -> Layout); `only`: the declared layers are the only maps;
    `cam_layer`: the recommended CAM target layer and `cam_why` in words; `blocks`: its transformer blocks
    (or stages) in order, the feature maps' default layers."""

    family: str = ""
    layers: dict[str, Layout] = field(default_factory=dict)
    only: bool = False
    cam_layer: str | None = None
    cam_why: str = ""
    blocks: tuple[str, ...] = ()


NONE = Layouts()


def _children_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_children()]


def _under(model: nn.Module, prefix: str, layout: Layout, skip: Callable[[str, nn.Module], bool] = lambda n, m: False
           ) -> dict[str, Layout]:
    """`layout` for the module `prefix` and every module inside it that `skip` does not exclude."""
    return {name: layout for name, module in model.named_modules()
            if (name == prefix or name.startswith(prefix + ".")) and not skip(name, module)}


def _patch_grid(input_size: tuple[int, ...], patch: int | tuple[int, int]) -> tuple[int, int]:
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return input_size[-2] // ph, input_size[-1] // pw


CAM_VIT = "the last block's first norm, pytorch-grad-cam's recommendation for vision transformers"
CAM_SWIN = "the last stage's last block's first norm, pytorch-grad-cam's recommendation for Swin"


def torchvision_vit(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """torchvision's VisionTransformer: `conv_proj` (N, C, h, w), then tokens (N, 1 + h·w, C) in `encoder`."""
    tokens = Layout("tokens", prefix=1, grid=_patch_grid(input_size, model.patch_size))
    layers = _under(model, "encoder", tokens, skip=lambda n, m: isinstance(m, nn.MultiheadAttention)
                    or ".self_attention." in n)
    layers["conv_proj"] = Layout("channels_first")
    blocks = tuple(f"encoder.layers.{name}" for name in _children_names(model.encoder.layers))
    return Layouts("torchvision ViT", layers, only=True, cam_layer=f"{blocks[-1]}.ln_1", cam_why=CAM_VIT,
                   blocks=blocks)


def torchvision_swin(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """torchvision's SwinTransformer: `features.0.0` is the patch convolution; every other layer in `features`,
    and `norm`, is channels-last (N, H, W, C) until `permute`."""
    layers = _under(model, "features", Layout("channels_last"))
    layers |= {"norm": Layout("channels_last"), "features.0.0": Layout("channels_first"),
               "permute": Layout("channels_first")}
    stage = _children_names(model.features)[-1]
    block = _children_names(model.features[-1])[-1]
    return Layouts("torchvision Swin", layers, only=True, cam_layer=f"features.{stage}.{block}.norm1",
                   cam_why=CAM_SWIN, blocks=tuple(f"features.{name}" for name in _children_names(model.features)))


def timm_vit(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """timm's VisionTransformer (DeiT included): tokens (N, prefix + h·w, C) from `pos_drop` to `norm`, prefix =
    the class, distillation and register tokens; the patch embedding's `proj` is (N, C, h, w), its flattened
    output (N, h·w, C). Per-head tensors inside the attention (q_norm, k_norm, attn_drop) are not maps."""
    embed = model.patch_embed
    try:
        grid = tuple(embed.dynamic_feat_size(tuple(input_size[-2:])))
    except (AttributeError, TypeError):  # an embedding that does not say: a square grid, checked per output
        grid = tuple(getattr(embed, "grid_size", ())) or None
    tokens = Layout("tokens", prefix=int(model.num_prefix_tokens), grid=grid)
    per_head = ("q_norm", "k_norm", "attn_drop")
    layers: dict[str, Layout] = {}
    for name in ("pos_drop", "patch_drop", "norm_pre", "blocks", "norm"):
        layers |= _under(model, name, tokens, skip=lambda n, m: n.rsplit(".", 1)[-1] in per_head)
    flat = Layout("tokens", grid=grid) if getattr(embed, "flatten", True) else Layout("channels_last")
    layers |= {"patch_embed": flat, "patch_embed.norm": flat, "patch_embed.proj": Layout("channels_first")}
    return Layouts("timm ViT", layers, only=True, cam_layer=f"blocks.{len(model.blocks) - 1}.norm1", cam_why=CAM_VIT,
                   blocks=tuple(f"blocks.{i}" for i in range(len(model.blocks))))


def timm_swin(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """timm's SwinTransformer: channels-last (N, H, W, C) stages, merges, blocks and their `norm1`; inside a
    block, `norm2` and the MLP see tokens (N, H·W, C) of the block's resolution, and the attention sees windows
    (not a map)."""
    layers = {"patch_embed.proj": Layout("channels_first")}
    last = Layout("channels_last")
    layers |= {name: last for name in ("patch_embed", "patch_embed.norm", "norm")}
    for name, module in model.named_modules():
        if not name.startswith("layers"):
            continue
        if type(module).__name__ == "SwinTransformerBlock":
            grid = tuple(module.input_resolution)
            layers |= {name: last, f"{name}.norm1": last, f"{name}.drop_path1": last}
            flat = Layout("tokens", grid=grid)
            layers |= {n: flat for n in _under(model, f"{name}.mlp", flat)}
            layers |= {f"{name}.norm2": flat, f"{name}.drop_path2": flat}
        elif ".blocks." not in name:  # stages, `blocks` sequences, patch merging and its parts
            layers[name] = last
    stage = len(model.layers) - 1
    block = len(model.layers[-1].blocks) - 1
    return Layouts("timm Swin", layers, only=True, cam_layer=f"layers.{stage}.blocks.{block}.norm1",
                   cam_why=CAM_SWIN, blocks=tuple(f"layers.{i}" for i in range(len(model.layers))))


def timm_convnext(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """timm's ConvNeXt: a CNN whose blocks (without `conv_mlp`) run their norm and MLP channels-last."""
    layers: dict[str, Layout] = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "ConvNeXtBlock" and not getattr(module, "use_conv_mlp", True):
            layers[f"{name}.norm"] = Layout("channels_last")
            layers |= _under(model, f"{name}.mlp", Layout("channels_last"))
    return Layouts("timm ConvNeXt", layers)


def huggingface_vit(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """Hugging Face's ViTForImageClassification: tokens (N, 1 + h·w, C) in `vit` after the patch embedding."""
    grid = _patch_grid(input_size, model.config.patch_size)
    embed = "vit.embeddings.patch_embeddings"
    layers = _under(model, "vit", Layout("tokens", prefix=1, grid=grid))
    layers |= {embed: Layout("tokens", grid=grid), f"{embed}.projection": Layout("channels_first")}
    layers.pop("vit", None)  # returns a ModelOutput
    norms = [name for name, _ in model.named_modules() if name.endswith(".layernorm_before")]
    blocks = tuple(name for name, module in model.named_modules() if type(module).__name__ == "ViTLayer")
    return Layouts("Hugging Face ViT", layers, only=True, cam_layer=norms[-1] if norms else None, cam_why=CAM_VIT,
                   blocks=blocks)


FAMILIES: dict[str, Callable[[nn.Module, tuple[int, ...]], Layouts]] = {
    "torchvision.models.vision_transformer.VisionTransformer": torchvision_vit,
    "torchvision.models.swin_transformer.SwinTransformer": torchvision_swin,
    "timm.models.vision_transformer.VisionTransformer": timm_vit,
    "timm.models.swin_transformer.SwinTransformer": timm_swin,
    "timm.models.convnext.ConvNeXt": timm_convnext,
    "transformers.models.vit.modeling_vit.ViTForImageClassification": huggingface_vit,
}


def declare_layouts(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """The layouts the model's family declares (by its class or a base class), or none (a CNN)."""
    for cls in type(model).__mro__:
        declare = FAMILIES.get(f"{cls.__module__}.{cls.__qualname__}")
        if declare is not None:
            return declare(model, tuple(input_size))
    return NONE
