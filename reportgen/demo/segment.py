"""Synthetic shape scenes and a small segmentation network trained on them.

The segmentation sibling of `reportgen.demo.shapes`: a genuinely trained segmenter, so a report's
per-class maps can be judged against known truth (`example_configs/segmentation/`).

Data: `generate_scenes(n, seed)` draws RGB images (64x64 by default), each with 2 to 4 filled
shapes of different classes (`shapes.CLASSES`, drawn with shapes.py's helpers) on a noisy
background as in shapes.py, and a class mask per image: 0 = background, 1..5 = circle, square,
triangle, cross, star (`LABELS`). Shapes are drawn in turn and a later shape covers an earlier
one; the mask holds what is visible. Every shape keeps at least `MIN_VISIBLE` of its own pixels.
Shape colours are `shapes.MIN_COLOUR_DISTANCE` away from the background and `SHAPE_COLOUR_DISTANCE`
from each other.

Model: `build_model()` is a small U-Net of conv-BN-ReLU blocks: `enc1` (full resolution),
`enc2` (1/2), `enc3` (1/4), `bottleneck` (1/8), then bilinear upsampling with skip connections
through `dec3` (1/4) and `dec2` (1/2), and `head`, a 1x1 conv to the class logits, which are
upsampled bilinearly to the input size: a plain tensor (N, 6, H, W).

Recommended CAM target layer: ``dec2`` (16 channels, 32x32 for a 64x64 input), the last block
before the head: there pytorch-grad-cam's Grad-CAM with `SemanticSegmentationTarget` puts about
0.86 of each class's map inside the class's true region (`cam_energy`); at `dec3` and the 1/8
`bottleneck` only about 0.6, at the encoder blocks 0.2 to 0.3.

Model input: as shapes.py, the image as float in [0, 1], (N, 3, H, W), normalised per channel
with `shapes.MEAN` / `shapes.STD` (`to_input`).

Regenerate the shipped artefacts with::

    python -m reportgen.demo.segment train --out example_configs/segmentation
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.demo.shapes import CLASSES, MIN_COLOUR_DISTANCE, NOISE_STD, RADIUS_SCALE, _block, _shape_mask, to_input

LABELS: tuple[str, ...] = ("background", *CLASSES)  # mask value i is LABELS[i]
NUM_CLASSES = len(LABELS)
CAM_LAYER = "dec2"
SHAPES_PER_SCENE = (2, 4)  # inclusive
SIZE_RANGE = (14.0, 28.0)  # shape extent in px at 64x64; scaled with the image size
MIN_VISIBLE = 0.5  # each shape keeps at least this fraction of its pixels uncovered
SHAPE_COLOUR_DISTANCE = 80.0  # Euclidean RGB distance between the colours of two shapes of a scene
PLACEMENT_TRIES = 30  # positions tried for a shape before it is left out of the scene
SAMPLE_SEED = 2025  # the shipped samples (training uses 1000*seed + epoch, validation 1000*seed + 999)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Scenes:
    """Generated scenes. `drawn[i]` lists image i's shapes in drawing order as mask values 1..5
    (0 pads), `areas[i]` their pixel counts before anything covered them."""

    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) uint8, 0 background, 1..5 = LABELS[1:]
    drawn: np.ndarray  # (N, SHAPES_PER_SCENE[1]) int64, mask values in drawing order, 0 pads
    areas: np.ndarray  # (N, SHAPES_PER_SCENE[1]) int64, full shape area in px, 0 pads

    def __len__(self) -> int:
        return len(self.images)


def _colour(rng: np.random.Generator, background: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """A random colour far enough from the background and from the other shapes' colours."""
    while True:
        colour = rng.integers(0, 256, size=3).astype(float)
        if np.linalg.norm(colour - background) >= MIN_COLOUR_DISTANCE and all(
            np.linalg.norm(colour - c) >= SHAPE_COLOUR_DISTANCE for c in others
        ):
            return colour


