"""Perturbation methods: reportgen's gradients stage against Captum 0.9.0 at the same settings, in one run.

    OMP_NUM_THREADS=2 python benchmarks/attribution.py [--images 4] [--size 224] [--batch 64] [--segments 50]
                                                       [--samples 200] [--permutations 25] [--rise-masks 1000]
                                                       [--methods occlusion,feature_ablation,...] [--device cpu]
                                                       [--repeats 1]

ResNet-18 (weights=None, seeded: no download), `--images` random images at `--size`², on the CPU, target the top-1
class. Per method, ours is `reportgen.stages.gradients.run` with that one method (SLIC, the fast inference forward
and the fit included), `--batch` perturbed inputs per forward; Captum gets the eager model under no_grad and the
same SLIC mask (computed outside its timing), and `perturbations_per_eval` such that each of its forwards also
takes `--batch` inputs: `--batch` for the calls it makes image by image (ShapleyValueSampling, Lime, KernelShap,
each after `torch.manual_seed(seed + i)`: the draws ours makes), `--batch` / images for the calls on the whole batch
(Occlusion, FeatureAblation, whose forwards take images × perturbations_per_eval inputs).

- Occlusion: a 15 × 15 window spanning the channels, stride 8, baseline 0.
- FeatureAblation, Lime, KernelShap: the same `--segments` SLIC superpixels; Lime and KernelShap `--samples`
  samples (Lime with Captum's default SkLearnLasso(alpha=0.01)).
- ShapleyValueSampling: `--permutations` orders of the superpixels.
- RISE: no Captum counterpart; ours alone.

Prints the fixed costs ours pays in each run, then per method: ours s, Captum s, Captum / ours (the target is
≥ 2), and max |ours − Captum| / max |Captum| over the images (per image, the largest). With `--repeats`, each
side runs that many times, alternated: the medians, their ratio and the range of the runs' ratios.
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

from reportgen.config import GradientsConfig, TargetSpec  # noqa: E402
from reportgen.methods import ablation as A  # noqa: E402
from reportgen.stages import gradients as G  # noqa: E402
from tests.helpers import make_context  # noqa: E402

METHODS = ("occlusion", "feature_ablation", "shapley_value_sampling", "lime", "kernel_shap", "rise")


def captum_call(method: str, forward, x: torch.Tensor, targets: list[int], mask: torch.Tensor, seed: int,
                args) -> torch.Tensor:
    from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion, ShapleyValueSampling

    n, c = x.shape[:2]
    per_batch = max(1, args.batch // n)  # forwards of n · per_batch inputs
    if method == "occlusion":
        return Occlusion(forward).attribute(x, sliding_window_shapes=(c, 15, 15), strides=8, baselines=0,
                                            target=targets, perturbations_per_eval=per_batch)
    if method == "feature_ablation":
        return FeatureAblation(forward).attribute(x, baselines=0, target=targets, feature_mask=mask[:, None],
                                                  perturbations_per_eval=per_batch)
    maps = []
    for i in range(n):  # image by image, reseeded: the draws ours makes
        torch.manual_seed(seed + i)
        common = dict(baselines=0, target=targets[i], feature_mask=mask[i:i + 1, None],
                      perturbations_per_eval=args.batch)
        if method == "shapley_value_sampling":
            maps.append(ShapleyValueSampling(forward).attribute(x[i:i + 1], n_samples=args.permutations, **common))
        elif method == "lime":
            maps.append(Lime(forward).attribute(x[i:i + 1], n_samples=args.samples, **common))
        elif method == "kernel_shap":
            maps.append(KernelShap(forward).attribute(x[i:i + 1], n_samples=args.samples, **common))
        else:
            raise ValueError(method)
    return torch.cat(maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="perturbed inputs per forward, ours and Captum's")
    parser.add_argument("--segments", type=int, default=50, help="SLIC's n_segments")
    parser.add_argument("--samples", type=int, default=200, help="Lime and KernelShap samples per image")
    parser.add_argument("--permutations", type=int, default=25, help="ShapleyValueSampling orders per image")
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternated; medians")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Captum's advice to attribute one example at a time, and the like

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(args.device)
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(args.device)
    ctx = make_context(model, x)
    targets = ctx.logits.argmax(1).tolist()
    seed = ctx.config.seed
    start = time.perf_counter()
    mask = A.superpixels(x, segments=args.segments, compactness=10.0, sigma=1.0)
    slic_s = time.perf_counter() - start
    start = time.perf_counter()
    G.fast_forward(ctx.info, model, x)
    copy_s = time.perf_counter() - start
    counts = [int(m.max()) + 1 for m in mask]

    def eager(t):
        with torch.no_grad():
            return model(t)

    print(f"ResNet-18, {args.images} images at {args.size}², {torch.get_num_threads()} threads, {args.device}; "
          f"{args.batch} inputs per forward; superpixels per image {counts}")
    print(f"ours pays in each run: the fast forward's copy and check {copy_s:.2f} s, SLIC {slic_s:.2f} s (superpixel "
          "methods); a build pays the copy once for all its methods")
    print(f"\n{'method':24s} {'ours s':>8s} {'Captum s':>9s} {'Captum/ours':>12s} {'max |diff| / max |Captum|':>26s}")
    for method in args.methods.split(","):
        cfg = GradientsConfig(methods=(method,), targets=TargetSpec(k=1), internal_batch_size=args.batch,
                              occlusion_window=15, occlusion_stride=8, slic_segments=args.segments,
                              shapley_samples=args.permutations, lime_samples=args.samples,
                              kernel_shap_samples=args.samples, rise_masks=args.rise_masks)
        ours_times, captum_times = [], []
        for _ in range(args.repeats):  # alternated, so that a change in the machine's load hits both
            ctx = make_context(model, x)  # each run pays the fast forward's copy (a build pays it once for all)
            start = time.perf_counter()
            ours = torch.as_tensor(G.run(ctx, cfg).maps[method][:, 0])
            ours_times.append(time.perf_counter() - start)
            if method == "rise":
                continue
            start = time.perf_counter()
            ref = captum_call(method, eager, x, targets, mask, seed, args).cpu()
            captum_times.append(time.perf_counter() - start)
        ours_s = statistics.median(ours_times)
        if method == "rise":
            print(f"{method:24s} {ours_s:8.2f} {'-':>9s} {'-':>12s} {'(no Captum counterpart)':>26s}", flush=True)
            continue
        captum_s = statistics.median(captum_times)
        ratios = [c / o for c, o in zip(captum_times, ours_times)]
        spread = f" (runs {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        difference = max(float((ours[i] - ref[i]).abs().max() / ref[i].abs().max()) for i in range(len(ref)))
        print(f"{method:24s} {ours_s:8.2f} {captum_s:9.2f} {captum_s / ours_s:12.2f} {difference:26.1e}{spread}",
              flush=True)


if __name__ == "__main__":
    main()
