"""The build: config -> model and inputs -> stages (data) -> figures (pixels) -> HTML -> files.

`build(config)` is the Python API behind `reportgen build`. Everything that can be checked before
the analysis runs is checked first (ReportgenError, exit code 2, nothing written); a stage that fails
while running is marked failed in the report (exit code 1) and the rest of the report is built.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__, datasets, dist
from ..collection import Collection, collect
from ..config import Config
from ..context import Context, ModelInfo
from ..engine import Engine
from ..errors import ReportgenError, StageSkipped
from ..layers import describe_model
from ..models import hooks_refused, load_labels, load_model
from ..ops import release_memory
from ..progress import track
from ..stages import Stage, batch_order, input_grad_wanted, observed_layers, planned, relu_rules_wanted

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


@dataclass
class StageRun:
    name: str
    title: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    error: str | None = None
    result: object = None
    section: dict | None = None  # what figures.<name>.plot returned
    stage: Stage | None = field(default=None, repr=False)  # its record (set when it ran)


@dataclass
class Report:
    config: Config
    out_dir: Path
    html_path: Path
    json_path: Path
    stages: list[StageRun] = field(default_factory=list)
    size_bytes: int = 0
    data: dict = field(default_factory=dict)  # report.json content

    @property
    def exit_code(self) -> int:
        return 1 if any(s.status == "failed" for s in self.stages) else 0

    def metrics(self) -> dict[str, float]:
        """The headline numbers of the stages that ran, flat: `<stage>/<name>` -> float (`Stage.metrics`), e.g.
        `dataset/top1_accuracy`, `summary/total_params`; valid MLflow and W&B metric names. report.json's
        `metrics`."""
        return stage_metrics(self.stages)


def stage_metrics(runs: list[StageRun]) -> dict[str, float]:
    """See `Report.metrics`."""
    return {f"{run.name}/{name}": float(value) for run in runs
            if run.status == "ok" and run.stage is not None and run.stage.metrics is not None
            for name, value in run.stage.metrics(run.result).items()}


def figures_module(name: str):
    return importlib.import_module(f"reportgen.figures.{name}")


def prepare_model(config: Config, log: Log = _quiet, *, strict: bool = True,
                  model: torch.nn.Module | None = None) -> tuple[ModelInfo, object]:
    """Load the model (or take `model`, given in Python), describe its layers with one forward of a zero input,
    read its labels. Not `strict` (`reportgen layers`): an output that holds no logits is a note (num_classes 0),
    not an error."""
    loaded = load_model(config.model, base_dir=config.source.parent if config.source else None, model=model)
    example = torch.zeros((1, *config.model.input_size), device=loaded.device)
    try:
        layers, out = describe_model(loaded.model, example, hooks=loaded.hooks)
    except Exception as exc:
        raise ReportgenError(f"the model does not run on an input of shape {list(example.shape)} "
                             f"(`model.input_size`): {type(exc).__name__}: {exc}") from None
    try:
        logits = loaded.pick_logits(out)  # (1, K); a clear error for outputs that hold no logits
    except ReportgenError as exc:
        if strict:
            raise
        return ModelInfo(model=loaded.model, config=config, labels=None, num_classes=0, layers=layers,
                         description=loaded.description, notes=[str(exc)], adapter=loaded), loaded
    labels, note = load_labels(config.model.labels, logits.shape[1], loaded.categories)
    pre = loaded.preprocess(config.inputs.preprocess)
    info = ModelInfo(model=loaded.model, config=config, labels=labels, num_classes=logits.shape[1], layers=layers,
                     description=loaded.description, notes=[note] if note else [], adapter=loaded,
                     normalize=pre.normalize, preprocess=pre)
    return info, loaded


def check_stages(info: ModelInfo) -> list[Stage]:
    """The stages to run, in order, each checked (`check`: bad layer names, class indices, ... raise
    ReportgenError naming the stage's key). A stage that needs hooks on a model that takes none is refused."""
    stages = planned(info.config)
    for stage in stages:
        cfg = getattr(info.config.analyses, stage.name)
        _check_hooks_possible(info, stage, cfg)
        if stage.check is not None:
            try:
                stage.check(info, cfg)
            except ReportgenError as exc:  # every message names the stage's key, so the CLI can add its line
                message = str(exc)
                if not message.startswith("`analyses."):
                    raise ReportgenError(f"`analyses.{stage.name}`: {message}") from None
                raise
    return stages


def _check_hooks_possible(info: ModelInfo, stage: Stage, cfg) -> None:
    """A model that takes no hooks (TorchScript) cannot run what reads its layers."""
    hooked = stage.hooked(cfg)
    if info.hooks or not hooked:
        return
    what = f"the {stage.name} section" if hooked is True else ", ".join(hooked)
    raise hooks_refused(what, plural=hooked is not True and len(hooked) > 1, key=f"analyses.{stage.name}")


def validate(config: Config, log: Log = _quiet) -> tuple[ModelInfo, list[str]]:
    """What `reportgen validate` checks: config, files, model construction, layer names, stage options.
    Returns the model's info and warnings (training logs that match nothing would skip that stage)."""
    check_outputs(config)
    info, loaded = prepare_model(config, log)
    check_stages(info)
    found = datasets.Scan()
    for _ in datasets.scan(config, info.preprocess, datasets.select(config, info.labels, info.num_classes), found):
        pass  # every image read and prepared, one batch at a time
    warnings: list[str] = list(found.notes)
    if "training" in config.analyses.enabled():
        from ..logs import find_log_files

        if not find_log_files(config.analyses.training.logs, warnings, shown=config.shown_path):
            warnings.append("the training stage would be skipped: no log files found.")
    return info, warnings


def check_output_dir(out_dir: Path, key: str = "output.dir") -> None:
    """The output folder must be creatable and writable; checked before anything runs, by writing (and
    removing) a temporary file in the folder or its nearest existing parent: nothing is left behind."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportgenError(f"`{key}`: {out_dir} exists and is not a folder.")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    problem = None if probe.is_dir() else "not a folder"
    if problem is None:
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem:
        raise ReportgenError(f"`{key}`: cannot write to {out_dir} ({probe}: {problem}). "
                             "Choose another folder with `-o DIR` or `output.dir`.")


def check_outputs(config: Config) -> None:
    """Before anything runs: the output folders can be written, and `output.dir` holds no file of the user's
    that the build would replace (only what an earlier build recorded in its manifest is ours to replace)."""
    from .. import write

    check_output_dir(config.output.dir)
    write.check_out_dir(config.output.dir, write.planned_files(self_contained=config.output.self_contained,
                                                               save_arrays=config.output.save_arrays))
    if config.output.tensorboard is not None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ReportgenError("`output.tensorboard` needs the tensorboard package: "
                                 "pip install 'reportgen[tensorboard]' (or remove the key).")
        check_output_dir(config.output.tensorboard, key="output.tensorboard")
    if config.output.site is not None:
        from ..site import check_site

        check_output_dir(config.output.site, key="output.site")
        check_site(config.output.site)
    if config.output.attach:  # each tracker's package is installed and its run (task, folder) exists
        from ..integrations import find_targets

        find_targets(config)


def build(config: Config, log: Log = _quiet, detail: Log = _quiet, *, model: torch.nn.Module | None = None,
          images: list[datasets.Entry] | None = None) -> Report | None:
    """Run every configured stage and write the report. Raises ReportgenError for bad input. Under torchrun
    (several processes) every rank calls it; rank 0 writes the report and returns it, the others return None.
    `model`: an nn.Module given in Python (`model.source: python`), given back in the training mode and with the
    `requires_grad` flags it came with; `images`: entries given in Python (`datasets.given`) instead of
    `inputs.images`."""
    started = time.perf_counter()
    source_date_epoch()  # a bad value is refused before any work
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    flags = [(p, p.requires_grad) for p in model.parameters()] if isinstance(model, torch.nn.Module) else []
    group = dist.start(config.model.device)
    try:
        return _build_in(config, group, started, log if group.root else _quiet, detail if group.root else _quiet,
                         model, images)
    finally:
        dist.stop(group)
        for module, training in modes:
            module.training = training
        for parameter, wanted in flags:
            parameter.requires_grad_(wanted)


def _build_in(config: Config, group: dist.Group, started: float, log: Log, detail: Log, model=None,
              given=None) -> Report | None:
    from .. import write  # disk last: not needed by validate

    dist.check_same_config(group, config)
    check_outputs(config)  # on every rank (a shared file system): all refuse together, before any work
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    log("loading model")
    info, loaded = prepare_model(config, detail, model=model)
    stages = check_stages(info)
    log("reading images")
    make_engine = functools.partial(Engine, info.model, forward=info.forward,
                                    input_grad_wanted=input_grad_wanted(config), observe=observed_layers(info),
                                    relu_rules=relu_rules_wanted(config))
    first = _FirstPass(make_engine, stages, info) if group.size == 1 else None
    images = collect(config, info, loaded.device, group, first=first, entries=given)
    info.notes.extend(images.notes)
    for note in images.notes:  # skipped images, boxes cropped away: the report says so too
        log(f"note: {note}")
    shown = images.detail.indices
    if len(shown) < len(images):
        log(f"{len(images)} images; {len(shown)} shown in detail, every one in the images table")
    pixels = [images.read(i) for i in shown] if group.root else []
    batch = torch.stack([t for _, t in pixels]).to(loaded.device) if pixels else torch.zeros(0)
    ctx = Context(info=info, device=loaded.device, batch=batch, images=[image for image, _ in pixels],
                  logits=images.logits[list(shown)], engine=make_engine(batch, chunk=config.inputs.batch_size),
                  log=detail, count=len(images), detail=tuple(shown))
    # arrays.npz is written entry by entry as the stages (and the batches of streamed stages) finish
    sink = write.ArraysWriter(config.output.dir, shard=group.rank if group.size > 1 else None) \
        if config.output.save_arrays else None
    with sink if sink is not None else contextlib.nullcontext():
        return _build(config, ctx, images, stages, sink, group, started, log, detail, first)


class _FirstPass:
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


def _build(config: Config, ctx: Context, images: Collection, stages: list[Stage], sink, group: dist.Group,
           started: float, log: Log, detail: Log, first: _FirstPass | None = None) -> Report | None:
    """The stages, the page and the files, once the model and the images are ready (`sink`: the arrays.npz
    being written, or None)."""
    from .. import render, write  # presentation and disk last: not needed by validate

    if sink is not None and group.root:
        sink.add({f"logits/{name}": images.logits[i].numpy() for i, name in enumerate(images.names)})
    runs: list[StageRun] = []
    for group_stages in _groups(stages):  # a stage on its own, or consecutive streamed stages, batch by batch
        if group_stages[0].reduce is not None:
            runs += _stream(group_stages, ctx, images, runs, log, detail, sink, group, first)
            continue
        if not group.root:  # stages that see no images run once, on rank 0 (its outcome is the one reported)
            runs.append(StageRun(name=group_stages[0].name, title=group_stages[0].title, status="ok"))
            continue
        run = _run_stage(group_stages[0], ctx, runs, log, detail)
        if sink is not None and run.status == "ok":
            sink.add(run.stage.arrays(run.result))
        runs.append(run)
    if sink is not None:
        sink.merge_shards(group)
    if not group.root:
        return None
    records = images.records(config.inputs.top_k, ctx.label)
    report_data = _report_json(config, ctx, images, records, runs)
    log("rendering")
    html, assets, section_errors = render.render_report(config, ctx, runs, report_data, records=records)
    for run in runs:  # a section that could not be drawn marks its stage failed, in report.json too
        if run.name in section_errors:
            run.status, run.error = "failed", section_errors[run.name]
    if section_errors:
        entries = _stage_entries(runs)
        report_data["stages"] = entries if "source_date_epoch" not in report_data else _untimed(entries)
    out = config.output.dir
    try:
        if config.output.tensorboard is not None:  # before the report's files: an error leaves those untouched
            write_tensorboard_events(config.output.tensorboard, ctx.model, runs, log)
        files = write.write_report(out, html=html, report_json=report_data, arrays=sink, assets=assets,
                                   self_contained=config.output.self_contained, records=records)
    except OSError as exc:
        raise ReportgenError(f"`output.dir`: writing the report to {out} failed ({exc.strerror or exc}); "
                             "the previous report, if any, is unchanged.") from None
    report = Report(config=config, out_dir=out, html_path=files["html"], json_path=files["json"], stages=runs,
                    size_bytes=files["size"], data=report_data)
    if config.output.site is not None:
        from ..site import add_reports

        try:
            log(f"added to the site {add_reports([out], config.output.site)}")
        except (OSError, ReportgenError) as exc:  # the report itself is written: say so, and why the site is not
            raise ReportgenError(f"`output.site`: the report is written to {out}, but adding it to "
                                 f"{config.output.site} failed: {getattr(exc, 'strerror', None) or exc}") from None
    if config.output.attach:  # the report's files are written: attach them to the trackers
        from ..integrations import attach_all

        attach_all(report, ctx.model, log)
    log(f"done in {time.perf_counter() - started:.1f} s")
    return report


def _groups(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive streamed stages (those with `reduce`) form one group; every other stage is a group alone."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if stage.reduce is not None and groups and groups[-1][0].reduce is not None:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _unmet(stage: Stage, done: list[StageRun], forgiven: frozenset[str] | None = None) -> str | None:
    """Why `stage` cannot run: a stage it requires did not succeed (None: it can run), apart from those
    `forgiven` (default: `_forgiven`, for a stage that has not started)."""
    forgiven = _forgiven(stage, done) if forgiven is None else forgiven
    unmet = [r for r in done if r.name in stage.requires and r.status != "ok" and r.name not in forgiven]
    return "; ".join(f"it needs the {r.name} section, which {r.status}" for r in unmet) or None


def _forgiven(stage: Stage, done: list[StageRun]) -> frozenset[str]:
    """Of the stages `stage` needs any of (`requires_any`: evaluation's cam and gradients), those that ended
    without success before it started, when one is left: it works on what that one computes. (One that ends
    after it started is not forgiven: its results would cover some images and not others.)"""
    ended = {r.name for r in done if r.status != "ok"}
    either = [name for name in stage.requires_any if name in stage.requires]
    return frozenset(n for n in either if n in ended) if any(n not in ended for n in either) else frozenset()


def _without(forgiven: frozenset[str]) -> str:
    return f" (without the {' and '.join(sorted(forgiven))} section{'s' if len(forgiven) > 1 else ''}, " \
           f"which did not succeed)" if forgiven else ""


def _outcome(stage: Stage, exc: BaseException, seconds: float, log: Log, detail: Log) -> StageRun:
    """The record of a stage that raised: skipped (StageSkipped) or failed (anything else)."""
    if isinstance(exc, StageSkipped):
        log(f"stage {stage.name} skipped: {exc}")
        return StageRun(name=stage.name, title=stage.title, status="skipped", seconds=seconds, error=str(exc))
    message = str(exc) if isinstance(exc, ReportgenError) else f"{type(exc).__name__}: {exc}"
    detail("".join(traceback.format_exception(exc)))
    log(f"stage {stage.name} failed: {message}")
    return StageRun(name=stage.name, title=stage.title, status="failed", seconds=seconds, error=message)


def _finish(stage: Stage, result: object, ctx: Context, seconds: float, log: Log, detail: Log) -> StageRun:
    """A stage's result made available to later stages and drawn."""
    start = time.perf_counter()
    try:
        ctx.results.add(result)
        section = figures_module(stage.name).plot(result, ctx)
    except Exception as exc:  # a failed stage is reported, the rest of the report is built
        return _outcome(stage, exc, seconds + time.perf_counter() - start, log, detail)
    for warning in getattr(result, "warnings", ()):  # the report shows them too
        log(f"stage {stage.name}: warning: {warning}")
    return StageRun(name=stage.name, title=stage.title, status="ok", seconds=seconds + time.perf_counter() - start,
                    result=result, section=section, stage=stage)


def _run_stage(stage: Stage, ctx: Context, done: list[StageRun], log: Log, detail: Log) -> StageRun:
    """A stage that sees all images at once (or none: summary, kernels, training)."""
    why = _unmet(stage, done)
    if why:
        log(f"stage {stage.name} skipped: {why}")
        return StageRun(name=stage.name, title=stage.title, status="skipped", error=why)
    log(f"stage {stage.name}{_without(_forgiven(stage, done))}")
    start = time.perf_counter()
    try:
        result = stage.run(ctx, getattr(ctx.config.analyses, stage.name))
    except Exception as exc:
        return _outcome(stage, exc, time.perf_counter() - start, log, detail)
    return _finish(stage, result, ctx, time.perf_counter() - start, log, detail)


def _stream(group: list[Stage], ctx: Context, images: Collection, done: list[StageRun], log: Log, detail: Log,
            sink, procs: dist.Group, first: _FirstPass | None = None) -> list[StageRun]:
    """Stages over images, batch by batch (`inputs.batch_size`): each batch is read, goes through every stage
    of the group in order with a context of its own (so a later stage finds the engine passes an earlier one
    ran on the same batch), and is dropped; what a stage keeps of it is its `select` for the batch's detail
    images (sums over all images included). Each batch's arrays go to `sink` as the batch finishes; those of a
    stage that fails later are taken back. At the end each stage reduces what it kept; under torchrun the
    ranks' reductions meet on rank 0, which reduces them once more."""
    ended: dict[str, StageRun] = {}  # stages that failed or were skipped
    partials: dict[str, list] = {stage.name: [] for stage in group}
    written: dict[str, list[str]] = {stage.name: [] for stage in group}  # arrays.npz keys, per stage
    facts: dict[str, dict[int, dict]] = {stage.name: {} for stage in group}  # images.jsonl entries, per stage
    seconds = dict.fromkeys(partials, 0.0)
    forgiven: dict[str, frozenset[str]] = {}  # per stage that has run a batch: the requirements it does without
    for stage in group:
        why = _unmet(stage, done)
        if why:
            log(f"stage {stage.name} skipped: {why}")
            ended[stage.name] = StageRun(name=stage.name, title=stage.title, status="skipped", error=why)
    size = ctx.config.inputs.batch_size
    count = len(images.shard)
    log(f"stage{'s' if len(group) > 1 else ''} {', '.join(s.name for s in group if s.name not in ended)}: "
        f"{count} images in {-(-count // size)} batch{'es' if count > size else ''}")
    shown = set(images.detail.indices)
    order = batch_order(group)
    for lo, batch_images, batch in track(images.batches(size), total=-(-count // size), desc="analysing",
                                         unit="batch"):
        rows = [i - lo for i in range(lo, lo + len(batch_images)) if i in shown]
        release_memory()  # what the last batch freed goes back to the system: peak memory stays flat
        bctx = ctx.for_batch(batch_images, batch, images.logits[lo:lo + len(batch_images)], lo,
                             engine=first.engine_for(batch) if first is not None else None)
        for stage in order:
            if stage.name in ended:
                continue
            known = done + list(ended.values())
            why = _unmet(stage, known, forgiven.get(stage.name))
            if why:
                ended[stage.name] = StageRun(name=stage.name, title=stage.title, status="skipped", error=why)
                continue
            if stage.name not in forgiven:  # its first batch: what has ended by now it does without
                forgiven[stage.name] = _forgiven(stage, known)
                if forgiven[stage.name]:
                    log(f"stage {stage.name}{_without(forgiven[stage.name])}")
            start = time.perf_counter()
            try:
                result = stage.run(bctx, getattr(ctx.config.analyses, stage.name))
                bctx.results.add(result)
                if sink is not None:
                    arrays = stage.arrays(result)
                    sink.add(arrays)
                    written[stage.name] += list(arrays)
                if stage.records is not None:
                    facts[stage.name].update(enumerate(stage.records(result), start=lo))
                partials[stage.name].append(stage.select(result, rows) if stage.select is not None else result)
            except Exception as exc:
                ended[stage.name] = _outcome(stage, exc, seconds[stage.name] + time.perf_counter() - start, log,
                                             detail)
            seconds[stage.name] += time.perf_counter() - start
    mine = {}
    for stage in group:
        if stage.name in ended:
            mine[stage.name] = ended[stage.name]
            continue
        start = time.perf_counter()
        try:
            mine[stage.name] = stage.reduce(partials[stage.name]) if partials[stage.name] else None
        except Exception as exc:
            mine[stage.name] = _outcome(stage, exc, seconds[stage.name] + time.perf_counter() - start, log, detail)
        seconds[stage.name] += time.perf_counter() - start
    gathered = dist.gather(procs, (mine, seconds, facts))  # each rank's reductions (or failures), times, records
    runs = []
    for stage in group:
        results = [m[stage.name] for m, _, _ in gathered]
        took = max(s[stage.name] for _, s, _ in gathered)
        failed = next((r for r in results if isinstance(r, StageRun)), None)
        if failed is None:
            start = time.perf_counter()
            try:
                result = stage.reduce([r for r in results if r is not None])
            except Exception as exc:
                failed = _outcome(stage, exc, took + time.perf_counter() - start, log, detail)
            took += time.perf_counter() - start
        if failed is not None:
            runs.append(failed)
            if sink is not None:
                sink.drop(written[stage.name])
            continue
        if sink is not None and stage.totals is not None and procs.root:
            sink.add(stage.totals(result))
        for _, _, rank_facts in gathered:
            for index, entry in rank_facts[stage.name].items():
                images.facts.setdefault(index, {})[stage.name] = entry
        runs.append(_finish(stage, result, ctx, took, log, detail) if procs.root else
                    StageRun(name=stage.name, title=stage.title, status="ok", seconds=took))
    return runs


def _versions(config: Config | None = None) -> dict:
    """The versions behind the numbers: ours, torch's, torchvision's, Python's, and the model source's package."""
    from importlib.metadata import PackageNotFoundError, version  # not `import torchvision`: faster

    found = {"reportgen": __version__, "torch": torch.__version__, "torchvision": version("torchvision"),
             "python": platform.python_version()}
    package = {"timm": "timm", "huggingface": "transformers"}.get(config.model.source if config else "")
    if package is not None:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def source_date_epoch() -> int | None:
    """`SOURCE_DATE_EPOCH` (reproducible-builds.org), when set: the report's creation time, in seconds since
    1970; the report then leaves out every timing (`_untimed`), so two builds of one config give the same bytes."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ReportgenError(f"SOURCE_DATE_EPOCH is `{value}`: it must be a whole number of seconds since "
                             "1970-01-01 UTC (e.g. `$(git log -1 --format=%ct)`), or unset.")
    return int(value)


def _untimed(data):
    """`data` without its timings: every key named `seconds`, at any depth (stages, steps, methods)."""
    if isinstance(data, dict):
        return {key: _untimed(value) for key, value in data.items() if key != "seconds"}
    if isinstance(data, list):
        return [_untimed(value) for value in data]
    return data


def _report_json(config: Config, ctx: Context, images: Collection, records: list[dict], runs: list[StageRun]) -> dict:
    epoch = source_date_epoch()
    created = datetime.now(timezone.utc) if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)
    data = {
        "title": config.title,
        "created": created.isoformat(timespec="seconds"),
        "versions": _versions(config),
        "config": config.to_dict(relative=True),  # no home folders in a published report
        "model": {"description": ctx.info.description, "num_classes": ctx.info.num_classes,
                  "input_size": list(config.model.input_size), "device": str(ctx.device)},
        "inputs": {"images": len(images), "detail": len(images.detail.indices), "records": "images.jsonl"},
        # the images shown in detail; images.jsonl beside this file has every image's record
        "images": [{key: records[i][key] for key in ("name", "source", "top_k", "truth")}
                   for i in images.detail.indices],
        "stages": _stage_entries(runs),
        "metrics": stage_metrics(runs),  # the headline numbers, as `Report.metrics()` gives them
    }
    for run in runs:
        if run.status == "ok" and run.stage.to_json is not None:
            entry = run.stage.to_json(run.result)
            if entry is not None:
                data[run.name] = entry
    if epoch is not None:
        data = _untimed(data) | {"source_date_epoch": epoch}
    return data


def _stage_entries(runs: list[StageRun]) -> list[dict]:
    return [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 3), "error": r.error} for r in runs]


def write_tensorboard_events(logdir: Path, model: torch.nn.Module, runs: list[StageRun], log: Log = _quiet, *,
                             texts: dict[str, str] | None = None, step: int = 0) -> Path | None:
    """`output.tensorboard` (and `output.attach.tensorboard`, with its `texts`): the report's figures, conv weight
    histograms and the summary table in one new event file under `logdir`; returns its path."""
    try:
        tb = importlib.import_module("reportgen.tensorboard")
    except ImportError:
        return None
    from ..figures.common import flatten
    from ..render import section_figures

    images = {}
    for run in runs:
        if run.section is not None:
            for i, fig in enumerate(section_figures(run.section)):
                images[f"{run.name}/{i:03d} {fig.alt}"[:120]] = flatten(fig)  # overlays composed, as the page shows them
    histograms = {name: p.detach().float().cpu().numpy() for name, p in model.named_parameters()
                  if name.endswith("weight") and p.dim() == 4}
    summary = next((r.result for r in runs if r.name == "summary" and r.status == "ok"), None)
    texts = dict(texts or {})
    if summary is not None:
        head = "| layer | type | output shape | params |\n|---|---|---|---|\n"
        texts["summary"] = head + "\n".join(
            f"| {r.name or r.class_name} | {r.class_name} | {r.output_shape} | {r.num_params:,} |" for r in summary.rows)
    log(f"writing TensorBoard events to {logdir}")
    return tb.write_tensorboard(logdir, images=images, histograms=histograms, texts=texts, step=step)
