"""The `kernels` stage: a convolution's weights ARE its kernels, plus filter visualisation.

For each listed conv layer (default: the first nn.Conv2d the forward pass calls) the result holds
the weight (out, in, kh, kw), each filter's L2 norm and the filters whose norm stands out
(dead: below `DEAD_FRACTION` x the median norm; exploding: above `EXPLODING_FACTOR` x the median).

With `optimize:`, activation maximisation (Erhan et al. 2009; FlashTorch's `GradientAscent`):
for each chosen layer, ONE batch holds one input per filter; Adam ascends the input so that
filter k's mean activation in image k grows, from a seeded random start, with the regularisers
that keep the result readable: random jitter (roll) before each forward, a gaussian blur every
`blur_every` steps, optional total variation and weight decay, and clipping to the valid pixel
range [0, 1] expressed in normalised space. Start and end activations are recorded per filter.
FlashTorch 0.1.3 by contrast runs one filter at a time from unseeded noise, takes plain steps of the
RMS-normalised input gradient with no jitter, blur, decay or clipping (its results leave the valid
pixel range and are high-frequency), and only displays them standardised.

Layers are qualified names or patterns: `{type: Conv2d, depth: 2}` (depth = dots + 1, torchinfo's
convention: `layer1` is depth 1, `layer1.0.conv1` depth 3), matched in forward order.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config.rules import COUNT, SEED, setting
from ..config.values import LayerPattern, Normalize
from ..errors import ReportgenError
from ..hooks import capture_outputs, forward_until, get_layer
from ..layers import first_conv, is_conv, select_layers
from ..ops import gaussian_blur
from ..progress import track
from . import Context, ModelInfo, Stage


@dataclass(frozen=True)
class OptimizeConfig:
    """Activation maximisation (filter visualisation) by gradient ascent on the input."""

    layers: tuple[str | LayerPattern, ...] = ()  # default: the kernels stage's layers
    filters: tuple[int, ...] = setting(tuple(range(16)), ge=0)
    steps: int = setting(64, **COUNT)
    lr: float = setting(0.1, gt=0)
    jitter: int = setting(4, ge=0)
    blur: float = setting(0.5, ge=0)  # gaussian sigma in pixels applied every `blur_every` steps; 0 = off
    blur_every: int = setting(8, **COUNT)
    tv: float = setting(0.0, ge=0)  # total-variation weight
    weight_decay: float = setting(1e-4, ge=0)
    size: int | None = setting(None, ge=8, le=16384)  # input side; default: model input size
    seed: int | None = setting(None, **SEED)  # default: the config's seed


@dataclass(frozen=True)
class KernelsConfig:
    layers: tuple[str | LayerPattern, ...] = ()  # default: the first conv layer
    max_filters: int = setting(64, **COUNT)
    max_channels: int = setting(8, **COUNT)
    optimize: OptimizeConfig | None = None


DEAD_FRACTION = 0.01  # a filter whose L2 norm is below 1 % of the layer's median norm is "dead"
EXPLODING_FACTOR = 10.0  # ... above 10 x the median norm is "exploding"
START_RANGE = (0.4, 0.6)  # activation maximisation starts from uniform noise in this pixel range


@dataclass(frozen=True)
class LayerKernels:
    name: str
    type: str
    weight: np.ndarray  # (out, in/groups, kh, kw) float32, a copy of the module's weight
    norms: np.ndarray  # (out,) float32: each filter's L2 norm
    dead: tuple[int, ...]  # filter indices with norm < DEAD_FRACTION * median
    exploding: tuple[int, ...]  # filter indices with norm > EXPLODING_FACTOR * median
    groups: int = 1


@dataclass(frozen=True)
class FilterVisualisation:
    layer: str
    filters: tuple[int, ...]  # (F,) channel indices of the layer's output
    images: np.ndarray  # (F, H, W, C) float32 in [0, 1]: the optimised inputs in pixel space
    start: np.ndarray  # (F,) float32: filter k's mean activation on its random start image
    end: np.ndarray  # (F,) float32: ... on its optimised image
    steps: int
    lr: float
    seed: int


@dataclass(frozen=True)
class KernelsResult:
    layers: tuple[LayerKernels, ...]
    optimized: tuple[FilterVisualisation, ...] = ()
    notes: tuple[str, ...] = ()  # informative (defaults adjusted to the model)
    warnings: tuple[str, ...] = ()  # worth a look: dead or exploding filters
    max_filters: int = 64  # figure caps, from the config
    max_channels: int = 8


# ---------------------------------------------------------------------------- layer selection

def kernel_layers(info: ModelInfo, cfg: KernelsConfig) -> list[str]:
    """The conv layers `cfg.layers` lists (default: the first conv); a clear error for non-conv layers."""
    if not cfg.layers:
        return [first_conv(info)]
    names = select_layers(info, cfg.layers, "analyses.kernels.layers")
    for name in names:
        module = get_layer(info.model, name)
        if not is_conv(module):
            inside = [n for n, m in module.named_modules(prefix=name) if n != name and is_conv(m)]
            hint = (f" Conv layers inside it: {', '.join(inside[:6])}{', ...' if len(inside) > 6 else ''}."
                    if inside else "")
            raise ReportgenError(f"`analyses.kernels.layers`: layer `{name}` is a {info.layers[name].type}, "
                                 f"not a Conv2d: kernels are the weights of a convolution.{hint}")
    return names


def optimize_layers(info: ModelInfo, cfg: KernelsConfig) -> list[str]:
    """The layers to visualise (default: the kernel layers); each must output a 4-D feature map."""
    assert cfg.optimize is not None
    key = "analyses.kernels.optimize.layers"
    names = select_layers(info, cfg.optimize.layers, key) if cfg.optimize.layers else kernel_layers(info, cfg)
    for name in names:
        shape = info.layers[name].output_shape
        if shape is None or len(shape) != 4:
            what = "is not called by the forward pass" if info.layers[name].order is None and shape is None \
                else f"outputs {_shape_text(shape)}, not an (N, C, H, W) feature map"
            raise ReportgenError(f"`{key}`: layer `{name}` {what}, so it has no filters to maximise.")
    return names


def _shape_text(shape: tuple | None) -> str:
    return "no tensor" if shape is None else f"shape {tuple(shape)}"


def filters_for(info: ModelInfo, layer: str, opt: OptimizeConfig) -> tuple[list[int], str | None]:
    """The filter indices to visualise in `layer` and an optional note (defaults clipped to its channels)."""
    channels = info.layers[layer].output_shape[1]
    filters = list(dict.fromkeys(opt.filters))
    bad = [f for f in filters if not 0 <= f < channels]
    if not bad:
        return filters, None
    if opt.filters == OptimizeConfig().filters:  # the default list: keep what exists
        kept = [f for f in filters if 0 <= f < channels]
        return kept, f"`{layer}` has {channels} channels: visualising filters 0 to {channels - 1}."
    raise ReportgenError(f"`analyses.kernels.optimize.filters`: filter {bad[0]} does not exist in `{layer}`, "
                         f"which has {channels} channels (0 to {channels - 1}).")


# ---------------------------------------------------------------------------- stage contract

def check(info: ModelInfo, cfg: KernelsConfig) -> None:
    """What needs the model (the schema checked the ranges): the layers and the filters in them."""
    kernel_layers(info, cfg)
    if cfg.optimize is not None:
        for layer in optimize_layers(info, cfg):
            filters_for(info, layer, cfg.optimize)


def run(ctx: Context, cfg: KernelsConfig) -> KernelsResult:
    layers = tuple(compute_kernels(ctx.model, name) for name in kernel_layers(ctx.info, cfg))
    notes: list[str] = []
    optimized: list[FilterVisualisation] = []
    if cfg.optimize is not None:
        opt = cfg.optimize
        size = (opt.size, opt.size) if opt.size else tuple(ctx.batch.shape[2:])
        normalize = ctx.info.normalize  # what the inputs are normalised with, whatever set it
        seed = ctx.config.seed if opt.seed is None else opt.seed
        for name in optimize_layers(ctx.info, cfg):
            filters, note = filters_for(ctx.info, name, opt)
            if note:
                notes.append(note)
            ctx.log(f"kernels: maximising {len(filters)} filters of `{name}` ({opt.steps} steps, batch of "
                    f"{len(filters)} at {size[0]}x{size[1]})")
            optimized.append(maximize_activation(
                ctx.model, name, filters, channels=ctx.batch.shape[1], size=size, normalize=normalize,
                steps=opt.steps, lr=opt.lr, jitter=opt.jitter, blur=opt.blur, blur_every=opt.blur_every,
                tv=opt.tv, weight_decay=opt.weight_decay, seed=seed, device=ctx.device))
    warnings: list[str] = []
    for layer in layers:
        if layer.dead:
            warnings.append(f"`{layer.name}`: {len(layer.dead)} filter(s) with almost no weight (dead): "
                         f"{_indices(layer.dead)}.")
        if layer.exploding:
            warnings.append(f"`{layer.name}`: {len(layer.exploding)} filter(s) with a norm over "
                         f"{EXPLODING_FACTOR:g} x the median (exploding): {_indices(layer.exploding)}.")
    return KernelsResult(layers=layers, optimized=tuple(optimized), notes=tuple(notes), warnings=tuple(warnings),
                         max_filters=cfg.max_filters, max_channels=cfg.max_channels)


def arrays(result: KernelsResult) -> dict[str, np.ndarray]:
    return {f"kernels/{layer.name}": layer.weight.astype(np.float32) for layer in result.layers}


def to_json(result: KernelsResult) -> dict:
    return {
        "layers": [{
            "name": layer.name,
            "type": layer.type,
            "shape": list(layer.weight.shape),
            "groups": layer.groups,
            "weight_mean": float(layer.weight.mean()),
            "weight_std": float(layer.weight.std()),
            "weight_min": float(layer.weight.min()),
            "weight_max": float(layer.weight.max()),
            "filter_norms": [round(float(v), 6) for v in layer.norms],
            "dead_filters": list(layer.dead),
            "exploding_filters": list(layer.exploding),
        } for layer in result.layers],
        "optimize": [{
            "layer": vis.layer,
            "filters": list(vis.filters),
            "start_activation": [float(v) for v in vis.start],
            "end_activation": [float(v) for v in vis.end],
            "steps": vis.steps,
            "lr": vis.lr,
            "seed": vis.seed,
        } for vis in result.optimized],
        "notes": list(result.notes),
        "warnings": list(result.warnings),
    }


def _indices(values: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


# ---------------------------------------------------------------------------- compute

def compute_kernels(model: nn.Module, name: str) -> LayerKernels:
    """A conv layer's weight, its per-filter L2 norms and the outliers among them."""
    module = get_layer(model, name)
    weight = module.weight.detach().float().cpu().numpy().copy()  # (out, in/groups, kh, kw)
    norms = np.sqrt((weight.astype(np.float64) ** 2).reshape(weight.shape[0], -1).sum(axis=1)).astype(np.float32)
    median = float(np.median(norms))
    dead = tuple(int(i) for i in np.flatnonzero(norms <= DEAD_FRACTION * median)) if median > 0 \
        else tuple(range(len(norms)))
    exploding = tuple(int(i) for i in np.flatnonzero(norms > EXPLODING_FACTOR * median)) if median > 0 else ()
    kind = getattr(module, "original_name", type(module).__name__)  # TorchScript keeps the class name there
    return LayerKernels(name=name, type=kind, weight=weight, norms=norms, dead=dead, exploding=exploding,
                        groups=int(getattr(module, "groups", 1)))


