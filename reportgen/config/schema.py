"""The schema: frozen dataclasses, one per section of the YAML config, each field with its rules. The sections
that the registries give (`model`, `analyses`, `output.attach`) are built in `registered`."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .rules import COUNT, SEED, Rules, dotted, rules_of, setting, yaml_fields
from .values import Preprocess

if TYPE_CHECKING:
    from .registered import AnalysesConfig, AttachConfig, ModelConfig  # noqa: F401  (built from the registries)


def _registered():
    """ModelConfig, AnalysesConfig and AttachConfig: built from the registries on first use (`registered`)."""
    from .registered import classes

    return classes()


@dataclass(frozen=True)
class SampleConfig:
    """A reproducible subset of labelled inputs: `per_class` images of each class (all of a smaller class)."""

    per_class: int | None = setting(None, **COUNT)
    seed: int | None = setting(None, **SEED)  # default: the config's seed

    def _validate(self, err: Callable[[str, str], None]) -> None:
        if self.per_class is None:
            err("per_class", "`inputs.sample` needs `per_class: N` (images per class).")


@dataclass(frozen=True)
class InputsConfig:
    images: tuple[str, ...] = setting((), kind="patterns")  # absolute file, folder or glob patterns
    preprocess: Preprocess = field(default_factory=Preprocess)
    top_k: int = setting(5, **COUNT)
    batch_size: int = setting(8, **COUNT)
    alpha: Literal["drop", "white", "black"] = "drop"  # transparent pixels: drop alpha (torchvision's loader)
    max_value: int | None = setting(None, ge=1, le=2**32 - 1)  # full scale of 16-bit images; None: 65535
    limit: int | None = setting(None, **COUNT)  # the first N images (after sampling), in entry order
    sample: SampleConfig | None = None  # {per_class: N, seed: S}: N images of each class
    strict: bool = False  # false: an image that cannot be read is skipped (the report says so); true: an error


@dataclass(frozen=True)
class DetailConfig:
    """Which images get per-image figures (the rest are rows of the page's images table): the most confident
    mistakes, the least confident correct predictions (without ground truth: the least confident predictions),
    then a seeded sample per class (true class, else predicted), at most `budget` in all. A build over at most
    `budget` images details every image."""

    budget: int = setting(8, ge=1, le=1000)  # images with figures, at most
    mistakes: int = setting(2, ge=0)  # the most confident wrong predictions
    uncertain: int = setting(2, ge=0)  # the least confident correct predictions
    per_class: int = setting(1, ge=0)  # then this many per class, classes in a seeded order, while budget lasts
    seed: int | None = setting(None, **SEED)  # default: the config's seed


@dataclass(frozen=True)
class ReportConfig:
    detail: DetailConfig = field(default_factory=DetailConfig)


@dataclass(frozen=True)
class DetectionConfig:
    """A detector's options (`model.task: detection`): which of its boxes are drawn and explained, and its true
    boxes. AP counts every detection; the threshold only picks what the page shows and the maps explain."""

    annotations: Path | None = setting(None, kind="path")  # true boxes: a COCO .json or a .jsonl of boxes, labels
    # where a COCO file's file_names are; default: the one folder of `inputs.images`, else the file's folder
    image_root: Path | None = setting(None, kind="path")
    score_threshold: float = setting(0.5, ge=0.0, le=1.0)  # the boxes drawn and explained score at least this
    max_boxes: int = setting(5, ge=1, le=100)  # at most this many explained per image, the best
    iou_threshold: float = setting(0.5, ge=0.0, le=1.0)  # a true positive overlaps its true box at least this


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = setting(Path("reports/report"), kind="path")
    self_contained: bool = True
    save_arrays: bool = False
    tensorboard: Path | None = setting(None, kind="path")
    site: Path | None = setting(None, kind="path")  # a static site of reports (`reportgen site`) this one joins
    attach: AttachConfig = field(default_factory=lambda: _registered().AttachConfig())  # trackers: [mlflow, wandb, ...]


@dataclass(frozen=True)
class Config:
    title: str = "reportgen report"
    seed: int = setting(0, **SEED)
    model: ModelConfig = field(default_factory=lambda: _registered().ModelConfig())
    inputs: InputsConfig = field(default_factory=InputsConfig)
    analyses: AnalysesConfig = field(default_factory=lambda: _registered().AnalysesConfig())
    report: ReportConfig = field(default_factory=ReportConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Path | None = setting(None, yaml="")  # the YAML file (not a YAML key)
    lines: Any = field(default=None, compare=False, repr=False,
                                 metadata={"rules": Rules(yaml="")})  # where each key is (not a YAML key)

    def to_dict(self, relative: bool = False) -> dict:
        """The resolved config as plain JSON-able data. With `relative`, file paths and path patterns are
        written relative to the config's folder (what a published report shows: no home folders)."""
        base = self.source.parent if relative and self.source is not None else None
        return _plain(self, base)

    def shown_path(self, path: str | Path) -> str:
        """A path as a published report shows it: relative to the config's folder (no home folders)."""
        return _relative(str(path), self.source.parent if self.source is not None else None)

    def locate(self, message: str) -> str:
        """A message that starts with a key path ("`model.name`: ...") gains where that key is written:
        "`model.name` (config.yaml, line 7): ..." or "(from --set)". When the key is a section and a value
        the message quotes was given with --set below it, the message names that full key instead."""
        match = re.match(r"`([a-z_]+(?:\.[a-z_0-9]+)*)`", message)
        if self.lines is None or match is None or match.group(1).split(".")[0] not in TOP_KEYS:
            return message
        path = tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))
        rest = message[match.end():]
        full = self.lines.overridden_below(path, rest)
        if full is not None:
            return f"`{dotted(full)}`{self.lines.where(full)}{rest}"
        return message[:match.end()] + self.lines.where(path) + rest


TOP_KEYS = tuple(yaml_fields(Config))


def _plain(value: Any, base: Path | None = None, patterns: bool = False) -> Any:
    """Dataclasses, tuples and paths as JSON-able data; paths relative to `base` when one is given."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name), base, rules_of(f).kind in ("patterns", "path_text"))
                for f in dataclasses.fields(value) if not (isinstance(value, Config) and f.name in ("source", "lines"))}
    if isinstance(value, (tuple, list)):
        return [_plain(v, base, patterns) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, base) for k, v in value.items()}
    if isinstance(value, Path) or (patterns and isinstance(value, str)):
        return _relative(str(value), base)
    return value


def _relative(path: str, base: Path | None) -> str:
    if base is None or not os.path.isabs(path):
        return path
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive
        return path

