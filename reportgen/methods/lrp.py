"""Layer-wise relevance propagation (LRP): the relevance of the target's logit carried back to the input pixels,
layer by layer, by a rule per layer type. Our own torch implementation, equal to its references per image:

- `lrp`: Captum 0.9.0's `LRP(model).attribute(x, target=c)` with Captum's default rules (captum/attr/_core/lrp.py,
  _utils/lrp_rules.py): the epsilon rule (ε = 1e-9) on every Conv2d, Linear, BatchNorm2d, MaxPool, AvgPool2d and
  AdaptiveAvgPool2d, relevance passed unchanged through ReLU, Dropout and Tanh, started from the one-hot target and
  multiplied by the target's logit at the end (so it sums to about the logit);
- `lrp_epsilon_plus_flat`, `lrp_epsilon_gamma_box`, `lrp_epsilon_alpha2_beta1_flat`: Zennit 0.5.1's composites
  EpsilonPlusFlat, EpsilonGammaBox and EpsilonAlpha2Beta1Flat with its canonizers (`SequentialMergeBatchNorm`, and
  `ResNetCanonizer` on torchvision's ResNet blocks), as zennit's `Gradient` attributor computes them with the
  one-hot of the target's logit as the output relevance (zennit's convention: they sum to about 1).

Zennit's canonizers rewrite the model's parameters and forward methods; here nothing of the model changes: the batch
norm after a convolution is merged into that convolution's rule (its merged weight and bias are computed, not
written), and a torchvision ResNet block's residual sum gets zennit's `Sum` rule through hooks on the block. Zennit
leaves a merged batch norm as BN(mean 0, variance 1), which still divides by √(1 + eps): its canonized model's
activations are that much (1e-5 relative per batch norm) smaller than the model's. We divide the same way, so the
maps equal zennit's: LRP maps of random networks move by 1e-3 relative under such a change (measured on VGG-16-BN).

Both references run, silently wrong, on layers their rules do not cover (Captum's LRP sums the relevance of both
branches of a residual connection; zennit applies the plain gradient to a layer without a rule). Ours refuses: every
leaf module must have a rule or be a pure routing of values (max pooling, dropout, flatten, identity), and the only
joins of two branches allowed are concatenation and the residual sum of a torchvision ResNet block under a
composite. A refusal is a ReportgenError naming the layer (module path and type) or the join, and the method.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import for_rows
from ..errors import ReportgenError
from ..ops import batches
from .gradients import GradientJob, _pick

CAPTUM_EPSILON = 1e-9  # Captum's PropagationRule.STABILITY_FACTOR (its EpsilonRule default)
STABILIZER = 1e-6  # zennit's stabiliser of every rule but epsilon (the composites' default)
COMPOSITES = {  # method id -> zennit's composite: (rule of the first conv/linear layer, rule of the other convolutions)
    "lrp_epsilon_plus_flat": ("EpsilonPlusFlat", "flat", "zplus"),
    "lrp_epsilon_gamma_box": ("EpsilonGammaBox", "zbox", "gamma"),
    "lrp_epsilon_alpha2_beta1_flat": ("EpsilonAlpha2Beta1Flat", "flat", "alpha2beta1"),
}

# Captum 0.9.0's SUPPORTED_LAYERS_WITH_RULES (all the epsilon rule) and SUPPORTED_NON_LINEAR_LAYERS, matched by exact
# type as Captum matches them
CAPTUM_RULE = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Linear,
               nn.BatchNorm2d)
CAPTUM_PASS = (nn.ReLU, nn.Dropout, nn.Tanh)
# layers that only route values: their plain gradient carries relevance unchanged (ours; Captum refuses Flatten)
ROUTING = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
# the composites: zennit's layer map, restricted to the activations its `Pass` rule makes sense for (it passes every
# activation, GELU and Hardswish included; ours refuses those)
AFFINE = (nn.Conv2d, nn.Linear)
BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)
AVG_POOL = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
PASS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Hardtanh, nn.Tanh)  # Hardtanh: ReLU6 too
JOINS = ("CatBackward0", "StackBackward0", "_SumRuleBackward")  # joins of branches that keep relevance apart


def lrp(job: GradientJob) -> list[torch.Tensor]:
    return compute_lrp(job.model, job.batch, job.class_sets, method="lrp", batch_size=job.batch_size,
                       forward=job.forward)


def lrp_epsilon_plus_flat(job: GradientJob) -> list[torch.Tensor]:
    return _composite(job, "lrp_epsilon_plus_flat")


def lrp_epsilon_gamma_box(job: GradientJob) -> list[torch.Tensor]:
    return _composite(job, "lrp_epsilon_gamma_box")


def lrp_epsilon_alpha2_beta1_flat(job: GradientJob) -> list[torch.Tensor]:
    return _composite(job, "lrp_epsilon_alpha2_beta1_flat")


def _composite(job: GradientJob, method: str) -> list[torch.Tensor]:
    low, high = job.input_range if job.input_range is not None else ((0.0,), (1.0,))
    return compute_lrp(job.model, job.batch, job.class_sets, method=method, epsilon=job.options.lrp_epsilon,
                       gamma=job.options.lrp_gamma, low=low, high=high, batch_size=job.batch_size, forward=job.forward)


def compute_lrp(model: nn.Module, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *, method: str,
                epsilon: float = STABILIZER, gamma: float = 0.25, low: Sequence[float] = (0.0,),
                high: Sequence[float] = (1.0,), batch_size: int = 64,
                forward: Callable | None = None) -> list[torch.Tensor]:
    """`method`'s relevance of logit[i, class_sets[r][i]] at each input value, per class set (N, C, H, W): one
    forward with the rules hooked per chunk of `batch_size` images, one backward per class set. `low`/`high`: per
    channel (or one value), the lowest and highest input values (EpsilonGammaBox's first layer). The model is not
    changed: the hooks are removed on return."""
    rules = plan(model, method, epsilon=epsilon, gamma=gamma,
                 bounds=(torch.tensor(low).view(1, -1, 1, 1), torch.tensor(high).view(1, -1, 1, 1)))
    totals = [torch.zeros_like(batch) for _ in class_sets]
    for k, chunk in enumerate(batches(batch.shape[0], batch_size)):
        images = list(range(chunk.start, chunk.stop))
        x = batch[chunk].detach().clone().requires_grad_()
        with _hooked(rules), torch.enable_grad():
            logits = for_rows(forward or model, images)(x)
        if k == 0:
            check_joins(logits, x, method)
        for r, classes in enumerate(class_sets):
            picked = _pick(logits, [classes[i] for i in images])
            (relevance,) = torch.autograd.grad(picked.sum(), x, retain_graph=r < len(class_sets) - 1)
            if method == "lrp":  # Captum starts from the one-hot and scales by the output at the end
                relevance = relevance * picked.detach().view(-1, *[1] * (relevance.ndim - 1))
            totals[r][chunk] = relevance.detach()
    return totals


# ---------------------------------------------------------------------------- which rule where


@dataclass
class Rules:
    """The rules of one method on one model: module -> rule, and the torchvision ResNet blocks whose residual sum
    gets zennit's Sum rule (composites only)."""

    method: str
    # a relevance function (x, r) -> r_in, "pass", "merged" (a batch norm merged into the layer before: pass) or
    # "captum" (Captum's ε-rule, through the layer's own gradient)
    of: dict[nn.Module, Callable | str]
    blocks: list[nn.Module]


def check_model(model: nn.Module, method: str, forward: Callable | None = None,
                input_size: Sequence[int] | None = None) -> None:
    """A ReportgenError naming the first layer `method`'s rules do not cover (see the module); with `input_size`
    (C, H, W), also the first join of branches they do not cover, from one forward of a zero image (validation)."""
    rules = plan(model, method)
    if input_size is None:
        return
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_size, device=device, requires_grad=True)
    with _hooked(rules), torch.enable_grad():
        check_joins((forward or model)(x), x, method)


