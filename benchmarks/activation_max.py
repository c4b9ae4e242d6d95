"""Activation maximisation: reportgen's batched `maximize_activation` against FlashTorch 0.1.3's `GradientAscent`.

    pip install flashtorch==0.1.3   # or: pip install --no-deps --target /tmp/ftlib flashtorch==0.1.3
                                    #         importlib_resources, then PYTHONPATH=/tmp/ftlib
    python benchmarks/activation_max.py [--layer features.2.0] [--filters 8] [--threads 2] [--resnet18]

Model: the shipped trained ShapesNet (`example_configs/shapes/model.pt`, 64x64 input, normalisation
mean 0.5 std 0.25 as in example_configs/quickstart.yaml); with --resnet18 also a random-weight
torchvision resnet18 at 224 on `layer2.0.conv1` (same normalisation). For filters 0..F-1 it runs
(a) FlashTorch `GradientAscent(model, img_size, lr=1).optimize(layer, k, num_iter)` one filter at a
    time, with its defaults (30 steps) and with our number of steps; numpy/torch are seeded before
    each call (its start noise uses the global numpy RNG), so the start image can be rebuilt;
(b) reportgen `stages.kernels.maximize_activation` with `OptimizeConfig()` defaults, all filters in one batch.
Per method it prints the wall time (fastest of --repeats; ours / FlashTorch from the same run) and,
from one independent forward hook on the target layer, the mean over filters of the target filter's
mean activation on the start image (`start`) and on the result (`final`), the gain (final - start) /
mean |start| (a plain final / start ratio means nothing here: the target is a conv before its BN, so
start activations are signed and near 0), how many filters rose (`up`), and `clipped`: the final
activation once the result is clipped to the valid pixel range (what a displayed image gives). Then the
fraction of values outside [0, 1] after undoing the model's normalisation (`out`), and the high-frequency
measure mean |neighbour difference| of the pixels clipped to [0, 1] (`hf`) and of the raw pixels
divided by their std (`hf/std`, scale-free). FlashTorch always normalises its start noise with the
ImageNet statistics (not configurable); the model reads it with its own. Exits 0.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reportgen.config import Normalize, OptimizeConfig  # noqa: E402
from reportgen.demo.shapes import build_model  # noqa: E402
from reportgen.stages.kernels import maximize_activation, start_image  # noqa: E402

MEAN, STD = 0.5, 0.25  # example_configs/quickstart.yaml


def seed_all(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def activations(model: nn.Module, layer: nn.Module, x: torch.Tensor, filters: list[int]) -> np.ndarray:
    """(F,) mean activation of filters[k] in x[k], from a plain forward hook of our own."""
    seen: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    out = seen["out"]  # (F, C', h, w)
    return out[torch.arange(len(filters)), torch.tensor(filters)].mean(dim=(1, 2)).numpy()


def quality(pixels: torch.Tensor) -> tuple[float, float, float]:
    """(F, C, H, W) pixels (normalisation undone) -> (fraction outside [0, 1], hf of clipped, hf/std of raw)."""
    def hf(p: torch.Tensor) -> torch.Tensor:  # (F,) mean |neighbour difference|
        return ((p[..., 1:, :] - p[..., :-1, :]).abs().mean(dim=(1, 2, 3))
                + (p[..., :, 1:] - p[..., :, :-1]).abs().mean(dim=(1, 2, 3))) / 2
    outside = ((pixels < 0) | (pixels > 1)).float().mean()
    scale_free = hf(pixels) / pixels.flatten(1).std(dim=1).clamp_min(1e-12)
    return float(outside), float(hf(pixels.clamp(0, 1)).mean()), float(scale_free.mean())


def run_flashtorch(model: nn.Module, name: str, filters: list[int], size: int, steps: int,
                   seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds for all filters one after another, start and final inputs (F, 3, H, W) in normalised space."""
    from flashtorch.activmax import GradientAscent
    from flashtorch.utils import apply_transforms

    layer = model.get_submodule(name)
    ascent = GradientAscent(model, img_size=size)  # lr=1, its default
    starts, finals, seconds = [], [], 0.0
    for k in filters:
        seed_all(seed + k)
        begin = time.perf_counter()
        final = ascent.optimize(layer, k, num_iter=steps)[-1]
        seconds += time.perf_counter() - begin
        while ascent.handlers:  # it leaves its hooks on the model after the last call
            ascent.handlers.pop().remove()
        seed_all(seed + k)  # rebuild its start exactly as optimize() drew it
        noise = np.uint8(np.random.uniform(150, 180, (size, size, 3)))
        starts.append(apply_transforms(noise, size=size).detach())
        finals.append(final.detach())
    model.zero_grad(set_to_none=True)  # it leaves parameter gradients behind, too
    return seconds, torch.cat(starts), torch.cat(finals)