_OPTIMIZE = OptimizeConfig()  # the defaults of `kernels.optimize`, one source for the config and this function


def maximize_activation(
    model: nn.Module,
    layer: str,
    filters: Sequence[int],
    *,
    channels: int = 3,
    size: tuple[int, int] = (224, 224),
    normalize: Normalize | None = None,
    steps: int = _OPTIMIZE.steps,
    lr: float = _OPTIMIZE.lr,
    jitter: int = _OPTIMIZE.jitter,
    blur: float = _OPTIMIZE.blur,
    blur_every: int = _OPTIMIZE.blur_every,
    tv: float = _OPTIMIZE.tv,
    weight_decay: float = _OPTIMIZE.weight_decay,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> FilterVisualisation:
    """Synthesise, for each filter, the input that maximises its mean activation in `layer`.

    All filters are optimised together: a batch of len(filters) images where image k serves filter k
    (in eval mode, restored afterwards, so the images do not interact through BatchNorm). The objective of
    image k is the spatial mean of channel filters[k] of the layer's output; Adam ascends it on the
    normalised input. Model parameters get no `.grad`; the model is not modified.
    """
    device = torch.device(device)
    n = len(filters)
    h, w = size
    generator = torch.Generator().manual_seed(int(seed))  # jitter offsets, shared by the batch
    mean, std = _stats(normalize, channels)
    lo, hi = ((0.0 - mean) / std).to(device), ((1.0 - mean) / std).to(device)  # (1, C, 1, 1) valid range
    pixels = torch.stack([start_image(seed, f, (channels, h, w)) for f in filters])  # (F, C, H, W) in [0, 1]
    x = ((pixels - mean) / std).to(device).requires_grad_(True)  # (F, C, H, W) normalised
    index = torch.as_tensor(list(filters), device=device)
    rows = torch.arange(n, device=device)
    adam = Adam(x, lr=lr, weight_decay=weight_decay)

    was_training = model.training
    model.eval()  # BatchNorm with running statistics: the images of the batch do not interact
    with (_restore_mode(model, was_training), _one_thread(device),
          capture_outputs(model, [layer], detach=False, stop_after=layer) as outputs):
        def score(inputs: torch.Tensor) -> torch.Tensor:  # (F,) mean activation of filter k in image k
            forward_until(model, inputs)  # the layers after `layer` do not matter
            act = outputs[layer]  # (F, C', h, w)
            return act[rows, index].float().mean(dim=(1, 2))

        with torch.no_grad():
            start = score(x)
        for step in track(range(steps), total=steps, desc=f"maximising {layer}", unit="step"):
            shifted = x
            if jitter > 0:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
                shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            with torch.enable_grad():
                loss = -score(shifted).sum()
                if tv > 0:
                    loss = loss + tv * total_variation(x).sum()
                (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                adam.step(grad)
                if blur > 0 and (step + 1) % blur_every == 0:
                    x.copy_(gaussian_blur(x, blur, padding="reflect"))
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        with torch.no_grad():
            end = score(x)

    images = (x.detach().cpu() * std + mean).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # (F, H, W, C) in [0, 1]
    return FilterVisualisation(
        layer=layer, filters=tuple(int(f) for f in filters), images=images.numpy().astype(np.float32),
        start=start.cpu().numpy().astype(np.float32), end=end.cpu().numpy().astype(np.float32),
        steps=steps, lr=lr, seed=int(seed))


@contextmanager
def _restore_mode(model: nn.Module, training: bool) -> Iterator[None]:
    try:
        yield
    finally:
        model.train(training)


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU for the block (the previous count restored after). Each of the many small
    steps runs dozens of short parallel ops; torch's OpenMP threads spin-wait at the end of each, so when another
    process wants a core, the two threads wait on each other: the quickstart's maximisation took 2 to 28 s on two
    shared cores, against 1.0 to 2.7 s with one thread (0.7 s against 1.05 s on idle cores:
    `python benchmarks/quickstart.py`, README "Speed")."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Adam:
    """torch.optim.Adam's update (L2 `weight_decay` added to the gradient) for one tensor, in place.

    Written out because importing torch.optim pulls in torch._dynamo: seconds per build on a small CPU."""

    def __init__(self, x: torch.Tensor, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.x, self.lr, self.weight_decay, self.betas, self.eps = x, lr, weight_decay, betas, eps
        self.m = torch.zeros_like(x)
        self.v = torch.zeros_like(x)
        self.t = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        if self.weight_decay:
            grad = grad + self.weight_decay * self.x
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
        self.x.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))


def start_image(seed: int, filter_index: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """(C, H, W) uniform noise in START_RANGE from its own generator: a filter's start (and so its result)
    does not depend on which other filters share the batch."""
    state = int(np.random.SeedSequence([int(seed), int(filter_index)]).generate_state(1)[0])
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(state))
    return START_RANGE[0] + (START_RANGE[1] - START_RANGE[0]) * noise


def _stats(normalize: Normalize | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std of the input normalisation (0 and 1 when there is none)."""
    if normalize is None:
        return torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    mean, std = torch.tensor(normalize.mean), torch.tensor(normalize.std)
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ReportgenError(f"the input normalisation has {len(mean)} means and {len(std)} stds for a "
                             f"{channels}-channel input.")
    return mean.expand(channels).view(1, -1, 1, 1).float(), std.expand(channels).view(1, -1, 1, 1).float()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,) anisotropic total variation: mean |horizontal| + mean |vertical| difference."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dh + dw


SPEC = Stage(name="kernels", title="Convolution kernels", order=30, options=KernelsConfig, run=run, check=check,
             arrays=arrays,
             to_json=to_json, needs_hooks=lambda cfg: ("optimize",) if cfg.optimize is not None else ())