def generate_scenes(n: int, seed: int, size: int = 64) -> Scenes:
    """`n` scenes of `size` x `size`, deterministic for (`n`, `seed`, `size`); scene i does not
    depend on `n` (a longer batch extends a shorter one with the same seed)."""
    rng = np.random.default_rng(seed)
    most = SHAPES_PER_SCENE[1]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    drawn = np.zeros((n, most), dtype=np.int64)
    areas = np.zeros((n, most), dtype=np.int64)
    lo, hi = (s * size / 64 for s in SIZE_RANGE)
    for i in range(n):
        count = int(rng.integers(SHAPES_PER_SCENE[0], most + 1))
        labels = rng.permutation(len(CLASSES))[:count]  # distinct classes, index into CLASSES
        background = rng.integers(0, 256, size=3).astype(float)
        noise = np.clip(rng.normal(0, NOISE_STD, size=(size, size, 3)), -3 * NOISE_STD, 3 * NOISE_STD)
        image = np.clip(np.rint(background + noise), 0, 255)  # (H, W, 3) float
        mask = masks[i]
        colours: list[np.ndarray] = []
        for label in labels:
            radius = rng.uniform(lo, hi) / 2 * RADIUS_SCALE[label]
            angle = rng.uniform(0, 2 * np.pi)
            colour = _colour(rng, background, colours)
            for _ in range(PLACEMENT_TRIES):
                cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
                shape = _shape_mask(int(label), size, cx, cy, radius, angle)
                # would every shape drawn so far keep MIN_VISIBLE of its pixels?
                if all(((mask == v) & ~shape).sum() >= MIN_VISIBLE * a for v, a in zip(drawn[i], areas[i]) if v):
                    break
            else:
                continue  # no room: the scene has one shape fewer (none of 5000 scenes of seed 7 lost one)
            k = len(colours)
            drawn[i, k], areas[i, k] = label + 1, shape.sum()
            mask[shape], image[shape] = label + 1, colour
            colours.append(colour)
        images[i] = image.astype(np.uint8)
    return Scenes(images=images, masks=masks, drawn=drawn, areas=areas)


# ---------------------------------------------------------------- model


def _blocks(c_in: int, c_out: int, n: int = 1) -> nn.Sequential:
    """n conv-BN-ReLU blocks (shapes.py's, unpooled: the U-Net pools in forward to keep the skip)."""
    return nn.Sequential(*(_block(c_in if j == 0 else c_out, c_out, pool=False) for j in range(n)))


