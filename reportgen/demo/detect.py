"""A small Faster R-CNN trained on the shape scenes of `reportgen.demo.segment`.

The detection sibling of `reportgen.demo.segment`: a genuinely trained detector, so a report's
per-box maps can be judged against known boxes (`example_configs/detection/`).

Data: the scenes of `segment.generate_scenes` (64x64, 2 to 4 shapes of different classes).
`scene_boxes` turns each visible shape into a box `x0, y0, x1, y1` in pixels, the tight box of its
visible mask pixels with x1, y1 exclusive (`mask[y0:y1, x0:x1]` holds all of them): as continuous
coordinates, pixel i spans [i, i + 1), so these are also torchvision's float box edges. Labels
are the mask values 1..5 (torchvision's convention, 0 = background; `LABELS`).

Model: `build_model()` is torchvision's `FasterRCNN` around `TinyBackbone`: `body`, four conv-BN-ReLU blocks
(`block1`, `block2` end in 2x2 max-pooling) to 64 channels at stride 4 (16x16 for a 64x64 image), no FPN, and
`classes`, a 1x1 conv + ReLU to one evidence map per class (5). The RPN (9 anchors per position, 12 to 32 px,
three aspect ratios) and the box head (RoIAlign 5x5, one sample a bin; two 128-wide layers) read the `body`
channels; the class logit of a box is its class's mean evidence in the RoI, scaled, and the background logit
comes from the box head (`BoxPredictor`). `min_size=64, max_size=128`: 64x64 images are not resized.

Recommended CAM target layer: ``backbone.classes`` (`CAM_LAYER`), a tensor (5x16x16 for a 64x64 image). It
reaches a box's score only through the box's class logit, uniformly over the RoI, so Grad-CAM's channel weights
single out the box's class and its map lights that shape (a scene has one shape a class); on `body.block4`,
read by a box head that mixes positions, a box's Grad-CAM pointed into its box less than half the time.

Model input: unnormalised RGB images as float in [0, 1], (N, 3, H, W) or a list of (3, H, W);
the model normalises with `shapes.MEAN` / `shapes.STD` itself (`image_mean` / `image_std`).

Regenerate the shipped artefacts with::

    python -m reportgen.demo.detect train --out example_configs/detection
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from reportgen.demo.pointing import BoxMaps, hits, in_boxes
from reportgen.demo.segment import LABELS, NUM_CLASSES, Scenes, generate_scenes
from reportgen.demo.shapes import MEAN, STD, _block

CAM_LAYER = "backbone.classes"
SIZE = 64  # the training and sample image size
SAMPLE_SEED = 2026  # the shipped samples (training uses 1000*seed + epoch, validation 1000*seed + 999)
POOLED = 5  # RoIAlign output: shapes span 3.5 to 8.5 cells of the stride-4 map
SCORE_THRESHOLD = 0.5  # detections kept for the pointing game


# ---------------------------------------------------------------- data


def scene_boxes(scenes: Scenes) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per scene: boxes (K, 4) int64 `x0, y0, x1, y1` (x1, y1 exclusive), the tight box of each
    visible shape's mask pixels in drawing order, and their labels (K,) int64 in 1..5."""
    out = []
    for mask, drawn in zip(scenes.masks, scenes.drawn):
        labels = np.array([v for v in drawn if v], dtype=np.int64)
        boxes = np.zeros((len(labels), 4), dtype=np.int64)
        for k, v in enumerate(labels):
            ys, xs = np.nonzero(mask == v)  # classes are distinct within a scene: the value is the shape
            boxes[k] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        out.append((boxes, labels))
    return out


