"""Layer layouts: how a transformer's layer outputs become (N, C, H, W) maps, declared per model family.

A CNN's layers output (N, C, H, W) already. A vision transformer's do not, and their shape does not say
which layout they have (a (N, H, W, C) Swin block and a (N, C, H, W) convolution are both 4-D; timm's
ConvNeXt blocks are channels-last inside), so each family declares its layers by module name and type:

- `tokens`: (N, prefix + h·w + suffix, C); the `prefix` class (and distillation) tokens and the `suffix` ones
  (YOLOS's detection tokens) are dropped and the patches folded into the (h, w) grid of the patch embedding
  (pytorch-grad-cam's ViT `reshape_transform`);
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
    suffix: int = 0  # tokens: tokens after the patches (YOLOS's detection tokens)

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
            return x[:, self.prefix:self.prefix + h * w, :].reshape(n, h, w, c).permute(0, 3, 1, 2)
        return tokens

    def grid_of(self, name: str, shape: tuple) -> tuple[int, int]:
        """(h, w) of the patches in a token output of `shape`; an error naming the layer when the length is
        not prefix + the grid."""
        length = shape[1] - self.prefix - self.suffix if len(shape) == 3 else -1
        if self.grid is not None and length == self.grid[0] * self.grid[1]:
            return self.grid
        side = math.isqrt(max(length, 0))
        if self.grid is None and length > 0 and side * side == length:
            return side, side
        expected = (f"{self.prefix} class token{'s' if self.prefix != 1 else ''} + " if self.prefix else "") + (
            f"a {self.grid[0]}×{self.grid[1]} grid of patches" if self.grid else "a square grid of patches") + (
            f" + {self.suffix} detection tokens" if self.suffix else "")
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
    (or stages) in order, the feature maps' default layers; `pyramid`: a detector's layer that outputs its
    feature pyramid, a dict of (N, C, h, w) levels (torchvision's `backbone`: EigenCAM and AblationCAM read it
    through pytorch-grad-cam's `fasterrcnn_reshape_transform`), or None."""

    family: str = ""
    layers: dict[str, Layout] = field(default_factory=dict)
    only: bool = False
    cam_layer: str | None = None
    cam_why: str = ""
    blocks: tuple[str, ...] = ()
    pyramid: str | None = None


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


# ---------------------------------------------------------------------------- segmenters
# A segmenter's CAM target is a map the per-pixel classifier reads, so that a class's map is about that class's
# region: for torchvision's FCN, DeepLabV3 and LRASPP (and Hugging Face's MobileViT, whose head is DeepLabV3's)
# the backbone's last block, as pytorch-grad-cam's semantic segmentation tutorial targets DeepLabV3's
# `backbone.layer4` (output stride 8 for the ResNets, 16 for the MobileNets; the heads' last layers are the logits
# themselves, a degenerate target); for SegFormer the decode head's fused map (1/4 of the input, every stage in
# it), after its ReLU: its classifier is a 1×1 convolution of it, so Grad-CAM there is the class's logit map. Its
# encoder's last stage is 1/32 of the input.

CAM_BACKBONE = "the backbone's last block, pytorch-grad-cam's target for DeepLabV3 in its segmentation tutorial"
CAM_SEGFORMER = ("the decode head's fused map after its ReLU (1/4 of the input), which its 1×1 classifier reads: "
                 "Grad-CAM there is the class's logit map")


