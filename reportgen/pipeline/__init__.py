"""The build: config -> model and inputs -> stages (data) -> figures (pixels) -> HTML -> files.

`build(config)` is the Python API behind `reportgen build`. Everything that can be checked before the analysis
runs is checked first (`checks`: ReportgenError, exit code 2, nothing written); the stages run in order
(`scheduler`): a stage that fails while running is marked failed in the report (exit code 1) and the rest of the
report is built. Then the page is drawn, and report.json assembled once from the stages' final outcomes
(`assemble`); TensorBoard events (`output.tensorboard`) are written by the TensorBoard tracker's module.
"""
from __future__ import annotations

import contextlib
import functools
import time

import numpy as np
import torch

from .. import datasets, dist
from ..collection import Collection, collect
from ..config import Config
from ..context import Context
from ..engine import Engine
from ..errors import ReportgenError
from ..progress import plural
from ..stages import input_grad_wanted, observed_layers, relu_rules_wanted
from .assemble import Report, StageRun, describe, mark_undrawn, report_json, source_date_epoch, stage_metrics
from .checks import Log, check_output_dir, check_outputs, check_stages, prepare_model, quiet, validate
from ..integrations.tensorboard import write_tensorboard_events
from .scheduler import (FirstPass, Scheduler, detector_batch, detector_summary, figures_module, segmenter_batch,
                        segmenter_summary)

__all__ = ["Log", "Report", "StageRun", "build", "check_output_dir", "check_outputs", "check_stages",
           "figures_module", "prepare_model", "source_date_epoch", "stage_metrics", "validate",
           "write_tensorboard_events"]


def build(config: Config, log: Log = quiet, detail: Log = quiet, *, model: torch.nn.Module | None = None,
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
        return _build_in(config, group, started, log if group.root else quiet, detail if group.root else quiet,
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
    first = FirstPass(make_engine, stages, info) if group.size == 1 and info.task == "classification" else None
    summarize = {"segmentation": segmenter_summary,
                 "detection": functools.partial(detector_summary, cfg=config.detection,
                                                num_classes=info.num_classes)}.get(info.task)
    images = collect(config, info, loaded.device, group, first=first, entries=given, summarize=summarize)
    info.notes.extend(images.notes)
    for note in images.notes:  # skipped images, boxes cropped away: the report says so too
        log(f"note: {note}")
    shown = images.detail.indices
    if len(shown) < len(images):
        log(f"{plural(len(images), 'image')}; {len(shown)} shown in detail, every one in the images table")
    pixels = [images.read(i) for i in shown] if group.root else []
    batch = torch.stack([t for _, t in pixels]).to(loaded.device) if pixels else torch.zeros(0)
    ctx = Context(info=info, device=loaded.device, batch=batch, images=[image for image, _ in pixels],
                  logits=images.logits[list(shown)], engine=make_engine(batch, chunk=config.inputs.batch_size),
                  log=detail, count=len(images), detail=tuple(shown))
    if info.task == "segmentation" and pixels:
        ctx = segmenter_batch(ctx, ctx.images, batch, 0)
    elif info.task == "detection" and pixels:
        ctx = detector_batch(ctx, ctx.images, batch, 0)
    # arrays.npz is written entry by entry as the stages (and the batches of streamed stages) finish
    arrays_out = write.ArraysWriter(config.output.dir, shard=group.rank if group.size > 1 else None) \
        if config.output.save_arrays else None
    with arrays_out if arrays_out is not None else contextlib.nullcontext():
        if arrays_out is not None and group.root:
            # a segmenter's: each class's share of its pixels; a detector's: each class's best box score
            kept = {"segmentation": "pixel_shares", "detection": "class_scores"}.get(info.task, "logits")
            for lo, rows in images.logits.chunks():
                arrays_out.add({f"{kept}/{images.names[lo + i]}": row.numpy() for i, row in enumerate(rows)})
        runs = Scheduler(ctx, images, group, log, detail, arrays_out=arrays_out, first=first).run(stages)
        if arrays_out is not None:
            arrays_out.merge_shards(group)
        if not group.root:
            return None
        return _write(config, ctx, images, runs, arrays_out, started, log)


def _write(config: Config, ctx: Context, images: Collection, runs: list[StageRun], arrays_out, started: float,
           log: Log) -> Report:
    """The page drawn, report.json assembled from the stages' outcomes (a section that could not be drawn fails
    its stage first), the files written and passed on: to the site, the trackers (`arrays_out`: the arrays.npz
    being written, or None)."""
    from .. import render, write  # presentation and disk last: not needed by validate

    records = images.records(config.inputs.top_k, ctx.label)
    epoch = source_date_epoch()
    described = describe(config, ctx, images, records, epoch)
    log("rendering")
    page = render.render_report(config, ctx, runs, described, records=records, timed=epoch is None)
    mark_undrawn(runs, page.failed)
    report_data = report_json(described, runs, page.record, epoch)
    out = config.output.dir
    try:
        if config.output.tensorboard is not None:  # before the report's files: an error leaves those untouched
            write_tensorboard_events(config.output.tensorboard, ctx.model, runs, log)
        files = write.write_report(out, html=page.html, report_json=report_data, arrays=arrays_out,
                                   assets=page.assets, self_contained=config.output.self_contained, records=records)
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
