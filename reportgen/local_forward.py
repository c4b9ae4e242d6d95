"""Forwards of inputs that differ from a reference only inside a box: the model's first layers run on a crop.

Occlusion, feature ablation and Shapley value sampling send hundreds of inputs per image, each equal to a
reference (the image, the baseline, or the input before) but for one window or superpixel. A convolution's output
at a position depends only on the input inside its receptive field, so the model's first, local layers (the
"prefix") change only near the box: `LocalForward` runs the prefix once on each reference, and for each input only
on a crop around its box, pastes the changed positions into the reference's features and runs the rest of the
model (the "suffix") on them. The numbers are the model's own: each pasted position is computed from exactly the
pixels the whole input would give it (float32 kernels on other shapes may round differently: ~1e-6 relative).

The split is found on the fast copy's fx graph (`split`): the prefix is the longest run of nodes from the input
that are convolutions, pooling, per-element activations and sums of such maps, up to the last node that alone
carries everything the suffix needs, and whose receptive field is at most a quarter of the input's side (beyond
that a crop is most of the image). Each node's geometry along an axis is (jump J, offset O, field R): output
position i sees the input pixels [O + i·J, O + i·J + R).

Why a crop gives exact positions: a crop starting at a multiple of J has the same output grid as the whole input,
shifted by start / J; an output whose field lies inside the crop (or reaches past the image's own border, where
the crop keeps the image's padding) is computed from the same values. Measured by `benchmarks/attribution.py`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
             nn.Tanh, nn.GELU, nn.ELU, nn.Identity, nn.Dropout, nn.BatchNorm2d)
POINTWISE_FUNCTIONS = {operator.add, operator.iadd, operator.mul, torch.add, torch.mul, torch.relu, torch.relu_,
                       nn.functional.relu, nn.functional.relu6, nn.functional.hardswish, nn.functional.silu}
POINTWISE_METHODS = {"relu", "relu_", "add", "add_", "mul", "mul_", "sigmoid", "contiguous"}
FIELD_SHARE = 0.25  # the prefix's receptive field at most this share of the input's shorter side
CROP_SHARE = 0.6  # a crop of more than this share of the input's area runs whole: the prefix gains little there


@dataclass(frozen=True)
class Geometry:
    """Per axis (rows, columns): jump J, offset O, field R (module docstring)."""
    jump: tuple[int, int]
    offset: tuple[int, int]
    field: tuple[int, int]


INPUT = Geometry((1, 1), (0, 0), (1, 1))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _window(g: Geometry, kernel, stride, padding, dilation=1) -> Geometry:
    k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    return Geometry(tuple(g.jump[a] * s[a] for a in range(2)),
                    tuple(g.offset[a] - p[a] * g.jump[a] for a in range(2)),
                    tuple(g.field[a] + (d[a] * (k[a] - 1)) * g.jump[a] for a in range(2)))


def _module_geometry(module: nn.Module, g: Geometry) -> Geometry | None:
    """The geometry after `module` given its input's, or None when it is not a local, translation-equivariant map.
    A module of our own that computes a convolution declares it: `local_window` = (kernel, stride, padding)."""
    if getattr(module, "local_window", None) is not None:
        return _window(g, *module.local_window)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return _window(g, module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if module.ceil_mode:
            return None
        stride = module.stride if module.stride is not None else module.kernel_size
        return _window(g, module.kernel_size, stride, module.padding, getattr(module, "dilation", 1))
    if isinstance(module, POINTWISE):
        return g
    return None


def _node_geometry(gm: fx.GraphModule, node: fx.Node, known: dict[fx.Node, Geometry]) -> Geometry | None:
    inputs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    if any(a not in known for a in inputs):
        return None
    if any(not isinstance(a, (fx.Node, int, float, bool, type(None))) for a in (*node.args, *node.kwargs.values())):
        return None  # lists, shapes, slices: not a per-element map
    if node.op == "call_module":
        return _module_geometry(gm.get_submodule(node.target), known[inputs[0]]) if len(inputs) == 1 else None
    if (node.op == "call_function" and node.target in POINTWISE_FUNCTIONS) or \
            (node.op == "call_method" and node.target in POINTWISE_METHODS):
        grids = {(known[a].jump, tuple(2 * known[a].offset[ax] + known[a].field[ax] for ax in range(2)))
                 for a in inputs}  # the jump and twice the centre of position 0's field
        if len(grids) != 1:
            return None  # maps on different grids
        offset = tuple(min(known[a].offset[ax] for a in inputs) for ax in range(2))
        end = tuple(max(known[a].offset[ax] + known[a].field[ax] for a in inputs) for ax in range(2))
        return Geometry(known[inputs[0]].jump, offset, tuple(end[ax] - offset[ax] for ax in range(2)))
    return None


@dataclass
class Split:
    prefix: fx.GraphModule  # input -> the features at the cut
    suffix: fx.GraphModule  # features -> the model's output
    geometry: Geometry


def split(gm: fx.GraphModule, size: tuple[int, int]) -> Split | None:
    """The prefix and suffix of `gm` (one input) at its best cut for inputs of `size` (H, W), or None."""
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    known: dict[fx.Node, Geometry] = {placeholders[0]: INPUT}
    order = {n: i for i, n in enumerate(nodes)}
    best = None
    for i, node in enumerate(nodes):
        if node.op in ("placeholder", "get_attr"):
            continue
        geometry = _node_geometry(gm, node, known)
        if geometry is None or max(geometry.field[a] / size[a] for a in range(2)) > FIELD_SHARE:
            break
        known[node] = geometry
        live = {n for n in known if n.op != "get_attr" and any(order[u] > i for u in n.users)}
        if live == {node}:  # everything the rest reads: a cut
            best = node
    if best is None:
        return None
    cut = order[best]
    prefix, suffix = fx.Graph(), fx.Graph()
    env: dict[fx.Node, Any] = {}
    for node in nodes[:cut + 1]:
        env[node] = prefix.node_copy(node, lambda n: env[n])
    prefix.output(env[best])
    env2: dict[fx.Node, Any] = {best: suffix.placeholder("features")}
    for node in nodes[cut + 1:]:
        if node.op == "placeholder":
            return None
        for a in node.all_input_nodes:  # constants the prefix read too
            if a not in env2 and a.op == "get_attr":
                env2[a] = suffix.node_copy(a)
        env2[node] = suffix.node_copy(node, lambda n: env2[n])
    return Split(fx.GraphModule(gm, prefix), fx.GraphModule(gm, suffix), known[best])


Forward = Callable[[torch.Tensor], torch.Tensor]
Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, in input pixels


class Whole:
    """The interface of `LocalForward` for a forward without a split: every input runs whole."""

    def __init__(self, forward: Forward):
        self.forward = forward

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty(len(x), 0)

    def __call__(self, x: torch.Tensor, features: torch.Tensor, reference: torch.Tensor, boxes: list[Box],
                 chain: list[bool] | None = None) -> torch.Tensor:
        return self.forward(x)


def near(forward: Forward) -> LocalForward | Whole:
    """`forward`'s local variant (`inference_forward` makes one, on first use, when it can), else `Whole(forward)`."""
    make = getattr(forward, "make_local", None)
    return (make() if make is not None else None) or Whole(forward)


