"""Stages: one module per YAML key under `analyses`, each computing plain data (no matplotlib, no Jinja).

A stage module `reportgen.stages.<name>` declares itself with one record, `SPEC = Stage(...)`: its name
and title, its config class, what it needs (`requires`: stages whose results it reads, which then run
before it, and it is skipped when one of them did not succeed; `requires_any`: the same for those of a few
stages that are configured, at least one of which must be, except that it runs on what is left when the others
ended before it started; `needs_hooks`; `wants_input_grad` and `wants_relu_rules`), and its functions:

    check(info: ModelInfo, cfg) -> None          optional: what needs the model (layer names, class
                                                 indices); the config schema checked the rest already
    run(ctx: Context, cfg) -> <Name>Result       the computation, a small frozen dataclass of arrays
    reduce(results: list) -> <Name>Result        stages over images: the result of all images from the
                                                 results of consecutive batches. With it, `run` is the
                                                 per-batch step: the pipeline streams the images batch by
                                                 batch (`inputs.batch_size`) through every such stage,
                                                 each batch with a context of its own
    select(result, rows: list[int]) -> result    optional, with `reduce`: a batch's result kept for only the
                                                 images `rows` (positions in the batch) that the report shows
                                                 in detail, with what `reduce` needs of all images (sums,
                                                 counts); without it the whole batch result is kept
    arrays(result) -> dict[str, np.ndarray]      the `arrays.npz` entries (`<stage>/<method>/...` keys), float32;
                                                 for a streamed stage, those of one batch's images
    totals(result) -> dict[str, np.ndarray]      optional, streamed stages: entries of the reduced result
                                                 (all images), written once
    to_json(result) -> dict | list | None        optional: the stage's entry in report.json
    metrics(result) -> dict[str, float]          optional: its headline numbers (`Report.metrics()`)
    records(result) -> list[dict]                optional, streamed stages: per image of a batch's result,
                                                 the stage's entry in that image's images.jsonl record
                                                 (every image, not only the detail ones)

A stage is three files and nothing else names it: its module here (its options dataclass and its `SPEC`), its
figure module `reportgen.figures.<name>` (`plot(result, ctx) -> section`) and its template
`sections/<name>.html.jinja2`. The registry (`reportgen.registry.STAGES`) finds every module here with a
`SPEC`, and plug-ins through the `reportgen.stages` entry points (a plug-in's record names its own figure module
and template file); the config's `analyses` section is assembled from the records. When the registry loads, each
record's figure module and template must exist: a missing one is an error naming it, before any work.

The stages that run are the `analyses` keys present in the config, in report order (`Stage.order`), each
moved after what it requires.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import tasks
from ..context import Context, ImageInput, ModelInfo  # noqa: F401  (the stages' data model)
from ..errors import ReportgenError
from ..packaged import templates_dir
from ..registry import STAGES

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True)
class Stage:
    name: str  # the YAML key under `analyses`, the module name, the section id
    title: str  # the report's section title
    options: type  # the dataclass of `analyses.<name>`
    run: Callable[[Context, Any], Any]
    order: int = 100  # where its section stands in the report (built-ins: 10 summary ... 90 training)
    figures: str = ""  # the module with `plot(result, ctx)`; default `reportgen.figures.<name>`
    template: str = ""  # its section's template file; default `sections/<name>.html.jinja2` of reportgen's templates
    check: Callable[[ModelInfo, Any], None] | None = None
    reduce: Callable[[list], Any] | None = None  # batch results -> the result (None: `run` sees all images)
    select: Callable[[Any, list[int]], Any] | None = None  # a batch result kept for its detail images only
    # streamed: layers whose outputs the stage reads from the engine's gradient pass (copied as they return);
    # such a stage runs after the other stages of each batch, so it finds them there
    observes: Callable[[ModelInfo, Any], Sequence[str]] | None = None
    arrays: Callable[[Any], dict] = lambda result: {}
    totals: Callable[[Any], dict] | None = None  # streamed stages: arrays of the reduced result
    to_json: Callable[[Any], Any] | None = None
    # the headline numbers, {name: float} (`Report.metrics()` keys them `<stage>/<name>`: MLflow / W&B metric names)
    metrics: Callable[[Any], dict[str, float]] | None = None
    records: Callable[[Any], list[dict]] | None = None  # streamed: per image, its entry in images.jsonl
    # what the stage makes once per build before it first runs, from the model and its options (the evaluation's
    # fast forward); `run` finds it as `ctx.prepared[<name>]`
    prepare: Callable[[ModelInfo, Any], Any] | None = None
    # streamed: the engine pass the stage asks for first on each batch, (its layers, whether with gradients); a
    # small build's first look at the predictions is that pass's forward (`Engine.first_logits`)
    first_pass: Callable[[ModelInfo, Any], tuple[tuple[str, ...], bool]] | None = None
    requires: tuple[str, ...] = ()  # stages whose results this one reads
    # at least one of these must be configured; those that are count as `requires` (run before, must succeed)
    requires_any: tuple[str, ...] = ()
    # True: the stage reads layer outputs; or a function of the options -> the method ids that need hooks
    needs_hooks: bool | Callable[[Any], tuple[str, ...]] = False
    wants_input_grad: Callable[[Any], bool] = lambda cfg: False  # the engine keeps input gradients for it
    # ReLU backward rules ("guided", "deconv") whose input gradients the engine's first pass also takes for it
    wants_relu_rules: Callable[[Any], tuple[str, ...]] = lambda cfg: ()

    @property
    def figures_module(self) -> str:
        return self.figures or f"reportgen.figures.{self.name}"

    @property
    def template_path(self) -> Path:
        return Path(self.template) if self.template else templates_dir() / "sections" / f"{self.name}.html.jinja2"

    def check_files(self) -> None:
        """Its figure module and its template exist (ReportgenError naming the missing one)."""
        try:
            found = importlib.util.find_spec(self.figures_module) is not None
        except ImportError:
            found = False
        if not found:
            raise ReportgenError(f"stage `{self.name}`: its figure module `{self.figures_module}` does not exist "
                                 f"(every stage needs one with `plot(result, ctx)`).")
        if not self.template_path.is_file():
            raise ReportgenError(f"stage `{self.name}`: its template {self.template_path} does not exist.")

    def variant(self, name: str, **functions: Any) -> Stage:
        """This record as a task computes it (`tasks.Task.variants`): its options and key, the functions given, and
        the figure module `reportgen.figures.<name>` and template `sections/<name>.html.jinja2` of that name."""
        return dataclasses.replace(self, figures=f"reportgen.figures.{name}",
                                   template=str(templates_dir() / "sections" / f"{name}.html.jinja2"), **functions)

    def hooked(self, cfg: Any) -> tuple[str, ...] | bool:
        """What of this stage needs hooks with these options: True (all of it), method ids, or nothing."""
        return self.needs_hooks(cfg) if callable(self.needs_hooks) else self.needs_hooks


class LabelledImages:
    """For a data-set result over `images` with `labelled` (N,) bool (an image has ground truth): the counts."""

    @property
    def count(self) -> int:
        """Images with ground truth."""
        return int(self.labelled.sum())

    @property
    def unlabelled(self) -> int:
        return len(self.images) - self.count


def stage_names() -> tuple[str, ...]:
    """Every stage, in report order."""
    return STAGES.names()


def spec(name: str) -> Stage:
    """The record of stage `name`."""
    return STAGES.get(name)


def planned(config: Config, task: str = "classification") -> list[Stage]:
    """The configured stages in the order they run: report order, each after the stages it requires; each the
    record the model's `task` runs (`tasks.Task.variants`: a segmenter's data-set metrics). A requirement that is
    not configured is an error naming both."""
    enabled = config.analyses.enabled()
    own = tasks.get(task)
    specs = {name: own.variant(spec(name)) for name in enabled}
    for name, s in specs.items():
        if s.requires_any:
            present = tuple(n for n in s.requires_any if n in specs)
            if not present:
                raise ReportgenError(f"`analyses.{name}` needs {' or '.join(f'`analyses.{n}`' for n in s.requires_any)}"
                                     ": add one to the config.")
            specs[name] = dataclasses.replace(s, requires=s.requires + present)
    order: list[Stage] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if any(s.name == name for s in order):
            return
        if name in path:
            raise ReportgenError(f"stages require each other in a circle: {' -> '.join(path + (name,))}")
        for needed in specs[name].requires:
            if needed not in specs:
                raise ReportgenError(f"`analyses.{name}` needs `analyses.{needed}`: add it to the config.")
            visit(needed, path + (name,))
        order.append(specs[name])

    for name in enabled:
        visit(name, ())
    return order


def batch_order(stages: Sequence[Stage]) -> list[Stage]:
    """The order streamed `stages` run in on each batch: observers (`Stage.observes`) after the passes they read."""
    return sorted(stages, key=lambda s: s.observes is not None)


def observed_layers(info: ModelInfo) -> tuple[str, ...]:
    """The layers the configured stages want observed in the engine's gradient passes (`Stage.observes`)."""
    return tuple(dict.fromkeys(name for s in planned(info.config, info.task) if s.observes is not None
                               for name in s.observes(info, getattr(info.config.analyses, s.name))))


def input_grad_wanted(config: Config) -> bool:
    """Whether a configured stage will ask the engine for input gradients (so earlier passes keep them)."""
    return any(s.wants_input_grad(getattr(config.analyses, s.name)) for s in planned(config))


def relu_rules_wanted(config: Config) -> tuple[str, ...]:
    """The ReLU rules a configured stage will ask the engine for (so the first gradient pass takes them)."""
    return tuple(dict.fromkeys(rule for s in planned(config)
                               for rule in s.wants_relu_rules(getattr(config.analyses, s.name))))
