"""The forward that perturbation metrics run: logits of many perturbed inputs, no gradients.

`inference_forward(model, example)` returns a callable x -> logits (N, K) that the metrics call for every
perturbed batch (deletion and insertion alone send ~225 inputs per image, method and curve), so this
forward is where their time goes. It is, when it can be made and checked, a faster equivalent of the model
built on a deep copy (the caller's model is never changed):

- batch norm folded into the convolution before it (`torch.fx.experimental.optimization.fuse`);
- on the CPU in float32: channels-last weights and inputs (oneDNN's fast layout); Winograd F(4x4, 3x3)
  (`_Winograd43`) for the 3x3 stride-1 convolutions of `WINOGRAD_CHANNELS` (128) channels and more, 36
  multiplications per 4x4 output tile instead of 144, where oneDNN's direct convolution already runs near
  the core's peak; and batches run in chunks that keep the largest activation within `CHUNK_BYTES`.

Measured on ResNet-18 at 224² by `python benchmarks/evaluation.py` (its "forward alone" line): on two
threads, batches of 64, eager 37 ms an image and this forward 17 ms. The equivalent is checked once
against the eager model on `example`: its logits must agree to `tolerance` relative to the largest
|logit| (a change δ in the logits moves a softmax probability by at most δ/2). Anything that fails (a model
fx cannot trace, hooks on the model, which the copy would lose, training mode, a larger difference) leaves
the eager model under `torch.inference_mode()`, which is always right; in cache-sized chunks too
(`_chunk`), since every metric here assumes that an image's logits do not depend on the other images
of its batch.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

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
    chunk = _chunk(model, example)
    try:
        module = fast_copy(model, example)
        fast_forward = _in_chunks(_under_inference_mode(module, logits), chunk)
        check = example if example.shape[0] > 1 else torch.cat([example, example])  # batched kernels too
        expected, got = eager(check).float(), fast_forward(check).float()
        difference = float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
    except Exception as error:  # noqa: BLE001 - any failure means: keep the eager model
        why = f"{type(error).__name__}: {error}"
    else:
        if difference <= tolerance:
            # made when a perturbation method first asks (`local_forward.near`): the metrics never do
            fast_forward.make_local = functools.cache(
                lambda: _local(module, example, chunk, logits, fast_forward, tolerance))
            return fast_forward
        why = f"the fast equivalent's logits differ by {difference:.1e} relative, above {tolerance:.0e}"
    warnings.warn(f"inference_forward: the eager model is used ({why})", stacklevel=2)
    return _in_chunks(eager, chunk)


def _local(module: nn.Module, example: torch.Tensor, chunk: int | None, logits, whole: Forward,
           tolerance: float):
    """The checked `local_forward.LocalForward` of the fast copy (CPU, channels-last), else None."""
    from ..local_forward import local_forward

    if not isinstance(module, _ChannelsLastInput):
        return None
    try:
        return local_forward(module.module, example, chunk, logits, whole, tolerance)
    except Exception:  # noqa: BLE001 - a graph the split does not understand: whole inputs, which are always right
        return None


def fast_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A deep copy of `model` with batch norm folded and, for float32 (N, C, H, W) inputs on the CPU,
    channels-last and Winograd F(4x4, 3x3) for the wide 3x3 convolutions (`_winograd_convolutions`); raises
    ValueError when the model must stay as it is."""
    if any(m.training for m in model.modules()):
        raise ValueError("the model is in training mode (batch norm would use batch statistics)")
    if _has_hooks(model):
        raise ValueError("the model has hooks, which a traced copy would not call")
    from torch.fx.experimental.optimization import fuse

    copied = fuse(model)  # traces a deep copy; raises when fx cannot trace the model
    if example.device.type != "cpu" or example.dim() != 4 or example.dtype != torch.float32:
        return copied  # measured on the CPU in float32 only: the fold alone
    copied = copied.to(memory_format=torch.channels_last)
    _winograd_convolutions(copied)
    return _ChannelsLastInput(copied)


CHUNK_BYTES = 32 << 20
"""A batch is run in chunks whose largest activation fits about this many bytes (the size of a server CPU's
last-level cache), so that the memory-bound steps (the Winograd transforms, additions, pooling) stay in the
cache: on ResNet-18 at 224², chunks of 10 images. The eager model is faster in small batches for the same
reason (`python benchmarks/evaluation.py` prints it at batch 64 and at its best of 4, 8 and 16)."""


