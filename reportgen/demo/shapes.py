"""Synthetic shapes data set and a small CAM-friendly CNN trained on it.

Pretrained ImageNet weights cannot be downloaded and a CAM of a random network is noise,
so reportgen ships this small, genuinely trained model (`example_configs/shapes/`).

Data: `generate(n, seed)` draws RGB images (64x64 by default), each with exactly one filled
shape (`CLASSES`: circle, square, triangle, cross, star) of random colour, size (about 14 to
34 px across at 64 px), rotation and position on a background of another random colour with
mild noise. The shape colour is at least `MIN_COLOUR_DISTANCE` away (Euclidean, RGB) from the
background colour. Shape pixels are exactly the shape colour; only the background is noisy.

Model: `build_model()` is four conv-BN-ReLU blocks `features.0` ... `features.3` (the first
three end in 2x2 max-pooling), then `pool` (AdaptiveAvgPool2d(1)) and one `fc` nn.Linear, so
the original CAM method applies. For a 64x64 input the last block outputs (N, 64, 8, 8).

Recommended CAM target layer: ``features.3``.

Model input: the image as float in [0, 1] (like torchvision's `to_tensor`), (N, 3, H, W),
normalised per channel with `MEAN` / `STD`.

Regenerate the shipped artefacts with::

    python -m reportgen.demo.shapes train --out example_configs/shapes
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
MEAN: list[float] = [0.5, 0.5, 0.5]
STD: list[float] = [0.25, 0.25, 0.25]
CAM_LAYER = "features.3"
MIN_COLOUR_DISTANCE = 100.0  # Euclidean distance in RGB (0..255) between shape and background
NOISE_STD = 8.0  # background noise, clipped to +-3 std
SIZE_RANGE = (14.0, 34.0)  # shape extent in px at 64x64; scaled with the image size
# circumradius per class as a multiple of half the drawn size, so all classes look about as big
RADIUS_SCALE = (1.0, 1.15, 1.2, 1.0, 1.05)
SAMPLE_SEED = 2024  # the shipped sample images (training uses 1000*seed + epoch, validation 1000*seed + 999)
WIDTHS = (16, 32, 64, 64)  # channels of features.0 ... features.3
POOLED = 3  # the first POOLED blocks end in 2x2 max-pooling: 64x64 input -> 64 / 2**POOLED CAM


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class ShapesBatch:
    """A generated batch. Boxes are `x0, y0, x1, y1` in pixels, inclusive-exclusive (the tight
    box of the mask: `mask[y0:y1, x0:x1]` holds every shape pixel)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64, index into CLASSES
    boxes: np.ndarray  # (N, 4) int64, x0, y0, x1, y1 (x1, y1 exclusive)
    masks: np.ndarray  # (N, H, W) bool, True on the shape
    marked: np.ndarray | None = None  # (N,) bool, the images that carry the watermark (with `watermark` only)

    def __len__(self) -> int:
        return len(self.labels)


