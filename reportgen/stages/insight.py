"""The `insight` stage: what the model learned across the data set. Spectral Relevance Analysis (SpRAy) per class:
are the images of a class decided for one reason, or is a group of them decided on something else (a watermark,
the background)?

Streamed with the `cam` stage: in each batch it reads the cam result of the batch (`ctx.results`, every image,
before `select`) and keeps, per image, only what SpRAy and the page need: the image's map for its class (predicted,
or true with `by: truth`) of one CAM method, area-downsampled to `size` × `size` and stored as float16
(`metrics.spray.downsample`), a `THUMB`-pixel thumbnail (uint8), its index, truth and prediction, the share of its
map's mass outside the object where the inputs give a box or mask, and a seeded priority. `reduce` puts the batches
together, keeps per class the `max_per_class` images of lowest priority (a seeded sample that does not depend on
the batching), and runs SpRAy (`metrics.spray.spray`) per class with at least `min_images` images. Per cluster: its
size, mean map, the `exemplars` images nearest its k-means centre, its accuracy, and two flags:

- `outside`: its images put on average more than `OUTSIDE` of their map's mass outside the object (each map's
  mass normalised to the same total, so this is the share of the cluster's mean map outside the objects);
- `unlike`: Pearson's r between its mean map and the mean map of the rest of its class is below `UNLIKE`.

Memory: per image (size² × 2 + THUMB² × 3) bytes, 3.8 KB at size 32: 190 MB at 50 000 images, held until
`reduce`; SpRAy's affinity is a sparse k-NN graph of at most `max_per_class` images (docs/insight.md).

The stage's two other parts, Deep Feature Factorization's concepts and the feature space: `insight_parts`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..config.rules import COUNT, SEED, setting
from ..errors import ReportgenError
from ..metrics import spray
from ..metrics.scoring import object_mask
from . import Context, ModelInfo, Stage
from . import insight_parts as parts
from .cam import CamResult

THUMB = 24  # side of the thumbnail kept per image (exemplars are drawn from it)
OUTSIDE = 0.5  # flag: more than this share of the mass outside the object
UNLIKE = 0.5  # flag: Pearson's r with the rest of the class below this


@dataclass(frozen=True)
class InsightConfig:
    """What the model learned across the data set: SpRAy (spectral clustering of one CAM method's maps) per class."""

    method: str | None = None  # the CAM method whose maps are clustered; null: the first of `analyses.cam.methods`
    by: Literal["predicted", "truth"] = "predicted"  # group images by predicted class, or by true class
    min_images: int = setting(20, ge=2)  # classes with fewer images are not analysed
    size: int = setting(32, ge=2, le=256)  # maps are area-downsampled to size × size (the paper's 32)
    k: int = setting(10, **COUNT)  # neighbours of the k-NN affinity
    clusters: int | None = setting(None, ge=2)  # per class; null: where the eigengap is largest
    eigenvalues: int = setting(10, ge=3)  # smallest Laplacian eigenvalues computed (the spectrum drawn, the gap)
    max_per_class: int = setting(2000, ge=2)  # a seeded sample of at most this many images per class
    exemplars: int = setting(4, ge=0)  # images nearest each cluster's centre shown (and each concept's top patches)
    seed: int | None = setting(None, **SEED)  # default: the config's seed
    # Deep Feature Factorization (pytorch-grad-cam's `dff`): NMF concepts of a layer's activations; 0: none
    concepts: int = setting(0, ge=0)  # e.g. 6; it imports scikit-learn (0.85 s) and fits an NMF
    concept_layer: str | None = None  # null: the cam stage's main layer (it needs a spatial (C, h, w) output)
    concept_sample: int = setting(256, ge=2)  # about this many images' activations kept (a seeded sample)
    concept_fit: int = setting(64, ge=2)  # the NMF is fitted on this many of them; the rest projected (NNLS)
    # the feature space: each image's feature vector, drawn in 2-D; null: the input of the classifier head
    features: str | None = None
    projection: Literal["pca", "umap"] = "pca"  # pca: exact; umap: pip install 'reportgen[umap]'
    neighbours: int = setting(3, ge=0)  # each mistake's nearest correct images in feature space listed


@dataclass(frozen=True)
class Kept:
    """Per image what SpRAy needs (all arrays with the same first axis, n)."""

    classes: np.ndarray  # (n,) int64 the class it is grouped under
    indices: np.ndarray  # (n,) int64 among all images
    truth: np.ndarray  # (n,) int64, -1 without ground truth
    predicted: np.ndarray  # (n,) int64
    maps: np.ndarray = field(repr=False)  # (n, size²) float16, `spray.downsample`
    thumbs: np.ndarray = field(repr=False)  # (n, THUMB, THUMB, 3) uint8
    outside: np.ndarray = field(repr=False)  # (n,) float32, NaN: no box or mask
    priority: np.ndarray = field(repr=False)  # (n,) float64 seeded: the cap keeps the lowest
    names: tuple[str, ...] = ()

    def take(self, rows: np.ndarray) -> Kept:
        return Kept(self.classes[rows], self.indices[rows], self.truth[rows], self.predicted[rows], self.maps[rows],
                    self.thumbs[rows], self.outside[rows], self.priority[rows], tuple(self.names[i] for i in rows))

    @staticmethod
    def join(parts: list[Kept], size: int) -> Kept:
        if not parts:
            return Kept(*(np.zeros(0, np.int64) for _ in range(4)), np.zeros((0, size * size), np.float16),
                        np.zeros((0, THUMB, THUMB, 3), np.uint8), np.zeros(0, np.float32), np.zeros(0))
        arrays = [np.concatenate([getattr(p, f) for p in parts]) for f in
                  ("classes", "indices", "truth", "predicted", "maps", "thumbs", "outside", "priority")]
        return Kept(*arrays, names=tuple(n for p in parts for n in p.names))


@dataclass(frozen=True)
class Cluster:
    size: int
    mean_map: np.ndarray  # (size, size) float32, mean 1 (`spray.downsample`'s scale)
    exemplars: tuple[str, ...]  # image names, nearest the centre first
    exemplar_indices: tuple[int, ...]
    exemplar_thumbs: np.ndarray = field(repr=False)  # (e, THUMB, THUMB, 3) uint8
    exemplar_maps: np.ndarray = field(repr=False)  # (e, size, size) float32
    accuracy: float | None = None  # over its images with ground truth
    outside: float | None = None  # mean share of mass outside the object, over its images with a box or mask
    pearson: float | None = None  # r of its mean map with the mean map of the rest of its class
    flags: tuple[str, ...] = ()  # "outside", "unlike"


@dataclass(frozen=True)
class ClassSpray:
    cls: int
    label: str
    images: int  # of this class in the build
    analysed: int  # after the `max_per_class` cap
    eigenvalues: np.ndarray  # (m,) the Laplacian's smallest, ascending
    chosen: bool  # the cluster count came from the eigengap
    labels: np.ndarray = field(repr=False)  # (analysed,) cluster per image, 0 = largest
    indices: np.ndarray = field(repr=False)  # (analysed,) image index among all images
    clusters: tuple[Cluster, ...] = ()


@dataclass(frozen=True)
class InsightResult:
    config: InsightConfig
    method: str
    layer: str
    seed: int
    kept: Kept = field(repr=False)  # batches: their images; reduced: every class's sample (a later reduce joins them)
    seen: dict[int, int] = field(default_factory=dict)  # class -> images in the build (before the cap)
    labels: dict[int, str] = field(default_factory=dict)  # class -> display label
    classes: tuple[ClassSpray, ...] = ()  # reduced: the analysed classes, by class index
    skipped: dict[int, int] = field(default_factory=dict)  # class -> images, for classes below `min_images`
    missing: int = 0  # images without a map for their class (not a target of the cam stage; `by: truth` unlabelled)
    notes: tuple[str, ...] = ()
    # the concepts and the feature space (`insight_parts`): per batch their raw parts, reduced what was found
    activations: parts.Activations | None = field(default=None, repr=False)
    features: parts.Features | None = field(default=None, repr=False)
    concept_layer: str = ""
    feature_layer: str | None = None
    num_classes: int = 0
    concepts: parts.ConceptsFound | None = None
    feature_space: parts.FeatureSpace | None = None
    reduced: bool = False  # `reduce` made it (SpRAy run): reduced alone again, it is the same


# ---------------------------------------------------------------------------- checks


def resolve_method(cam_methods: tuple[str, ...], method: str | None) -> str:
    """The CAM method clustered: `method` (any spelling of a configured one), or the first configured."""
    from ..methods import canonical

    if method is None:
        return cam_methods[0]
    name = canonical(method, "cam")
    if name is None or name not in cam_methods:
        raise ReportgenError(f"`analyses.insight.method`: `{method}` is not one of the configured CAM methods "
                             f"(`analyses.cam.methods`: {', '.join(cam_methods)}); name one of them, or add it there.")
    return name


def check(info: ModelInfo, cfg: InsightConfig) -> None:
    """The extra, the method, cluster counts that a class analysed could not have."""
    spray.require()
    cam = getattr(info.config.analyses, "cam", None)
    if cam is None:
        raise ReportgenError("`analyses.insight` clusters the maps of `analyses.cam`: add it to the config.")
    resolve_method(tuple(cam.methods), cfg.method)
    layers(info, cfg)  # a concept layer without spatial output, a feature layer the model does not have
    if cfg.projection == "umap":
        from ..metrics.feature_space import require_umap

        require_umap()
    if cfg.clusters is not None and cfg.clusters > min(cfg.min_images, cfg.max_per_class):
        key, value = ("min_images", cfg.min_images) if cfg.min_images <= cfg.max_per_class else \
            ("max_per_class", cfg.max_per_class)
        raise ReportgenError(f"`analyses.insight.clusters`: {cfg.clusters} clusters, but a class analysed may have "
                             f"only {value} images (`analyses.insight.{key}`), fewer than its clusters; raise "
                             f"`{key}` to at least {cfg.clusters}, or lower `clusters` (null: from the eigengap).")


def layers(info: ModelInfo, cfg: InsightConfig) -> tuple[str, str | None]:
    """(the concept layer, "" without concepts; the feature layer, None when the model has none)."""
    return (parts.concept_layer(info, cfg.concept_layer) if cfg.concepts else "",
            parts.feature_layer(info, cfg.features))


# ---------------------------------------------------------------------------- the stage


def _priority(seed: int, index: int) -> float:
    """A seeded number per image: the cap keeps each class's lowest, whatever the batching."""
    return float(np.random.default_rng([seed, index]).random())


def run(ctx: Context, cfg: InsightConfig) -> InsightResult:
    cam = ctx.results.get(CamResult)
    if cam is None:
        raise ReportgenError("no CAM maps reached `insight`: it must run in the same batches as the cam stage.")
    method = resolve_method(cam.methods, cfg.method)
    layer = cam.main_layer
    seed = cfg.seed if cfg.seed is not None else ctx.config.seed
    predicted = ctx.probabilities.argmax(1).cpu().numpy().astype(np.int64)
    h, w = ctx.batch.shape[-2:]
    rows, maps, missing = [], [], 0
    for p, image in enumerate(ctx.images):
        c = int(predicted[p]) if cfg.by == "predicted" else image.label
        values = None if c is None else cam.maps.get((method, layer, p, c))
        if values is None:
            missing += 1
            continue
        rows.append((p, c))
        maps.append(values)
    n = len(rows)
    if n:
        stack = np.stack(maps).astype(np.float32)
        masks = [object_mask(ctx.images[p].mask, ctx.images[p].box, (h, w)) for p, _ in rows]
        outside = np.full(n, np.nan, np.float32)
        boxed = [j for j, m in enumerate(masks) if m is not None]
        if boxed:
            outside[boxed] = spray.outside_share(stack[boxed], np.stack([masks[j] for j in boxed]))
        thumbs = np.stack([np.clip(spray.area(ctx.images[p].display.transpose(2, 0, 1)[:3], THUMB), 0, 255)
                           .round().astype(np.uint8).transpose(1, 2, 0) for p, _ in rows])
        small = spray.downsample(stack, cfg.size).astype(np.float16)
    else:
        outside, thumbs = np.zeros(0, np.float32), np.zeros((0, THUMB, THUMB, 3), np.uint8)
        small = np.zeros((0, cfg.size * cfg.size), np.float16)
    positions = [p for p, _ in rows]
    indices = np.array([ctx.offset + p for p in positions], dtype=np.int64)
    truth = np.array([-1 if ctx.images[p].label is None else ctx.images[p].label for p in positions], np.int64)
    priority = np.array([_priority(seed, ctx.offset + p) for p in range(len(ctx.images))])  # every image's, once
    kept = Kept(classes=np.array([c for _, c in rows], np.int64), indices=indices, truth=truth,
                predicted=predicted[positions], maps=small, thumbs=thumbs, outside=outside,
                priority=priority[positions], names=tuple(ctx.images[p].name for p in positions))
    seen: dict[int, int] = {}
    for _, c in rows:
        seen[c] = seen.get(c, 0) + 1
    # resolved once for the build (`prepare`); a context made by hand (a test calling `run`) resolves them here
    concept_layer, feature_layer = ctx.prepared.get("insight") or layers(ctx.info, cfg)
    found = parts.outputs(ctx, [name for name in (concept_layer, feature_layer) if name])
    acts = parts.batch_activations(ctx, found[concept_layer], predicted, priority, cfg.concept_sample) \
        if concept_layer in found else None
    features = parts.batch_features(ctx, feature_layer, found[feature_layer], predicted) \
        if feature_layer in found else None
    return InsightResult(config=cfg, method=method, layer=layer, seed=seed, kept=kept, seen=seen,
                         labels={c: ctx.label(c) for c in seen}, missing=missing, activations=acts, features=features,
                         concept_layer=concept_layer, feature_layer=feature_layer, num_classes=ctx.info.num_classes)


def reduce(results: list[InsightResult]) -> InsightResult:
    """Every batch's images joined, each class capped at `max_per_class` (lowest priority), SpRAy per class. One
    result already reduced (the one process's reduction, reduced again across processes) is the answer as it is."""
    if len(results) == 1 and results[0].reduced:
        return results[0]
    first = results[0]
    cfg = first.config
    kept = Kept.join([r.kept for r in results], cfg.size)
    seen: dict[int, int] = {}
    labels: dict[int, str] = {}
    for r in results:
        labels.update(r.labels)
        for c, count in r.seen.items():
            seen[c] = seen.get(c, 0) + count
    capped, classes, skipped = [], [], {}
    for c in sorted(seen):
        rows = np.flatnonzero(kept.classes == c)
        rows = rows[np.lexsort((kept.indices[rows], kept.priority[rows]))][:cfg.max_per_class]
        rows = np.sort(rows)
        capped.append(kept.take(rows))
        if seen[c] < cfg.min_images:
            skipped[c] = seen[c]
            continue
        classes.append(_analyse(cfg, first.seed, c, labels.get(c, f"class {c}"), seen[c], kept.take(rows)))
    missing = sum(r.missing for r in results)
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    if missing and not any("had no map" in n for n in notes):
        why = "no ground truth or no map of their true class" if cfg.by == "truth" else "no map of their predicted class"
        notes.append(f"{missing} images had no map for SpRAy ({why} among the class activation maps).")
    acts = parts.Activations.join([r.activations for r in results])
    features = parts.Features.join([r.features for r in results])
    return InsightResult(config=cfg, method=first.method, layer=first.layer, seed=first.seed,
                         kept=Kept.join(capped, cfg.size), seen=seen, labels=labels, classes=tuple(classes),
                         skipped=skipped, missing=missing, notes=tuple(notes), activations=acts, features=features,
                         concept_layer=first.concept_layer, feature_layer=first.feature_layer,
                         num_classes=first.num_classes,
                         concepts=parts.find_concepts(acts, first.concept_layer, cfg, first.num_classes, first.seed),
                         feature_space=parts.find_feature_space(features, first.feature_layer, cfg, first.seed),
                         reduced=True)


def _analyse(cfg: InsightConfig, seed: int, c: int, label: str, images: int, kept: Kept) -> ClassSpray:
    x = kept.maps.astype(np.float32)
    found = spray.spray(x, k=cfg.k, clusters=cfg.clusters, eigen=cfg.eigenvalues, seed=seed)
    clusters = []
    for j in range(found.clusters):
        inside = found.labels == j
        members = np.flatnonzero(inside)
        mean = x[inside].mean(0)
        near = members[np.argsort(found.distance[members], kind="stable")][:cfg.exemplars]
        labelled = kept.truth[inside] >= 0
        accuracy = float((kept.truth[inside] == kept.predicted[inside])[labelled].mean()) if labelled.any() else None
        shares = kept.outside[inside]
        outside = float(np.nanmean(shares)) if np.isfinite(shares).any() else None
        pearson = spray.pearson(mean, x[~inside].mean(0)) if (~inside).any() else None
        flags = tuple(name for name, on in (("outside", outside is not None and outside > OUTSIDE),
                                            ("unlike", pearson is not None and pearson < UNLIKE)) if on)
        clusters.append(Cluster(
            size=int(inside.sum()), mean_map=mean.reshape(cfg.size, cfg.size), exemplars=tuple(kept.names[i] for i in near),
            exemplar_indices=tuple(int(kept.indices[i]) for i in near), exemplar_thumbs=kept.thumbs[near],
            exemplar_maps=x[near].reshape(-1, cfg.size, cfg.size), accuracy=accuracy, outside=outside,
            pearson=pearson, flags=flags))
    return ClassSpray(cls=c, label=label, images=images, analysed=len(x), eigenvalues=found.eigenvalues,
                      chosen=found.chosen, labels=found.labels, indices=kept.indices, clusters=tuple(clusters))


# ---------------------------------------------------------------------------- outputs


def _num(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits) + 0.0  # no -0.0


def to_json(result: InsightResult) -> dict:
    cfg = result.config
    return {
        "method": result.method, "layer": result.layer, "by": cfg.by, "size": cfg.size, "k": cfg.k,
        "max_per_class": cfg.max_per_class, "seed": result.seed,
        "classes": [{
            "class": s.cls, "label": s.label, "images": s.images, "analysed": s.analysed,
            "eigenvalues": [_num(v) for v in s.eigenvalues], "clusters": len(s.clusters), "from_eigengap": s.chosen,
            "groups": [{"cluster": j, "size": g.size, "accuracy": _num(g.accuracy), "outside": _num(g.outside),
                        "pearson": _num(g.pearson), "flags": list(g.flags), "exemplars": list(g.exemplars)}
                       for j, g in enumerate(s.clusters)]} for s in result.classes],
        "skipped": {result.labels.get(c, f"class {c}"): n for c, n in result.skipped.items()},
        "notes": list(result.notes),
        "concepts": None if (k := result.concepts) is None else {
            "layer": k.layer, "concepts": int(k.heat_maps.shape[1]), "fitted": k.fitted, "sample": len(k.heat_maps),
            "iterations": k.iterations, "images": list(k.activations.names),
            "shares": {result.labels.get(c, f"class {c}"): [_num(v) for v in row]
                       for c, row in enumerate(k.shares) if np.isfinite(row).any()},
            "leans_on": {result.labels.get(c, f"class {c}"): int(j) for c, j in enumerate(k.sole) if j >= 0}},
        "feature_space": None if (f := result.feature_space) is None else {
            "layer": f.layer, "projection": f.projection, "images": len(f.xy),
            "mistakes": [{"image": f.features.names[i], "nearest_correct": [
                {"image": f.features.names[j], "distance": _num(d)} for j, d in near]} for i, near in f.neighbours]},
    }


def totals(result: InsightResult) -> dict[str, np.ndarray]:
    """Per analysed class c: `insight/<c>/eigenvalues` (m,), `insight/<c>/images` (n,) image indices,
    `insight/<c>/clusters` (n,) their clusters, `insight/<c>/mean_maps` (clusters, size, size); the concepts'
    `insight/concepts/heat_maps` (m, K, h, w) of the sample `insight/concepts/images`; the feature space's
    `insight/feature_space/xy` (n, 2) of `insight/feature_space/images`."""
    out = {}
    for s in result.classes:
        out[f"insight/{s.cls}/eigenvalues"] = s.eigenvalues.astype(np.float32)
        out[f"insight/{s.cls}/images"] = s.indices.astype(np.float32)
        out[f"insight/{s.cls}/clusters"] = s.labels.astype(np.float32)
        out[f"insight/{s.cls}/mean_maps"] = np.stack([g.mean_map for g in s.clusters]).astype(np.float32)
    if result.concepts is not None:  # the concepts (K, C) and the sample's maps (m, K, h, w)
        out["insight/concepts/heat_maps"] = result.concepts.heat_maps.astype(np.float32)
        out["insight/concepts/images"] = result.concepts.activations.indices.astype(np.float32)
    if result.feature_space is not None:  # each image's 2-D point, in image order
        out["insight/feature_space/xy"] = result.feature_space.xy.astype(np.float32)
        out["insight/feature_space/images"] = result.feature_space.features.indices.astype(np.float32)
    return out


def headline(result: InsightResult) -> dict[str, float]:
    """`classes` analysed and `flagged_clusters` (either flag)."""
    return {"classes": float(len(result.classes)),
            "flagged_clusters": float(sum(1 for s in result.classes for g in s.clusters if g.flags))}


SPEC = Stage(
    name="insight", title="What the model learned across the data set", order=85, options=InsightConfig, run=run,
    check=check, reduce=reduce, totals=totals, to_json=to_json, metrics=headline, requires=("cam",),
    prepare=layers, observes=lambda info, cfg: [name for name in layers(info, cfg) if name],
)
