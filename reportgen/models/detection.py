"""A detector's output, read the same way whatever the model: `Detections`, one per image.

Two formats are read (`adapter.pick_detections` picks the format and says what else a model returned):

- torchvision's: a list of {"boxes": (n, 4) x0 y0 x1 y1, "labels": (n,), "scores": (n,)} per image, boxes in the
  pixels of the image as given to the model (its transform resizes inside and maps the boxes back), already
  thresholded (`box_score_thresh` / `score_thresh`), suppressed and sorted by score. A `module` factory may return
  the same format.
- Hugging Face's DETR and YOLOS (`...ObjectDetectionOutput`): `logits` (N, Q, K + 1), the last class "no object",
  and `pred_boxes` (N, Q, 4) normalised (cx, cy, w, h); read as their image processors'
  `post_process_object_detection` reads them: a softmax over the classes, the no-object class dropped, each query's
  best class and its probability, boxes to corners scaled to the target (H, W), queries kept in their order.
  RT-DETR's (`RTDetrObjectDetectionOutput`, `SIGMOID_OUTPUTS`) has no "no object" class: as its processor does, a
  sigmoid per class and the Q best (query, class) pairs, best first.

Inputs: torchvision's detectors take unnormalised 0-1 images (their transform normalises with its own
`image_mean`/`image_std`, resizes by `min_size`/`max_size` (SSD: to a fixed size) and pads to `size_divisible`, 32), so
`inputs.preprocess.normalize` must be off for them (`takes_unnormalised`); reportgen resizes every image to
`model.input_size`, gives the batch (N, C, H, W) as `list(batch)`, and the boxes come back in the input's pixels.
The model's own resizing is kept (it is part of the model as trained): images of any size are resized by reportgen
to `input_size` first, so a batch is one tensor, and the model's transform may resize them again. A layer's map then
covers the transformed image, padded on the right and bottom to a multiple of `size_divisible`: its top-left `internal_size(model,
(H, W))` is the image, to be cropped and resized to (H, W) to lie over the input. With `kwargs: {min_size: min(H,
W), max_size: max(H, W)}` the model's resize is the identity. Hugging Face's DETR and YOLOS take `pixel_values`
normalised as their processors do (ImageNet's mean and std: `inputs.preprocess: from_weights` with the folder's
preprocessor_config.json, or `normalize`), of any size; their boxes are scaled to the input's (H, W).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ReportgenError

TORCHVISION_KEYS = ("boxes", "labels", "scores")
TORCHVISION_DETECTION = "torchvision.models.detection"  # the module of torchvision's detector classes
# the outputs whose queries are scored by a sigmoid per class, the best Q (query, class) pairs kept (RT-DETR's
# `post_process_object_detection` with its default `use_focal_loss=True`); any other: DETR's softmax
SIGMOID_OUTPUTS = ("RTDetrObjectDetectionOutput",)


@dataclass(frozen=True, eq=False)
class Detections:
    """One image's detections: `boxes` (n, 4) float x0 y0 x1 y1 in the input image's pixels (normalised to 0-1
    when read without a size from a model that predicts normalised boxes), `scores` (n,) float, `labels` (n,)
    int64 class indices of the model's (torchvision's COCO models: the 91 category ids)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def keep(self, which: torch.Tensor) -> Detections:
        """The detections that `which` (a boolean mask or indices) selects."""
        return Detections(self.boxes[which], self.scores[which], self.labels[which])

    def above(self, threshold: float | None) -> Detections:
        """Those scoring more than `threshold` (strictly, as torchvision and the image processors keep them);
        None: all."""
        return self if threshold is None else self.keep(self.scores > threshold)

    def top(self, k: int | None = None) -> Detections:
        """Sorted by score, highest first (ties in their order), the first `k` (None: all)."""
        order = torch.sort(self.scores, descending=True, stable=True).indices
        return self.keep(order if k is None else order[:k])

    def drawn(self, score_threshold: float, most: int) -> Detections:
        """Those a report draws and explains: scoring at least `score_threshold` (`detection.score_threshold`),
        the best `most` (`detection.max_boxes`), best first."""
        return self.keep(self.scores >= score_threshold).top(most)

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """torchvision's format: {"boxes", "labels", "scores"}."""
        return {"boxes": self.boxes, "labels": self.labels, "scores": self.scores}


def best_scores(found: Sequence[Detections], num_classes: int) -> torch.Tensor:
    """(N, K) on the CPU: each image's best box score per class (0 where it has no box of that class; labels
    beyond K left out). What a detector's first pass keeps of an image in place of a classifier's logits."""
    rows = torch.zeros(len(found), num_classes)
    for row, d in zip(rows, found):
        inside = d.labels < num_classes
        row.scatter_reduce_(0, d.labels[inside].cpu(), d.scores[inside].detach().float().cpu(), "amax")
    return rows


def is_torchvision_format(out: object) -> bool:
    """Whether `out` is a list (or tuple) of dicts with "boxes": torchvision's detectors' output."""
    return isinstance(out, (list, tuple)) and bool(out) and all(isinstance(o, Mapping) and "boxes" in o for o in out)


def is_query_format(out: object) -> bool:
    """Whether `out` has `logits` (N, Q, K) and `pred_boxes` (N, Q, 4): Hugging Face's DETR-style output."""
    logits, boxes = field_of(out, "logits"), field_of(out, "pred_boxes")
    return (torch.is_tensor(logits) and torch.is_tensor(boxes) and logits.dim() == 3 and boxes.dim() == 3
            and boxes.shape[-1] == 4 and logits.shape[:2] == boxes.shape[:2])


