"""The one place that registers hooks on a model. Every hook is removed on exit, also on error."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ReportgenError, did_you_mean
from .models.adapter import hooks_refused, takes_hooks


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule with qualified name `name` (`layer4.1.conv2`); a clear error with close matches otherwise."""
    try:
        return model.get_submodule(name)
    except RuntimeError:  # a TorchScript module has no get_submodule
        found = dict(model.named_modules()).get(name)
        if found is not None:
            return found
    except AttributeError:
        pass
    names = [n for n, _ in model.named_modules() if n]
    raise ReportgenError(f"layer `{name}` does not exist in {type(model).__name__}.{did_you_mean(name, names)}"
                         " Run `reportgen layers CONFIG` to list the layer names.")


ForwardHook = Callable[[nn.Module, tuple, Any], Any]  # (module, inputs, output) -> None or a replacement output


@contextmanager
def forward_hooks(model: nn.Module, hooks: Sequence[tuple[str, ForwardHook]]) -> Iterator[None]:
    """Register each (layer name, forward hook) pair on the named layer for the block; every hook is
    removed on exit, also on error (an unknown layer name included: the hooks registered before it go too)."""
    if hooks and not takes_hooks(model):  # the pipeline refuses such stages first (`Stage.needs_hooks`)
        raise hooks_refused("reading layer outputs")
    handles = []
    try:
        for name, hook in hooks:
            handles.append(get_layer(model, name).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a `capture_outputs(..., stop_after=name)` hook once that layer has run: the rest of the
    forward pass is not needed. `forward_until` runs a model and swallows it."""


def forward_until(model: nn.Module, inputs: torch.Tensor) -> None:
    """`model(inputs)`, ending where a `stop_after` capture says so (the captured outputs keep their graph)."""
    try:
        model(inputs)
    except StopForward:
        pass


def cpu_copy(output: Any) -> Any:
    """A 4-D tensor output (or 3-D: a transformer's tokens) as a float32 copy on the CPU (taken while the layer
    returns, so no later in-place op changes it); anything else as it is."""
    is_map = torch.is_tensor(output) and output.dim() in (3, 4)
    return output.detach().to("cpu", torch.float32, copy=True) if is_map else output


@contextmanager
def capture_outputs(
    model: nn.Module, names: Sequence[str], *, detach: bool = True, stop_after: str | None = None,
    versions: dict[str, int] | None = None, keep: Callable[[Any], Any] | None = None, pass_copies: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named layer during forward passes inside the block.

    Yields a dict filled as the model runs: name -> output of the layer's LAST call
    (a layer called twice keeps its second output). With `detach=False` the outputs stay
    in the autograd graph, so `torch.autograd.grad(score, outputs[name])` works. With `stop_after`,
    that layer's first output ends the pass (run it with `forward_until`). With `versions`, each output's
    version counter as the layer returned it goes there (a later in-place op raises the counter).
    `keep(output)` decides what is recorded instead (a copy on the CPU, a shape, ...). With `pass_copies`,
    the rest of the model receives a copy (`clone()`) of each output, so a later in-place op (VGG's
    `ReLU(inplace=True)`) changes the copy and never the recorded tensor: the output and its gradient are
    the layer's own, as in Captum's layer attributions (`forward_hook_with_return`). The dict's order is
    the order of the layers' last calls.
    """
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> ForwardHook:
        def hook(_module, _inputs, output):
            outputs.pop(name, None)  # re-inserted: the dict's order is the order of last calls
            if keep is not None:
                outputs[name] = keep(output)
            else:
                outputs[name] = output.detach() if (detach and torch.is_tensor(output)) else output
            if versions is not None and torch.is_tensor(output):
                versions[name] = output._version
            if name == stop_after:
                raise StopForward
            return output.clone() if pass_copies and torch.is_tensor(output) else None
        return hook

    with forward_hooks(model, [(name, make_hook(name)) for name in names]):
        yield outputs


def count_hooks(model: nn.Module) -> int:
    """How many forward/backward hooks are registered on the model's modules (tests: must be 0 after a stage)."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return total


# ---------------------------------------------------------------------------- ReLU backward rules

RELU_RULES = ("plain", "guided", "deconv")


class ReluRule:
    """How the ReLU modules hooked by `relu_backward_rule` back-propagate: "plain" (the ordinary ReLU
    gradient), "guided" (guided backprop: relu(grad) where the input was positive) or "deconv"
    (deconvnet: relu(grad)). Read at backward time: one forward serves several rules when `name`
    changes between `torch.autograd.grad(..., retain_graph=True)` calls."""

    def __init__(self, name: str):
        self.name = name
        self.hooked = 0  # how many nn.ReLU modules are hooked
        # the inputs of the hooked ReLUs built with inplace=True, while the block runs: tensors that the model
        # expects those ReLUs to overwrite and that now keep their values (the engine checks its layers against them)
        self.inplace_inputs: list[torch.Tensor] = []


class _RuledReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: ReluRule) -> torch.Tensor:
        ctx.rule = rule
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        name = ctx.rule.name
        if name == "deconv":
            return grad.clamp_min(0), None
        if name == "guided":
            grad = grad.clamp_min(0)
        return torch.ops.aten.threshold_backward(grad, x, 0), None  # grad where x > 0, else 0: relu's own rule


@contextmanager
def relu_backward_rule(model: nn.Module, rule: str = "guided") -> Iterator[ReluRule]:
    """Inside the block, every `nn.ReLU` module of `model` back-propagates by the yielded `ReluRule`
    (initially `rule`; see ReluRule for the rules).

    Each call of a hooked ReLU (a module reused several times per forward included) returns the rule's
    function of the input it was called with, so its backward never goes through the ReLU's own
    autograd node, and a ReLU input that also feeds another path keeps that path's plain gradient.
    The module itself runs on an empty tensor (so an `inplace=True` ReLU cannot overwrite the tensor
    the rule needs, and no work is wasted). No attribute of the model changes; every hook is
    removed on exit, also on error. `F.relu` calls are not affected (Captum, which hooks `nn.ReLU`
    modules only, does the same).
    """
    if rule not in RELU_RULES:
        raise ValueError(f"unknown ReLU rule `{rule}`; expected one of {', '.join(RELU_RULES)}")
    state = ReluRule(rule)
    pending: dict[int, list[torch.Tensor]] = {}  # id(module) -> inputs of its calls now running
    handles = []

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        (x, *rest) = args
        pending.setdefault(id(module), []).append(x)
        if getattr(module, "inplace", False):
            state.inplace_inputs.append(x)
        return (x.new_empty(0), *rest)  # the module runs on nothing: its output is replaced below

    def forward_hook(module: nn.Module, _args: tuple, _output: torch.Tensor) -> torch.Tensor:
        return _RuledReLU.apply(pending[id(module)].pop(), state)

    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                handles.append(module.register_forward_pre_hook(pre_hook))
                handles.append(module.register_forward_hook(forward_hook))
                state.hooked += 1
        yield state
    finally:
        for handle in handles:
            handle.remove()
        pending.clear()
        state.inplace_inputs.clear()