class _ChannelsLastInput(nn.Module):
    """Runs `module` on a channels-last copy of its (N, C, H, W) input."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x.contiguous(memory_format=torch.channels_last))


def _chunk(model: nn.Module, example: torch.Tensor) -> int | None:
    """The images a call of the model (or of its fast copy, whose activations are the same size) should have so
    that the largest output of any of its modules on one image of `example` fits `CHUNK_BYTES`, for a model on
    the CPU in eval mode without hooks; else None, whole batches (a model in training mode normalises by the
    batch, so cutting it would change the logits; hooks would see the probing forward and the cut)."""
    if example.device.type != "cpu" or _has_hooks(model) or any(m.training for m in model.modules()):
        return None
    largest = 1

    def probe(module: nn.Module, args: tuple, output: Any) -> None:
        nonlocal largest
        for out in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(out, torch.Tensor):
                largest = max(largest, out.numel() * out.element_size())

    handles = [m.register_forward_hook(probe) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(example[:1])
    except Exception:  # noqa: BLE001 - the model fails here as it will in the metrics: whole batches
        return None
    finally:
        for handle in handles:
            handle.remove()
    return max(1, CHUNK_BYTES // largest)


def _in_chunks(forward: Forward, chunk: int | None) -> Forward:
    """`forward` (x -> logits) called on at most `chunk` images at a time (None: all at once)."""
    if chunk is None:
        return forward

    def chunked(x: torch.Tensor) -> torch.Tensor:
        logits = [forward(part) for part in x.split(chunk)]
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    return chunked


def _winograd_matrices() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lavin & Gray's F(4x4, 3x3) (interpolation points 0, ±1, ±2, ∞), float64: B^T (6x6), G (6x3), A^T (4x6)."""
    bt = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
    g = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
    at = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                      dtype=torch.float64)
    return bt, g, at


class _Winograd43(nn.Module):
    """A 3x3, stride-1, padding-1 dense convolution by Winograd's F(4x4, 3x3): each 4x4 output tile costs 36
    multiplications per input and output channel instead of 144, done as 36 matrix products over
    (tiles x in-channels) @ (in-channels x out-channels), by oneDNN where torch has it (`_one_dnn_linear`).
    Channels-last (N, C, H, W) in and out; the
    transforms are small matrix products (the input's separable in its two axes). Float32 error about 1e-6
    relative a layer (the transformed weights are computed in float64)."""

    local_window = (3, 1, 1)  # kernel, stride, padding: what `local_forward` needs to know of it

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        bt, g, at = _winograd_matrices()
        weight = conv.weight.detach().double().reshape(-1, 9)  # (out · in, 3 · 3)
        transformed = (torch.kron(g, g) @ weight.T).view(36, conv.out_channels, conv.in_channels)  # G w G^T, one product
        self.register_buffer("weight", transformed.float().contiguous())  # (36, out, in)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.float().contiguous())
        self.register_buffer("input_transform", bt.float())
        self.register_buffer("output_transform", torch.kron(at, at).float())  # (16, 36)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows, cols = -(-h // 4), -(-w // 4)
        padded = nn.functional.pad(x, (1, 4 * cols + 1 - w, 1, 4 * rows + 1 - h))
        nhwc = padded.permute(0, 2, 3, 1).contiguous()
        s = nhwc.stride()
        tiles = nhwc.as_strided((6, 6, n, rows, cols, c), (s[1], s[2], s[0], 4 * s[1], 4 * s[2], s[3]))
        d = tiles.reshape(6, -1)  # the overlapping 6x6 tiles, copied: (6, 6 * tiles * c)
        bt = self.input_transform
        v = torch.matmul(bt, (bt @ d).view(6, 6, -1)).view(36, n * rows * cols, c)  # B^T d B per tile
        linear = _one_dnn_linear()
        if linear is None:
            m = torch.bmm(v, self.weight.transpose(1, 2))  # (36, tiles, out)
        else:  # the same 36 products by oneDNN
            m = torch.stack([linear(v[i], self.weight[i], None, "none", [], "") for i in range(36)])
        y = (self.output_transform @ m.view(36, -1)).view(4, 4, n, rows, cols, -1)  # A^T m A
        out = x.new_empty((n, 4 * rows, 4 * cols, y.shape[-1]))
        torch.add(y.permute(2, 3, 0, 4, 1, 5), self.bias, out=out.view(n, rows, 4, cols, 4, -1))
        return out[:, :h, :w].permute(0, 3, 1, 2)


@functools.cache
def _one_dnn_linear() -> Callable | None:
    """oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the op torch's own compiler emits for linear
    layers on the CPU): (tiles, in) x (out, in) -> (tiles, out), or None where this torch has no such op or it does
    not compute a product. On the CPUs measured it runs the Winograd products 1.5-2x faster than `torch.bmm`
    (MKL) and the fast ResNet-18 forward 5-10 % faster (`python benchmarks/evaluation.py --forward-only`); `inference_forward`'s
    equivalence check compares the logits either way."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    a, b = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3)
    try:
        return op if torch.equal(op(a, b, None, "none", [], ""), a @ b.T) else None
    except (RuntimeError, TypeError):
        return None


WINOGRAD_CHANNELS = 128
"""The fewest input and output channels of a convolution `_Winograd43` replaces. Its transforms cost per input
channel and its saving is per input and output channel pair, so narrow convolutions gain nothing: on
ResNet-18, `python benchmarks/evaluation.py --winograd-channels 64` (layer1 too) is no faster."""


def _winograd_convolutions(module: torch.fx.GraphModule) -> None:
    """Swap, in place, the 3x3 stride-1 padding-1 dense convolutions of `module` with at least
    `WINOGRAD_CHANNELS` input and output channels for `_Winograd43`."""
    for node in module.graph.nodes:
        conv = module.get_submodule(node.target) if node.op == "call_module" else None
        if (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros" and min(conv.in_channels, conv.out_channels) >= WINOGRAD_CHANNELS):
            parent, _, name = node.target.rpartition(".")
            setattr(module.get_submodule(parent), name, _Winograd43(conv))


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
