"""The `insight` stage's two other parts, kept per batch and put together in `reduce` (`stages.insight`):

- **Concepts** (Deep Feature Factorization, `metrics.concepts`): the activations of `concept_layer` (the cam stage's
  main layer) of a seeded sample of images, float16, with a `SAMPLE_THUMB`-pixel thumbnail each. The sample is the
  images whose seeded priority (`insight._priority`, the same as SpRAy's cap) falls under `concept_sample` / the
  build's image count: about `concept_sample` images, whatever the batching. The NMF is fitted on the
  `concept_fit` of lowest priority (pytorch-grad-cam's `dff`); every other kept image gets its heat maps by
  non-negative least squares against the fitted concepts (`metrics.concepts.project`). Then each concept's share
  per class (by predicted class) and its top patches.
- **Feature space** (`metrics.feature_space`): every image's feature vector, float16: the output of `features`, or by
  default the input of the classifier head (the output of the last layer before the head's last `nn.Linear` whose
  size per image is the head's `in_features`), a 4-D output averaged over its positions. `reduce` projects them to
  2-D (exact PCA, or UMAP with the extra) and finds each mistake's nearest correct images.

Both read the layers' outputs that the engine's pass observed (`Stage.observes`), else one forward without
autograd per chunk of their own. Memory: `concept_sample` × C·h·w × 2 bytes, and d × 2 bytes per image (50 000
images of 512 features: 51 MB).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ReportgenError
from ..metrics import concepts as concepts_, feature_space
from ..metrics.spray import area
from . import Context, ModelInfo
from .feature_maps import layer_outputs

SAMPLE_THUMB = 64  # side of the thumbnail kept per concept-sample image (top patches and heat maps drawn on it)


@dataclass(frozen=True)
class Features:
    """Per image its feature vector (all arrays with the same first axis)."""

    indices: np.ndarray  # (n,) int64 among all images
    truth: np.ndarray  # (n,) int64, -1 without
    predicted: np.ndarray  # (n,) int64
    vectors: np.ndarray = field(repr=False)  # (n, d) float16 (`feature_space.as_storage`)
    names: tuple[str, ...] = ()

    @staticmethod
    def join(parts: list[Features]) -> Features | None:
        return _joined(Features, parts, ("indices", "truth", "predicted", "vectors"))


@dataclass(frozen=True)
class Activations:
    """The concept sample's activations (all arrays with the same first axis)."""

    indices: np.ndarray  # (m,) int64
    priority: np.ndarray  # (m,) float64
    predicted: np.ndarray  # (m,) int64
    values: np.ndarray = field(repr=False)  # (m, C, h, w) float16
    thumbs: np.ndarray = field(repr=False)  # (m, SAMPLE_THUMB, SAMPLE_THUMB, 3) uint8
    names: tuple[str, ...] = ()

    def take(self, rows: np.ndarray) -> Activations:
        return Activations(self.indices[rows], self.priority[rows], self.predicted[rows], self.values[rows],
                           self.thumbs[rows], tuple(self.names[i] for i in rows))

    @staticmethod
    def join(parts: list[Activations]) -> Activations | None:
        return _joined(Activations, parts, ("indices", "priority", "predicted", "values", "thumbs"))


