"""A detector's boxes explained: one score per target box (pytorch-grad-cam 1.5.7's `FasterRCNNBoxScoreTarget`),
Eigen-CAM and Ablation-CAM on the feature pyramid (its `fasterrcnn_reshape_transform`), and D-RISE.

**Box scores.** Every CAM and gradient method scores one column per image of (N, K) scores. `BoxScores` makes such
scores of a torchvision-format detector (x -> list of dicts with `boxes`, `labels`, `scores`): column j of row b is
target box j of the image row b derives from, scored over row b's detections as `FasterRCNNBoxScoreTarget([label],
[box])` does: the detection of highest IoU with the box (the first on ties) counts when its IoU > `iou_threshold`
(strictly) and its label is the box's, for IoU + its score; else 0. The methods then run unchanged with class sets
`[[j] * N for j in range(J)]` (`box_ranks`): the engine's ONE forward gives every box's score, and one backward
per rank j gives the gradient maps of box j of every image, where pytorch-grad-cam needs a call (a forward and a
backward) per box. An image with fewer than J target boxes scores its missing columns a constant 0; `empty` says
which, and `dispatch.explain` zeroes their maps, as it does a segmenter's empty regions.

Gradient CAMs need a tensor layer (the last block of `backbone.body`; RetinaNet's `layer4`): the feature pyramid
returns a dict, which pytorch-grad-cam's gradient hooks do not reach, and neither does the engine.

**The feature pyramid** (`fpn_cams`): the module returning the levels (default `backbone`: torchvision's
`BackboneWithFPN`, and SSDlite's feature extractor, return an ordered dict of levels) is read as
`fasterrcnn_reshape_transform` reads it: every level's absolute value, resized (bilinear) to the size of the `pool`
level and concatenated along the channels. RetinaNet and FCOS (levels `0`, `1`, `2`, `p6`, `p7`) and SSDlite (six
levels of different widths) have no `pool` level: we take the size of their coarsest level that is at least 4 × 4
(the finest when none is), about what `pool` is on Faster R-CNN (1/64 of the input), and use all the levels they
have. Ablation-CAM sets one channel of one level to -1000 everywhere (pytorch-grad-cam's
`AblationLayerFasterRCNN`, for levels of any width), the module returning the ablated levels instead of running.

**D-RISE** (`drise`, Petsiuk et al., CVPR 2021): black-box, forward only. N random masks (`drise_masks`: RISE's
masks, a grid of cells kept with probability p, upsampled bilinearly and shifted by a random fraction of a cell);
each masked image's detections d_j = (box L_j, class probabilities P_j, objectness O_j) are compared with the
target d_t = (box, one-hot of its label): s(d_t, d_j) = IoU(L_t, L_j) · cos(P_t, P_j) · O_j; a mask weighs
w = max_j s(d_t, d_j) (0 without detections) and the saliency of the target is Σ_i w_i M_i.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from ..hooks import capture_outputs
from ..ops import batches
from .cam import NotApplicable, project_2d, scale_cams

Detector = Callable[[torch.Tensor], Sequence[Mapping[str, torch.Tensor]]]  # torchvision's format, eval mode
ABLATED = -1000.0  # AblationLayerFasterRCNN's value of an ablated channel
EIGEN, ABLATION = "eigencam", "ablationcam"


class BoxScores:
    """A detector's forward as (B, J) box scores: `f(x, owner=None)` (see the module).

    `boxes[i]` (J_i, 4) x0, y0, x1, y1 and `labels[i]` (J_i,): the target boxes of the batch's image i. `owner` (B,):
    the image each row of `x` derives from (`engine.for_rows`); None: the rows are the batch's images in order."""

    score_kind = "a detector's box score"  # what the scores are (CAM says it does not apply to them)

    def __init__(self, detector: Detector, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], *,
                 iou_threshold: float = 0.5, owner: torch.Tensor | None = None, picked: tuple | None = None):
        if len(boxes) != len(labels):
            raise ValueError(f"BoxScores: {len(boxes)} images' boxes but {len(labels)} images' labels")
        self.detector = detector
        self.boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        self.labels = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in labels]
        for i, (b, c) in enumerate(zip(self.boxes, self.labels)):
            if len(b) != len(c):
                raise ValueError(f"BoxScores: image {i} has {len(b)} boxes but {len(c)} labels")
        self.width = max([len(b) for b in self.boxes], default=0) or 1  # J: at least one column
        self.iou_threshold = iou_threshold
        self.owner = owner
        self.picked = picked  # (score_threshold, max_boxes) when the targets are the detector's own boxes

    @classmethod
    def of_detections(cls, detector: Detector, batch: torch.Tensor, *, score_threshold: float = 0.0,
                      max_boxes: int = 5, iou_threshold: float = 0.5) -> BoxScores:
        """Scores of each image's own detections (score ≥ `score_threshold`, the `max_boxes` best), from one
        forward without autograd."""
        with torch.no_grad():
            out = detector(batch)
        boxes, labels = [], []
        for det in out:
            keep = torch.nonzero(det["scores"] >= score_threshold).view(-1)
            keep = keep[det["scores"][keep].argsort(descending=True, stable=True)][:max_boxes]
            boxes.append(det["boxes"][keep].detach().float().cpu())
            labels.append(det["labels"][keep].cpu())
        return cls(detector, boxes, labels, iou_threshold=iou_threshold, picked=(score_threshold, max_boxes))

    def __call__(self, x: torch.Tensor, owner: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        owner = self._owner(owner)
        out = self.detector(x)
        rows = len(self.boxes) if owner is None else len(owner)
        if len(out) != rows:
            said = (f"{rows} rows were said to derive from images {owner.tolist()[:8]}" if owner is not None else
                    f"its target boxes are of {rows} images and no owner says which image each row derives from "
                    "(`engine.for_rows`)")
            raise ValueError(f"BoxScores: the detector returned {len(out)} rows but {said}")
        images = range(rows) if owner is None else owner.tolist()
        return torch.stack([self._row(det, self.boxes[i], self.labels[i]) for det, i in zip(out, images)])

    def _row(self, det: Mapping[str, torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(J,) FasterRCNNBoxScoreTarget([label_j], [box_j]) of one row's detections, 0-padded to J."""
        scores = det["scores"]
        zero = scores.float().sum() * 0  # keeps the row in the graph when nothing matches
        if len(boxes) == 0 or len(det["boxes"]) == 0:
            return zero.expand(self.width).clone()
        ious = box_iou(boxes.to(det["boxes"]), det["boxes"])  # (J_i, M)
        best = ious.argmax(dim=1)  # the first of the highest, as `ious.argmax()`
        iou = ious.gather(1, best[:, None])[:, 0]
        hit = (iou > self.iou_threshold) & (det["labels"][best] == labels.to(det["labels"].device))
        value = torch.where(hit, iou + scores[best], torch.zeros_like(iou)).float()
        return torch.cat([value + zero, zero.expand(self.width - len(value))])

    def for_rows(self, owner: torch.Tensor | Sequence[int]) -> BoxScores:
        """This forward for rows derived from images `owner` (of the rows this one is bound to, if any)."""
        return BoxScores(self.detector, self.boxes, self.labels, iou_threshold=self.iou_threshold,
                         owner=self._owner(owner), picked=self.picked)

    def for_batch(self, batch: torch.Tensor) -> BoxScores:
        """The same scores on another batch (a streamed build's next one): its own detections."""
        if self.picked is None:
            raise ValueError("BoxScores: boxes given for one batch cannot serve another; make the next batch's "
                             "BoxScores with its own boxes")
        return BoxScores.of_detections(self.detector, batch, score_threshold=self.picked[0],
                                       max_boxes=self.picked[1], iou_threshold=self.iou_threshold)

    def ranks(self) -> list[tuple[int, ...]]:
        """The class sets of the methods: rank j targets box j of every image."""
        return [(j,) * len(self.boxes) for j in range(self.width)]

    def empty(self, class_sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """(R, N) bool: image i has no target box class_sets[r][i] (its score is the constant 0)."""
        if self.owner is not None:
            raise ValueError("BoxScores.empty: ask the batch's forward, not one bound to derived rows")
        counts = torch.as_tensor([len(b) for b in self.boxes])
        return torch.as_tensor([list(c) for c in class_sets], dtype=torch.long) >= counts

    def _owner(self, owner: torch.Tensor | Sequence[int] | None) -> torch.Tensor | None:
        if owner is None:
            return self.owner
        owner = torch.as_tensor(owner, dtype=torch.long).view(-1)
        return owner if self.owner is None else self.owner[owner.to(self.owner.device)]


# ---------------------------------------------------------------------------- the feature pyramid


def size_level(levels: Mapping[str, torch.Tensor]) -> str:
    """The level whose size the reshaped pyramid takes: `pool` when there is one (pytorch-grad-cam), else the
    coarsest level at least 4 × 4 (the finest when none is)."""
    if "pool" in levels:
        return "pool"
    names = list(levels)
    big = [name for name in names if min(levels[name].shape[-2:]) >= 4]
    return min(big or names[:1], key=lambda name: levels[name].shape[-2] * levels[name].shape[-1])


def fpn_reshape(levels: Mapping[str, torch.Tensor], level: str | None = None) -> torch.Tensor:
    """`fasterrcnn_reshape_transform`: |every level| resized (bilinear) to the size of `level` (default
    `size_level`), concatenated along the channels: (N, ΣC, h, w)."""
    size = levels[level or size_level(levels)].shape[-2:]
    return torch.cat([F.interpolate(v.abs(), size, mode="bilinear") for v in levels.values()], dim=1)


def fpn_levels(model: nn.Module, batch: torch.Tensor, layer: str = "backbone") -> dict[str, torch.Tensor]:
    """The levels `layer` returns (an ordered dict of (N, C, h, w)) on `batch`, from one forward without autograd."""
    with torch.no_grad(), capture_outputs(model, [layer], detach=False) as outputs:
        model(batch)
    levels = outputs.get(layer)
    if not isinstance(levels, Mapping):
        raise ValueError(f"layer `{layer}` returns a {type(levels).__name__}, not the feature pyramid's dict of "
                         "levels")
    return {name: value.detach() for name, value in levels.items()}


@contextlib.contextmanager
def _replaced(model: nn.Module, layer: str, stand_in: nn.Module) -> Iterator[None]:
    """`model` with the module `layer` swapped for `stand_in` (put back on exit)."""
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    setattr(parent, child, stand_in)
    try:
        yield
    finally:
        setattr(parent, child, original)


class _Levels(nn.Module):
    """Returns the levels it holds, whatever its input (pytorch-grad-cam's ablation layer in the model)."""

    def __init__(self):
        super().__init__()
        self.levels: dict[str, torch.Tensor] = {}

    def forward(self, _x):
        return self.levels


def fpn_ablation_weights(scores: BoxScores, model: nn.Module, batch: torch.Tensor, levels: Mapping[str, torch.Tensor],
                         per_image: Sequence[Sequence[int]], *, layer: str = "backbone",
                         batch_size: int = 32) -> torch.Tensor:
    """(N, k, ΣC) Ablation-CAM weights (original − ablated) / original of every channel of every level, per image and
    target column `per_image[i]`: one forward per `batch_size` ablated channels, shared by all of an image's
    boxes; the module `layer` returns the ablated levels (the model before it does not run)."""
    widths = [v.shape[1] for v in levels.values()]
    starts = torch.tensor([0, *widths]).cumsum(0).tolist()
    names = list(levels)
    stand_in = _Levels()
    weights = []
    with torch.no_grad():
        original = scores(batch).float()  # (N, J)
        with _replaced(model, layer, stand_in):
            for i in range(batch.shape[0]):
                index = torch.as_tensor(per_image[i], device=original.device)
                ablated = []
                for part in batches(starts[-1], batch_size):
                    b = part.stop - part.start
                    stand_in.levels = {name: v[i:i + 1].repeat(b, 1, 1, 1) for name, v in levels.items()}
                    for row, channel in enumerate(range(part.start, part.stop)):
                        level = max(n for n, s in enumerate(starts[:-1]) if s <= channel)
                        stand_in.levels[names[level]][row, channel - starts[level]] = ABLATED
                    out = scores.for_rows([i] * b)(batch[i:i + 1].expand(b, -1, -1, -1)).float()
                    ablated.append(out[:, index])  # (b, k)
                before = original[i, index]  # (k,)
                weights.append((before[:, None] - torch.cat(ablated).T) / before[:, None])
    return torch.stack(weights)


def fpn_cams(methods: Sequence[str], scores: BoxScores, model: nn.Module, batch: torch.Tensor,
             class_sets: Sequence[Sequence[int]] | None = None, *, layer: str = "backbone", level: str | None = None,
             batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Eigen-CAM and Ablation-CAM on the pyramid `layer` returns (see the module): method -> (k, N, H, W) maps in
    [0, 1] at the batch's size, post-processed as pytorch-grad-cam does one layer's. `class_sets` (k, N): the target
    column per rank and image (default `scores.ranks()`); an image's missing target box gets a zero map."""
    unknown = set(methods) - {EIGEN, ABLATION}
    if unknown:
        raise ValueError(f"fpn_cams: {sorted(unknown)} not on the feature pyramid; it takes {EIGEN}, {ABLATION}")
    class_sets = [tuple(c) for c in (class_sets or scores.ranks())]
    levels = fpn_levels(model, batch, layer)
    a = fpn_reshape(levels, level).float()  # (N, ΣC, h, w)
    raw = {}
    if EIGEN in methods:
        raw[EIGEN] = project_2d(a).expand(len(class_sets), -1, -1, -1)
    if ABLATION in methods:
        per_image = [tuple(c[i] for c in class_sets) for i in range(batch.shape[0])]
        w = fpn_ablation_weights(scores, model, batch, levels, per_image, layer=layer, batch_size=batch_size)
        raw[ABLATION] = torch.einsum("nkc,nchw->knhw", w, a)
    empty = scores.empty(class_sets)  # (k, N)
    out = {}
    for method in methods:
        maps = scale_cams(scale_cams(raw[method].clamp_min(0), tuple(batch.shape[-2:])).clamp_min(0))
        maps[empty] = 0
        out[method] = maps
    return out


# ---------------------------------------------------------------------------- D-RISE


def drise_masks(n: int, size: tuple[int, int], cell: int, p: float, seed: int = 0,
                rows: slice | None = None) -> torch.Tensor:
    """(n, H, W) RISE's masks: per mask a ceil(H/cell) × ceil(W/cell) grid of cells kept with probability `p`,
    upsampled bilinearly (align_corners=False) to one cell more each way and cropped at a random offset in
    [0, cell) each way. Seeded: the same arguments give the same masks. `rows`: only those masks, the same as
    `drise_masks(n, ...)[rows]` (every draw is made; only those masks are upsampled, so many masks need not
    be held at once)."""
    h, w = size
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(n, 1, gh, gw, generator=generator) < p).float()
    shifts = torch.randint(0, cell, (n, 2), generator=generator)
    if rows is not None:
        grid, shifts = grid[rows], shifts[rows]
    up = F.interpolate(grid, size=((gh + 1) * cell, (gw + 1) * cell), mode="bilinear", align_corners=False)[:, 0]
    return torch.stack([m[dy:dy + h, dx:dx + w] for m, (dy, dx) in zip(up, shifts.tolist())])


def detection_similarity(boxes: torch.Tensor, labels: torch.Tensor, det: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(J,) max over the detections of IoU(target box, box) · cos(one-hot(label), probs) · objectness: D-RISE's
    weight of one masked image for each target. `det`: `boxes` (M, 4), `probs` (M, K), `objectness` (M,) optional."""
    if len(det["boxes"]) == 0:
        return torch.zeros(len(boxes))
    probs = det["probs"].float()
    iou = box_iou(boxes.float(), det["boxes"].float())  # (J, M)
    cos = probs[:, labels].T / probs.norm(dim=1).clamp_min(1e-12)  # (J, M): the one-hot has norm 1
    s = iou * cos
    if "objectness" in det:
        s = s * det["objectness"].float()
    return s.max(dim=1).values


def drise(detect: Callable[[torch.Tensor], Sequence[Mapping[str, torch.Tensor]]], image: torch.Tensor,
          boxes: torch.Tensor, labels: torch.Tensor, *, masks: int = 1000, cell: int = 16, p: float = 0.5,
          seed: int = 0, batch: int = 32) -> torch.Tensor:
    """(J, H, W) D-RISE saliency Σ_i w_i M_i of each target box (see the module) for `image` (C, H, W).

    `detect`: images (b, C, H, W) -> per image a dict with `boxes` (M, 4), `probs` (M, K) class probabilities and,
    optionally, `objectness` (M,) (`torchvision_detect` makes one of a torchvision detector). Forward only, in
    batches of `batch` masked images; seeded by `seed`."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    all_masks = drise_masks(masks, tuple(image.shape[-2:]), cell, p, seed).to(image.device)
    saliency = torch.zeros(len(boxes), *image.shape[-2:], device=image.device)
    with torch.no_grad():
        for rows in batches(masks, batch):
            m = all_masks[rows]
            found = detect(image[None] * m[:, None])
            w = torch.stack([detection_similarity(boxes, labels, det).to(image.device) for det in found])  # (b, J)
            saliency += torch.einsum("bj,bhw->jhw", w, m)
    return saliency


def torchvision_detect(detector: Detector, num_classes: int) -> Callable:
    """A torchvision-format detector as D-RISE's `detect`: its postprocessed detections keep only the winning class
    and its score, so `probs` is the label's one-hot and `objectness` the score (the similarity is then
    IoU · [same label] · score)."""
    def detect(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": d["boxes"], "probs": F.one_hot(d["labels"], num_classes).float(), "objectness": d["scores"]}
                for d in detector(images)]

    return detect


DRISE_BATCH = 16  # masked images per detector forward


def _one_hot_detect(detector: Detector, least: int) -> Callable:
    """`torchvision_detect` with as many classes as the labels need, at least `least` (the targets'): cos(one-hot,
    one-hot) is [same label] for any count, and the count of a model's classes is not always known."""
    def detect(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        found = detector(images)
        k = 1 + max([int(d["labels"].max()) for d in found if len(d["labels"])], default=least - 1)
        k = max(k, least)
        return torchvision_detect(lambda _x: found, k)(images)

    return detect


def drise_boxes(scores: BoxScores, batch: torch.Tensor, class_sets: Sequence[Sequence[int]] | None = None, *,
                masks: int = 500, cells: int = 8, p: float = 0.5, seed: int = 0,
                batch_size: int = DRISE_BATCH) -> torch.Tensor:
    """(k, N, H, W) raw D-RISE saliency (`drise`) of target box `class_sets[r][i]` of image i (default
    `scores.ranks()`; a missing box: zeros), from `scores.detector`: per image `masks` masked forwards shared by all
    its boxes, masks of `cells` cells along the longer side (the same masks for every image: seeded by `seed`)."""
    class_sets = [tuple(c) for c in (class_sets or scores.ranks())]
    n, (h, w) = batch.shape[0], batch.shape[-2:]
    cell = math.ceil(max(h, w) / cells)
    detect = _one_hot_detect(scores.detector, 1 + max([int(c.max()) for c in scores.labels if len(c)], default=0))
    out = torch.zeros(len(class_sets), n, h, w, device=batch.device)
    for i in range(n):
        if len(scores.boxes[i]) == 0:
            continue
        saliency = drise(detect, batch[i], scores.boxes[i], scores.labels[i], masks=masks, cell=cell, p=p, seed=seed,
                         batch=batch_size)  # (J_i, H, W)
        for r, classes in enumerate(class_sets):
            if classes[i] < len(saliency):
                out[r, i] = saliency[classes[i]]
    return out


def drise_cam(job) -> torch.Tensor:
    """D-RISE as a CAM method's function (`methods.cam.CamJob` -> (k, N, H, W)), with its default options: for a
    detector's box scores only (it reads no layer)."""
    if not isinstance(job.forward, BoxScores):
        raise NotApplicable("D-RISE explains a detector's boxes (`model.task: detection`); it has no target box "
                            "here.")
    return drise_boxes(job.forward, job.batch, job.class_sets)
