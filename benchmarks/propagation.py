"""Propagation methods (LRP): reportgen against its references for the same numbers, in one run.

    python benchmarks/propagation.py [--images 4] [--size 224] [--repeat 3] [--threads N]

Random-weight torchvision models (no download; seeded batch-norm statistics), random inputs, on the CPU:

- VGG-16-BN: `lrp` (reportgen.methods.lrp.compute_lrp) against Captum 0.9.0's `LRP(model).attribute(x, target=t)`;
- ResNet-18: each Zennit composite (`lrp_epsilon_plus_flat`, `lrp_epsilon_gamma_box`, `lrp_epsilon_alpha2_beta1_flat`)
  against Zennit 0.5.1's `Gradient` attributor with that composite and `ResNetCanonizer`, one-hot output relevance.

All images in one call each, one target per image (the top class). The two are timed alternately, `--repeat` times;
prints the median (and min) seconds, the ratio ours / reference (the issue's target: at most 1.1) and the largest
per-image relative difference of the maps (|ours − ref| / max |ref|).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reportgen.methods.lrp import COMPOSITES, compute_lrp  # noqa: E402


def seeded(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=1000)
    g = torch.Generator().manual_seed(5)
    for m in model.modules():  # seeded batch-norm statistics (the defaults make eval-mode BN an identity)
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.1, 0.1), (m.running_var, 0.5, 1.5), (m.weight.data, 0.5, 1.5),
                              (m.bias.data, -0.1, 0.1)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


def timed(fn, repeat: int, ours: list[float], ref: list[float], ref_fn) -> tuple[torch.Tensor, torch.Tensor]:
    a = b = None
    for _ in range(repeat):
        start = time.perf_counter()
        a = fn()
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = ref_fn()
        ref.append(time.perf_counter() - start)
    return a, b


def difference(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return max(float((o - r).abs().max() / r.abs().max()) for o, r in zip(ours, ref.detach()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from captum.attr import LRP
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    print(f"{args.images} images at {args.size}², {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"\n{'method (model)':44s} {'ours':>7s} {'ref':>7s} {'ratio':>6s} {'max diff':>9s}")

    def row(label: str, ours: list[float], ref: list[float], diff: float) -> None:
        o, r = statistics.median(ours), statistics.median(ref)
        print(f"{label:44s} {o:7.2f} {r:7.2f} {o / r:6.2f} {diff:9.1e}   (min {min(ours):.2f} / {min(ref):.2f})")

    vgg = seeded("vgg16_bn")
    with torch.no_grad():
        targets = vgg(x).argmax(1).tolist()
    ours: list[float] = []
    ref: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = timed(lambda: compute_lrp(vgg, x, [targets], method="lrp")[0], args.repeat, ours, ref,
                     lambda: LRP(vgg).attribute(x, target=targets))
    row("lrp vs Captum LRP (VGG-16-BN)", ours, ref, difference(a, b))

    resnet = seeded("resnet18")
    with torch.no_grad():
        targets = resnet(x).argmax(1).tolist()
    low, high = torch.full((1, 3, 1, 1), -2.0), torch.full((1, 3, 1, 1), 2.5)
    onehot = torch.eye(1000)[targets]
    for method, composite in zip(COMPOSITES, (EpsilonPlusFlat, EpsilonGammaBox, EpsilonAlpha2Beta1Flat)):
        kwargs = {"low": low, "high": high} if composite is EpsilonGammaBox else {}

        def reference():
            with Gradient(resnet, composite(canonizers=[ResNetCanonizer()], **kwargs)) as attributor:
                return attributor(x.clone(), onehot)[1]

        ours, ref = [], []
        a, b = timed(lambda: compute_lrp(resnet, x, [targets], method=method, low=(-2.0,), high=(2.5,))[0],
                     args.repeat, ours, ref, reference)
        row(f"{method} vs Zennit (ResNet-18)", ours, ref, difference(a, b))


if __name__ == "__main__":
    main()