def torchvision_segmentation(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """torchvision's FCN, DeepLabV3 and LRASPP: CNNs (every layer (N, C, H, W)); the CAM layer is the backbone's
    last block (`backbone.layer4` for the ResNets, `backbone.16` for MobileNetV3)."""
    last = _children_names(model.backbone)[-1]
    return Layouts(f"torchvision {type(model).__name__}", cam_layer=f"backbone.{last}", cam_why=CAM_BACKBONE)


def huggingface_mobilevit(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """Hugging Face's MobileViT(V2)ForSemanticSegmentation: its stages and heads output (N, C, H, W); the
    transformers inside a stage see unfolded patches (N·patch area, patches, C), no map of the input. The CAM layer
    is the encoder's last stage, which the DeepLabV3 head (`segmentation_head`) reads."""
    backbone = next(name for name in ("mobilevit", "mobilevitv2") if hasattr(model, name))
    last = len(getattr(model, backbone).encoder.layer) - 1
    return Layouts("Hugging Face MobileViT", cam_layer=f"{backbone}.encoder.layer.{last}", cam_why=CAM_BACKBONE)


def huggingface_segformer(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """Hugging Face's SegformerForSemanticSegmentation: each stage (`segformer.stages.i`) outputs a map
    (N, C, h, w); inside it the patch embedding's norm, the blocks and the stage's norm see tokens (N, h·w, C) of the
    grid its patch convolution makes, as do the decode head's projections of the stages (`linear_projections.i`).
    The attention's keys and values (reduced by `sr_ratios`) are no map of that grid and are left undeclared."""
    config = model.config
    h, w = input_size[-2:]
    layers: dict[str, Layout] = {}
    for i in range(config.num_encoder_blocks):
        patch, stride = config.patch_sizes[i], config.strides[i]
        h, w = (h + 2 * (patch // 2) - patch) // stride + 1, (w + 2 * (patch // 2) - patch) // stride + 1
        tokens = Layout("tokens", grid=(h, w))
        stage = f"segformer.stages.{i}"
        names = [f"{stage}.patch_embeddings.layer_norm", f"{stage}.layer_norm",
                 f"decode_head.linear_projections.{i}", f"decode_head.linear_projections.{i}.proj"]
        names += [f"{stage}.blocks.{j}" for j in range(config.depths[i])]
        layers |= {name: tokens for name in names}
    present = {name for name, _ in model.named_modules()}  # the names of transformers 5.17; others: no layouts
    stages = tuple(f"segformer.stages.{i}" for i in range(config.num_encoder_blocks))
    return Layouts("Hugging Face SegFormer", {n: v for n, v in layers.items() if n in present},
                   cam_layer="decode_head.activation", cam_why=CAM_SEGFORMER,
                   blocks=tuple(name for name in stages if name in present))


# ---------------------------------------------------------------------------- detectors
# A detector's gradient CAMs target a tensor layer its boxes are read from: the backbone's last block before the
# feature pyramid (pytorch-grad-cam's gradient hooks do not take the FPN's dict output). Faster R-CNN, RetinaNet and
# FCOS: `backbone.body`'s last block (`layer4` of the ResNets, `16` of MobileNetV3); SSD and SSDlite: the last part of
# `backbone.features` (the trunk whose output the extra layers continue); DETR: the last stage of its ResNet
# backbone that the transformer reads (`out_features`; RT-DETR's alike); YOLOS: the last block's first norm (a ViT, its detection
# tokens after the patches dropped). EigenCAM and AblationCAM read the pyramid, `backbone` (pgc's tutorial).

CAM_DETECTOR = ("the backbone's last block before the feature pyramid: a tensor layer, whose gradients pytorch-grad-cam "
                "takes (the pyramid's dict output takes none)")
CAM_DETR = "the last stage of the ResNet backbone that DETR's transformer reads"


def torchvision_detection(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """torchvision's Faster R-CNN, RetinaNet, FCOS, SSD and SSDlite: CNNs; the CAM layer is the backbone's last
    block (`backbone.body.<last>`, SSD's `backbone.features.<last>`), the pyramid is `backbone`."""
    trunk = "body" if hasattr(model.backbone, "body") else "features"
    last = _children_names(getattr(model.backbone, trunk))[-1]
    return Layouts(f"torchvision {type(model).__name__}", cam_layer=f"backbone.{trunk}.{last}", cam_why=CAM_DETECTOR,
                   pyramid="backbone")


def huggingface_detr(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """Hugging Face's DetrForObjectDetection with a Hugging Face backbone (`use_timm_backbone: false`), and
    RTDetrForObjectDetection (its ResNet's stages at the same names): the CAM
    layer is the last stage in its `out_features` (`model.backbone.model.encoder.stages.<i>`); with timm's backbone,
    none is named."""
    backbone = getattr(getattr(model.model, "backbone", None), "model", None)
    features = getattr(getattr(backbone, "config", None), "out_features", None) or []
    stages = getattr(getattr(backbone, "encoder", None), "stages", None)
    if stages is None or not features or not features[-1].startswith("stage"):
        return Layouts("Hugging Face DETR")
    last = int(features[-1][len("stage"):]) - 1  # "stage1" is the first stage after the stem
    return Layouts(f"Hugging Face {type(model).__name__.removesuffix('ForObjectDetection')}",
                   cam_layer=f"model.backbone.model.encoder.stages.{last}", cam_why=CAM_DETR)


def huggingface_yolos(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """Hugging Face's YolosForObjectDetection: a ViT whose tokens are (N, 1 + h·w + detection tokens, C) in
    `vit.encoder` and `vit.layernorm`, the patch grid that of the input (its position embeddings are
    interpolated to it)."""
    config = model.config
    tokens = Layout("tokens", prefix=1, grid=_patch_grid(input_size, config.patch_size),
                    suffix=config.num_detection_tokens)
    layers = _under(model, "vit.encoder.layer", tokens, skip=lambda n, m: ".attention" in n)  # per-head tensors
    layers["vit.layernorm"] = tokens
    layers["vit.embeddings.patch_embeddings.projection"] = Layout("channels_first")
    layers.pop("vit.encoder.layer", None)  # a ModuleList, never called
    blocks = tuple(f"vit.encoder.layer.{i}" for i in range(len(model.vit.encoder.layer)))
    return Layouts("Hugging Face YOLOS", layers, only=True, cam_layer=f"{blocks[-1]}.layernorm_before",
                   cam_why=CAM_VIT, blocks=blocks)


FAMILIES: dict[str, Callable[[nn.Module, tuple[int, ...]], Layouts]] = {
    "torchvision.models.vision_transformer.VisionTransformer": torchvision_vit,
    "torchvision.models.swin_transformer.SwinTransformer": torchvision_swin,
    "timm.models.vision_transformer.VisionTransformer": timm_vit,
    "timm.models.swin_transformer.SwinTransformer": timm_swin,
    "timm.models.convnext.ConvNeXt": timm_convnext,
    "transformers.models.vit.modeling_vit.ViTForImageClassification": huggingface_vit,
    "torchvision.models.segmentation.fcn.FCN": torchvision_segmentation,
    "torchvision.models.segmentation.deeplabv3.DeepLabV3": torchvision_segmentation,
    "torchvision.models.segmentation.lraspp.LRASPP": torchvision_segmentation,
    "transformers.models.segformer.modeling_segformer.SegformerForSemanticSegmentation": huggingface_segformer,
    "transformers.models.mobilevit.modeling_mobilevit.MobileViTForSemanticSegmentation": huggingface_mobilevit,
    "transformers.models.mobilevitv2.modeling_mobilevitv2.MobileViTV2ForSemanticSegmentation": huggingface_mobilevit,
    "torchvision.models.detection.generalized_rcnn.GeneralizedRCNN": torchvision_detection,
    "torchvision.models.detection.retinanet.RetinaNet": torchvision_detection,
    "torchvision.models.detection.fcos.FCOS": torchvision_detection,
    "torchvision.models.detection.ssd.SSD": torchvision_detection,
    "transformers.models.detr.modeling_detr.DetrForObjectDetection": huggingface_detr,
    "transformers.models.yolos.modeling_yolos.YolosForObjectDetection": huggingface_yolos,
    "transformers.models.rt_detr.modeling_rt_detr.RTDetrForObjectDetection": huggingface_detr,
}
# the recommended CAM layer of each segmenter family above, for a model built with the defaults (a family's
# function finds the name on the model itself): the table the docs and the task can show
SEGMENTATION_CAM_LAYERS = {
    "fcn_resnet50, fcn_resnet101, deeplabv3_resnet50, deeplabv3_resnet101": "backbone.layer4",
    "deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large": "backbone.16",
    "SegformerForSemanticSegmentation": "decode_head.activation",
    "MobileViTForSemanticSegmentation": "mobilevit.encoder.layer.4",
    "MobileViTV2ForSemanticSegmentation": "mobilevitv2.encoder.layer.4",
}


# the recommended CAM layer of each detector family, built with the defaults (see `torchvision_detection`)
DETECTION_CAM_LAYERS = {
    "fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2, retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2, "
    "fcos_resnet50_fpn": "backbone.body.layer4",
    "fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_mobilenet_v3_large_320_fpn": "backbone.body.16",
    "ssdlite320_mobilenet_v3_large": "backbone.features.1",
    "ssd300_vgg16": "backbone.features.22",
    "DetrForObjectDetection": "model.backbone.model.encoder.stages.3",
    "YolosForObjectDetection": "vit.encoder.layer.11.layernorm_before",
    "RTDetrForObjectDetection": "model.backbone.model.encoder.stages.3",
}


def declare_layouts(model: nn.Module, input_size: tuple[int, ...]) -> Layouts:
    """The layouts the model's family declares (by its class or a base class), or none (a CNN)."""
    for cls in type(model).__mro__:
        declare = FAMILIES.get(f"{cls.__module__}.{cls.__qualname__}")
        if declare is not None:
            return declare(model, tuple(input_size))
    return NONE
