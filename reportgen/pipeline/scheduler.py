"""Running the stages: each in order, a stage that sees all images at once alone, consecutive streamed stages
together, batch by batch. A stage that raises is recorded as failed (or skipped) and the others go on; a stage
whose requirements did not succeed is skipped."""
from __future__ import annotations

import dataclasses
import importlib
import time
import traceback
from collections.abc import Callable

import torch

from .. import dist
from ..collection import Collection
from ..context import Context, ModelInfo, class_shares
from ..engine import Engine
from ..methods.regions import RegionScores, predicted_regions
from ..metrics.detection import match_boxes
from ..models.detection import best_scores
from ..metrics.segmentation import image_scores
from ..errors import ImageWarning, ReportgenError, StageSkipped, WriteError, merge_warnings
from ..ops import release_memory
from ..progress import plural, track
from ..stages import Stage, batch_order
from .assemble import StageRun
from .checks import Log


def segmenter_batch(ctx: Context, images: list, batch: torch.Tensor, offset: int) -> Context:
    """A segmenter's context for `batch`: its logits (N, K, H, W) as `outputs`; as `logits`, each class's logits
    summed over its predicted region, which the engine's forward scores for every method (`methods.regions`:
    pytorch-grad-cam's SemanticSegmentationTarget), the regions fixed from this forward."""
    with torch.no_grad():
        out = ctx.info.forward(batch).float()
    regions = predicted_regions(out)
    forward = RegionScores(ctx.info.forward, regions, predicted=True)
    logits = (out * regions).sum(dim=(2, 3)).cpu()
    return ctx.for_batch(images, batch, logits, offset, engine=ctx.engine.with_batch(batch, forward=forward),
                         outputs=out)


def segmenter_summary(out: torch.Tensor, images: list) -> tuple[torch.Tensor, list[float]]:
    """What a segmenter's first pass keeps of a batch (`collection.Summarize`): each class's share of the predicted
    pixels, and each image's mean IoU against its class mask (`metrics.segmentation.image_scores`; NaN without
    one). A mask value that is no class is an error naming the file."""
    pred = out.argmax(dim=1)
    scores = []
    for image, p in zip(images, pred):
        if image.segmentation is None:
            scores.append(float("nan"))
            continue
        try:
            scores.append(float(image_scores(p[None], image.segmentation[None], out.shape[1])[0]))
        except ReportgenError as exc:
            raise ReportgenError(f"`inputs.images`: the class mask of {image.source}: {exc}") from None
    return class_shares(out), scores


def explained(found: list, cfg) -> list:
    """Per image the detections a detector's maps explain and its page draws: score ≥ `detection.score_threshold`,
    the best `detection.max_boxes`."""
    return [d.drawn(cfg.score_threshold, cfg.max_boxes) for d in found]


def detections_of(forward) -> Callable:
    """A detector's adapter forward (x -> `Detections` per image) as torchvision's format, which `BoxScores`
    scores (x -> per image {"boxes", "labels", "scores"}, with autograd when enabled)."""
    return lambda x: [d.as_dict() for d in forward(x)]


def detector_batch(ctx: Context, images: list, batch: torch.Tensor, offset: int) -> Context:
    """A detector's context for `batch`: every detection per image as `outputs` (boxes in the batch's pixels, on
    the CPU), those explained as `boxes` (`explained`), and an engine whose forward scores each explained box as
    pytorch-grad-cam's FasterRCNNBoxScoreTarget does (`methods.boxes.BoxScores`): box j of every image is rank j.
    `logits`: (B, J) those scores of the batch itself."""
    from ..methods.boxes import BoxScores  # torchvision's box IoU: imported by a detector's build only

    cfg = ctx.config.detection
    with torch.no_grad():
        found = [d.to("cpu") for d in ctx.info.forward(batch)]
    boxes = explained(found, cfg)
    forward = BoxScores(detections_of(ctx.info.forward), [d.boxes for d in boxes], [d.labels for d in boxes])
    logits = torch.zeros(len(boxes), forward.width)
    for i, d in enumerate(boxes):
        logits[i, :len(d)] = 1 + d.scores.float()  # an own box: IoU 1 plus its score
    out = ctx.for_batch(images, batch, logits, offset, engine=ctx.engine.with_batch(batch, forward=forward),
                        outputs=found)
    return dataclasses.replace(out, boxes=boxes)


