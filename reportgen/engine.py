"""The gradient engine: ONE forward and ONE backward pass give every target layer's activations and
gradients (and, on request, the input gradient) for a batch and one target class per image.

Every gradient-based CAM and `saliency` / `input_x_gradient` is a cheap function of a GradPass.

How the pass stays cheap:

- the backward is `torch.autograd.grad` with respect to the target layers' outputs (and the input
  only when asked), so no parameter gradient is ever computed and autograd stops at the earliest
  target layer;
- without `input_grad`, the forward runs without autograd up to the first target layer and the
  graph starts there (the layer's output becomes the leaf), so nothing before it is recorded;
- several target classes per image (top-k) share one forward: k backward passes on one graph.

Gradients are taken with respect to each layer's output *as the layer returned it*, even when a
later operation changes that tensor in place (DenseNet's `F.relu(features, inplace=True)`); the
activations are the tensor as it is after the forward. That is exactly what pytorch-grad-cam 1.5.7
records (a tensor hook registered on the output, and the output object itself), so the maps agree.

The hooks of `_capture` capture the gradient edge and cut the graph while the layer runs (which
`capture_outputs` cannot do); they are registered and removed by
`reportgen.hooks.forward_hooks`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from .errors import ReportgenError
from .hooks import ForwardHook, capture_outputs, cpu_copy, forward_hooks, relu_backward_rule
from .ops import batches


@dataclass(frozen=True)
class GradPass:
    classes: tuple[int, ...]  # (N,) the target class of each image
    logits: torch.Tensor  # (N, K) detached
    activations: dict[str, torch.Tensor]  # layer -> (N, C, h, w) detached
    gradients: dict[str, torch.Tensor]  # layer -> d(Σ_i logit[i, class_i]) / d activation, (N, C, h, w)
    input_grad: torch.Tensor | None  # (N, C, H, W) d(Σ_i logit[i, class_i]) / d input, when asked for
    modified: tuple[str, ...] = ()  # layers whose output an in-place op changed after the layer returned
    # ReLU rule ("guided", "deconv") -> (N, C, H, W) the input gradient with every nn.ReLU back-propagating by
    # that rule (`hooks.relu_backward_rule`), from the same forward, when asked for
    relu_rule_grads: dict[str, torch.Tensor] | None = None


def forward_backward(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Sequence[str],
    classes: Sequence[int],
    *,
    input_grad: bool = False,
) -> GradPass:
    """One forward and one backward pass. The loss is Σ_i logit[i, classes[i]] (pytorch-grad-cam's
    ClassifierOutputTarget summed over the batch). `batch` is not modified; parameters get no .grad."""
    return forward_backward_many(model, batch, layers, [classes], input_grad=input_grad)[0]


def forward_backward_many(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Sequence[str],
    class_sets: Sequence[Sequence[int]],
    *,
    input_grad: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    observe: Sequence[str] = (),
    observed: dict | None = None,
    rules: Sequence[str] = (),
) -> list[GradPass]:
    """One forward, then one backward per entry of `class_sets` (each: one class per image).

    All GradPasses share the forward's logits and activations. `batch` is not modified; parameters
    get no .grad; every hook is removed on return. `forward` (default: `model`) maps the input to the
    logits (a model adapter's `forward`, which unwraps outputs that are not a tensor). The outputs of the
    layers `observe`, copied to the CPU as each layer returns (`hooks.cpu_copy`), go to `observed`: what the
    feature maps read from the same forward.

    `rules` (ReLU backward rules other than "plain") run the forward with every nn.ReLU's backward
    switchable (`hooks.relu_backward_rule`) and add, per class set, one backward to the input per rule
    (`GradPass.relu_rule_grads`): guided backprop and deconvnet without a forward of their own. The hooked ReLUs
    leave their input as it is, so when a target layer's output is the input of an `inplace=True` ReLU (its
    activation would then differ from what the model leaves in it), the pass runs again without them and
    gives no ReLU-rule gradients.
    """
    done = forward_recorded(model, batch, layers, input_grad=input_grad, forward=forward, observe=observe,
                            rules=rules)
    if observed is not None:
        observed.update(done.observed)
    return backward_passes(done, class_sets)


@dataclass
class Recorded:
    """A forward whose graph is kept for `backward_passes` (`forward_recorded`)."""

    x: torch.Tensor  # the input it ran on (a copy of the batch; a leaf when the input gradient is asked for)
    logits: torch.Tensor  # (N, K), in the graph
    layers: tuple[str, ...]
    activations: dict[str, torch.Tensor]  # layer -> output (N, C, h, w) detached
    modified: tuple[str, ...]  # layers whose output an in-place op changed after the layer returned
    wrt: list  # per layer (then the input, when asked for): what to differentiate with respect to, or None
    input_grad: bool
    rules: list[str]  # the ReLU rules taken in every backward (besides plain)
    state: object  # the hooked ReLUs' rule switch (`hooks.ReluRule`) when `rules`
    observed: dict  # layer `observe` -> its output copied as it returned


def forward_recorded(model: nn.Module, batch: torch.Tensor, layers: Sequence[str], *, input_grad: bool = False,
                     forward: Callable[[torch.Tensor], torch.Tensor] | None = None, observe: Sequence[str] = (),
                     rules: Sequence[str] = ()) -> Recorded:
    """The forward of `forward_backward_many` (see there), its graph kept for the backward passes."""
    rules = [rule for rule in dict.fromkeys(rules) if rule != "plain"]
    forward = forward or model
    layers = list(dict.fromkeys(layers))
    x = batch.detach().clone()
    cut = not input_grad and not rules and bool(layers)
    for attempt in range(2):
        x.requires_grad_(not cut)
        # the rules' hooks first: the other hooks then see a hooked ReLU's output, not what the module ran on
        with relu_backward_rule(model, "plain") if rules else contextlib.nullcontext() as state, \
                _capture(model, layers, cut=cut) as captured, torch.set_grad_enabled(not cut), \
                capture_outputs(model, observe, keep=cpu_copy) as copies:
            logits = forward(x)
            overwritten = rules and any(_same(captured[name][0], state.inplace_inputs) for name in layers)
        if overwritten:  # the model's in-place ReLU would have changed a target layer's output: run it as it is
            return forward_recorded(model, batch, layers, input_grad=input_grad, forward=forward, observe=observe)
        complete = logits.requires_grad and all(captured[name][1] is not None for name in layers)
        if complete or attempt == 1:
            break
        # a target layer is not connected to the graph when it starts at the first target layer
        # (a layer computed from earlier tensors only): record everything from the input instead
        cut = False
    if logits.ndim != 2:
        raise ReportgenError(f"{type(model).__name__} returns an output of shape {tuple(logits.shape)}; "
                             "class activation maps need (N, num_classes) scores.")
    return Recorded(x=x, logits=logits, layers=tuple(layers),
                    activations={name: captured[name][0].detach() for name in layers},
                    modified=tuple(name for name in layers if captured[name][0]._version != captured[name][2]),
                    wrt=[captured[name][1] for name in layers] + ([x] if input_grad else []),
                    input_grad=input_grad, rules=rules, state=state, observed=copies)


def backward_passes(done: Recorded, class_sets: Sequence[Sequence[int]]) -> list[GradPass]:
    """One backward per entry of `class_sets` (one class per image) through the recorded forward; the graph is
    freed after the last."""
    logits, x, wrt, rules, state = done.logits, done.x, done.wrt, done.rules, done.state
    class_sets = [tuple(int(c) for c in classes) for classes in class_sets]
    for classes in class_sets:
        if len(classes) != x.shape[0]:
            raise ValueError(f"need one class per image: {len(classes)} classes for {x.shape[0]} images")
    live = [i for i, w in enumerate(wrt) if w is not None]
    passes = []
    for k, classes in enumerate(class_sets):
        index = torch.as_tensor(classes, device=logits.device).view(-1, 1)
        grads: list[torch.Tensor | None] = [None] * len(wrt)
        relu_rule_grads: dict[str, torch.Tensor] = {}
        with torch.enable_grad():  # also when the caller is inside torch.no_grad()
            score = logits.gather(1, index).sum()
            more = k < len(class_sets) - 1
            if live and score.requires_grad:
                found = torch.autograd.grad(score, [wrt[i] for i in live], allow_unused=True,
                                            retain_graph=more or bool(rules))
                for i, g in zip(live, found):
                    grads[i] = g
            for j, rule in enumerate(rules):  # the same graph, every hooked ReLU back-propagating by `rule`
                state.name = rule
                (found,) = torch.autograd.grad(score, [x], allow_unused=True,
                                               retain_graph=more or j < len(rules) - 1) \
                    if score.requires_grad else (None,)
                relu_rule_grads[rule] = _zeros_if_none(found, x)
            if rules:
                state.name = "plain"
        passes.append(GradPass(
            classes=classes,
            logits=logits.detach(),
            activations=done.activations,
            gradients={name: _zeros_if_none(g, done.activations[name]) for name, g in zip(done.layers, grads)},
            input_grad=_zeros_if_none(grads[-1], x).detach() if done.input_grad else None,
            modified=done.modified,
            relu_rule_grads=relu_rule_grads or None,
        ))
    return passes


def _same(tensor: torch.Tensor, others: Sequence[torch.Tensor]) -> bool:
    """Whether `tensor` is one of `others` (or the same memory seen through another tensor object)."""
    return any(t is tensor or (t.data_ptr() == tensor.data_ptr() and t.shape == tensor.shape) for t in others)


def forward_activations(
    model: nn.Module, batch: torch.Tensor, layers: Sequence[str],
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[str, ...]]:
    """One forward without autograd: (logits (N, K), layer -> output (N, C, h, w) detached, the layers whose
    output an in-place op changed after the layer returned)."""
    versions: dict[str, int] = {}
    with torch.no_grad(), capture_outputs(model, list(dict.fromkeys(layers)), detach=True,
                                          versions=versions) as outputs:
        logits = (forward or model)(batch)
    missing = [name for name in layers if not torch.is_tensor(outputs.get(name))]
    if missing:
        raise ReportgenError(f"layer `{missing[0]}` produced no tensor output in the forward pass.")
    modified = tuple(name for name in layers if outputs[name]._version != versions[name])
    return logits.detach(), {name: outputs[name] for name in layers}, modified


def forward_replacing(
    model: nn.Module, batch: torch.Tensor, layer: str, output: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits of a no-grad forward of `batch` in which `layer` returns `output` instead of its own result.

    `output` may have a larger batch than `batch` (b, C, h, w) when everything after the layer
    broadcasts a batch of 1 (the caller checks that the logits make sense)."""
    def hook(_module, _inputs, _output):
        return output

    with forward_hooks(model, [(layer, hook)]), torch.no_grad():
        return (forward or model)(batch)


