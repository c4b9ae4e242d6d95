"""The one place that registers hooks on a model. Every hook is removed on exit, also on error."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import ReportgenError, did_you_mean


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule with qualified name `name` (`layer4.1.conv2`); a clear error with close matches otherwise."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ReportgenError(
            f"layer `{name}` does not exist in {type(model).__name__}.{did_you_mean(name, names)}"
            " Run `reportgen layers CONFIG` to list the layer names."
        ) from None


@contextmanager
def capture_outputs(
    model: nn.Module, names: Sequence[str], *, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named layer during forward passes inside the block.

    Yields a dict filled as the model runs: name -> output of the layer's LAST call
    (a layer called twice keeps its second output). With `detach=False` the outputs stay
    in the autograd graph, so `torch.autograd.grad(score, outputs[name])` works.
    """
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            def hook(_module, _inputs, output, name=name):
                outputs[name] = output.detach() if (detach and torch.is_tensor(output)) else output
            handles.append(get_layer(model, name).register_forward_hook(hook))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def count_hooks(model: nn.Module) -> int:
    """How many forward/backward hooks are registered on the model's modules (tests: must be 0 after a stage)."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return total


# ---------------------------------------------------------------------------- ReLU backward rules

class _GuidedReLU(torch.autograd.Function):
    """relu forward; backward passes only positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0) * (x > 0)


class _DeconvReLU(torch.autograd.Function):
    """relu forward; backward is relu of the incoming gradient, whatever the input was."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp_min(0)


RELU_RULES = {"guided": _GuidedReLU, "deconv": _DeconvReLU}


@contextmanager
def relu_backward_rule(model: nn.Module, rule: str) -> Iterator[int]:
    """Inside the block, every `nn.ReLU` module of `model` back-propagates with `rule`:
    "guided" (guided backprop: relu(grad) where the input was positive) or "deconv" (deconvnet:
    relu(grad)). Yields how many ReLU modules were hooked.

    Each call of a hooked ReLU (a module reused several times per forward included) returns
    `rule(input)` computed from the input it was called with, so its backward never goes through
    the ReLU's own autograd node. The module still runs, on a detached copy of its input (an
    `inplace=True` ReLU therefore cannot overwrite the tensor the rule needs). No attribute of the
    model changes; every hook is removed on exit, also on error. `F.relu` calls are not affected
    (as in Captum, which hooks `nn.ReLU` modules only).
    """
    if rule not in RELU_RULES:
        raise ValueError(f"unknown ReLU rule `{rule}`; expected one of {', '.join(RELU_RULES)}")
    function = RELU_RULES[rule]
    pending: dict[int, list[torch.Tensor]] = {}  # id(module) -> inputs of calls whose forward runs now
    handles = []

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        (x, *rest) = args
        pending.setdefault(id(module), []).append(x)
        shadow = x.detach().clone() if getattr(module, "inplace", False) else x.detach()
        return (shadow, *rest)

    def forward_hook(module: nn.Module, _args: tuple, _output: torch.Tensor) -> torch.Tensor:
        return function.apply(pending[id(module)].pop())

    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                handles.append(module.register_forward_pre_hook(pre_hook))
                handles.append(module.register_forward_hook(forward_hook))
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()
        pending.clear()
