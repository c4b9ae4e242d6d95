"""The evaluation stage's forwards, and what of it applies to a segmenter (`model.task: segmentation`).

A segmenter's maps explain class c inside its predicted region R_c(i), the region fixed from the unperturbed image i
(`methods.regions`). Where the evaluation's definitions carry over, they are read on that region:

- deletion, insertion, ROAD, confidence change: the score of class c on a perturbed input is its mean softmax
  probability over R_c(i) (`metrics.regions.RegionProbabilities`), in [0, 1] as a classifier's probability;
- the sanity cascade: the maps recomputed on each randomised copy with the SAME regions (`RegionScores` of the
  copy's forward and the trained model's regions), so only the model changes between the maps compared.

The others (`metrics.regions.REFUSED`: localisation, infidelity, max-sensitivity) are refused by `refuse`, naming
them. An image whose explained class has an empty region (a class named in `targets` that it does not predict) has
no score to perturb: it is left out of the scored images (`scorable`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..engine import Engine
from ..errors import ReportgenError
from ..methods.regions import RegionScores, predicted_regions
from ..metrics.regions import REFUSED, RegionProbabilities
from ..metrics.scoring import METRICS
from . import Context, ModelInfo

SEGMENTATION = "segmentation"


def applies(task: str) -> tuple[str, ...]:
    """The evaluation metrics that apply to a model of `task`, in column order."""
    return tuple(m for m in METRICS if m not in REFUSED) if task == SEGMENTATION else METRICS


def refuse(task: str, metrics: Sequence[str] | None) -> None:
    """A ReportgenError naming the metrics asked for that do not apply to a model of `task`, and why."""
    refused = [m for m in metrics or () if task == SEGMENTATION and m in REFUSED]
    if refused:
        why = "; ".join(f"{m}: {REFUSED[m]}" for m in refused)
        raise ReportgenError(f"`analyses.evaluation.metrics`: {', '.join(f'`{m}`' for m in refused)} "
                             f"{'does' if len(refused) == 1 else 'do'} not apply to a {task} model (`model.task: "
                             f"{task}`): {why}. What applies: {', '.join(applies(task))} (null: all of them).")


def logits_forward(info: ModelInfo, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Input -> logits of `model` (the build's model or a randomised copy), unwrapped as the adapter does (a
    segmenter's (N, K, H, W) at the input's size, as `ModelAdapter.forward`)."""
    adapter = info.adapter
    if adapter is None:
        return model
    if info.task == SEGMENTATION:
        return lambda x: adapter.pick_logits(model(x), size=tuple(x.shape[-2:]))
    return lambda x: adapter.pick_logits(model(x))


def output_picker(info: ModelInfo, size: tuple[int, int]) -> Callable[[object], torch.Tensor] | None:
    """What the fast forward (`metrics.forward.inference_forward`) reads in the model's output for inputs of `size`
    (H, W): the adapter's logits (a segmenter's at that size); None: the output is the logits."""
    adapter = info.adapter
    if adapter is None:
        return None
    return functools.partial(adapter.pick_logits, size=size) if info.task == SEGMENTATION else adapter.pick_logits


def engine_for(info: ModelInfo, model: nn.Module, x: torch.Tensor, regions: torch.Tensor | None = None) -> Engine:
    """An engine of its own over `model` (the build's model or a randomised copy) and `x`: the passes of maps
    recomputed, shared by both families. `regions` (n, K, H, W): a segmenter's regions of `x`'s images, fixed from
    the trained model's prediction, which the recomputed maps explain (whatever `model` predicts)."""
    forward = logits_forward(info, model)
    return Engine(model, x, forward=forward if regions is None else RegionScores(forward, regions))


def batch_regions(ctx: Context) -> torch.Tensor | None:
    """A segmenter's regions (N, K, H, W) bool of the batch's images, those its maps explain (the engine's, fixed
    from the unperturbed batch); None for any other task."""
    if ctx.info.task != SEGMENTATION:
        return None
    forward = ctx.engine.forward if ctx.engine is not None else None
    if isinstance(forward, RegionScores) and forward.owner is None:
        return forward.masks
    return predicted_regions(ctx.outputs)


def perturbation_forward(forward: Callable[[torch.Tensor], torch.Tensor], regions: torch.Tensor | None
                         ) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the perturbation metrics score the scored images (`regions` theirs, in order) with: a segmenter's
    class-in-region probability of `forward`'s logits, else `forward` itself."""
    return forward if regions is None else RegionProbabilities(forward, regions)


def scorable(regions: torch.Tensor, positions: list[int], targets: Mapping[object, np.ndarray]
             ) -> tuple[list[int], tuple[str, ...]]:
    """The positions whose explained class (`targets`: per row of maps, (len(positions),)) has a region in the
    image, and a note when some have none."""
    filled = regions[positions].flatten(2).any(dim=2).cpu().numpy()  # (n, K)
    keep = np.ones(len(positions), dtype=bool)
    for t in targets.values():
        keep &= filled[np.arange(len(positions)), np.asarray(t, dtype=np.int64)]
    note = ("Images whose explained class the model predicts nowhere (a class named in `targets`) are left out: "
            "a class without a region has no score to perturb.")
    return [p for p, k in zip(positions, keep) if k], () if keep.all() else (note,)