def run_ours(model: nn.Module, name: str, filters: list[int], size: int,
             seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    opt = OptimizeConfig()
    seed_all(seed)
    begin = time.perf_counter()
    vis = maximize_activation(model, name, filters, channels=3, size=(size, size),
                              normalize=Normalize(mean=(MEAN,) * 3, std=(STD,) * 3), steps=opt.steps,
                              lr=opt.lr, jitter=opt.jitter, blur=opt.blur, blur_every=opt.blur_every,
                              tv=opt.tv, weight_decay=opt.weight_decay, seed=seed)
    seconds = time.perf_counter() - begin
    starts = torch.stack([start_image(seed, k, (3, size, size)) for k in filters])  # (F, 3, H, W) pixels
    finals = torch.from_numpy(vis.images).permute(0, 3, 1, 2)  # (F, 3, H, W) pixels in [0, 1]
    return seconds, (starts - MEAN) / STD, (finals - MEAN) / STD


def compare(model: nn.Module, name: str, filters: list[int], size: int, seed: int, repeats: int) -> None:
    model.eval()
    layer = model.get_submodule(name)
    steps = OptimizeConfig().steps
    methods = {"flashtorch (30 steps, default)": lambda: run_flashtorch(model, name, filters, size, 30, seed),
               f"flashtorch ({steps} steps)": lambda: run_flashtorch(model, name, filters, size, steps, seed),
               f"reportgen ({steps} steps, batched)": lambda: run_ours(model, name, filters, size, seed)}
    runs: dict[str, list] = {label: [] for label in methods}
    for _ in range(repeats):  # interleaved, so that a busy moment of a shared machine hits all methods
        for label, method in methods.items():
            runs[label].append(method())
    rows = [(label, (min(r[0] for r in results), *results[-1][1:])) for label, results in runs.items()]
    ours = rows[-1][1][0]
    print(f"\n{type(model).__name__} `{name}`, filters {filters[0]}-{filters[-1]}, {size}x{size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':32s} {'time s':>6s} {'ours/it':>7s} {'start':>6s} {'final':>7s} {'gain':>6s} {'up':>3s} "
          f"{'clipped':>7s} {'out':>6s} {'hf':>5s} {'hf/std':>6s}")
    for label, (seconds, start, final) in rows:
        pixels = final * STD + MEAN  # (F, 3, H, W) normalisation undone
        a0, a1 = activations(model, layer, start, filters), activations(model, layer, final, filters)
        a_clip = activations(model, layer, (pixels.clamp(0, 1) - MEAN) / STD, filters)
        gain = float((a1 - a0).mean() / np.abs(a0).mean())
        outside, hf, hf_std = quality(pixels)
        print(f"{label:32s} {seconds:6.2f} {ours / seconds:7.2f} {a0.mean():6.2f} {a1.mean():7.2f} {gain:6.1f} "
              f"{int((a1 > a0).sum()):3d} {a_clip.mean():7.2f} {outside:6.1%} {hf:5.3f} {hf_std:6.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="features.2.0")
    parser.add_argument("--filters", type=int, default=8, help="filters 0..N-1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="time each method this often, keep the fastest")
    parser.add_argument("--resnet18", action="store_true", help="also a random-weight resnet18 at 224")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # FlashTorch's deprecated non-full backward hook
    filters = list(range(args.filters))

    model = build_model(num_classes=5)
    checkpoint = ROOT / "example_configs" / "shapes" / "model.pt"
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    compare(model, args.layer, filters, 64, args.seed, args.repeats)
    if args.resnet18:
        import torchvision

        seed_all(args.seed)
        compare(torchvision.models.resnet18(weights=None), "layer2.0.conv1", filters, 224, args.seed,
                args.repeats)
    print("\nstart/final: the target filter's mean activation, mean over filters; gain: (final - start) / "
          "mean |start|;\nup: filters that rose; clipped: final after clipping the result to [0, 1] pixels; "
          "out: values outside [0, 1];\nhf: mean |neighbour difference| of pixels clipped to [0, 1]; "
          "hf/std: of the raw pixels / their std.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