def plan(model: nn.Module, method: str, *, epsilon: float = STABILIZER, gamma: float = 0.25,
         bounds: tuple[torch.Tensor, torch.Tensor] = (torch.zeros(1), torch.ones(1))) -> Rules:
    """Each layer's rule for `method`, or a ReportgenError naming the first layer without one."""
    if method == "lrp":
        return _captum_plan(model)
    composite, first_rule, conv_rule = COMPOSITES[method]
    leaves = [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]
    merged = _merged_batch_norms([m for _, m in leaves])
    # zennit's first layer: the first conv/linear (ZBox: conv) in named_modules order
    first = next((m for _, m in model.named_modules() if isinstance(m, nn.Conv2d if first_rule == "zbox" else AFFINE)),
                 None)
    of: dict[nn.Module, Callable | str] = {}
    for name, m in leaves:
        if isinstance(m, AFFINE):
            kind = first_rule if m is first else conv_rule if isinstance(m, nn.Conv2d) else "epsilon"
            if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                _refuse(name, m, method, composite, "a padding mode other than zeros")
            of[m] = _affine_rule(m, merged.get(m), kind, epsilon=epsilon, gamma=gamma, bounds=bounds)
        elif isinstance(m, BATCH_NORM) and m in merged.values():
            of[m] = "merged"
        elif isinstance(m, BATCH_NORM + PASS):
            of[m] = "pass"
        elif isinstance(m, AVG_POOL):
            of[m] = _norm_rule(m)
        elif not isinstance(m, ROUTING):
            _refuse(name, m, method, composite)
    _refuse_own_parameters(model, of, method, composite)
    from torchvision.models.resnet import BasicBlock, Bottleneck  # ResNetCanonizer's blocks
    blocks = [m for m in model.modules() if type(m) in (BasicBlock, Bottleneck)]
    return Rules(method=method, of=of, blocks=blocks)