@contextmanager
def _capture(
    model: nn.Module, layers: Sequence[str], *, cut: bool
) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor | GradientEdge | None, int]]]:
    """name -> (output tensor, what to differentiate with respect to, the tensor's version when the layer
    returned), filled as the model runs.

    With `cut`, the model starts without autograd; the first target layer to finish turns autograd
    on and hands the rest of the model a copy of a fresh leaf, so the graph starts there.
    """
    captured: dict[str, tuple[torch.Tensor, torch.Tensor | GradientEdge | None, int]] = {}

    def make_hook(name: str) -> ForwardHook:
        def hook(_module, _inputs, output):
            if not torch.is_tensor(output):
                raise ReportgenError(f"layer `{name}` returns a {type(output).__name__}, not a tensor; "
                                     "choose a layer with an (N, C, H, W) output.")
            if cut and not torch.is_grad_enabled():
                leaf = output.detach().requires_grad_()
                torch.set_grad_enabled(True)  # restored when the caller's grad-mode block exits
                passed_on = leaf.clone()  # later in-place ops change this copy, never the leaf
                captured[name] = (passed_on, leaf, passed_on._version)
                return passed_on
            captured[name] = (output, get_gradient_edge(output) if output.requires_grad else None, output._version)
            return None

        return hook

    with forward_hooks(model, [(name, make_hook(name)) for name in layers]):
        yield captured
    missing = [name for name in layers if name not in captured]
    if missing:
        raise ReportgenError(f"layer `{missing[0]}` is not called in {type(model).__name__}'s forward pass.")


