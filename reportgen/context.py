"""What the stages work on: the model's facts (`ModelInfo`), the images, and one build's `Context`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .config import Config, Normalize, Preprocess, TargetSpec
from .engine import Engine
from .errors import ReportgenError, did_you_mean
from .layers import LayerInfo
from .models import ModelAdapter

T = TypeVar("T")


def class_shares(outputs: torch.Tensor) -> torch.Tensor:
    """A segmenter's logits (N, K, H, W) -> (N, K) on the CPU: each class's share of the image's predicted pixels."""
    k = outputs.shape[1]
    return torch.nn.functional.one_hot(outputs.argmax(dim=1).flatten(1), k).float().mean(dim=1).cpu()


@dataclass(frozen=True)
class ImageInput:
    name: str  # unique file stem: the `<image>` of arrays.npz keys
    source: str  # the file it came from
    original: np.ndarray  # (H0, W0, 3) uint8 RGB, EXIF-oriented, as loaded
    display: np.ndarray  # (H, W, 3) uint8 RGB: the resized/cropped pixels the model sees, before normalisation
    label: int | None = None  # the true class index, where the inputs give ground truth
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) in `display` pixels, where given
    mask: np.ndarray | None = None  # (H, W) bool over `display`, True on the object, where given
    # segmentation: (H, W) class index per pixel over `display` (255: ignored), where the inputs give class masks
    segmentation: np.ndarray | None = None
    # segments: (H, W) int32 labels 0 … K − 1 over `display`, the feature mask the inputs give (`reportgen.segments`)
    segments: np.ndarray | None = None
    # boxes: a detector's true boxes moved to `display` pixels (`annotations.ImageBoxes`), where the inputs give them
    boxes: Any = None