def _unit_polygon(label: int) -> np.ndarray:
    """Vertices (K, 2) of the shape with circumradius 1 around the origin (not for circles)."""
    if label == 1:  # square
        angles = np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.ones(4)
    elif label == 2:  # triangle
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.ones(3)
    elif label == 3:  # cross (plus sign), arm half-width w
        w = 0.34
        return np.array([(-w, 1), (w, 1), (w, w), (1, w), (1, -w), (w, -w),
                         (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w)], dtype=float)
    elif label == 4:  # five-pointed star
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    else:
        raise ValueError(f"no polygon for class {label}")
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _polygon_mask(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of pixel centres px (1, w), py (h, 1) against verts (K, 2) -> (h, w)."""
    inside = np.zeros((py.shape[0], px.shape[1]), dtype=bool)
    for (xi, yi), (xj, yj) in zip(verts, np.roll(verts, 1, axis=0)):
        if yi == yj:
            continue
        crosses = (yi > py) != (yj > py)  # (h, 1)
        x_at = (xj - xi) * (py - yi) / (yj - yi) + xi  # (h, 1)
        inside ^= crosses & (px < x_at)
    return inside


def _shape_mask(label: int, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Mask (H, W) bool of one shape with circumradius `radius` centred at (cx, cy)."""
    mask = np.zeros((size, size), dtype=bool)
    x0, y0 = max(0, int(cx - radius) - 1), max(0, int(cy - radius) - 1)  # only test the shape's window
    x1, y1 = min(size, int(cx + radius) + 2), min(size, int(cy + radius) + 2)
    px = np.arange(x0, x1)[None, :] + 0.5  # (1, w) pixel centres
    py = np.arange(y0, y1)[:, None] + 0.5  # (h, 1)
    if label == 0:
        mask[y0:y1, x0:x1] = (px - cx) ** 2 + (py - cy) ** 2 <= radius**2
    else:
        c, s = math.cos(angle), math.sin(angle)
        verts = _unit_polygon(label) @ np.array([[c, s], [-s, c]]) * radius + (cx, cy)
        mask[y0:y1, x0:x1] = _polygon_mask(px, py, verts)
    return mask


@dataclass(frozen=True)
class Watermark:
    """A planted shortcut: a small black-and-white checkerboard in one corner of a `share` of the images of class
    `label` (`share` 1: all of them, so a model can learn the class from the mark alone). Which images carry it
    is drawn from its own generator (`seed`), so the shapes themselves are those of `generate` without it."""

    label: int = 0
    share: float = 1.0
    corner: str = "top-left"  # top-left | top-right | bottom-left | bottom-right
    side: float = 0.15  # the mark's side as a share of the image side (10 px at 64)
    seed: int = 0

    def box(self, size: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the mark in a `size` x `size` image, 1 px in from the corner."""
        side = max(2, round(self.side * size))
        x0 = 1 if "left" in self.corner else size - 1 - side
        y0 = 1 if "top" in self.corner else size - 1 - side
        return x0, y0, x0 + side, y0 + side

    def quadrant(self, size: int) -> tuple[slice, slice]:
        """(rows, columns) of the image quadrant that holds the mark."""
        half = size // 2
        rows = slice(0, half) if "top" in self.corner else slice(size - half, size)
        cols = slice(0, half) if "left" in self.corner else slice(size - half, size)
        return rows, cols


def _stamp(image: np.ndarray, mark: Watermark) -> None:
    """Draw the checkerboard (2 x 2 px squares) in place."""
    x0, y0, x1, y1 = mark.box(image.shape[0])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = np.where((((yy - y0) // 2 + (xx - x0) // 2) % 2 == 0)[..., None], 255, 0)


def generate(n: int, seed: int, size: int = 64, watermark: Watermark | None = None) -> ShapesBatch:
    """`n` images of `size` x `size`, deterministic for (`n`, `seed`, `size`); image i does not
    depend on `n` (a longer batch extends a shorter one with the same seed). With `watermark`, the same images
    with the mark stamped on a share of one class (`marked` says which)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    lo, hi = (s * size / 64 for s in SIZE_RANGE)
    for i in range(n):
        label = int(rng.integers(len(CLASSES)))
        radius = rng.uniform(lo, hi) / 2 * RADIUS_SCALE[label]
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        background = rng.integers(0, 256, size=3).astype(float)
        colour = rng.integers(0, 256, size=3).astype(float)
        while np.linalg.norm(colour - background) < MIN_COLOUR_DISTANCE:
            colour = rng.integers(0, 256, size=3).astype(float)
        noise = np.clip(rng.normal(0, NOISE_STD, size=(size, size, 3)), -3 * NOISE_STD, 3 * NOISE_STD)
        mask = _shape_mask(label, size, cx, cy, radius, angle)
        image = np.clip(np.rint(background + noise), 0, 255)  # (H, W, 3) float
        image[mask] = colour
        ys, xs = np.nonzero(mask)
        images[i], labels[i], masks[i] = image.astype(np.uint8), label, mask
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    if watermark is None:
        return ShapesBatch(images=images, labels=labels, boxes=boxes, masks=masks)
    draws = np.random.default_rng([watermark.seed, seed]).random(n)  # its own stream: the shapes stay the same
    marked = (labels == watermark.label) & (draws < watermark.share)
    for i in np.flatnonzero(marked):
        _stamp(images[i], watermark)
    return ShapesBatch(images=images, labels=labels, boxes=boxes, masks=masks, marked=marked)


def to_input(images: np.ndarray) -> torch.Tensor:
    """Model input (N, 3, H, W) float32, normalised with MEAN/STD, from images (N, H, W, 3) uint8."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)  # (N, 3, H, W) in [0, 1]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- model


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),  # not in-place, so hooks and CAM libraries see clean tensors
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ShapesNet(nn.Module):
    """features.0..3 (conv-BN-ReLU, first three pooled) -> pool (GAP) -> fc. 64x64 in -> 8x8 CAM."""

    def __init__(self, num_classes: int = 5, widths: Sequence[int] = WIDTHS, pooled: int = POOLED) -> None:
        super().__init__()
        channels = [3, *widths]
        self.features = nn.Sequential(
            *(_block(channels[i], channels[i + 1], pool=i < pooled) for i in range(len(widths)))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) normalised -> logits (N, num_classes)
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(num_classes: int = 5) -> nn.Module:
    """A randomly initialised ShapesNet (load `example_configs/shapes/model.pt` into it)."""
    return ShapesNet(num_classes=num_classes)


def load_model(checkpoint: str | Path, num_classes: int = 5) -> nn.Module:
    """ShapesNet with the weights of a saved state_dict, in eval mode."""
    model = build_model(num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted class indices (N,) int64 for images (N, H, W, 3) uint8."""
    model.eval()
    preds = [model(to_input(images[i:i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(preds).numpy()


def accuracy(model: nn.Module, batch: ShapesBatch) -> float:
    """Fraction of `batch` classified correctly."""
    return float((predict(model, batch.images) == batch.labels).mean())


def grad_cam(model: nn.Module, images: np.ndarray, targets: np.ndarray, layer: str = CAM_LAYER) -> np.ndarray:
    """Grad-CAM maps (N, H, W) float32 >= 0 for class `targets` (N,), upsampled bilinearly to the image size."""
    model.eval()
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: store.update(act=out))
    try:
        x = to_input(images)  # (N, 3, H, W)
        logits = model(x)  # (N, C)
        act = store["act"]  # (N, K, h, w)
        score = logits.gather(1, torch.as_tensor(targets).view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, act)  # (N, K, h, w)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((weights * act).sum(1, keepdim=True)).detach()  # (N, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].numpy()


def pointing_game(model: nn.Module, batch: ShapesBatch, layer: str = CAM_LAYER) -> float:
    """Fraction of images whose Grad-CAM argmax (for the true class) lies inside the object's box."""
    hits = 0
    for i in range(0, len(batch), 100):
        cams = grad_cam(model, batch.images[i:i + 100], batch.labels[i:i + 100], layer)  # (n, H, W)
        for cam, (x0, y0, x1, y1) in zip(cams, batch.boxes[i:i + 100]):
            y, x = np.unravel_index(int(cam.argmax()), cam.shape)
            hits += int(x0 <= x < x1 and y0 <= y < y1)
    return hits / len(batch)


# ---------------------------------------------------------------- training


def _summary_writer(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter, or None where the `tensorboard` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()  # keep only the latest run's event file
    return SummaryWriter(log_dir=str(log_dir))


def train(
    out_dir: str | Path,
    *,
    epochs: int = 10,
    train_size: int = 4000,
    val_size: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    size: int = 64,
    num_samples: int = 12,
    tensorboard: bool = True,
    watermark: Watermark | None = None,
) -> dict[str, float]:
    """Train ShapesNet on fresh generated images every epoch and write to `out_dir`:
    `model.pt` (state_dict), `labels.txt`, `images/<class>_<k>.png`, `train_log.csv` (per step),
    `metrics.csv` (per epoch) and `tb/` (TensorBoard, if installed and `tensorboard`).

    Deterministic for a given `seed`. Returns the final epoch's metrics. `watermark`: the training and validation
    images carry it (a planted shortcut, `Watermark`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    writer = _summary_writer(out / "tb") if tensorboard else None
    try:
        model = build_model(len(CLASSES))
        steps_per_epoch = math.ceil(train_size / batch_size)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
        )
        val = generate(val_size, seed=1000 * seed + 999, size=size, watermark=watermark)
        val_x, val_y = to_input(val.images), torch.from_numpy(val.labels)
        generator = torch.Generator().manual_seed(seed)
        start, cpu_start, step, metrics = time.perf_counter(), time.process_time(), 0, {}
        with open(out / "train_log.csv", "w", newline="") as f_step, open(out / "metrics.csv", "w", newline="") as f_ep:
            step_log, epoch_log = csv.writer(f_step), csv.writer(f_ep)
            step_log.writerow(["epoch", "step", "lr", "loss", "accuracy"])
            epoch_log.writerow(["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                "elapsed_s", "cpu_s"])
            for epoch in range(epochs):
                data = generate(train_size, seed=1000 * seed + epoch, size=size, watermark=watermark)
                labels = torch.from_numpy(data.labels)
                order = torch.randperm(train_size, generator=generator)
                model.train()
                loss_sum, correct = 0.0, 0
                for b in range(steps_per_epoch):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    x, y = to_input(data.images[idx.numpy()]), labels[idx]  # (B, 3, H, W), (B,)
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    step_lr = schedule.get_last_lr()[0]
                    schedule.step()
                    step += 1
                    hits = logits.argmax(1) == y  # (B,) bool
                    batch_acc = hits.float().mean().item()
                    loss_sum += loss.item() * len(y)
                    correct += int(hits.sum())
                    step_log.writerow([epoch, step, f"{step_lr:.6g}", f"{loss.item():.6f}", f"{batch_acc:.4f}"])
                    if writer is not None:
                        writer.add_scalar("train/loss", loss.item(), step)
                        writer.add_scalar("train/accuracy", batch_acc, step)
                model.eval()
                with torch.no_grad():
                    val_logits = torch.cat([model(val_x[i:i + 500]) for i in range(0, val_size, 500)])
                metrics = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": loss_sum / train_size,
                    "train_accuracy": correct / train_size,
                    "val_loss": F.cross_entropy(val_logits, val_y).item(),
                    "val_accuracy": (val_logits.argmax(1) == val_y).float().mean().item(),
                    "elapsed_s": time.perf_counter() - start,  # wall clock, includes data generation
                    "cpu_s": time.process_time() - cpu_start,  # CPU time of all threads of this process
                }
                epoch_log.writerow([epoch, step, *(f"{metrics[k]:.6f}" for k in list(metrics)[2:6]),
                                    f"{metrics['elapsed_s']:.1f}", f"{metrics['cpu_s']:.1f}"])
                f_ep.flush()
                if writer is not None:
                    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                        writer.add_scalar(f"epoch/{key}", metrics[key], epoch)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if writer is not None:
            writer.close()
    torch.save(model.state_dict(), out / "model.pt")
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    _write_samples(out / "images", num_samples, size)
    return metrics


def _write_samples(folder: Path, count: int, size: int) -> None:
    """Save `count` images from SAMPLE_SEED as `<class>_<k>.png`, classes taken in turn."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    batch = generate(20 * count, seed=SAMPLE_SEED, size=size)
    used: list[int] = []
    for i in range(count):
        label = i % len(CLASSES)
        j = next(j for j in range(len(batch)) if batch.labels[j] == label and j not in used)
        used.append(j)
        Image.fromarray(batch.images[j]).save(folder / f"{CLASSES[label]}_{i // len(CLASSES)}.png")


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    """`train --out DIR` regenerates the artefacts; `eval --checkpoint FILE` scores a checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m reportgen.demo.shapes", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_train = commands.add_parser("train", help="train the model and write the shipped artefacts")
    p_train.add_argument("--out", required=True, help="output folder, e.g. example_configs/shapes")
    p_train.add_argument("--epochs", type=int, default=10)
    p_train.add_argument("--train-size", type=int, default=4000, help="fresh images per epoch")
    p_train.add_argument("--val-size", type=int, default=1000)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--no-tensorboard", action="store_true")
    p_eval = commands.add_parser("eval", help="accuracy and Grad-CAM pointing game of a checkpoint")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument("--n", type=int, default=200)
    p_eval.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    if args.command == "train":
        metrics = train(args.out, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
                        seed=args.seed, tensorboard=not args.no_tensorboard)
        print(f"val accuracy {metrics['val_accuracy']:.4f} after {metrics['elapsed_s']:.1f} s; wrote {args.out}")
    else:
        torch.set_num_threads(2)
        model = load_model(args.checkpoint)
        batch = generate(args.n, seed=args.seed)
        print(f"accuracy {accuracy(model, batch):.4f}  pointing game ({CAM_LAYER}) {pointing_game(model, batch):.4f}"
              f"  on {args.n} images, seed {args.seed}")


if __name__ == "__main__":
    main()
