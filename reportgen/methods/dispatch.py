"""One dispatch for every method: `explain(methods, engine, class_sets, settings)` computes the maps of CAM and
gradient methods alike, from the passes of one `engine.Engine`, by what each method's record says it needs.

The cam and gradients stages call it with the build's engine (so a pass one stage ran serves the next); the
evaluation calls it with an engine of its own to recompute maps: on perturbed inputs (max-sensitivity) and on
randomised copies of the model (the sanity cascade). The same call gives the same maps everywhere.

- CAM methods: `methods.cam.compute_maps` (one forward and one backward per target rank for those that need
  gradients, one forward for the others, masked forwards for Score-CAM and Ablation-CAM);
- gradient methods that need the input gradient: from a pass the engine already ran for the same classes, else
  from the ONE forward with switchable ReLU rules when one runs, else from one engine pass of their own;
- gradient methods with a ReLU rule: from the engine's pass when it took the rules for these classes (and holds
  the layer they need as the layer returned it), else from one forward with switchable ReLU rules;
- the others (`own_passes`): their own passes, given a `GradientJob`.

A segmenter's engine forward is `regions.RegionScores` (class-in-region scores): a target whose region is empty
in an image gets all-zero maps from every method (see `methods.regions`). A detector's is `boxes.BoxScores` (one
score per target box): an image's missing target box (fewer boxes than the batch's most) gets all-zero maps too.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine import Engine
from . import REGISTRY, Method
from .cam import ComputedMaps, compute_maps
from .gradients import GradientJob, ReluRulePass, compute_relu_rule_pass


@dataclass(frozen=True)
class Settings:
    """What the methods need besides the engine and the target classes (the stages' options)."""

    layers: tuple[str, ...] = ()  # CAM target layers
    views: dict[str, Callable | None] = field(default_factory=dict)  # layer -> its output as (N, C, h, w)
    head: nn.Linear | None = None  # CAM: the linear layer after global average pooling, if any
    masked_batch_size: int = 32  # Score-CAM / Ablation-CAM: masked forwards per batch
    max_channels: int | None = None  # Score-CAM / Ablation-CAM: channels masked per image
    cam_layer: str | None = None  # gradient methods that need a layer's activations (guided Grad-CAM)
    batch_size: int = 64  # gradient methods with passes of their own: inputs per forward
    seed: int = 0  # their noise
    offset: int = 0  # the batch's first image among all images (noise seeds)
    baseline: Callable[[], torch.Tensor] | None = None  # (N, C, H, W), made when a method asks for it
    # what holds the methods' options as attributes (the stage's options), or None for their defaults: each method
    # with passes of its own gets its record's options from it as `GradientJob.options`
    options: Any = None
    # perturbation methods: (model, batch) -> the fast no-grad forward x -> logits of that model for inputs like the
    # batch (`metrics.forward.inference_forward`, which this layer cannot import); None: the engine's forward
    inference: Callable[[nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None
    segments: torch.Tensor | None = None  # the batch's feature masks (N, H, W) (`GradientJob.segments`)
    # per channel (lowest, highest) value of the model's input (pixels 0 and 1 normalised); None: [0, 1]
    input_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None


@dataclass(frozen=True)
class Explained:
    """The maps of one `explain` call."""

    cam: ComputedMaps | None  # the CAM methods' maps, when any was asked for
    gradients: dict[str, list[torch.Tensor]]  # gradient method -> per rank (N, C, H, W), the raw attribution
    baseline: torch.Tensor | None = None  # the baseline the methods in `from_baseline` read
    from_baseline: tuple[str, ...] = ()  # gradient methods whose attribution is measured from the baseline
    reused_input_grad: tuple[bool, ...] = ()  # per rank: the input gradient came from a pass already run
    seconds: dict[str, float] = field(default_factory=dict)  # gradient method -> compute time


def explain(methods: Sequence[str], engine: Engine, class_sets: Sequence[Sequence[int]],
            settings: Settings = Settings(), *, log: Callable[[str], None] = lambda message: None) -> Explained:
    """Every method's maps for `class_sets[r][i]` (rank r, image i) of the engine's batch (see the module)."""
    records = [REGISTRY[m] for m in methods]
    class_sets = [tuple(int(c) for c in classes) for classes in class_sets]
    cams = [m.id for m in records if m.family == "cam"]
    cam = compute_maps(engine.model, engine.batch, settings.layers, cams, class_sets,
                       batch_size=settings.masked_batch_size, head=settings.head, engine=engine, log=log,
                       views=settings.views, max_channels=settings.max_channels,
                       options=settings.options) if cams else None
    gradient = [m for m in records if m.family == "gradients"]
    if not gradient:
        explained = Explained(cam=cam, gradients={})
    else:
        with torch.enable_grad():  # also when called inside torch.no_grad() (max-sensitivity)
            explained = dataclasses.replace(_gradients(gradient, engine, class_sets, settings, log), cam=cam)
    if getattr(engine.forward, "score_kind", None) is not None:  # a region's or a box's scores (RegionScores,
        _blank_empty_regions(explained, engine.forward.empty(class_sets))  # BoxScores): its empty targets
    return explained


def _blank_empty_regions(explained: Explained, empty: torch.Tensor) -> None:
    """Zero every map of a target whose region is empty in its image (`empty` (R, N) bool): its score is the
    constant 0, which explains nothing (gradient methods give zeros by themselves; Eigen-CAM, Score-CAM and
    Ablation-CAM would not)."""
    if not empty.any():
        return
    for maps in (explained.cam.final.values() if explained.cam is not None else ()):  # (M, k, N, H, W), its own
        maps[:, empty.to(maps.device)] = 0
    for per_rank in explained.gradients.values():  # a rank's tensor may be the engine's cached gradient: not in place
        for r, blank in enumerate(empty):
            if blank.any():
                where = blank.to(per_rank[r].device).view(-1, *[1] * (per_rank[r].ndim - 1))
                per_rank[r] = torch.where(where, torch.zeros_like(per_rank[r]), per_rank[r])


def _gradients(records: list[Method], engine: Engine, class_sets: list[tuple[int, ...]], settings: Settings,
               log: Callable[[str], None]) -> Explained:
    seconds = dict.fromkeys((m.id for m in records), 0.0)
    layer = settings.cam_layer if any("activations" in m.needs for m in records) else None
    input_methods = [m for m in records if "input_grad" in m.needs]
    input_grads = [engine.input_grad(classes) if input_methods else None for classes in class_sets]
    reused = tuple(grad is not None for grad in input_grads)
    missing = [r for r, grad in enumerate(input_grads) if grad is None] if input_methods else []
    rule_methods = [m for m in records if m.relu_rule is not None]
    rules = [m.relu_rule for m in rule_methods]
    rule_pass = _engine_relu_rules(engine, class_sets, rules, layer) if rules and not missing else None
    start = time.perf_counter()
    if rule_pass is not None:
        log(f"gradients: the ReLU rules {', '.join(dict.fromkeys(rules))} from the CAM section's pass")
    elif rules:
        log(f"gradients: one forward, backward by the ReLU rules {', '.join(dict.fromkeys(rules))}")
        rule_pass = compute_relu_rule_pass(engine.model, engine.batch, class_sets,
                                           rules + (["plain"] if missing else []), layer, forward=engine.forward)
        seconds[rule_methods[0].id] += time.perf_counter() - start
        for r in missing:
            input_grads[r] = rule_pass.input_grads["plain"][r]
    elif missing:
        log("gradients: one forward for the input gradient")
        passes = engine.passes([], [class_sets[r] for r in missing], input_grad=True)
        seconds[input_methods[0].id] += time.perf_counter() - start
        for r, grad_pass in zip(missing, passes):
            input_grads[r] = grad_pass.input_grad
    view = settings.views.get(layer) if layer is not None and rule_pass is not None else None
    if view is not None:  # a transformer's tokens: guided Grad-CAM on their grid (the view is linear: so is ∂)
        rule_pass = dataclasses.replace(rule_pass, activations=view(rule_pass.activations),
                                        layer_grads=[view(g) for g in rule_pass.layer_grads])

    job = GradientJob(model=engine.model, forward=engine.forward, batch=engine.batch, class_sets=class_sets,
                      batch_size=settings.batch_size, seed=settings.seed, offset=settings.offset,
                      make_baseline=settings.baseline, segments=settings.segments, input_range=settings.input_range,
                      make_inference=None if settings.inference is None else
                      lambda: settings.inference(engine.model, engine.batch))
    out: dict[str, list[torch.Tensor]] = {}
    from_baseline = []
    for method in records:
        fn = method.function()
        start = time.perf_counter()
        if "input_grad" in method.needs:
            out[method.id] = [fn(engine.batch, grad) for grad in input_grads]
        elif method.relu_rule is not None:
            out[method.id] = [fn(rule_pass, r) for r in range(len(class_sets))]
        else:
            reads = job.baseline_reads
            job.options = method.options_from(settings.options)
            out[method.id] = fn(job)
            if job.baseline_reads > reads:
                from_baseline.append(method.id)
        seconds[method.id] += time.perf_counter() - start
    return Explained(cam=None, gradients=out, baseline=job.made_baseline,
                     from_baseline=tuple(from_baseline), reused_input_grad=reused, seconds=seconds)


def _engine_relu_rules(engine: Engine, class_sets: list[tuple[int, ...]], rules: list[str],
                       layer: str | None) -> ReluRulePass | None:
    """The ReLU rules' gradients from the engine's pass (the CAM section's forward, `Engine.relu_rules`) when it
    took them for these classes, and holds `layer` as the layer returned it (no in-place op changed it after):
    guided backprop then needs no forward of its own. None when it cannot serve them."""
    grads = {rule: [engine.relu_rule_input_grad(classes, rule) for classes in class_sets] for rule in rules}
    if any(grad is None for per_rank in grads.values() for grad in per_rank):
        return None
    if layer is None:
        return ReluRulePass(input_grads=grads, activations=None, layer_grads=[])
    found = [next((p for p in engine.cached_passes() if p.classes == classes and layer in p.activations
                   and layer not in p.modified), None) for classes in class_sets]
    if any(p is None for p in found):
        return None
    return ReluRulePass(input_grads=grads, activations=found[0].activations[layer],
                     layer_grads=[p.gradients[layer] for p in found])