def _captum_plan(model: nn.Module) -> Rules:
    of: dict[nn.Module, Callable | str] = {}
    for name, m in model.named_modules():
        if any(True for _ in m.children()):
            continue
        if type(m) in CAPTUM_RULE:
            of[m] = "captum"
        elif type(m) in CAPTUM_PASS:
            of[m] = "pass"
        elif type(m) not in ROUTING:
            _refuse(name, m, "lrp", "Captum's LRP")
    _refuse_own_parameters(model, of, "lrp", "Captum's LRP")
    return Rules(method="lrp", of=of, blocks=[])


def _refuse(name: str, module: nn.Module, method: str, rules: str, what: str = "") -> None:
    supported = ("Conv2d, Linear, BatchNorm2d, max/average pooling, ReLU, Dropout, Tanh and Flatten (VGG-like "
                 "chains of layers)" if method == "lrp" else
                 "Conv2d, Linear, BatchNorm, average/max pooling, the ReLU family, Tanh, Dropout and Flatten, and "
                 "torchvision ResNet blocks")
    why = f" has {what}" if what else " is a layer type it has no rule for"
    raise ReportgenError(f"{method}: the layer `{name or '(the model)'}` ({type(module).__name__}){why} in {rules}; "
                         f"its rules cover {supported}. Drop {method} from `analyses.gradients.methods` for this model.")


def _refuse_own_parameters(model: nn.Module, covered: dict, method: str, rules: str) -> None:
    """A module that uses parameters of its own outside its sub-modules (a custom layer) has no rule."""
    for name, m in model.named_modules():
        if m not in covered and any(True for _ in m.parameters(recurse=False)):
            _refuse(name, m, method, rules, "parameters of its own (a custom layer)")


def _merged_batch_norms(leaves: list[nn.Module]) -> dict[nn.Module, nn.Module]:
    """Zennit's SequentialMergeBatchNorm: a batch norm right after a conv/linear leaf (in module order) merges into
    it. conv/linear -> its batch norm."""
    return {a: b for a, b in zip(leaves, leaves[1:]) if isinstance(a, AFFINE) and isinstance(b, BATCH_NORM)}


def check_joins(output: torch.Tensor, x: torch.Tensor, method: str) -> None:
    """A ReportgenError when the forward from `x` to `output` joins two branches by an operation that mixes their
    values (a residual sum outside a torchvision ResNet block, a product): the rules do not split relevance there."""
    reach: dict = {}  # autograd node -> whether it leads back to x
    stack = [(output.grad_fn, False)]
    while stack:
        node, done = stack.pop()
        if node is None or (node in reach and not done):
            continue
        children = [c for c, _ in node.next_functions if c is not None]
        if not done:
            if hasattr(node, "variable"):  # a leaf: x or a parameter
                reach[node] = node.variable is x
                continue
            stack.append((node, True))
            stack += [(c, False) for c in children if c not in reach]
            continue
        hits = sum(reach.get(c, False) for c in children)
        reach[node] = hits > 0
        if hits > 1 and node.name() not in JOINS:
            rules = "Captum's LRP" if method == "lrp" else COMPOSITES[method][0]
            hint = (" Captum's LRP runs there but adds up the relevance of both branches; the Zennit composites "
                    "(lrp_epsilon_plus_flat, ...) explain torchvision ResNets." if method == "lrp" else "")
            raise ReportgenError(f"{method}: the model joins two branches by `{node.name()}` outside its layers (a "
                                 f"residual sum or a product), which the rules of {rules} do not cover.{hint} Drop "
                                 f"{method} from `analyses.gradients.methods` for this model.")


# ---------------------------------------------------------------------------- the rules