@dataclass
class ModelInfo:
    """What can be known about the model without analysing images: for `check()` and `reportgen layers`."""

    model: nn.Module
    config: Config
    labels: list[str] | None
    num_classes: int
    layers: dict[str, LayerInfo]  # in named_modules() order; "" (the model itself) excluded
    description: str = ""  # one line for the report header
    notes: list[str] = field(default_factory=list)  # things the report should say (e.g. labels dropped)
    adapter: ModelAdapter | None = None  # what loaded it (None: the model as it is, returning logits)
    preprocess: Preprocess | None = None  # how the inputs are prepared, resolved (from_weights: the weights')
    normalize: Normalize | None = None  # the normalisation inside it (None: pixels in [0, 1])
    task: str = "classification"  # `model.task`, or what the model says (`reportgen.tasks`)

    @property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Input -> logits (N, K): the adapter's forward (unwraps outputs that are not a tensor)."""
        return self.adapter.forward if self.adapter is not None else self.model

    @property
    def hooks(self) -> bool:
        """Whether the model takes forward hooks (a TorchScript model does not)."""
        return self.adapter.hooks if self.adapter is not None else True

    def layer(self, name: str) -> LayerInfo:
        if name not in self.layers:
            raise ReportgenError(
                f"layer `{name}` does not exist in {type(self.model).__name__}.{did_you_mean(name, self.layers)}"
                " Run `reportgen layers CONFIG` to list the layer names."
            )
        return self.layers[name]

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a label (any case); a clear error when out of range or unknown."""
        if isinstance(target, int):
            if not 0 <= target < self.num_classes:
                raise ReportgenError(f"class index {target} is outside the model's {self.num_classes} outputs "
                                     f"(0 to {self.num_classes - 1}).")
            return target
        if not self.labels:
            raise ReportgenError(f"class `{target}` is a label, but the model has no labels: set `model.labels`"
                                 " or give class indices.")
        if target in self.labels:
            return self.labels.index(target)
        folded = [label.casefold() for label in self.labels]
        if folded.count(target.casefold()) == 1:
            return folded.index(target.casefold())
        if target.casefold() in folded:
            raise ReportgenError(f"class `{target}` matches several labels that differ only in case: "
                                 f"{', '.join(label for label in self.labels if label.casefold() == target.casefold())}; "
                                 "write it exactly.")
        raise ReportgenError(f"class `{target}` is not in the label list.{did_you_mean(target, self.labels)}")


class Results:
    """The results of the stages that ran before, read by type: `ctx.results.get(CamResult)`."""

    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}

    def add(self, result: object) -> None:
        self._by_type[type(result)] = result

    def get(self, kind: type[T]) -> T | None:
        return self._by_type.get(kind)  # type: ignore[return-value]


@dataclass
class Context:
    """Everything a stage's `run` may use. Built once per build by the pipeline."""

    info: ModelInfo
    device: torch.device
    batch: torch.Tensor  # (N, C, H, W) float32, preprocessed, on `device`; never modified by a stage
    images: list[ImageInput]
    # (N, K) float32 on the CPU, from one forward pass of `batch`; for a segmenter, each class's logits summed
    # over its predicted region (what its maps explain)
    logits: torch.Tensor
    engine: Engine  # the passes over `batch`, cached for every stage
    results: Results = field(default_factory=Results)  # typed results of the stages that ran before
    log: Callable[[str], None] = lambda message: None  # detail for `-v`
    offset: int = 0  # the index of this context's first image among all images
    count: int | None = None  # images in the build (None: this context's images are all of them)
    detail: tuple[int, ...] | None = None  # indices of the detail images among all images (None: every image)
    # stage name -> what its `Stage.prepare` made once per build (shared by every batch's context)
    prepared: dict[str, Any] = field(default_factory=dict)
    # a segmenter's logits (N, K, H, W) of `batch`; a detector's `Detections` per image, every box (None: a classifier)
    outputs: Any = None
    boxes: list | None = None  # a detector's explained `Detections` per image (`pipeline.scheduler.explained`)

    def for_batch(self, images: list[ImageInput], batch: torch.Tensor, logits: torch.Tensor, offset: int,
                  engine: Engine | None = None, outputs: torch.Tensor | None = None) -> "Context":
        """The context of one batch of a streamed build (`images` from index `offset` among all images, their
        tensors and logits): an engine of its own (`engine`, or a new one), for the results of the stages that
        run on this batch."""
        engine = engine or self.engine.with_batch(batch)
        return Context(info=self.info, device=self.device, batch=batch, images=images, logits=logits, engine=engine,
                       log=self.log, offset=offset, count=self.count, detail=self.detail, prepared=self.prepared,
                       outputs=outputs)

    @property
    def model(self) -> nn.Module:
        return self.info.model

    @property
    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Input -> logits (N, K): the adapter's forward (unwraps outputs that are not a tensor)."""
        return self.info.forward

    @property
    def config(self) -> Config:
        """The build's config: stages read its global sections (seed, inputs, model), never another
        stage's options."""
        return self.info.config

    @property
    def labels(self) -> list[str] | None:
        return self.info.labels

    def label(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return f"class {index}"

    @property
    def probabilities(self) -> torch.Tensor:  # (N, K)
        """Softmax of the logits; a segmenter's: each class's share of the pixels predicted as it."""
        if self.outputs is not None:
            return class_shares(self.outputs)
        return torch.softmax(self.logits.float(), dim=1)

    def targets(self, spec: TargetSpec) -> list[list[int]]:
        """Per image, the class indices a TargetSpec asks for (top-k predictions or the explicit list). A
        segmenter's, without a list: the classes its prediction holds, the largest region first; every image gets
        as many as the image with the most, an image with fewer repeating its largest (`distinct` drops them)."""
        if spec.explicit:
            classes = [self.info.class_index(c) for c in spec.classes]
            return [list(classes) for _ in self.images]
        if self.outputs is not None:
            shares = class_shares(self.outputs)
            present = [[c for c in row.argsort(descending=True, stable=True).tolist() if row[c] > 0] for row in shares]
            most = max(len(p) for p in present)
            return [p + p[:1] * (most - len(p)) for p in present]
        k = min(spec.k, self.logits.shape[1])
        return self.logits.topk(k, dim=1).indices.tolist()
