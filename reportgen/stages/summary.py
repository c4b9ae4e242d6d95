"""The model summary: torchinfo's table and totals as plain records (no display strings inside), and a FLOP
total from `torch.utils.flop_counter`, which counts what torchinfo's mult-adds leave out (attention matmuls)."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

from ..config.rules import COUNT, setting
from . import Context, Stage


@dataclass(frozen=True)
class SummaryConfig:
    depth: int = setting(3, **COUNT)


@dataclass(frozen=True)
class SummaryRow:
    name: str  # qualified name (`layer1.0.conv1`), "" for the model itself
    class_name: str
    depth: int  # 0 for the model, 1 for its children, ...
    depth_index: int  # torchinfo's running index within the depth (`3-18`)
    output_shape: list[int] | None
    num_params: int  # the parameters this row stands for, as torchinfo shows them (0 = "--")
    mult_adds: int  # as torchinfo shows them (0 = "--")
    kernel_size: list[int] | None
    trainable: str  # "yes" | "no" | "partial" | "" (no parameters)
    recursive: bool  # a module already seen in this pass: its parameters are not counted again
    is_leaf: bool


@dataclass(frozen=True)
class SummaryTotals:
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_mult_adds: int
    input_size_mb: float
    forward_backward_pass_size_mb: float
    params_size_mb: float
    estimated_total_size_mb: float


@dataclass(frozen=True)
class SummaryResult:
    model_name: str
    input_shape: list[int]  # [1, C, H, W]
    rows: list[SummaryRow]  # up to the configured depth
    totals: SummaryTotals
    flops: int | None = None  # FLOPs of one forward at input_shape (FlopCounterMode), None when it could not count
    flops_note: str = ""  # how the FLOP total differs from torchinfo's mult-adds


def run(ctx: Context, cfg: SummaryConfig) -> SummaryResult:
    return compute_summary(ctx.model, ctx.config.model.input_size, depth=cfg.depth, device=ctx.device)


def compute_summary(model, input_size, *, depth: int = 3, device=None) -> SummaryResult:
    """torchinfo 1.8.0's numbers for `model` at (1, *input_size), rows up to `depth`."""
    from torchinfo import summary

    input_shape = [1, *input_size]
    stats = summary(model, input_size=input_shape, depth=max(depth, 1), verbose=0, device=device,
                    col_names=("output_size", "num_params", "mult_adds", "kernel_size", "trainable"))
    rows = []
    for layer in stats.summary_list:
        if layer.depth > depth:
            continue
        at_max_depth = layer.depth == depth
        if layer.is_recursive:
            params = 0
        elif layer.is_leaf_layer or at_max_depth:
            params = layer.num_params
        else:
            params = max(layer.leftover_params(), 0)
        if layer.is_leaf_layer:
            macs = layer.macs
        elif at_max_depth:
            macs = sum(child.macs for child in layer.children if child.is_leaf_layer)
        else:
            macs = 0
        rows.append(SummaryRow(
            name=_qualified_name(layer),
            class_name=layer.class_name,
            depth=layer.depth,
            depth_index=layer.depth_index or 0,
            output_shape=list(layer.output_size) if layer.output_size else None,
            num_params=max(params, 0),
            mult_adds=max(macs, 0),
            kernel_size=_kernel(layer.kernel_size),
            trainable={"True": "yes", "False": "no", "Partial": "partial"}.get(layer.trainable, ""),
            recursive=layer.is_recursive,
            is_leaf=layer.is_leaf_layer,
        ))
    total = stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    totals = SummaryTotals(
        total_params=stats.total_params,
        trainable_params=stats.trainable_params,
        non_trainable_params=stats.total_params - stats.trainable_params,
        total_mult_adds=stats.total_mult_adds,
        input_size_mb=round(stats.total_input / 1e6, 2),
        forward_backward_pass_size_mb=round(stats.total_output_bytes / 1e6, 2),
        params_size_mb=round(stats.total_param_bytes / 1e6, 2),
        estimated_total_size_mb=round(total / 1e6, 2),
    )
    missed = torchinfo_misses(model, stats.summary_list)
    flops = count_flops(model, input_shape, device) if missed else None
    return SummaryResult(model_name=type(model).__name__, input_shape=input_shape, rows=rows, totals=totals,
                         flops=flops, flops_note=flops_note(flops, totals.total_mult_adds, missed))