def _stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Zennit's (and Captum's) stabiliser: z + ε·sign(z), sign(0) = 1 (the same floats, in fewer passes)."""
    return z + torch.where(z >= 0, eps, -eps)


def _affine_rule(m: nn.Module, bn: nn.Module | None, kind: str, *, epsilon: float, gamma: float,
                 bounds: tuple[torch.Tensor, torch.Tensor]) -> Callable:
    """The relevance function (x, r) -> r_in of a conv/linear layer (merged with the batch norm after it)."""
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if isinstance(m, nn.Linear):
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)

    def params() -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
        if bn is None:
            return w, b
        # zennit's MergeBatchNorm.merge_batch_norm, computed instead of written into the model
        scale = bn.weight.detach() / (bn.running_var + bn.eps) ** .5
        w = w * scale.view(-1, *[1] * (w.ndim - 1))
        b = ((torch.zeros_like(scale) if b is None else b) - bn.running_mean) * scale + bn.bias.detach()
        return w, b

    def grads(outputs: list[torch.Tensor], inputs: list[torch.Tensor], weights: list[torch.Tensor]) -> tuple:
        return torch.autograd.grad(outputs, inputs, weights)

    def pos(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clamp(min=0)

    def neg(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clamp(max=0)

    def epsilon_rule(x, r):
        w, b = params()
        xi = x.detach().requires_grad_()
        z = forward(xi, w, b)
        (g,) = grads([z], [xi], [r / _stabilize(z, epsilon)])
        return x * g

    def flat(x, r):  # weights 1, bias 0, input 1: relevance spread evenly over each output's receptive field
        ones = torch.ones_like(x).requires_grad_()
        z = forward(ones, torch.ones_like(m.weight), None)
        return grads([z], [ones], [r / _stabilize(z, STABILIZER)])[0]

    def zbox(x, r):
        w, b = params()
        low, high = (t.to(x).expand_as(x).clone().requires_grad_() for t in bounds)
        xi = x.detach().requires_grad_()
        z = forward(xi, w, b) - forward(low, pos(w), pos(b)) - forward(high, neg(w), neg(b))
        s = r / _stabilize(z, STABILIZER)
        gx, gl, gh = grads([z], [xi, low, high], [s])  # ∂z/∂low = −W⁺ᵀ, ∂z/∂high = −W⁻ᵀ: the rule's signs
        return x * gx + low * gl + high * gh

    def two_sided(x, w_for_pos, w_for_neg, scales):
        """Σ over the (pos, neg) parts of x of part · Σ_k scale_k Wᵀ s_k: zennit's Gamma/ZPlus/AlphaBeta reducers.
        The negative part's terms are zero where x ≥ 0 everywhere (after a ReLU): then they are not computed."""
        xp = x.clamp(min=0).requires_grad_()
        has_neg = bool((x < 0).any())
        xn = x.clamp(max=0).requires_grad_() if has_neg else None
        outputs, weights = [], []
        for (wp, bp), (wn, _), scale in zip(w_for_pos, w_for_neg, scales):
            zp = forward(xp, wp, bp)  # the positive part through its weights
            zn = forward(xn, wn, None) if has_neg else None
            s = scale(zp if zn is None else zp + zn)
            outputs += [zp] + ([zn] if has_neg else [])
            weights += [s] + ([s] if has_neg else [])
        found = grads(outputs, [xp] + ([xn] if has_neg else []), weights)
        return sum(part * g for part, g in zip([xp, xn], found))

    def zplus(x, r):
        w, b = params()
        return two_sided(x, [(pos(w), pos(b))], [(neg(w), None)], [lambda z: r / _stabilize(z, STABILIZER)])

    def alpha2beta1(x, r):  # α = 2, β = 1
        w, b = params()
        return two_sided(x, [(pos(w), pos(b)), (neg(w), neg(b))], [(neg(w), None), (pos(w), None)],
                         [lambda z: 2 * (r / _stabilize(z, STABILIZER)), lambda z: -(r / _stabilize(z, STABILIZER))])

    def gamma_rule(x, r):
        w, b = params()
        up = (w + gamma * pos(w), None if b is None else b + gamma * pos(b))
        down = (w + gamma * neg(w), None if b is None else b + gamma * neg(b))
        with torch.no_grad():
            z = forward(x, w, b)
        return two_sided(x, [up, down], [down, up],
                         [lambda d: (z > 0) * r / _stabilize(d, STABILIZER),
                          lambda d: (z < 0) * r / _stabilize(d, STABILIZER)])

    rules = {"epsilon": epsilon_rule, "flat": flat, "zbox": zbox, "zplus": zplus, "alpha2beta1": alpha2beta1,
             "gamma": gamma_rule}
    return rules[kind]