def _joined(cls, parts: list, arrays: tuple[str, ...]):
    """`cls` of the batches' `parts` (None where a batch had none) one after the other: each of its `arrays`
    concatenated, and its names; None when no batch had one."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in arrays),
               names=tuple(n for p in parts for n in p.names))


@dataclass(frozen=True)
class ConceptsFound:
    layer: str
    fitted: int  # images the NMF was fitted on (the rest of the sample projected)
    activations: Activations = field(repr=False)  # the sample, lowest priority first
    heat_maps: np.ndarray = field(repr=False)  # (m, K, h, w) float32 of the sample
    shares: np.ndarray = field(repr=False)  # (num_classes, K): each concept's share per predicted class (NaN: none)
    sole: np.ndarray = field(repr=False)  # (num_classes,) the concept a class leans on alone (share > 0.5), or -1
    top: list = field(repr=False)  # per concept its top patches [(sample row, y, x)], on the activation grid
    iterations: int = 0


@dataclass(frozen=True)
class FeatureSpace:
    layer: str
    projection: str  # "pca" | "umap"
    features: Features = field(repr=False)
    xy: np.ndarray = field(repr=False)  # (n, 2) float32
    neighbours: list = field(repr=False)  # [(row, [(row, distance), ...])] of each mistake


# ---------------------------------------------------------------------------- layers


def feature_layer(info: ModelInfo, named: str | None) -> str | None:
    """`named`, else the layer whose output is the input of the classifier head (see the module); None when the
    model has no such layer (a transformer's head reads one token of a sequence: name a layer)."""
    if named is not None:
        if named not in info.layers:
            raise ReportgenError(f"`analyses.insight.features`: the model has no layer `{named}`.")
        return named
    called = sorted((layer for layer in info.layers.values() if layer.order is not None and layer.output_shape),
                    key=lambda layer: layer.order)
    modules = dict(info.model.named_modules())
    heads = [layer for layer in called if isinstance(modules.get(layer.name), torch.nn.Linear)]
    if not heads:
        return None
    head = heads[-1]
    size = modules[head.name].in_features
    before = [layer for layer in called if layer.order < head.order and layer.name not in head.name
              and int(np.prod(layer.output_shape[1:])) == size and not head.name.startswith(layer.name + ".")]
    return before[-1].name if before else None


def concept_layer(info: ModelInfo, named: str | None) -> str:
    """`named`, else the CAM stage's main layer; a ReportgenError when it has no spatial output."""
    if named is None:
        from ..layers import default_cam_layer

        cam = getattr(info.config.analyses, "cam", None)
        named = cam.target_layers[0] if cam is not None and cam.target_layers else default_cam_layer(info)
    layer = info.layers.get(named)
    if layer is None:
        raise ReportgenError(f"`analyses.insight.concept_layer`: the model has no layer `{named}`.")
    shape = layer.output_shape
    if shape is None or len(shape) != 4 or shape[2] * shape[3] < 2:
        raise ReportgenError(f"`analyses.insight.concept_layer`: `{named}` has no spatial output (its output is "
                             f"{shape}); Deep Feature Factorization needs a (C, h, w) map: name a convolutional layer, "
                             "or set `concepts: 0`.")
    return named


def outputs(ctx: Context, names: list[str]) -> dict[str, torch.Tensor]:
    """Layer -> its output for the batch: from the engine's pass where it observed them, else forwards of our own
    (`feature_maps.layer_outputs`); a layer whose output is no tensor is left out."""
    chunks = layer_outputs(ctx.model, ctx.batch, names, ctx.config.inputs.batch_size, ctx.forward, ctx.engine)
    return {name: torch.cat([c[name] for c in chunks]) for name in names
            if chunks and all(torch.is_tensor(c.get(name)) for c in chunks)}


# ---------------------------------------------------------------------------- per batch


def batch_features(ctx: Context, layer: str, out: torch.Tensor, predicted: np.ndarray) -> Features:
    vectors = out.float()
    if vectors.dim() == 4 and vectors.shape[2] * vectors.shape[3] > 1:
        vectors = vectors.mean(dim=(2, 3))  # a named convolutional layer: its channels, averaged over positions
    vectors = vectors.reshape(len(vectors), -1).numpy()
    truth = np.array([-1 if image.label is None else image.label for image in ctx.images], np.int64)
    return Features(indices=np.arange(ctx.offset, ctx.offset + len(vectors), dtype=np.int64), truth=truth,
                    predicted=predicted, vectors=feature_space.as_storage(vectors),
                    names=tuple(image.name for image in ctx.images))


def batch_activations(ctx: Context, out: torch.Tensor, predicted: np.ndarray, priority: np.ndarray,
                      sample: int) -> Activations:
    """The batch's images of the concept sample (priority under sample / the build's count)."""
    count = ctx.count if ctx.count is not None else ctx.offset + len(out)
    rows = np.flatnonzero(priority < min(1.0, sample / max(1, count)))
    thumbs = np.stack([np.clip(area(ctx.images[p].display.transpose(2, 0, 1)[:3], SAMPLE_THUMB), 0, 255).round()
                       .astype(np.uint8).transpose(1, 2, 0) for p in rows]) if len(rows) else \
        np.zeros((0, SAMPLE_THUMB, SAMPLE_THUMB, 3), np.uint8)
    return Activations(indices=ctx.offset + rows.astype(np.int64), priority=priority[rows], predicted=predicted[rows],
                       values=out[rows].float().numpy().astype(np.float16), thumbs=thumbs,
                       names=tuple(ctx.images[p].name for p in rows))


# ---------------------------------------------------------------------------- reduce


def find_concepts(acts: Activations | None, layer: str, cfg: Any, num_classes: int, seed: int) -> ConceptsFound | None:
    """Fit on the `concept_fit` images of lowest priority, project the rest, shares and top patches."""
    if acts is None or len(acts.indices) < 2 or cfg.concepts == 0:
        return None
    order = np.lexsort((acts.indices, acts.priority))[:cfg.concept_sample]
    acts = acts.take(order)
    values = acts.values.astype(np.float32)
    fit = min(cfg.concept_fit, len(values))
    fitted = concepts_.fit_concepts(values[:fit], min(cfg.concepts, values.shape[1]), seed=seed, layer=layer)
    rest = concepts_.project(fitted, values[fit:]) if fit < len(values) else np.zeros((0, *fitted.heat_maps.shape[1:]))
    heat = np.concatenate([fitted.heat_maps, rest]).astype(np.float32)
    shares = concepts_.concept_shares(heat, acts.predicted, num_classes, scale=fitted.scale)
    return ConceptsFound(layer=layer, fitted=fit, activations=acts, heat_maps=heat, shares=shares,
                         sole=concepts_.sole_concepts(shares), top=concepts_.top_patches(heat, cfg.exemplars or 4),
                         iterations=fitted.n_iter)


def find_feature_space(features: Features | None, layer: str | None, cfg: Any, seed: int) -> FeatureSpace | None:
    if features is None or len(features.indices) < 3:
        return None
    order = np.argsort(features.indices, kind="stable")
    features = Features(features.indices[order], features.truth[order], features.predicted[order],
                        features.vectors[order], tuple(features.names[i] for i in order))
    project = feature_space.umap_2d if cfg.projection == "umap" else feature_space.pca_2d
    xy = project(features.vectors, seed=seed)
    neighbours = feature_space.nearest_correct(features.vectors, features.truth, features.predicted,
                                               cfg.neighbours) if cfg.neighbours else []
    return FeatureSpace(layer=layer or "", projection=cfg.projection, features=features, xy=xy, neighbours=neighbours)