def field_of(out: object, name: str) -> object:
    """`out[name]` of a mapping (a `ModelOutput` too), else the attribute `out.name`, or None."""
    return out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)


def from_torchvision(out: Sequence[Mapping], threshold: float | None = None) -> list[Detections]:
    """torchvision's list of {"boxes", "labels", "scores"} as Detections, those scoring more than `threshold`
    (None: all it returned); an error naming the image and key that is missing or of the wrong shape."""
    detections = []
    for i, image in enumerate(out):
        missing = [key for key in TORCHVISION_KEYS if not torch.is_tensor(image.get(key))]
        if missing:
            raise ReportgenError(f"the model's detections for image {i} have no tensor "
                                 f"{' or '.join(f'`{k}`' for k in missing)}: a detector returns, per image, a dict with "
                                 "`boxes` (n, 4), `labels` (n,) and `scores` (n,), as torchvision's detectors do.")
        boxes, labels, scores = (image[key] for key in TORCHVISION_KEYS)
        n = boxes.shape[0] if boxes.dim() == 2 else -1
        if n < 0 or boxes.shape[1] != 4 or labels.shape != (n,) or scores.shape != (n,):
            raise ReportgenError(f"the model's detections for image {i} have `boxes` {list(boxes.shape)}, `labels` "
                                 f"{list(labels.shape)}, `scores` {list(scores.shape)}; expected (n, 4), (n,), (n,) "
                                 "with boxes as x0, y0, x1, y1.")
        detections.append(Detections(boxes.float(), scores.float(), labels.long()).above(threshold))
    return detections


def from_queries(logits: torch.Tensor, pred_boxes: torch.Tensor, size: tuple[int, int] | None = None,
                 threshold: float | None = None, sigmoid: bool = False) -> list[Detections]:
    """DETR's and YOLOS's `logits` (N, Q, K + 1) and `pred_boxes` (N, Q, 4) as their image processors'
    `post_process_object_detection(outputs, threshold, target_sizes=[size] * N)` reads them: softmax over the
    classes, the last ("no object") dropped, each query's best class; (cx, cy, w, h) to corners, times (W, H, W, H)
    of `size` (None: left normalised). Queries scoring more than `threshold` are kept (None: every query).
    `sigmoid` (RT-DETR's `logits` (N, Q, K)): a sigmoid per class, the Q best (query, class) pairs of each image,
    best first, as RT-DETR's processor reads them."""
    cx, cy, w, h = pred_boxes.unbind(-1)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    if size is not None:
        height, width = (float(s) for s in size)
        boxes = boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    if sigmoid:
        queries, classes = logits.shape[1:]
        scores, index = torch.topk(torch.sigmoid(logits).flatten(1), queries, dim=-1)
        labels = index % classes
        boxes = boxes.gather(1, (index // classes).unsqueeze(-1).expand(-1, -1, 4))
    else:
        scores, labels = torch.softmax(logits, -1)[..., :-1].max(-1)
    return [Detections(*image).above(threshold) for image in zip(boxes, scores, labels)]


def takes_unnormalised(model: nn.Module) -> bool:
    """Whether the model is one of torchvision's detectors, which normalise their 0-1 input themselves."""
    return any(cls.__module__.startswith(TORCHVISION_DETECTION) for cls in type(model).__mro__)


def takes_list(model: nn.Module) -> bool:
    """Whether the model takes its batch as a list of (C, H, W) images (torchvision's detectors)."""
    return takes_unnormalised(model)


def internal_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int] | None:
    """The (H, W) a torchvision detector's transform resizes an input of `size` to before its backbone (before
    padding to a multiple of `size_divisible`), as `GeneralizedRCNNTransform` computes it; None for another model.
    Equal to `size`: the model does not resize reportgen's images."""
    transform = getattr(model, "transform", None)
    if not takes_unnormalised(model) or transform is None or not hasattr(transform, "max_size"):
        return None
    fixed = getattr(transform, "fixed_size", None)
    if fixed is not None:  # SSD: (width, height) as torchvision stores it
        return int(fixed[1]), int(fixed[0])
    h, w = size
    scale = min(float(transform.min_size[-1]) / min(h, w), float(transform.max_size) / max(h, w))
    # F.interpolate with recompute_scale_factor: floor(side * scale)
    return int(h * scale), int(w * scale)


def num_classes(model: nn.Module) -> int | None:
    """The number of classes a detector scores, background included where it has one (torchvision's `num_classes`:
    its label indices are 0..K-1; Hugging Face's `config.num_labels`, "no object" not counted), or None when the
    model does not say (a factory's own detector): what a labels list must hold, as a classifier's logits' K."""
    roi_heads = getattr(model, "roi_heads", None)
    predictor = getattr(roi_heads, "box_predictor", None)
    if hasattr(predictor, "cls_score"):
        return int(predictor.cls_score.out_features)  # Faster R-CNN
    if isinstance(getattr(getattr(predictor, "bbox_pred", None), "out_features", None), int):
        return int(predictor.bbox_pred.out_features) // 4  # a Faster R-CNN predictor of its own: 4 deltas a class
    head = getattr(getattr(model, "head", None), "classification_head", None)
    for name in ("num_classes", "num_columns"):  # RetinaNet and FCOS; SSD's scoring head
        if isinstance(getattr(head, name, None), int):
            return int(getattr(head, name))
    labels = getattr(getattr(model, "config", None), "num_labels", None)
    return int(labels) if isinstance(labels, int) else None
