"""The forward that perturbation metrics run: logits of many perturbed inputs, no gradients.

`inference_forward(model, example)` returns a callable x -> logits (N, K) that the metrics call for every
perturbed batch (deletion and insertion alone send ~225 inputs per image, method and curve), so this
forward is where their time goes. It is, when it can be made and checked, a faster equivalent of the model
built on a deep copy (the caller's model is never changed):

- batch norm folded into the convolution before it (`torch.fx.experimental.optimization.fuse`);
- channels-last weights and inputs (oneDNN's fast layout on CPU);
- on the CPU, NNPACK's Winograd convolution for the 3x3 stride-1 convolutions of inputs 14² and larger:
  fewer multiplications than oneDNN's direct convolution, which already runs near the core's peak.

Measured on ResNet-18, 224², batch 32, one thread: eager 61 ms an image, folded + channels-last 44 ms,
+ Winograd 40 ms; benchmarks/evaluation.py (8 images, 3 CAMs) runs deletion + insertion 1.57x faster
than a loop of eager forwards (README, Speed). The equivalent is checked once against the eager model on
`example`: its logits must agree to `tolerance` relative to the largest |logit| (a change δ in the logits
moves a softmax probability by at most δ/2). Anything that fails (a model fx cannot trace, hooks on the
model, which the copy would lose, training mode, a larger difference) leaves the eager model under
`torch.inference_mode()`, which is always right.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]

TOLERANCE = 2e-5  # max |Δ logit| / max(1, max |logit|) on `example`; the measured ResNet-18 figure is ~1e-6


def inference_forward(model: nn.Module, example: torch.Tensor, *, fast: bool = True,
                      tolerance: float = TOLERANCE, logits: Callable[[object], torch.Tensor] | None = None) -> Forward:
    """x -> the logits of model(x) without autograd; `example` (1+, C, H, W) is an input of the shape the metrics
    will send. `logits` picks them from the model's output (a model adapter's `pick_logits`; default: the output
    is the logits). With `fast`, the checked equivalent described in the module docstring when one can be made."""
    eager = _under_inference_mode(model, logits)
    if not fast:
        return eager
    try:
        fast_forward = _under_inference_mode(fast_copy(model, example), logits)
        check = example if example.shape[0] > 1 else torch.cat([example, example])  # batched kernels too
        expected, got = eager(check).float(), fast_forward(check).float()
        difference = float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
    except Exception as error:  # noqa: BLE001 - any failure means: keep the eager model
        warnings.warn(f"inference_forward: the eager model is used ({type(error).__name__}: {error})",
                      stacklevel=2)
        return eager
    if not difference <= tolerance:
        warnings.warn(f"inference_forward: the eager model is used (the fast equivalent's logits differ by "
                      f"{difference:.1e} relative, above {tolerance:.0e})", stacklevel=2)
        return eager
    return fast_forward


def fast_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A deep copy of `model` with batch norm folded and, for (N, C, H, W) inputs on the CPU, channels-last
    and Winograd 3x3 convolutions where they pay (`_winograd_convolutions`); raises ValueError when the
    model must stay as it is."""
    if any(m.training for m in model.modules()):
        raise ValueError("the model is in training mode (batch norm would use batch statistics)")
    if _has_hooks(model):
        raise ValueError("the model has hooks, which a traced copy would not call")
    from torch.fx.experimental.optimization import fuse

    copied = fuse(model)  # traces a deep copy; raises when fx cannot trace the model
    if example.device.type != "cpu" or example.dim() != 4:  # measured on the CPU only: the fold alone
        return copied
    copied = copied.to(memory_format=torch.channels_last)
    if example.dtype == torch.float32:
        _winograd_convolutions(copied, example)
    return _ChannelsLastInput(copied)


class _ChannelsLastInput(nn.Module):
    """Runs `module` on a channels-last copy of its (N, C, H, W) input."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last))


class _WinogradConv(nn.Module):
    """A 3x3, stride-1, padding-1 convolution by NNPACK (Winograd); `torch.conv2d` if NNPACK refuses."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.register_buffer("weight", conv.weight.detach().contiguous())
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.detach().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, [1, 1])
        except RuntimeError:
            return self.conv(x)


def _winograd_convolutions(module: torch.fx.GraphModule, example: torch.Tensor, smallest: int = 14) -> None:
    """Swap, in place, the 3x3 stride-1 padding-1 dense convolutions of `module` whose input is at least
    `smallest` pixels a side for `_WinogradConv`. Smaller inputs waste most of NNPACK's 8x8 tiles (on
    ResNet-18's 7² layer4 it is slower than oneDNN). Does nothing where NNPACK is not built in."""
    if not getattr(torch, "_nnpack_available", lambda: False)():  # also initialises NNPACK
        return
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.inference_mode():
        ShapeProp(module).propagate(example)
    for node in module.graph.nodes:
        conv = module.get_submodule(node.target) if node.op == "call_module" else None
        if (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros" and min(node.args[0].meta["tensor_meta"].shape[2:]) >= smallest):
            parent, _, name = node.target.rpartition(".")
            setattr(module.get_submodule(parent), name, _WinogradConv(conv))


def _has_hooks(model: nn.Module) -> bool:
    """Forward or backward hooks on any submodule, or global module hooks."""
    from torch.nn.modules import module as module_globals

    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    if any(getattr(module_globals, name, None) for name in names):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


def _under_inference_mode(model: nn.Module, logits: Callable[[object], torch.Tensor] | None = None) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = model(x)
            return out if logits is None else logits(out)

    return forward