def torchinfo_misses(model, layers) -> bool:
    """Whether torchinfo's mult-adds miss matmuls of this model: attention modules (nn.MultiheadAttention,
    timm's and Hugging Face's `...Attention` classes), or a linear layer applied to more than one vector per
    image (tokens, a channels-last map: torchinfo counts it once). Only then is the FLOP counter's forward worth
    its time (counting shapes alone first loads torch's meta kernels: 1.6 s). `layers`: torchinfo's list."""
    return any("Attention" in type(module).__name__ for module in model.modules()) or any(
        layer.class_name == "Linear" and layer.output_size and len(layer.output_size) > 2 for layer in layers)


def count_flops(model, input_shape, device=None) -> int | None:
    """FLOPs of one forward of a zero input (`torch.utils.flop_counter.FlopCounterMode`: matmuls and
    convolutions, 2 per mult-add), attention through the explicit (math) kernel so its matmuls are counted;
    None when the model does not run under the counter. Counted on shapes alone, on the meta device (parameters
    swapped for meta tensors: ResNet-50 0.1 s instead of 3.5 s of real convolutions; there nn.MultiheadAttention
    takes its explicit path too, whose matmuls a real no-grad forward hides in one fused kernel); a model that
    does not run on meta tensors is counted on fake tensors (1.6 s of importing their machinery), then for real."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(model, torch.jit.ScriptModule):
        return None
    parameter = next(model.parameters(), None)
    device = device or (parameter.device if parameter is not None else "cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    try:
        from torch.func import functional_call

        meta = {name: torch.empty_like(t, device="meta") for name, t in [*model.named_parameters(),
                                                                          *model.named_buffers()]}
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            functional_call(model, meta, (torch.zeros(input_shape, device="meta", dtype=dtype),))
        if not any("scaled_dot_product" in str(op) for ops in counter.get_flop_counts().values() for op in ops):
            return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model that does not run on meta tensors: the ways below
        pass
    for fake in (True, False):
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
                    FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
                x = torch.zeros(input_shape, device=device, dtype=dtype)
                with FlopCounterMode(display=False) as counter:
                    model(x)
            return int(counter.get_total_flops())
        except Exception:  # noqa: BLE001 - not on fake tensors: for real; not at all: the summary goes without
            continue
    return None


def flops_note(flops: int | None, mult_adds: int, counted: bool = True) -> str:
    if not counted:
        return ("No attention, no linear layer over tokens: torchinfo's mult-adds count every convolution and "
                f"matrix product (2 FLOPs each: {2 * mult_adds:,} FLOPs).")
    if flops is None:
        return "The FLOP counter could not follow this model's forward pass."
    missing = flops / 2 - mult_adds
    text = ("FLOPs from torch.utils.flop_counter: the matrix products and convolutions of one forward, 2 FLOPs per "
            "mult-add. torchinfo's mult-adds count no attention matmuls (queries × keys, weights × values) nor other "
            "functional ops, and a linear layer once per image, not once per token")
    if missing > 0.05 * max(mult_adds, 1):
        return text + f": here the FLOPs stand for {flops / 2 / max(mult_adds, 1):.1f}× torchinfo's mult-adds."
    return text + "."


def _qualified_name(layer) -> str:
    parts = []
    while layer is not None and layer.depth > 0:
        parts.append(layer.var_name)
        layer = layer.parent_info
    return ".".join(reversed(parts))


def _kernel(size) -> list[int] | None:
    if size is None:
        return None
    return list(size) if isinstance(size, (list, tuple)) else [int(size)]


def to_json(result: SummaryResult) -> dict:
    return {
        "totals": asdict(result.totals),
        "flops": {"total": result.flops, "note": result.flops_note},
        "rows": [
            {k: v for k, v in asdict(row).items() if k in
             ("name", "class_name", "depth", "output_shape", "num_params", "mult_adds", "kernel_size", "trainable")}
            for row in result.rows
        ],
    }


def headline(result: SummaryResult) -> dict[str, float]:
    t = result.totals
    return {"total_params": float(t.total_params), "trainable_params": float(t.trainable_params),
            "mult_adds": float(t.total_mult_adds)}


SPEC = Stage(name="summary", title="Model summary", order=10, options=SummaryConfig, run=run,
             to_json=to_json, metrics=headline)