def detector_summary(out: list, images: list, cfg=None, num_classes: int = 0) -> tuple[torch.Tensor, list[float]]:
    """What a detector's first pass keeps of a batch (`collection.Summarize`): each class's best box score, and per
    image minus the true boxes its explained detections miss (`metrics.detection.match_boxes` at
    `detection.iou_threshold`; NaN without true boxes): the detail images are those that miss most."""
    scores = []
    for d, image in zip(out, images):
        truth = image.boxes
        if truth is None:
            scores.append(float("nan"))
            continue
        shown = d.drawn(cfg.score_threshold, cfg.max_boxes)
        found = match_boxes(shown.boxes, shown.scores, shown.labels, truth.boxes, truth.labels,
                            iou=cfg.iou_threshold, crowd=truth.iscrowd)
        scores.append(-float(found.missed.sum()))
    return best_scores(out, num_classes), scores


def figures_module(stage: Stage):
    """The module with the stage's `plot(result, ctx)` (its record names it)."""
    return importlib.import_module(stage.figures_module)


class FirstPass:
    """A small build's first pass (all its images in one batch) as the forward of the first engine pass the
    streamed stages ask for on that batch (`Stage.first_pass`), its graph kept until they ask: the predictions
    cost no forward of their own. `collection.collect` calls it with the batch for the logits; `engine_for`
    hands the engine to that batch's context."""

    def __init__(self, make_engine: Callable[..., Engine], stages: list[Stage], info: ModelInfo):
        self.make_engine = make_engine
        first = next((s for s in batch_order([s for s in stages if s.reduce is not None])
                      if s.first_pass is not None), None)
        self.pass_ = first.first_pass(info, getattr(info.config.analyses, first.name)) if first else ((), False)
        self.engine: Engine | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.engine = self.make_engine(batch)
        return self.engine.first_logits(*self.pass_)

    def engine_for(self, batch: torch.Tensor) -> Engine | None:
        """The engine of the first pass when `batch` is its batch (once), else None."""
        engine, self.engine = self.engine, None
        same = engine is not None and engine.batch.shape == batch.shape and torch.equal(engine.batch, batch)
        return engine if same else None