def to_tensors(images: np.ndarray) -> torch.Tensor:
    """Images (N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1], unnormalised (the model normalises)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


# ---------------------------------------------------------------- model


class TinyBackbone(nn.Module):
    """Four conv-BN-ReLU blocks to a 64-channel map at stride 4 (`body`), then `classes`, a 1x1 conv and ReLU to
    one evidence map per object class (label k + 1 is channel k): the logits of a per-pixel classifier whose
    background logit is fixed at 0, trained by the per-pixel class loss, so a map is positive where its class is
    likelier than the background. Returns both, concatenated: `out_channels` = 64 + num_classes - 1."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(
            block1=_block(3, 16, pool=True),  # 1/2
            block2=_block(16, 32, pool=True),  # 1/4
            block3=_block(32, 64, pool=False),
            block4=_block(64, 64, pool=False),
        ))
        self.classes = nn.Sequential(nn.Conv2d(64, num_classes - 1, kernel_size=1), nn.ReLU())  # the CAM layer
        self.out_channels = 64 + num_classes - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return torch.cat([features, self.classes(features)], dim=1)


class BodyRPNHead(RPNHead):
    """torchvision's RPN head on the 64 `body` channels only: the class evidence reaches nothing but the class logits."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return super().forward([level[:, :64] for level in x])


class BoxHead(nn.Module):
    """torchvision's `TwoMLPHead` on the RoI's 64 `body` channels, and each class's mean evidence over the RoI:
    (hidden (R, 128), evidence (R, num_classes - 1)) for `BoxPredictor`."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.fc6 = nn.Linear(64 * POOLED**2, hidden)
        self.fc7 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.fc7(F.relu(self.fc6(x[:, :64].flatten(1)))))
        return hidden, x[:, 64:].mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """The background logit from the hidden features (is the box well placed?); the logit of class k + 1 is
    `scale[k]` times class k's mean evidence in the RoI plus `bias[k]` (which shape it holds, as CAM's global
    average pooling does); box deltas from the hidden features. The `classes` layer reaches a box's score only
    through the evidence, uniformly over the RoI, so Grad-CAM's channel weights there single out the box's class."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.background = nn.Linear(hidden, 1)
        self.scale = nn.Parameter(torch.ones(num_classes - 1))
        self.bias = nn.Parameter(torch.zeros(num_classes - 1))
        self.bbox_pred = nn.Linear(hidden, num_classes * 4)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, evidence = x
        return torch.cat([self.background(hidden), self.scale * evidence + self.bias], dim=1), self.bbox_pred(hidden)


def build_model(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A randomly initialised Faster R-CNN with `TinyBackbone` (load `example_configs/detection/model.pt`)."""
    backbone = TinyBackbone(num_classes)
    anchors = AnchorGenerator(sizes=((12, 20, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=POOLED, sampling_ratio=1)  # RoIAlign dominated the step
    return FasterRCNN(
        backbone,
        min_size=SIZE, max_size=2 * SIZE, image_mean=MEAN, image_std=STD,
        rpn_anchor_generator=anchors, rpn_head=BodyRPNHead(64, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_roi_pool=roi_pool,
        box_head=BoxHead(128),
        box_predictor=BoxPredictor(128, num_classes),
        box_batch_size_per_image=32,
    )


def load_model(checkpoint: str | Path, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The detector with the weights of a saved state_dict, in eval mode."""
    model = build_model(num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def detect(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> list[dict[str, np.ndarray]]:
    """torchvision's detections per image (`boxes` (K, 4) float, `scores`, `labels`) as numpy."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out += [{k: v.numpy() for k, v in d.items()} for d in model(to_tensors(images[i:i + batch_size]))]
    return out


def coco_dict(truth: list[tuple[np.ndarray, np.ndarray]], file_names: Sequence[str] | None = None,
              size: int = SIZE) -> dict:
    """A COCO instances dict of the true boxes: image ids 1..N, category ids 1..5, `bbox` [x, y, w, h],
    `area` = w * h (the box's: a JSONL manifest, which has no areas, gives the same size ranges)."""
    names = file_names or [f"scene_{i:03d}.png" for i in range(len(truth))]
    images = [{"id": i + 1, "file_name": n, "width": size, "height": size} for i, n in enumerate(names)]
    annotations = []
    for i, (boxes, labels) in enumerate(truth):
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": c, "name": LABELS[c]} for c in range(1, len(LABELS))]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_ap(truth: list[tuple[np.ndarray, np.ndarray]], detections: list[dict[str, np.ndarray]]) -> np.ndarray:
    """pycocotools COCOeval (bbox) `stats`: AP@[.5:.95], AP50, AP75, AP S/M/L, AR@1/10/100, AR S/M/L."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [{"image_id": i + 1, "category_id": int(label), "score": float(score),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
               for i, d in enumerate(detections)
               for (x0, y0, x1, y1), score, label in zip(d["boxes"], d["scores"], d["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        gt = COCO()
        gt.dataset = coco_dict(truth)
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results) if results else COCO(), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.asarray(evaluation.stats)


def true_positives(truth: tuple[np.ndarray, np.ndarray], found: dict[str, np.ndarray],
                   score_threshold: float = SCORE_THRESHOLD, iou: float = 0.5) -> list[tuple[int, int]]:
    """(detection index, true box index) pairs: detections with score >= `score_threshold`, in
    score order, each matched to the unmatched true box of its class with the highest IoU >= `iou`."""
    boxes, labels = truth
    keep = np.nonzero(found["scores"] >= score_threshold)[0]
    if len(keep) == 0 or len(boxes) == 0:
        return []
    ious = box_iou(torch.as_tensor(found["boxes"][keep]), torch.as_tensor(boxes, dtype=torch.float32)).numpy()
    pairs, used = [], set()
    for row, d in enumerate(keep):  # torchvision returns detections sorted by score
        candidates = [(ious[row, t], t) for t in range(len(boxes))
                      if t not in used and labels[t] == found["labels"][d] and ious[row, t] >= iou]
        if candidates:
            t = max(candidates)[1]
            used.add(t)
            pairs.append((int(d), t))
    return pairs


PGC_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "ablationcam")
DRISE_MASKS, DRISE_CELL = 1000, 8  # D-RISE: masks per image and cell size (px) of their 8x8 grid at 64x64


def box_maps(model: nn.Module, scenes: Scenes, method: str = "gradcam", layer: str = CAM_LAYER,
             score_threshold: float = SCORE_THRESHOLD, chunk: int = 32, *, masks: int = DRISE_MASKS,
             cell: int = DRISE_CELL) -> BoxMaps:
    """The map of `method` for each true-positive detection (`true_positives`) of `scenes`.

    `PGC_METHODS`: pytorch-grad-cam's, on `layer`, with the target `FasterRCNNBoxScoreTarget(labels=[label],
    bounding_boxes=[box])` of the detection, as pgc's Faster R-CNN tutorial does; each box's map comes from its
    own copy of the image in a batch of `chunk` (eval mode: the detector sees each image alone). AblationCAM
    uses pgc's default `AblationLayer` (a ReLU layer: an ablated channel is set to 0). `drise`: ours
    (`reportgen.methods.boxes.drise` of `torchvision_detect`), `masks` masks of `cell`-pixel cells per image,
    all of an image's boxes at once, min-max scaled to [0, 1] per box."""
    model.eval()
    found = detect(model, scenes.images)
    jobs = [(i, int(d["labels"][det]), d["boxes"][det], true)
            for i, (t, d) in enumerate(zip(scene_boxes(scenes), found)) for det, true in true_positives(t, d, score_threshold)]
    size = scenes.images.shape[1:3]
    maps = np.zeros((len(jobs), *size), dtype=np.float32)
    if method == "drise":
        _drise_maps(model, scenes, jobs, maps, masks, cell)
    else:
        _pgc_maps(model, scenes, jobs, maps, method, layer, chunk)
    return BoxMaps(image=np.array([j[0] for j in jobs], dtype=np.int64), label=np.array([j[1] for j in jobs], dtype=np.int64),
                   box=np.array([j[2] for j in jobs], dtype=np.float32).reshape(-1, 4),
                   truth=np.array([j[3] for j in jobs], dtype=np.int64), maps=maps)


def _pgc_maps(model: nn.Module, scenes: Scenes, jobs: list, maps: np.ndarray, method: str, layer: str, chunk: int) -> None:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    cams = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
            "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "eigencam": pgc.EigenCAM, "ablationcam": pgc.AblationCAM}
    with cams[method](model=model, target_layers=[model.get_submodule(layer)]) as cam, \
            contextlib.redirect_stderr(io.StringIO()):  # AblationCAM's progress bars
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            targets = [FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box]) for _, label, box, _ in part]
            maps[start:start + len(part)] = cam(input_tensor=to_tensors(scenes.images[[j[0] for j in part]]), targets=targets)


def _drise_maps(model: nn.Module, scenes: Scenes, jobs: list, maps: np.ndarray, masks: int, cell: int) -> None:
    from reportgen.methods.boxes import drise, torchvision_detect

    detector = torchvision_detect(model, len(LABELS))
    rows = np.array([j[0] for j in jobs], dtype=np.int64)
    for i in np.unique(rows):
        mine = np.nonzero(rows == i)[0]
        saliency = drise(detector, to_tensors(scenes.images[i:i + 1])[0], torch.as_tensor(np.stack([jobs[j][2] for j in mine])),
                         torch.as_tensor([jobs[j][1] for j in mine]), masks=masks, cell=cell).numpy()
        low = saliency.min(axis=(1, 2), keepdims=True)
        maps[mine] = (saliency - low) / np.maximum(saliency.max(axis=(1, 2), keepdims=True) - low, 1e-12)


def pointing_game(model: nn.Module, scenes: Scenes, method: str = "gradcam", layer: str = CAM_LAYER,
                  score_threshold: float = SCORE_THRESHOLD, **kwargs) -> np.ndarray:
    """Per true-positive detection of `scenes`: 1.0 where the maximum of its map (`box_maps`, which takes
    `kwargs`) lies inside its true box, else 0.0."""
    return hits(box_maps(model, scenes, method, layer, score_threshold, **kwargs), scene_boxes(scenes))[0]


def print_pointing(model: nn.Module, scenes: Scenes, methods: Sequence[str], masks: int = DRISE_MASKS) -> None:
    """Print each method's pointing game on `scenes`, its control and its time; for eigencam also the game of its
    map renormalised in each detected box (`in_boxes`) and of a map that is only the detected box's centre."""
    truth = scene_boxes(scenes)
    for method in methods:
        start = time.perf_counter()
        found = box_maps(model, scenes, method, masks=masks)
        own, other = hits(found, truth)
        where = f"{masks} masks of {DRISE_CELL} px cells" if method == "drise" else CAM_LAYER
        print(f"pointing game, {method} ({where}): {own.mean():.4f} over {len(own)} true-positive boxes (score >= "
              f"{SCORE_THRESHOLD}) of {len(scenes)} scenes; into another shape's box {other.mean():.4f}; "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        if method == "eigencam":  # one map per image: the README says what renormalising in the box proves
            centre = np.zeros_like(found.maps)
            for j, (x0, y0, x1, y1) in enumerate(found.box):
                centre[j, int((y0 + y1) / 2), int((x0 + x1) / 2)] = 1.0
            renormalised = hits(dataclasses.replace(found, maps=in_boxes(found.maps, found.box)), truth)[0]
            print(f"  eigencam renormalised in each detected box: {renormalised.mean():.4f}; a map that is only the "
                  f"detected box's centre: {hits(dataclasses.replace(found, maps=centre), truth)[0].mean():.4f}")


# ---------------------------------------------------------------- training


def _targets(truth: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.as_tensor(b, dtype=torch.float32), "labels": torch.as_tensor(lab)} for b, lab in truth]


def train(
    out_dir: str | Path,
    *,
    epochs: int = 16,
    train_size: int = 1600,
    val_size: int = 300,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    num_samples: int = 12,
) -> dict[str, float]:
    """Train the detector on fresh scenes every epoch and write to `out_dir`: `model.pt`
    (state_dict), `labels.txt`, the samples (`write_samples`), `train_log.csv` (per step) and
    `metrics.csv` (per epoch, with pycocotools' validation AP). Deterministic for a given `seed`.
    Returns the final epoch's metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    torch.manual_seed(seed)  # also drives the RPN's and box head's sampling of anchors and proposals
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = build_model()
        # the per-pixel class loss on the logits of `classes` (cross-entropy against the scene's class mask at
        # stride 4) makes its maps class evidence: see BoxPredictor
        logits: dict[str, torch.Tensor] = {}
        model.backbone.classes[0].register_forward_hook(lambda m, i, o: logits.__setitem__("classes", o))
        steps_per_epoch = math.ceil(train_size / batch_size)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
        )
        val = generate_scenes(val_size, seed=1000 * seed + 999, size=SIZE)
        val_truth = scene_boxes(val)
        generator = torch.Generator().manual_seed(seed)
        start, cpu_start, step, metrics = time.perf_counter(), time.process_time(), 0, {}
        parts = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_segment"]
        with open(out / "train_log.csv", "w", newline="") as f_step, open(out / "metrics.csv", "w", newline="") as f_ep:
            step_log, epoch_log = csv.writer(f_step), csv.writer(f_ep)
            step_log.writerow(["epoch", "step", "lr", "loss", *parts])
            epoch_log.writerow(["epoch", "step", "train_loss", "val_ap", "val_ap50", "val_ap75", "val_ar100",
                                "epoch_s", "elapsed_s", "cpu_s"])
            for epoch in range(epochs):
                epoch_start = time.perf_counter()
                data = generate_scenes(train_size, seed=1000 * seed + epoch, size=SIZE)
                truth = scene_boxes(data)
                order = torch.randperm(train_size, generator=generator).numpy()
                model.train()
                loss_sum = 0.0
                for b in range(steps_per_epoch):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    losses = model(list(to_tensors(data.images[idx])), _targets([truth[i] for i in idx]))
                    stride = SIZE // logits["classes"].shape[-1]  # the mask's pixel at each cell's centre
                    cells = torch.from_numpy(data.masks[idx][:, stride // 2::stride, stride // 2::stride]).long()
                    background = torch.zeros_like(logits["classes"][:, :1])  # the fixed background logit
                    losses["loss_segment"] = F.cross_entropy(torch.cat([background, logits["classes"]], 1), cells)
                    loss = sum(losses[p] for p in parts)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    step_lr = schedule.get_last_lr()[0]
                    schedule.step()
                    step += 1
                    loss_sum += loss.item() * len(idx)
                    step_log.writerow([epoch, step, f"{step_lr:.6g}", f"{loss.item():.6f}",
                                       *(f"{losses[p].item():.6f}" for p in parts)])
                stats = coco_ap(val_truth, detect(model, val.images))
                metrics = {
                    "epoch": epoch, "step": step, "train_loss": loss_sum / train_size,
                    "val_ap": stats[0], "val_ap50": stats[1], "val_ap75": stats[2], "val_ar100": stats[8],
                    "epoch_s": time.perf_counter() - epoch_start,  # wall clock, with data generation and validation
                    "elapsed_s": time.perf_counter() - start,
                    "cpu_s": time.process_time() - cpu_start,  # CPU time of all threads of this process
                }
                epoch_log.writerow([epoch, step, *(f"{metrics[k]:.6f}" for k in list(metrics)[2:7]),
                                    *(f"{metrics[k]:.1f}" for k in ("epoch_s", "elapsed_s", "cpu_s"))])
                f_ep.flush()
                print(f"epoch {epoch}: loss {metrics['train_loss']:.4f}, val AP {metrics['val_ap']:.4f}, "
                      f"AP50 {metrics['val_ap50']:.4f}, {metrics['epoch_s']:.0f} s", flush=True)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in LABELS))
    write_samples(out, generate_scenes(num_samples, seed=SAMPLE_SEED, size=SIZE))
    return metrics


def write_samples(folder: str | Path, scenes: Scenes, prefix: str = "scene") -> list[str]:
    """Save `scenes` under `folder`: `images/<prefix>_<i>.png`, their boxes as COCO `instances.json`
    (file names relative to `images/`) and as `boxes.jsonl` (paths relative to `folder`, label names).
    Returns the file names."""
    from PIL import Image

    root = Path(folder)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):
        old.unlink()
    names = [f"{prefix}_{i:03d}.png" for i in range(len(scenes))]
    truth = scene_boxes(scenes)
    for name, image in zip(names, scenes.images):
        Image.fromarray(image).save(images / name, optimize=True)
    (root / "instances.json").write_text(json.dumps(coco_dict(truth, names, scenes.images.shape[1]), indent=1) + "\n")
    rows = [json.dumps({"path": f"images/{name}", "boxes": boxes.tolist(), "labels": [LABELS[v] for v in labels]})
            for name, (boxes, labels) in zip(names, truth)]
    (root / "boxes.jsonl").write_text("".join(f"{row}\n" for row in rows))
    return names


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    """`train --out DIR` regenerates the artefacts; `eval --checkpoint FILE` scores a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m reportgen.demo.detect", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_train = commands.add_parser("train", help="train the model and write the shipped artefacts")
    p_train.add_argument("--out", required=True, help="output folder, e.g. example_configs/detection")
    p_train.add_argument("--epochs", type=int, default=16)
    p_train.add_argument("--train-size", type=int, default=1600, help="fresh scenes per epoch")
    p_train.add_argument("--val-size", type=int, default=300)
    p_train.add_argument("--seed", type=int, default=0)
    p_eval = commands.add_parser("eval", help="COCO AP and the pointing game of a checkpoint on fresh scenes")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument("--n", type=int, default=300, help="scenes for COCO AP")
    p_eval.add_argument("--seed", type=int, default=12345)
    p_eval.add_argument("--cam-n", type=int, default=100, help="the first scenes of those for the pointing game")
    p_eval.add_argument("--methods", default="gradcam,gradcampp,layercam,hirescam,ablationcam,drise,eigencam",
                        help="pytorch-grad-cam's methods and drise")
    p_eval.add_argument("--masks", type=int, default=DRISE_MASKS, help="D-RISE masks per image")
    args = parser.parse_args(argv)
    if args.command == "train":
        metrics = train(args.out, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size, seed=args.seed)
        print(f"val AP {metrics['val_ap']:.4f}, AP50 {metrics['val_ap50']:.4f} after {metrics['elapsed_s']:.1f} s "
              f"({metrics['cpu_s']:.1f} s CPU); wrote {args.out}")
        return
    torch.set_num_threads(2)
    model, scenes = load_model(args.checkpoint), generate_scenes(args.n, seed=args.seed, size=SIZE)
    stats = coco_ap(scene_boxes(scenes), detect(model, scenes.images))
    print(f"AP {stats[0]:.4f}  AP50 {stats[1]:.4f}  AP75 {stats[2]:.4f}  AR@100 {stats[8]:.4f}  on {args.n} scenes, "
          f"seed {args.seed}")
    print_pointing(model, generate_scenes(args.cam_n, seed=args.seed, size=SIZE), args.methods.split(","), args.masks)


if __name__ == "__main__":
    main()