class LocalForward:
    """x -> logits for inputs that equal a reference outside a box (module docstring). `chunk`: images per call
    of the whole model (None: all); `output`: the model's output -> logits."""

    def __init__(self, parts: Split, size: tuple[int, int], features: tuple[int, int], chunk: int | None,
                 output: Callable[[Any], torch.Tensor] | None = None):
        self.parts, self.size, self.chunk, self.output = parts, size, chunk, output
        self.features_size = features  # (H', W') of the prefix's features of an input of `size`

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The prefix's features of each of `x` (the references)."""
        with torch.inference_mode():
            return self._run(self.parts.prefix, x.contiguous(memory_format=torch.channels_last), self.chunk)

    def __call__(self, x: torch.Tensor, features: torch.Tensor, reference: torch.Tensor, boxes: list[Box],
                 chain: list[bool] | None = None) -> torch.Tensor:
        """The logits of `x` (B, C, H, W), row r equal outside `boxes[r]` to the input whose features are
        `features[reference[r]]` (`features` of the references, (R, ...); `reference`: (B,) indices), or, where
        `chain[r]` (r > 0), to row r − 1 of `x`."""
        h, w = self.size
        plans = [self._plan(box) for box in boxes]
        stitched = features[reference].contiguous(memory_format=torch.channels_last)  # a copy, pasted into
        groups: dict[tuple[int, int], list[int]] = {}
        for r, plan in enumerate(plans):
            if plan is not None:
                groups.setdefault((plan[5] - plan[4], plan[7] - plan[6]), []).append(r)
        with torch.inference_mode():
            computed: dict[int, torch.Tensor] = {}
            for (ch, cw), rows in groups.items():
                crops = torch.stack([x[r, :, p[4]:p[5], p[6]:p[7]] for r in rows for p in (plans[r],)])
                chunk = None if self.chunk is None else max(1, self.chunk * h * w // (ch * cw))
                out = self._run(self.parts.prefix, crops.contiguous(memory_format=torch.channels_last), chunk)
                computed.update(zip(rows, out))
            jy, jx = self.parts.geometry.jump
            for r, plan in enumerate(plans):
                if chain is not None and chain[r] and r > 0:
                    stitched[r] = stitched[r - 1]
                if plan is None:
                    continue
                i0, i1, k0, k1, c0, _, d0, _ = plan
                stitched[r, :, i0:i1, k0:k1] = computed[r][:, i0 - c0 // jy:i1 - c0 // jy, k0 - d0 // jx:k1 - d0 // jx]
            out = self._run(self.parts.suffix, stitched, self.chunk)
            return out if self.output is None else self.output(out)

    def _plan(self, box: Box) -> tuple[int, ...] | None:
        """(i0, i1, k0, k1): the feature rows and columns the box changes; (c0, c1, d0, d1): the crop that computes
        them; None when the box is empty."""
        g, (h, w), (fh, fw) = self.parts.geometry, self.size, self.features_size
        rows, cols = _span(box[0], box[2], h, fh, g, 0), _span(box[1], box[3], w, fw, g, 1)
        if rows is None or cols is None:
            return None
        if (rows[3] - rows[2]) * (cols[3] - cols[2]) > CROP_SHARE * h * w:
            rows, cols = (0, fh, 0, h), (0, fw, 0, w)
        return (rows[0], rows[1], cols[0], cols[1], rows[2], rows[3], cols[2], cols[3])

    @staticmethod
    def _run(module: Callable[[torch.Tensor], Any], x: torch.Tensor, chunk: int | None) -> Any:
        if chunk is None or len(x) <= chunk:
            return module(x)
        return torch.cat([module(part) for part in x.split(chunk)])


def _span(lo: int, hi: int, size: int, positions: int, g: Geometry, axis: int) -> tuple[int, int, int, int] | None:
    """Along one axis of `size` pixels and `positions` features, for input pixels [lo, hi) changed: the feature
    positions [i0, i1) whose field meets them and the crop [c0, c1) that computes those exactly (c0 a multiple of
    the jump, so the grids agree), its length rounded up to two jumps (fewer crop shapes, larger batches) within the
    input."""
    jump, offset, field = g.jump[axis], g.offset[axis], g.field[axis]
    lo, hi = max(lo, 0), min(hi, size)
    if hi <= lo:
        return None
    i0 = max(0, -((offset + field - 1 - lo) // jump))  # ceil((lo − O − R + 1) / J)
    i1 = min(positions, (hi - 1 - offset) // jump + 1)
    if i1 <= i0:
        return None
    need0, need1 = max(0, offset + i0 * jump), min(size, offset + (i1 - 1) * jump + field)
    c0 = need0 // jump * jump
    length = -(-(need1 - c0) // (2 * jump)) * 2 * jump
    if c0 + length > size:  # keep the rounded length by starting earlier, on the grid
        c0 = max(0, (size - length) // jump * jump)
    return i0, i1, c0, min(size, c0 + length)


def local_forward(module: fx.GraphModule, example: torch.Tensor, chunk: int | None,
                  output: Callable[[Any], torch.Tensor] | None, whole: Forward, tolerance: float) -> LocalForward | None:
    """The `LocalForward` of `module` (the fast copy's traced graph, channels-last) for inputs like `example`, checked
    against `whole` (the same model's forward of whole inputs) on three copies of `example[:1]`, each with a box at
    zero (inside, at a corner, along an edge); None when there is no split or the check fails."""
    h, w = example.shape[-2:]
    parts = split(module, (h, w))
    if parts is None:
        return None
    with torch.inference_mode():
        features = parts.prefix(example[:1].contiguous(memory_format=torch.channels_last))
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        return None
    local = LocalForward(parts, (h, w), tuple(features.shape[-2:]), chunk, output)
    side = max(1, min(h, w) // 8)
    boxes = [(h // 2 - side // 2, w // 2 - side // 2, h // 2 + side - side // 2, w // 2 + side - side // 2),
             (0, w - side, side, w), (h - side, 0, h, w)]
    x = example[:1].repeat(len(boxes), 1, 1, 1)
    for r, (y0, x0, y1, x1) in enumerate(boxes):
        x[r, :, y0:y1, x0:x1] = 0
    expected = whole(x).float()
    got = local(x, features, torch.zeros(len(boxes), dtype=torch.long), boxes).float()
    difference = float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
    return local if difference <= tolerance else None