def for_rows(forward: Callable[[torch.Tensor], torch.Tensor], owner: torch.Tensor | Sequence[int],
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`forward` for rows derived from the batch's images, row b from image `owner[b]`: a chunk of the batch, or
    masked, ablated, noisy or interpolated copies. A forward that scores each image by something of its own (a
    segmenter's class-in-region scores, `methods.regions.RegionScores`) has a `for_rows(owner)` and is bound to
    the rows; any other forward scores every row alike and is returned as it is."""
    bind = getattr(forward, "for_rows", None)
    return forward if bind is None else bind(torch.as_tensor(owner, dtype=torch.long))


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like).detach() if grad is None else grad.detach()


class Engine:
    """The passes of one build over one batch, computed once and cached for every stage that asks.

    `passes(layers, class_sets)` runs ONE forward and one backward per class set (target rank) per chunk of
    `chunk` images (so autograd never holds the graph of more images than that) and keeps the result, keyed
    by (layers, class sets, input gradient): a stage never reads another stage's results or config to
    reuse a pass, it asks the engine. `input_grad_wanted` (set by the pipeline when a stage declared it will
    ask for input gradients) makes every gradient pass also take the input gradient, so a later
    `input_grads(classes)` is served from the pass an earlier stage already ran. `observe` (set by the
    pipeline from the stages' `observes`) are layers whose outputs the first gradient pass also copies as
    they return, for `observed(layers)`: the feature maps come from the CAM pass's forward, not one of their own.
    `relu_rules` (set by the pipeline from the stages' `wants_relu_rules`) make the first gradient pass also take
    the input gradient under those ReLU rules (`relu_rule_input_grad`): guided backprop shares the CAM pass's forward.
    """

    def __init__(self, model: nn.Module, batch: torch.Tensor, *, chunk: int | None = None,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None, input_grad_wanted: bool = False,
                 observe: Sequence[str] = (), relu_rules: Sequence[str] = ()):
        self.model = model
        self.batch = batch  # (N, C, H, W), never modified
        self.forward = forward or model
        self.step = max(1, chunk or batch.shape[0])
        self.input_grad_wanted = input_grad_wanted
        self._passes: dict[tuple, list[GradPass]] = {}
        self._activations: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._modified: set[str] = set()  # layers whose output an in-place op changed after they returned
        self.observe = tuple(dict.fromkeys(observe))
        self.relu_rules = tuple(dict.fromkeys(relu_rules))
        self._observed: list[dict] | None = None  # per chunk, layer -> output copied as it returned
        self._recorded: Recorded | None = None  # the forward `first_logits` ran for the first gradient pass

    def with_batch(self, batch: torch.Tensor, forward: Callable | None = None) -> "Engine":
        """A new engine with this one's model and settings on another batch (a streamed build's batch), whole. A
        forward bound to this batch's images (`for_batch`: a segmenter's regions) is made anew for that one,
        unless the caller gives it (`forward`)."""
        rebind = getattr(self.forward, "for_batch", None)
        if forward is None:
            forward = self.forward if rebind is None else rebind(batch)
        return Engine(self.model, batch, forward=forward, input_grad_wanted=self.input_grad_wanted,
                      observe=self.observe, relu_rules=self.relu_rules)

    @property
    def chunks(self) -> int:
        return -(-self.batch.shape[0] // self.step)


    def passes(self, layers: Sequence[str], class_sets: Sequence[Sequence[int]], *,
               input_grad: bool = False) -> list[GradPass]:
        """Per class set, the GradPass of all images (`forward_backward_many` per chunk, concatenated)."""
        layers = tuple(dict.fromkeys(layers))
        class_sets = tuple(tuple(int(c) for c in classes) for classes in class_sets)
        input_grad = input_grad or self.input_grad_wanted
        key = (layers, class_sets, input_grad)
        recorded, self._recorded = self._recorded, None
        if recorded is not None and (recorded.layers, recorded.input_grad) != (layers, input_grad):
            recorded = None  # not the pass `first_logits` was told of: freed
        if key not in self._passes and recorded is not None:
            self._passes[key] = backward_passes(recorded, class_sets)
            self._observed = [recorded.observed]
            self._modified.update(recorded.modified)
        if key not in self._passes:
            observe = self.observe if self._observed is None else ()  # the first pass observes
            rules = () if any(p.relu_rule_grads for p in self.cached_passes()) else self.relu_rules  # ... and takes the rules
            chunks, observed = [], []
            for rows in batches(self.batch.shape[0], self.step):
                observed.append({})
                chunks.append(forward_backward_many(
                    self.model, self.batch[rows], layers, [c[rows] for c in class_sets], input_grad=input_grad,
                    forward=self._forward_of(rows), observe=observe, observed=observed[-1], rules=rules))
            self._passes[key] = concat_passes(chunks)
            if observe:
                self._observed = observed
            self._modified.update(name for p in self._passes[key] for name in p.modified)
        return self._passes[key]

    def first_logits(self, layers: Sequence[str], gradients: bool) -> torch.Tensor:
        """The batch's logits (N, K) from the forward that the first `passes(layers, ...)` (`gradients`) or
        `activations(layers)` will use: a first look at the predictions that costs no forward of its own (a
        small build's first pass, `collection.collect`). The gradient pass's graph is kept until then (one chunk:
        with several, the logits come from a forward of their own)."""
        layers = tuple(dict.fromkeys(layers))
        if not gradients or self.chunks > 1:
            return self.activations(layers)[0] if layers else forward_activations(
                self.model, self.batch, [], self.forward)[0]
        self._recorded = forward_recorded(self.model, self.batch, layers, input_grad=self.input_grad_wanted,
                                          forward=self.forward, observe=self.observe, rules=self.relu_rules)
        return self._recorded.logits.detach()

    def observed(self, layers: Sequence[str]) -> list[dict] | None:
        """Per chunk of `chunk` images, layer -> its output copied as it returned (what `hooks.cpu_copy` keeps)
        from the forward of a gradient pass already run; None when no pass observed every one of `layers`."""
        if self._observed is None or not set(layers) <= set(self.observe):
            return None
        return [{name: chunk.get(name) for name in layers} for chunk in self._observed]

    def activations(self, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits (N, K), layer -> output (N, C, h, w)) of forwards without autograd, one per chunk."""
        layers = tuple(dict.fromkeys(layers))
        if layers not in self._activations:
            parts = [forward_activations(self.model, self.batch[rows], layers, self._forward_of(rows))
                     for rows in batches(self.batch.shape[0], self.step)]
            self._modified.update(name for p in parts for name in p[2])
            self._activations[layers] = (torch.cat([p[0] for p in parts]),
                                         {name: torch.cat([p[1][name] for p in parts]) for name in layers})
        return self._activations[layers]

    def _forward_of(self, rows: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward of the chunk `rows` of the batch (`for_rows`)."""
        whole = rows.start == 0 and rows.stop == self.batch.shape[0]
        return self.forward if whole else for_rows(self.forward, torch.arange(rows.start, rows.stop))

    def input_grad(self, classes: Sequence[int]) -> torch.Tensor | None:
        """(N, C, H, W) ∂(Σ_i logit[i, classes[i]])/∂input from a pass already run for these classes, or None."""
        classes = tuple(int(c) for c in classes)
        for (_layers, _sets, with_input), passes in self._passes.items():
            for grad_pass in passes:
                if with_input and grad_pass.classes == classes:
                    return grad_pass.input_grad
        return None

    def relu_rule_input_grad(self, classes: Sequence[int], rule: str) -> torch.Tensor | None:
        """(N, C, H, W) the input gradient under ReLU rule `rule` (`GradPass.relu_rule_grads`) from a pass already run for
        these classes, or None."""
        classes = tuple(int(c) for c in classes)
        return next((p.relu_rule_grads[rule] for p in self.cached_passes()
                     if p.classes == classes and p.relu_rule_grads and rule in p.relu_rule_grads), None)

    def modified_in_place(self, layers: Sequence[str]) -> list[str]:
        """Of `layers`, those whose output an in-place op changed after the layer returned, in the passes run."""
        return [name for name in layers if name in self._modified]

    def clear(self) -> None:
        """Forget every pass (benchmarks: time the next one afresh)."""
        self._passes.clear()
        self._activations.clear()
        self._modified.clear()
        self._observed = None
        self._recorded = None

    def cached_passes(self) -> list[GradPass]:
        """Every gradient pass the engine holds (tests, `-v` detail)."""
        return [p for passes in self._passes.values() for p in passes]


def concat_passes(chunks: Sequence[list[GradPass]]) -> list[GradPass]:
    """Per rank, one GradPass for all images from the passes of consecutive chunks of images
    (activations and logits are shared by the ranks, as the engine's passes are)."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0][0]
    logits = torch.cat([c[0].logits for c in chunks])
    activations = {name: torch.cat([c[0].activations[name] for c in chunks]) for name in first.activations}
    return [GradPass(
        classes=tuple(cls for c in chunks for cls in c[r].classes),
        logits=logits,
        activations=activations,
        gradients={name: torch.cat([c[r].gradients[name] for c in chunks]) for name in first.gradients},
        input_grad=None if first.input_grad is None else torch.cat([c[r].input_grad for c in chunks]),
        modified=tuple(dict.fromkeys(name for c in chunks for name in c[r].modified)),
        relu_rule_grads=None if not all(c[r].relu_rule_grads for c in chunks) else
        {rule: torch.cat([c[r].relu_rule_grads[rule] for c in chunks]) for rule in first.relu_rule_grads},
    ) for r in range(len(chunks[0]))]