class SegmentNet(nn.Module):
    """A small U-Net: enc1..3 and bottleneck down to 1/8, dec3 and dec2 back up to 1/2 with skips,
    head (1x1 conv), logits upsampled bilinearly to the input size."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.enc1 = _blocks(3, 16)  # full resolution
        self.enc2 = _blocks(16, 32)  # 1/2
        self.enc3 = _blocks(32, 64)  # 1/4
        self.bottleneck = _blocks(64, 64, n=2)  # 1/8: the receptive field spans a whole shape
        self.dec3 = _blocks(64 + 64, 32)  # 1/4
        self.dec2 = _blocks(32 + 32, 16)  # 1/2
        self.head = nn.Conv2d(16, num_classes, kernel_size=1)  # 1/2; a full-resolution decoder block cost 2x the time

    @staticmethod
    def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x upsampled bilinearly to skip's size, then stacked with it on channels."""
        return torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) normalised -> logits (N, num_classes, H, W)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        b = self.bottleneck(F.max_pool2d(e3, 2))
        d3 = self.dec3(self._up(b, e3))
        d2 = self.dec2(self._up(d3, e2))
        return F.interpolate(self.head(d2), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A randomly initialised SegmentNet (load `example_configs/segmentation/model.pt` into it)."""
    return SegmentNet(num_classes=num_classes)


def load_model(checkpoint: str | Path, num_classes: int = NUM_CLASSES) -> nn.Module:
    """SegmentNet with the weights of a saved state_dict, in eval mode."""
    model = build_model(num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Predicted class masks (N, H, W) uint8 for images (N, H, W, 3) uint8."""
    model.eval()
    preds = [model(to_input(images[i:i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(preds).numpy().astype(np.uint8)


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix (K, K) int64, rows = truth, columns = prediction, of two class masks."""
    index = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(conf: np.ndarray) -> dict[str, float | list[float]]:
    """Per-class IoU (NaN for a class absent from both truth and prediction), mIoU over the
    others, and pixel accuracy, from a confusion matrix."""
    hits = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - hits
    iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
    return {"iou": iou.tolist(), "miou": float(np.nanmean(iou)), "pixel_accuracy": float(hits.sum() / conf.sum())}


def evaluate(model: nn.Module, scenes: Scenes) -> dict[str, float | list[float]]:
    """`scores` of the model's predictions on `scenes`."""
    return scores(confusion(predict(model, scenes.images), scenes.masks))


def cam_energy(model: nn.Module, scenes: Scenes, layer: str = CAM_LAYER) -> np.ndarray:
    """For each (scene, class present in its truth): the fraction of pytorch-grad-cam's Grad-CAM
    (`SemanticSegmentationTarget` on the model's predicted region of the class) that lies inside
    the class's true region; 0 where the class is predicted nowhere. Needs the `grad-cam` package."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    pred = predict(model, scenes.images)  # (N, H, W)
    pairs = [(i, c) for i in range(len(scenes)) for c in range(1, NUM_CLASSES) if (scenes.masks[i] == c).any()]
    energy = np.zeros(len(pairs))
    for start in range(0, len(pairs), 128):
        chunk = pairs[start:start + 128]
        targets = [SemanticSegmentationTarget(c, (pred[i] == c).astype(np.float32)) for i, c in chunk]
        with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
            maps = cam(input_tensor=to_input(scenes.images[[i for i, _ in chunk]]), targets=targets)  # (P, H, W)
        for k, (m, (i, c)) in enumerate(zip(maps, chunk)):
            energy[start + k] = m[scenes.masks[i] == c].sum() / m.sum() if m.sum() > 0 else 0.0
    return energy


# ---------------------------------------------------------------- training


def train(
    out_dir: str | Path,
    *,
    epochs: int = 16,
    train_size: int = 4000,
    val_size: int = 500,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    size: int = 64,
    num_samples: int = 12,
) -> dict[str, float]:
    """Train SegmentNet on fresh scenes every epoch and write to `out_dir`: `model.pt`
    (state_dict), `labels.txt`, the samples in VOC layout (`write_samples`), `train_log.csv`
    (per step) and `metrics.csv` (per epoch). Deterministic for a given `seed`. Returns the
    final epoch's metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = build_model()
        steps_per_epoch = math.ceil(train_size / batch_size)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
        )
        val = generate_scenes(val_size, seed=1000 * seed + 999, size=size)
        generator = torch.Generator().manual_seed(seed)
        start, cpu_start, step, metrics = time.perf_counter(), time.process_time(), 0, {}
        with open(out / "train_log.csv", "w", newline="") as f_step, open(out / "metrics.csv", "w", newline="") as f_ep:
            step_log, epoch_log = csv.writer(f_step), csv.writer(f_ep)
            step_log.writerow(["epoch", "step", "lr", "loss", "pixel_accuracy"])
            epoch_log.writerow(["epoch", "step", "train_loss", "train_pixel_accuracy", "val_loss", "val_pixel_accuracy",
                                "val_miou", "elapsed_s", "cpu_s"])
            for epoch in range(epochs):
                data = generate_scenes(train_size, seed=1000 * seed + epoch, size=size)
                order = torch.randperm(train_size, generator=generator).numpy()
                model.train()
                loss_sum, correct = 0.0, 0
                for b in range(steps_per_epoch):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    x, y = to_input(data.images[idx]), torch.from_numpy(data.masks[idx]).long()  # (B, 3, H, W), (B, H, W)
                    logits = model(x)  # (B, K, H, W)
                    loss = F.cross_entropy(logits, y)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    step_lr = schedule.get_last_lr()[0]
                    schedule.step()
                    step += 1
                    hits = int((logits.argmax(1) == y).sum())
                    loss_sum += loss.item() * len(idx)
                    correct += hits
                    step_log.writerow([epoch, step, f"{step_lr:.6g}", f"{loss.item():.6f}", f"{hits / y.numel():.4f}"])
                model.eval()
                with torch.no_grad():
                    val_logits = torch.cat([model(to_input(val.images[i:i + 250])) for i in range(0, val_size, 250)])
                val_scores = scores(confusion(val_logits.argmax(1).numpy(), val.masks))
                metrics = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": loss_sum / train_size,
                    "train_pixel_accuracy": correct / (train_size * size * size),
                    "val_loss": F.cross_entropy(val_logits, torch.from_numpy(val.masks).long()).item(),
                    "val_pixel_accuracy": val_scores["pixel_accuracy"],
                    "val_miou": val_scores["miou"],
                    "elapsed_s": time.perf_counter() - start,  # wall clock, includes data generation
                    "cpu_s": time.process_time() - cpu_start,  # CPU time of all threads of this process
                }
                epoch_log.writerow([epoch, step, *(f"{metrics[k]:.6f}" for k in list(metrics)[2:7]),
                                    f"{metrics['elapsed_s']:.1f}", f"{metrics['cpu_s']:.1f}"])
                f_ep.flush()
                print(f"epoch {epoch}: val mIoU {metrics['val_miou']:.4f}, pixel accuracy "
                      f"{metrics['val_pixel_accuracy']:.4f}, {metrics['elapsed_s']:.0f} s", flush=True)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in LABELS))
    write_samples(out, generate_scenes(num_samples, seed=SAMPLE_SEED, size=size))
    return metrics


def voc_palette() -> list[int]:
    """The Pascal VOC colour palette, 256 RGB triples flattened (index 255, "void", is (224, 224, 192))."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):  # VOC spreads the index's bits over the three channels, high bits first
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette.extend(rgb)
    return palette


def write_samples(folder: str | Path, scenes: Scenes, prefix: str = "scene") -> list[str]:
    """Save `scenes` in Pascal VOC layout under `folder`: `JPEGImages/<stem>.png` (PNG, lossless,
    despite the folder's name), `SegmentationClass/<stem>.png` (class indices, palette mode "P"
    with the VOC palette) and `ImageSets/Segmentation/val.txt` (the stems). Returns the stems."""
    from PIL import Image

    root = Path(folder)
    images, classes, sets = root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"
    for sub in (images, classes, sets):
        sub.mkdir(parents=True, exist_ok=True)
    for old in [*images.glob("*.png"), *classes.glob("*.png")]:
        old.unlink()
    stems = [f"{prefix}_{i:03d}" for i in range(len(scenes))]
    palette = voc_palette()
    for stem, image, mask in zip(stems, scenes.images, scenes.masks):
        Image.fromarray(image).save(images / f"{stem}.png", optimize=True)
        indexed = Image.fromarray(mask, mode="P")
        indexed.putpalette(palette)
        indexed.save(classes / f"{stem}.png", optimize=True)
    (sets / "val.txt").write_text("".join(f"{stem}\n" for stem in stems))
    return stems


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    """`train --out DIR` regenerates the artefacts; `eval --checkpoint FILE` scores a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m reportgen.demo.segment", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_train = commands.add_parser("train", help="train the model and write the shipped artefacts")
    p_train.add_argument("--out", required=True, help="output folder, e.g. example_configs/segmentation")
    p_train.add_argument("--epochs", type=int, default=16)
    p_train.add_argument("--train-size", type=int, default=4000, help="fresh scenes per epoch")
    p_train.add_argument("--val-size", type=int, default=500)
    p_train.add_argument("--seed", type=int, default=0)
    p_eval = commands.add_parser("eval", help="mIoU, pixel accuracy and Grad-CAM energy of a checkpoint on fresh scenes")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument("--n", type=int, default=500)
    p_eval.add_argument("--seed", type=int, default=12345)
    p_eval.add_argument("--layer", default=CAM_LAYER, help="CAM target layer for the energy")
    args = parser.parse_args(argv)
    if args.command == "train":
        metrics = train(args.out, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size, seed=args.seed)
        print(f"val mIoU {metrics['val_miou']:.4f}, pixel accuracy {metrics['val_pixel_accuracy']:.4f} after "
              f"{metrics['elapsed_s']:.1f} s ({metrics['cpu_s']:.1f} s CPU); wrote {args.out}")
    else:
        torch.set_num_threads(2)
        model, scenes = load_model(args.checkpoint), generate_scenes(args.n, seed=args.seed)
        result = evaluate(model, scenes)
        per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in zip(LABELS, result["iou"]))
        print(f"mIoU {result['miou']:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}  on {args.n} scenes, "
              f"seed {args.seed}; IoU: {per_class}")
        try:
            energy = cam_energy(model, scenes, args.layer)
        except ImportError:
            print("Grad-CAM energy: needs pytorch-grad-cam (pip install grad-cam)")
            return
        print(f"Grad-CAM ({args.layer}) energy inside the true region: mean {energy.mean():.4f} over "
              f"{len(energy)} (scene, class) instances, {np.mean(energy >= 0.5):.1%} of them >= 0.5")


if __name__ == "__main__":
    main()