def _norm_rule(m: nn.Module) -> Callable:
    """Zennit's Norm (average pooling): x · ∂pool/∂x applied to r / stabilise(pool(x))."""
    def rule(x, r):
        xi = x.detach().requires_grad_()
        z = m.forward(xi)  # `forward`: our hooks stay out
        return x * torch.autograd.grad(z, xi, r / _stabilize(z, STABILIZER))[0]
    return rule


# ---------------------------------------------------------------------------- hooks


class _Rule(torch.autograd.Function):
    """Forward: the layer's output. Backward: the layer's relevance rule applied to the output's relevance."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, output: torch.Tensor, rule: Callable | None) -> torch.Tensor:
        if rule is not None:  # (a pass needs no input: the block may change it in place afterwards)
            ctx.save_for_backward(x)
        ctx.rule = rule
        return output.clone()

    @staticmethod
    def backward(ctx, r: torch.Tensor):
        if ctx.rule is None:  # pass: the output's relevance is the input's
            return r, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            return ctx.rule(x.detach(), r), None, None


class _ScaleByInput(torch.autograd.Function):
    """Captum's input hook: the gradient reaching a layer's input times that input (a layer with Captum's rule
    never changes its input in place: no copy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g * ctx.saved_tensors[0]


class _DivideByOutput(torch.autograd.Function):
    """Captum's output hook: the relevance reaching a layer's output divided by that output (+ ε·sign)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return z.clone()

    @staticmethod
    def backward(ctx, r: torch.Tensor):
        return r / _stabilize(ctx.saved_tensors[0], CAPTUM_EPSILON)


class _SumRule(torch.autograd.Function):
    """Zennit's Sum with the Norm rule on a ResNet block's residual sum: each branch keeps its share a / (a + b)."""

    @staticmethod
    def forward(ctx, identity: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(identity, out)
        return identity + out

    @staticmethod
    def backward(ctx, r: torch.Tensor):
        identity, out = ctx.saved_tensors
        s = r / _stabilize(identity + out, STABILIZER)
        return identity * s, out * s


@contextmanager
def _hooked(rules: Rules) -> Iterator[None]:
    """Inside the block, every call of a layer with a rule returns its output with the rule as its backward (each
    call its own), and each ResNet block returns relu(Sum(identity, out)) with the Sum rule."""
    pending: dict[int, list[torch.Tensor]] = {}  # id(module) -> inputs of its calls now running
    handles = []

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        (x, *rest) = args
        pending.setdefault(id(module), []).append(x)
        if rules.of[module] == "captum":  # Captum's ε-rule goes through the layer's own gradient
            return (_ScaleByInput.apply(x), *rest)
        return (x.detach().clone() if getattr(module, "inplace", False) else x.detach(), *rest)

    def forward_hook(module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = pending[id(module)].pop()
        rule = rules.of[module]
        if rule == "captum":
            return _DivideByOutput.apply(output)
        if rule == "merged":  # zennit's merged batch norm is BN(mean 0, var 1): it still divides by √(1 + eps)
            return _Rule.apply(x, output.detach() * (1 + module.eps) ** -0.5, None)
        return _Rule.apply(x, output.detach(), None if rule == "pass" else rule)

    seen: dict[int, dict[str, torch.Tensor]] = {}  # id(block) -> its input and its last batch norm's output

    def block_pre(block: nn.Module, args: tuple) -> None:
        seen[id(block)] = {"x": args[0]}

    def last_norm(block: nn.Module) -> Callable:
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            seen[id(block)]["out"] = output
            return output.clone()  # the block adds the identity in place: to this copy
        return hook

    def downsampled(block: nn.Module) -> Callable:
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            seen[id(block)]["identity"] = output
        return hook

    def block_post(block: nn.Module, _args: tuple, _output: torch.Tensor) -> torch.Tensor:
        found = seen.pop(id(block))
        return block.relu(_SumRule.apply(found.get("identity", found["x"]), found["out"]))

    try:
        for module in rules.of:
            handles += [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(forward_hook)]
        for block in rules.blocks:  # registered after the layers' hooks: the batch norm's rule output comes first
            norm = block.bn3 if hasattr(block, "bn3") else block.bn2
            handles += [block.register_forward_pre_hook(block_pre), block.register_forward_hook(block_post),
                        norm.register_forward_hook(last_norm(block))]
            if block.downsample is not None:
                handles.append(block.downsample.register_forward_hook(downsampled(block)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        pending.clear()
        seen.clear()
