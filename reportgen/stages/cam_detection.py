"""What `analyses.cam` computes for a detector (`model.task: detection`): each explained box's maps, per method.

Not a stage of its own (no `SPEC`): the task record runs `VARIANT` instead of the classifier's cam stage, with the
same options (`CamConfig`) and the detector's batch context (`ctx.boxes`: per image the explained detections;
`ctx.engine`: its forward is `methods.boxes.BoxScores` of those boxes; `ctx.images[i].boxes`: the true boxes).

Per method (`box_maps`, which the evaluation also calls on randomised copies of the model):

- gradient CAMs (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, EigenGrad-CAM) on the tensor target layers
  (`target_layers`; default: the last block of `backbone.body`) through `dispatch.explain` with the box scores: ONE
  forward and one backward per box rank j (box j of every image), target pytorch-grad-cam's
  `FasterRCNNBoxScoreTarget([label], [box])`;
- Eigen-CAM and Ablation-CAM on the feature pyramid (`methods.boxes.fpn_cams`, pytorch-grad-cam's
  `fasterrcnn_reshape_transform`) when the model has one: a target layer whose output is a dict of levels, else a
  module `backbone` returning one (torchvision's `BackboneWithFPN`); without a pyramid (the shipped detector) they
  run on the tensor layers like the gradient CAMs;
- D-RISE (`methods.boxes.drise_boxes`): black-box, `drise_masks` masked forwards per image shared by its boxes; it
  reads no layer (its layer is "").

Every map is (H, W) at the batch's size (the display size), in [0, 1] (pytorch-grad-cam's post-processing: ReLU,
min-max per map); an image's maps are (J_i, H, W), J_i its explained boxes. The result also holds the true boxes
and which explained box took which (`metrics.detection.match_boxes` at `detection.iou_threshold`): what the page
marks (false positives, misses).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import DetectionConfig
from ..engine import Engine
from ..errors import ReportgenError
from ..methods import REGISTRY
from ..methods.boxes import ABLATION, EIGEN, BoxScores, drise_boxes, fpn_cams, fpn_levels, size_level
from ..methods.cam import FUSED
from ..methods.dispatch import Settings, explain
from ..metrics.detection import match_boxes
from ..models.detection import Detections
from ..progress import plural
from . import Context, ModelInfo, cam

DRISE = "drise"
PYRAMID = "backbone"  # torchvision's BackboneWithFPN: the module returning the levels


@dataclass(frozen=True)
class BoxMapsResult:
    """One batch's maps (and, reduced, all detail images')."""

    images: tuple[str, ...]  # image names (ImageInput.name)
    boxes: tuple[np.ndarray, ...]  # per image (J_i, 4) float32 the explained boxes x0 y0 x1 y1, display pixels
    labels: tuple[np.ndarray, ...]  # per image (J_i,) int64 the model's label index
    scores: tuple[np.ndarray, ...]  # per image (J_i,) float32
    maps: dict[str, tuple[np.ndarray, ...]] = field(repr=False)  # method -> per image (J_i, H, W) float32 in [0, 1]
    layers: dict[str, str]  # method -> the layer it was computed on ("" for D-RISE; several: joined by ", ")
    methods: tuple[str, ...]  # the computed methods, in config order
    config: cam.CamConfig  # the options (alpha, colour map, detail images, ... for the figures)
    class_names: dict[int, str]  # label -> name, for every label of a box or a true box
    input_size: tuple[int, int]  # (H, W) of the maps and of the boxes' pixels
    # per image (G_i, 4) float32 / (G_i,) int64 the true boxes (display pixels); None: no annotations for it
    truth_boxes: tuple[np.ndarray | None, ...] = ()
    truth_labels: tuple[np.ndarray | None, ...] = ()
    # per image (J_i,) int64: the true box each explained box took (−1 a false positive, −2 a crowd); None: no truth
    truth_of: tuple[np.ndarray | None, ...] = ()
    missed: tuple[np.ndarray | None, ...] = ()  # per image (G_i,) bool: true boxes no explained box took
    iou_threshold: float = DetectionConfig.iou_threshold
    not_applicable: dict[str, str] = field(default_factory=dict)  # method -> why it has no maps
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    image_count: int = 0  # images explained in every batch

    def box_count(self) -> int:
        return sum(len(b) for b in self.boxes)


# ---------------------------------------------------------------------------- the layers


def plan_layers(info: ModelInfo, cfg) -> tuple[tuple[str, ...], str | None]:
    """(the tensor target layers, the feature pyramid's layer or None): the configured target layers split by their
    output (a dict of levels: the pyramid); without a tensor one, the last block of `backbone.body`; without a
    configured pyramid, `backbone` when it returns a dict. A configured layer that is neither is a ReportgenError."""
    tensors, pyramid = [], None
    for name in dict.fromkeys(cfg.target_layers):
        layer = info.layer(name)
        if layer.output_shape is not None and len(layer.output_shape) == 4:
            tensors.append(name)
        elif layer.order is not None and layer.output_shape is None and pyramid is None:
            pyramid = name  # called, returns no tensor: the levels (fpn_levels checks it is a dict)
        else:
            shape = list(layer.output_shape) if layer.output_shape is not None else "nothing (it is not called)"
            raise ReportgenError(f"cam target layer `{name}` ({layer.type}) outputs {shape}: a detector's gradient CAMs "
                                 "need an (N, C, H, W) tensor layer (the last block of `backbone.body`), Eigen-CAM and "
                                 "Ablation-CAM may also take the feature pyramid (`backbone`).")
    if not tensors:
        tensors.append(default_layer(info))
    if pyramid is None and PYRAMID in info.layers:
        layer = info.layers[PYRAMID]
        if layer.order is not None and layer.output_shape is None:
            pyramid = PYRAMID
    return tuple(tensors), pyramid


def default_layer(info: ModelInfo) -> str:
    """The last called child of `backbone.body` with an (N, C, h, w) output (a ResNet's `layer4`, the shipped
    detector's `block4`), else the classifier's automatic pick."""
    body = [layer for name, layer in info.layers.items() if name.startswith("backbone.body.")
            and "." not in name[len("backbone.body."):] and layer.order is not None
            and layer.output_shape is not None and len(layer.output_shape) == 4]
    if body:
        return max(body, key=lambda layer: layer.order).name
    return cam.target_layers(info, cam.CamConfig())[0][0]


def check(info: ModelInfo, cfg) -> None:
    plan_layers(info, cfg)


# ---------------------------------------------------------------------------- the maps


def detector_of(forward: Callable) -> Callable:
    """x -> torchvision dicts, of a BoxScores (its detector) or of a forward returning `Detections` or dicts."""
    if isinstance(forward, BoxScores):
        return forward.detector

    def detector(x: torch.Tensor):
        return [d.as_dict() if isinstance(d, Detections) else d for d in forward(x)]

    return detector


def box_maps(model: nn.Module, forward: Callable, batch: torch.Tensor, boxes: Sequence[Detections],
             methods: Sequence[str], cfg, *, info: ModelInfo | None = None, engine: Engine | None = None,
             seed: int = 0, log: Callable[[str], None] = lambda message: None) -> dict[str, torch.Tensor]:
    """method -> (J, N, H, W) maps in [0, 1] of `boxes[i]` (image i's explained detections) on `model` (`forward`
    runs it: a BoxScores, or x -> Detections / torchvision dicts), J the most boxes of an image; an image's missing
    box j gets a zero map. A method that does not apply (CAM) is left out. `info` (the layers; default: described
    from `model`) and `cfg` (the cam options) say where each method looks (`plan_layers`). `engine`: the build's
    (its forward must score `boxes`), else a new one."""
    return _compute(model, forward, batch, boxes, methods, cfg, info=info, engine=engine, seed=seed, log=log)[0]


def _compute(model, forward, batch, boxes, methods, cfg, *, info=None, engine=None, seed=0, log=lambda m: None):
    """(maps, layers, not applicable, warnings, seconds) of `box_maps`."""
    if info is None:
        from ..layers import describe_model

        info = ModelInfo(model=model, config=None, labels=None, num_classes=0,
                         layers=describe_model(model, batch[:1])[0])
    tensors, pyramid = plan_layers(info, cfg)
    if engine is None:
        scores = BoxScores(detector_of(forward), [d.boxes for d in boxes], [d.labels for d in boxes])
        engine = Engine(model, batch, forward=scores)
    scores = engine.forward
    ranks = scores.ranks()
    on_pyramid = [m for m in methods if m in (EIGEN, ABLATION) and pyramid is not None]
    on_tensors = [m for m in methods if m != DRISE and m not in on_pyramid]
    if not any(len(b) for b in scores.boxes) and "cam" not in methods:  # nothing to explain: no masked forwards
        where = {**dict.fromkeys(on_tensors, ", ".join(tensors)), **dict.fromkeys(on_pyramid, pyramid), DRISE: ""}
        zero = batch.new_zeros((1, batch.shape[0], *batch.shape[-2:]), dtype=torch.float32)
        return {m: zero for m in methods}, {m: where[m] for m in methods}, {}, [], {}
    maps: dict[str, torch.Tensor] = {}
    layers: dict[str, str] = {}
    not_applicable: dict[str, str] = {}
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    if on_tensors:
        adapter = getattr(info, "adapter", None)  # a transformer's tokens folded into their grid (YOLOS)
        computed = explain(on_tensors, engine, ranks, Settings(
            layers=tensors, views={name: adapter.layer_view(name) for name in tensors} if adapter else {},
            masked_batch_size=getattr(cfg, "batch_size", 32),
            max_channels=getattr(cfg, "max_channels", None)), log=log).cam
        key = FUSED if len(tensors) > 1 else tensors[0]
        for m, method in enumerate(computed.layer_methods[key]):
            maps[method] = computed.final[key][m]
            layers[method] = ", ".join(tensors)
        not_applicable.update(computed.not_applicable)
        warnings += computed.warnings
        seconds.update(computed.seconds)
    if on_pyramid:
        log(f"cam: {', '.join(on_pyramid)} on the feature pyramid `{pyramid}`")
        start = time.perf_counter()
        maps.update(fpn_cams(on_pyramid, scores, model, batch, ranks, layer=pyramid,
                             batch_size=getattr(cfg, "batch_size", 32)))
        layers.update(dict.fromkeys(on_pyramid, pyramid))
        seconds["pyramid"] = time.perf_counter() - start
    if DRISE in methods:
        log(f"cam: D-RISE, {getattr(cfg, 'drise_masks', 500)} masked forwards per image")
        start = time.perf_counter()
        raw = drise_boxes(scores, batch, ranks, masks=getattr(cfg, "drise_masks", 500),
                          cells=getattr(cfg, "drise_cells", 8), p=getattr(cfg, "drise_p", 0.5), seed=seed)
        drise = cam.scale_cams(raw.clamp_min(0))
        drise[scores.empty(ranks).to(drise.device)] = 0
        maps[DRISE] = drise
        layers[DRISE] = ""
        seconds[DRISE] = time.perf_counter() - start
    ordered = {m: maps[m] for m in methods if m in maps}
    return ordered, {m: layers[m] for m in ordered}, not_applicable, warnings, seconds


# ---------------------------------------------------------------------------- the stage contract


def _explained(ctx: Context) -> list[Detections]:
    """The explained detections per image: `ctx.boxes`, else the engine's BoxScores' targets (no scores known)."""
    if ctx.boxes is not None:
        return list(ctx.boxes)
    forward = ctx.engine.forward
    if not isinstance(forward, BoxScores):
        raise ReportgenError("a detector's cam needs its explained boxes (`ctx.boxes`) and box scores as the engine's "
                             "forward (`methods.boxes.BoxScores`)")
    return [Detections(b, torch.full((len(b),), math.nan), c) for b, c in zip(forward.boxes, forward.labels)]


def run(ctx: Context, cfg) -> BoxMapsResult:
    boxes = _explained(ctx)
    seed = getattr(ctx.config, "seed", None) or 0
    maps, layers, not_applicable, warnings, seconds = _compute(
        ctx.model, ctx.engine.forward, ctx.batch, boxes, cfg.methods, cfg, info=ctx.info, engine=ctx.engine,
        seed=seed, log=ctx.log)
    iou = ctx.config.detection.iou_threshold
    counts = [len(d) for d in boxes]
    truth = [image.boxes for image in ctx.images]
    matches = [None if t is None else match_boxes(d.boxes.cpu().numpy(), d.scores.cpu().numpy(),
                                                  d.labels.cpu().numpy(), t.boxes, t.labels, iou=iou,
                                                  crowd=getattr(t, "iscrowd", None))
               for d, t in zip(boxes, truth)]
    names = {int(c): ctx.label(int(c)) for d in boxes for c in d.labels.tolist()}
    names |= {int(c): ctx.label(int(c)) for t in truth if t is not None for c in np.asarray(t.labels).tolist()}
    ctx.log(f"cam: {plural(sum(counts), 'box', 'boxes')} of {plural(len(boxes), 'image')} explained by "
            f"{', '.join(maps)}")
    return BoxMapsResult(
        images=tuple(image.name for image in ctx.images),
        boxes=tuple(d.boxes.detach().float().cpu().numpy().reshape(-1, 4) for d in boxes),
        labels=tuple(d.labels.cpu().numpy().astype(np.int64) for d in boxes),
        scores=tuple(d.scores.detach().float().cpu().numpy() for d in boxes),
        maps={m: tuple(v[:counts[i], i].detach().float().cpu().numpy() for i in range(len(boxes)))
              for m, v in maps.items()},
        layers=layers, methods=tuple(maps), config=cfg, class_names=names,
        input_size=tuple(ctx.batch.shape[-2:]),
        truth_boxes=tuple(None if t is None else np.asarray(t.boxes, np.float32).reshape(-1, 4) for t in truth),
        truth_labels=tuple(None if t is None else np.asarray(t.labels, np.int64) for t in truth),
        truth_of=tuple(None if m is None else m.truth_of for m in matches),
        missed=tuple(None if m is None else m.missed for m in matches),
        iou_threshold=iou, not_applicable=not_applicable, notes=tuple(_pyramid_note(ctx, cfg, layers)),
        warnings=tuple(warnings),
        seconds=seconds, image_count=len(boxes))


def _pyramid_note(ctx: Context, cfg, layers: dict[str, str]) -> list[str]:
    """Which levels of the feature pyramid Eigen- and Ablation-CAM read, at which level's size: pytorch-grad-cam's
    `pool` level, or (RetinaNet, FCOS, SSDlite have none) the coarsest level of at least 4 x 4."""
    _, pyramid = plan_layers(ctx.info, cfg)
    if pyramid is None or pyramid not in layers.values():
        return []
    with torch.no_grad():
        levels = fpn_levels(ctx.model, ctx.batch[:1], pyramid)
    where = size_level(levels)
    return [f"the pyramid `{pyramid}`: its levels {', '.join(levels)}, each resized to the size of `{where}`"
            + ("" if where == "pool" else " (it has no `pool` level, which pytorch-grad-cam's reshape takes)")]


_PER_IMAGE = ("images", "boxes", "labels", "scores", "truth_boxes", "truth_labels", "truth_of", "missed")


def select(result: BoxMapsResult, rows: list[int]) -> BoxMapsResult:
    """The result of the images `rows` (positions in the batch) only."""
    return dataclasses.replace(
        result, **{name: tuple(getattr(result, name)[i] for i in rows) for name in _PER_IMAGE},
        maps={m: tuple(v[i] for i in rows) for m, v in result.maps.items()})


def reduce(results: list[BoxMapsResult]) -> BoxMapsResult:
    """All images of consecutive batches' results (notes and warnings once, times and counts added up)."""
    first = results[0]
    if len(results) == 1:
        return first
    seconds: dict[str, float] = {}
    for r in results:
        for step, s in r.seconds.items():
            seconds[step] = seconds.get(step, 0.0) + s
    return dataclasses.replace(
        first, **{name: tuple(v for r in results for v in getattr(r, name)) for name in _PER_IMAGE},
        maps={m: tuple(v for r in results for v in r.maps[m]) for m in first.maps},
        class_names={c: name for r in results for c, name in r.class_names.items()},
        notes=tuple(dict.fromkeys(n for r in results for n in r.notes)),
        warnings=tuple(dict.fromkeys(w for r in results for w in r.warnings)),
        seconds=seconds, image_count=sum(r.image_count for r in results))


def arrays(result: BoxMapsResult) -> dict[str, np.ndarray]:
    """`cam/<method>/<image>` (J, H, W) float32 in [0, 1]: map j is the image's explained box j (its records)."""
    return {f"cam/{method}/{name}": np.asarray(per_image[i], dtype=np.float32)
            for method, per_image in result.maps.items() for i, name in enumerate(result.images)}


def box_rows(result: BoxMapsResult, i: int) -> list[dict]:
    """Image i's explained boxes: index, label, name, score, box, and `match`: "tp" (with `truth`, the true box
    it took), "fp", "crowd", or None without true boxes."""
    truth_of = result.truth_of[i] if result.truth_of else None
    rows = []
    for j, (box, label, score) in enumerate(zip(result.boxes[i], result.labels[i], result.scores[i])):
        row = {"index": j, "label": int(label), "name": result.class_names.get(int(label), f"class {label}"),
               "score": None if math.isnan(score) else float(score), "box": [float(v) for v in box], "match": None}
        if truth_of is not None:
            took = int(truth_of[j])
            row["match"] = "tp" if took >= 0 else ("fp" if took == -1 else "crowd")
            if took >= 0:
                row["truth"] = took
        rows.append(row)
    return rows


def truth_rows(result: BoxMapsResult, i: int) -> list[dict] | None:
    """Image i's true boxes (index, label, name, box, missed), None without annotations."""
    if not result.truth_boxes or result.truth_boxes[i] is None:
        return None
    return [{"index": g, "label": int(label), "name": result.class_names.get(int(label), f"class {label}"),
             "box": [float(v) for v in box], "missed": bool(result.missed[i][g])}
            for g, (box, label) in enumerate(zip(result.truth_boxes[i], result.truth_labels[i]))]


def records(result: BoxMapsResult) -> list[dict]:
    """Per image, its images.jsonl entry: {"boxes": box_rows, "missed": misses or None without true boxes}."""
    return [{"boxes": box_rows(result, i),
             "missed": None if not result.missed or result.missed[i] is None else int(result.missed[i].sum())}
            for i in range(len(result.images))]


def to_json(result: BoxMapsResult) -> dict:
    return {
        "task": "detection",
        "methods": list(result.methods),
        "layers": dict(result.layers),
        "not_applicable": dict(result.not_applicable),
        "iou_threshold": result.iou_threshold,
        "input_size": list(result.input_size),
        "images": [{"name": name, "boxes": box_rows(result, i), "truth": truth_rows(result, i)}
                   for i, name in enumerate(result.images)],
        "notes": list(result.notes),
        "warnings": list(result.warnings),
        "seconds": dict(result.seconds),
    }


def first_pass(info: ModelInfo, cfg) -> tuple[tuple[str, ...], bool]:
    """The engine pass `run` asks for first: the tensor target layers, with gradients when a method needs them."""
    return plan_layers(info, cfg)[0], any("gradients" in REGISTRY[m].needs for m in cfg.methods)


# what `analyses.cam` runs for a detector (`tasks.Task.variants`): the classifier's record, its functions these
VARIANT = cam.SPEC.variant("cam_detection", run=run, check=check, reduce=reduce, select=select, arrays=arrays,
                           to_json=to_json, records=records, first_pass=first_pass)