def _merged_messages(result: object) -> object:
    """`result` with its `warnings` and `notes` as the user reads them: a warning about many images once, with a
    count and examples (`errors.merge_warnings`: a stage gives one `ImageWarning` per image, and a streamed stage's
    batches each give theirs), each text once. Fields of anything else than texts are left as they are."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        return result
    messages = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name in ("warnings", "notes")}
    return dataclasses.replace(result, **{name: merge_warnings(found) for name, found in messages.items()
                                          if isinstance(found, (tuple, list))
                                          and all(isinstance(m, (str, ImageWarning)) for m in found)})


def _groups(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive streamed stages (those with `reduce`) form one group; every other stage is a group alone."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if stage.reduce is not None and groups and groups[-1][0].reduce is not None:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _blocked_by(stage: Stage, done: list[StageRun], done_without: frozenset[str] | None = None) -> str | None:
    """Why `stage` cannot run: a stage it requires did not succeed (None: it can run), apart from those it does
    without (`done_without`; default: `_done_without`, for a stage that has not started)."""
    done_without = _done_without(stage, done) if done_without is None else done_without
    blocking = [r for r in done if r.name in stage.requires and r.status != "ok" and r.name not in done_without]
    return "; ".join(f"it needs the {r.name} section, which {r.status}" for r in blocking) or None


def _done_without(stage: Stage, done: list[StageRun]) -> frozenset[str]:
    """Of the stages `stage` needs any of (`requires_any`: evaluation's cam and gradients), those that ended
    without success before it started, when one is left: it works on what that one computes. (One that ends
    after it started is not done without: its results would cover some images and not others.)"""
    ended = {r.name for r in done if r.status != "ok"}
    either = [name for name in stage.requires_any if name in stage.requires]
    return frozenset(n for n in either if n in ended) if any(n not in ended for n in either) else frozenset()


def _without(names: frozenset[str]) -> str:
    return f" (without the {' and '.join(sorted(names))} section{'s' if len(names) > 1 else ''}, " \
           f"which did not succeed)" if names else ""


class Scheduler:
    """Runs a build's stages (`run`) on its context `ctx` and images, and keeps their records in order (`runs`).

    `arrays_out`: the arrays.npz being written (entry by entry, as stages and batches finish), or None;
    `first`: the first pass whose engine the first streamed batch takes over, or None."""

    def __init__(self, ctx: Context, images: Collection, procs: dist.Group, log: Log, detail: Log, *,
                 arrays_out=None, first: FirstPass | None = None):
        self.ctx, self.images, self.procs = ctx, images, procs
        self.log, self.detail = log, detail
        self.arrays_out = arrays_out
        self.first = first
        self.runs: list[StageRun] = []

    def run(self, stages: list[Stage]) -> list[StageRun]:
        for group in _groups(stages):  # a stage on its own, or consecutive streamed stages, batch by batch
            if group[0].reduce is not None:
                self.runs += _StreamedGroup(self, group).run()
            elif not self.procs.root:  # stages that see no images run once, on rank 0 (its outcome is reported)
                self.runs.append(StageRun(name=group[0].name, title=group[0].title, status="ok"))
            else:
                self.runs.append(self._run_alone(group[0]))
        return self.runs

    def _run_alone(self, stage: Stage) -> StageRun:
        """A stage that sees all images at once (or none: summary, kernels, training)."""
        why = _blocked_by(stage, self.runs)
        if why:
            return self.skipped(stage, why)
        self.log(f"stage {stage.name}{_without(_done_without(stage, self.runs))}")
        start = time.perf_counter()
        try:
            result = stage.run(self.ctx, self.prepare(stage))
        except Exception as exc:
            return self.raised(stage, exc, time.perf_counter() - start)
        run = self.finished(stage, result, time.perf_counter() - start)
        if self.arrays_out is not None and run.status == "ok":
            self.arrays_out.add(stage.arrays(result))
        return run

    def prepare(self, stage: Stage):
        """The stage made ready to run: its `Stage.prepare` run on the first call (what it makes once per build);
        returns its options."""
        options = getattr(self.ctx.config.analyses, stage.name)
        if stage.prepare is not None and stage.name not in self.ctx.prepared:
            self.ctx.prepared[stage.name] = stage.prepare(self.ctx.info, options)
        return options

    def skipped(self, stage: Stage, why: str) -> StageRun:
        self.log(f"stage {stage.name} skipped: {why}")
        return StageRun(name=stage.name, title=stage.title, status="skipped", error=why)

    def raised(self, stage: Stage, exc: BaseException, seconds: float) -> StageRun:
        """The record of a stage that raised: skipped (StageSkipped) or failed (anything else)."""
        if isinstance(exc, StageSkipped):
            self.log(f"stage {stage.name} skipped: {exc}")
            return StageRun(name=stage.name, title=stage.title, status="skipped", seconds=seconds, error=str(exc))
        message = str(exc) if isinstance(exc, ReportgenError) else f"{type(exc).__name__}: {exc}"
        self.detail("".join(traceback.format_exception(exc)))
        self.log(f"stage {stage.name} failed: {message}")
        return StageRun(name=stage.name, title=stage.title, status="failed", seconds=seconds, error=message)

    def finished(self, stage: Stage, result: object, seconds: float) -> StageRun:
        """A stage's result, its messages merged, made available to later stages and drawn."""
        start = time.perf_counter()
        try:
            result = _merged_messages(result)
            self.ctx.results.add(result)
            section = figures_module(stage).plot(result, self.ctx)
        except Exception as exc:  # a failed stage is reported, the rest of the report is built
            return self.raised(stage, exc, seconds + time.perf_counter() - start)
        for warning in getattr(result, "warnings", ()):  # the report shows them too (one line per kind)
            self.log(f"stage {stage.name}: warning: {warning}")
        return StageRun(name=stage.name, title=stage.title, status="ok", seconds=seconds + time.perf_counter() - start,
                        result=result, section=section, stage=stage)


class _StreamedGroup:
    """Stages over images, batch by batch (`inputs.batch_size`): each batch is read, goes through every stage
    of the group in order with a context of its own (so a later stage finds the engine passes an earlier one
    ran on the same batch), and is dropped; what a stage keeps of it is its `select` for the batch's detail
    images (sums over all images included). Each batch's arrays go to arrays.npz as the batch finishes; those of
    a stage that fails later are taken back. At the end each stage reduces what it kept; under torchrun the
    ranks' reductions meet on rank 0, which reduces them once more."""

    def __init__(self, owner: Scheduler, group: list[Stage]):
        self.owner = owner
        self.group = group
        self.ended: dict[str, StageRun] = {}  # stages that failed or were skipped
        self.partials: dict[str, list] = {stage.name: [] for stage in group}  # what each kept of each batch
        self.written: dict[str, list[str]] = {stage.name: [] for stage in group}  # arrays.npz keys, per stage
        self.image_entries: dict[str, dict[int, dict]] = {stage.name: {} for stage in group}  # images.jsonl's
        self.seconds = dict.fromkeys(self.partials, 0.0)
        self.done_without: dict[str, frozenset[str]] = {}  # per stage that has run a batch
        for stage in group:
            why = _blocked_by(stage, owner.runs)
            if why:
                self.ended[stage.name] = owner.skipped(stage, why)

    def run(self) -> list[StageRun]:
        images, size = self.owner.images, self.owner.ctx.config.inputs.batch_size
        count = len(images.shard)
        self.owner.log(f"stage{'s' if len(self.group) > 1 else ''} "
                       f"{', '.join(s.name for s in self.group if s.name not in self.ended)}: "
                       f"{plural(count, 'image')} in {plural(-(-count // size), 'batch', 'batches')}")
        shown = set(images.detail.indices)
        order = batch_order(self.group)
        for lo, batch_images, batch in track(images.batches(size), total=-(-count // size), desc="analysing",
                                             unit="batch"):
            rows = [i - lo for i in range(lo, lo + len(batch_images)) if i in shown]
            release_memory()  # what the last batch freed goes back to the system: peak memory stays flat
            first = self.owner.first
            if self.owner.ctx.info.task == "segmentation":
                bctx = segmenter_batch(self.owner.ctx, batch_images, batch, lo)
            elif self.owner.ctx.info.task == "detection":
                bctx = detector_batch(self.owner.ctx, batch_images, batch, lo)
            else:
                bctx = self.owner.ctx.for_batch(batch_images, batch, images.logits[lo:lo + len(batch_images)], lo,
                                                engine=first.engine_for(batch) if first is not None else None)
            for stage in order:
                if stage.name not in self.ended and self._may_run(stage):
                    self._step(stage, bctx, lo, rows)
        gathered = dist.gather(self.owner.procs, (self._reduce(), self.seconds, self.image_entries))
        return [self._finish(stage, gathered) for stage in self.group]

    def _may_run(self, stage: Stage) -> bool:
        """Whether `stage` runs on this batch: its requirements still hold (on its first batch, what has ended
        by now it does without from then on)."""
        known = self.owner.runs + list(self.ended.values())
        why = _blocked_by(stage, known, self.done_without.get(stage.name))
        if why:
            self.ended[stage.name] = StageRun(name=stage.name, title=stage.title, status="skipped", error=why)
            return False
        if stage.name not in self.done_without:
            self.done_without[stage.name] = _done_without(stage, known)
            if self.done_without[stage.name]:
                self.owner.log(f"stage {stage.name}{_without(self.done_without[stage.name])}")
        return True

    def _step(self, stage: Stage, bctx: Context, lo: int, rows: list[int]) -> None:
        """`stage` on one batch (its first image is image `lo`; `rows`: the batch's detail images)."""
        start = time.perf_counter()
        try:
            result = stage.run(bctx, self.owner.prepare(stage))
            bctx.results.add(result)
            if self.owner.arrays_out is not None:
                arrays = stage.arrays(result)
                self.owner.arrays_out.add(arrays)
                self.written[stage.name] += list(arrays)
            if stage.records is not None:
                self.image_entries[stage.name].update(enumerate(stage.records(result), start=lo))
            self.partials[stage.name].append(stage.select(result, rows) if stage.select is not None else result)
        except WriteError:
            raise  # the disk, not the stage: the build stops
        except Exception as exc:
            took = self.seconds[stage.name] + time.perf_counter() - start
            self.ended[stage.name] = self.owner.raised(stage, exc, took)
        self.seconds[stage.name] += time.perf_counter() - start

    def _reduce(self) -> dict[str, object]:
        """This process's reduction of each stage (None: it saw no images; a StageRun: it ended)."""
        reduced: dict[str, object] = {}
        for stage in self.group:
            if stage.name in self.ended:
                reduced[stage.name] = self.ended[stage.name]
                continue
            start = time.perf_counter()
            try:
                reduced[stage.name] = stage.reduce(self.partials[stage.name]) if self.partials[stage.name] else None
            except Exception as exc:
                reduced[stage.name] = self.owner.raised(stage, exc,
                                                       self.seconds[stage.name] + time.perf_counter() - start)
            self.seconds[stage.name] += time.perf_counter() - start
        return reduced

    def _finish(self, stage: Stage, gathered: list[tuple]) -> StageRun:
        """`stage`'s record from every rank's (reduction, seconds, images.jsonl entries): their reductions
        reduced once more, its totals written and its entries given to the images' records."""
        owner = self.owner
        results = [reduced[stage.name] for reduced, _, _ in gathered]
        took = max(seconds[stage.name] for _, seconds, _ in gathered)
        failed = next((r for r in results if isinstance(r, StageRun)), None)
        if failed is None:
            start = time.perf_counter()
            try:
                result = stage.reduce([r for r in results if r is not None])
            except Exception as exc:
                failed = owner.raised(stage, exc, took + time.perf_counter() - start)
            took += time.perf_counter() - start
        if failed is not None:
            if owner.arrays_out is not None:
                owner.arrays_out.drop(self.written[stage.name])
            return failed
        if owner.arrays_out is not None and stage.totals is not None and owner.procs.root:
            owner.arrays_out.add(stage.totals(result))
        for _, _, entries in gathered:
            for index, entry in entries[stage.name].items():
                owner.images.image_entries.setdefault(index, {})[stage.name] = entry
        return owner.finished(stage, result, took) if owner.procs.root else \
            StageRun(name=stage.name, title=stage.title, status="ok", seconds=took)
