"""Perturbation metrics: reportgen.metrics.perturbation against the references, in one run.

    python benchmarks/evaluation.py [--images 8] [--size 224] [--batch-size 64] [--percentiles 20,40,60,80]
                                    [--threads N] [--eager] [--forward-only]
                                    [--winograd-channels N]

ResNet-18 (torchvision, random weights, seeded; no download), random inputs, each image's top-1 class as
target, maps from pytorch-grad-cam 1.5.7 itself (GradCAM, GradCAMPlusPlus, LayerCAM on `layer4[-1]`).
Then, timed once each (the machine may be shared: compare the ratios of one run):

(a) ours: `road` (the percentiles, both orders) and `deletion_insertion` (RISE: zero deletion substrate,
    blurred insertion start, the default step) for the three methods at once, `--batch-size` inputs a forward,
    through `reportgen.metrics.forward.inference_forward(model, x[:1])` (batch norm folded, channels-last,
    Winograd 3x3 convolutions, cache-sized chunks; checked against the eager model), whose making is timed
    with ROAD's part;
    `--eager` uses the plain eager model instead (what that forward is worth);
(b) the references: pytorch-grad-cam's `ROADCombined(percentiles)` with `ClassifierOutputSoftmaxTarget`,
    once per method; and a per-image loop (per method, per image, per mode: all the curve's points built
    RISE's way, forwarded `--batch-size` at a time), as the authors' `CausalMetric.single_run` batched.

ROAD runs with the imputer's noise at 0 in both (grad-cam's default 0.01 patched) so that the numbers can be
compared; prints the seconds of each part, the speed-up (b)/(a) per part and in all (target >= 2x), the
largest |difference| of ROAD's combined score, the curves (softmax probabilities) and the AUCs, and the
load average before and after (the references run with the eager model as they are: a per-image loop with
the same batch size and threads). Last, the forward alone: one batch through ours and the eager model, and
the eager model at its best of batches of 4, 8 and 16; with `--forward-only`, also ours with Winograd's products
by `torch.bmm` instead of oneDNN (`metrics.forward._one_dnn_linear`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reportgen.metrics import perturbation as P  # noqa: E402
from reportgen.metrics import forward as forward_module  # noqa: E402
from reportgen.metrics.forward import inference_forward  # noqa: E402


def gradcam_maps(model, x: torch.Tensor, targets: list[int]) -> dict[str, np.ndarray]:
    """Grad-CAM, Grad-CAM++ and LayerCAM maps (N, H, W) float32 in [0, 1], from pytorch-grad-cam itself."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = {}
    for name, method in {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus,
                         "layercam": pgc.LayerCAM}.items():
        with method(model, [model.layer4[-1]]) as cam:
            maps[name] = cam(x, [ClassifierOutputTarget(t) for t in targets])
    return maps


def gradcam_road(model, x, maps, targets, percentiles) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's ROADCombined once per method, the imputer's noise set to 0."""
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    defaults = road.NoisyLinearImputer.__init__.__defaults__
    road.NoisyLinearImputer.__init__.__defaults__ = (0.0, road.neighbors_weights)
    try:
        score = road.ROADCombined(percentiles=list(percentiles))
        return {m: score(x, cams, [ClassifierOutputSoftmaxTarget(t) for t in targets], model)
                for m, cams in maps.items()}
    finally:
        road.NoisyLinearImputer.__init__.__defaults__ = defaults


def loop_deletion_insertion(model, x, maps, targets, batch_size) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, per image, per mode: every point of the curve built by changing `step` more pixels of a
    running copy (RISE's way), the points forwarded `batch_size` at a time. {method: (deletion, insertion)}."""
    n, c, h, w = x.shape
    step = P.default_step(h, w)
    n_steps = (h * w + step - 1) // step
    blurred = P.gaussian_blur(x)
    out = {}
    for method, cams in maps.items():
        curves = {"deletion": [], "insertion": []}
        for i in range(n):
            order = np.argsort(-cams[i].reshape(-1), kind="stable")
            for mode, start, finish in (("deletion", x[i], torch.zeros_like(x[i])), ("insertion", blurred[i], x[i])):
                current, points = start.clone().reshape(c, -1), []
                for k in range(n_steps + 1):
                    points.append(current.clone())
                    coords = order[step * k:step * (k + 1)]
                    current[:, coords] = finish.reshape(c, -1)[:, coords]
                points = torch.stack(points).reshape(-1, c, h, w)
                with torch.no_grad():
                    probs = torch.cat([torch.softmax(model(points[j:j + batch_size]), 1)[:, targets[i]]
                                       for j in range(0, len(points), batch_size)])
                curves[mode].append(probs.numpy())
        out[method] = (np.array(curves["deletion"]), np.array(curves["insertion"]))
    return out


def forward_alone(model, forward, x: torch.Tensor, batch_size: int) -> str:
    """ms an image of one batch of `batch_size` inputs through ours and the eager model, and the eager model's
    best over batches of 4, 8 and 16 (a reference run at its own best batch)."""
    batch = x.repeat((batch_size + len(x) - 1) // len(x), 1, 1, 1)[:batch_size]

    def per_image(fn, size):
        fn(batch[:size])  # warm
        start = time.perf_counter()
        for j in range(0, batch_size, size):
            fn(batch[j:j + size])
        return (time.perf_counter() - start) / batch_size * 1000

    with torch.inference_mode():
        eager = per_image(model, batch_size)
        best = min((per_image(model, size), size) for size in (4, 8, 16))
        ours = per_image(forward, batch_size)
    return (f"forward alone, ms an image: ours {ours:.1f}, eager {eager:.1f} at batch {batch_size} "
            f"({eager / ours:.2f}x), eager at its best batch {best[1]} {best[0]:.1f} ({best[0] / ours:.2f}x)")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="random images")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per forward, both sides")
    parser.add_argument("--percentiles", default="20,40,60,80", help="ROAD percentiles, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--eager", action="store_true", help="ours with the eager model, not inference_forward")
    parser.add_argument("--forward-only", action="store_true", help="print only the forward-alone line")
    parser.add_argument("--winograd-channels", type=int, default=None,
                        help="ours: Winograd for 3x3 convolutions of at least this many channels "
                             "(default: metrics.forward.WINOGRAD_CHANNELS)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    percentiles = tuple(float(p) for p in args.percentiles.split(","))
    if args.winograd_channels is not None:
        forward_module.WINOGRAD_CHANNELS = args.winograd_channels

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(args.images, 3, args.size, args.size)
    if args.forward_only:  # no maps, no metrics
        print(f"ResNet-18, {args.images} images at {args.size}², batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads")
        forward = inference_forward(model, x[:1], fast=not args.eager)
        print(forward_alone(model, forward, x, args.batch_size))
        if not args.eager and forward_module._one_dnn_linear() is not None:
            one_dnn = forward_module._one_dnn_linear
            forward_module._one_dnn_linear = lambda: None  # Winograd's 36 products by torch.bmm (MKL), as before
            try:
                print("Winograd's products by torch.bmm: " + forward_alone(model, forward, x, args.batch_size))
            finally:
                forward_module._one_dnn_linear = one_dnn
        return 0
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    maps = gradcam_maps(model, x, targets)
    step = P.default_step(args.size, args.size)
    print(f"ResNet-18, {args.images} images at {args.size}², {len(maps)} methods, step {step} "
          f"({(args.size ** 2 + step - 1) // step + 1} points), ROAD percentiles {percentiles}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")

    load_before = os.getloadavg()
    forward, t_forward = timed(lambda: inference_forward(model, x[:1], fast=not args.eager))
    ours_road, t_ours_road = timed(lambda: P.road(forward, x, maps, targets, percentiles=percentiles, noise=0,
                                                  batch_size=args.batch_size))
    t_ours_road += t_forward
    ours_curves, t_ours_curves = timed(lambda: P.deletion_insertion(forward, x, maps, targets,
                                                                    batch_size=args.batch_size))
    ref_road, t_ref_road = timed(lambda: gradcam_road(model, x, maps, targets, percentiles))
    ref_curves, t_ref_curves = timed(lambda: loop_deletion_insertion(model, x, maps, targets, args.batch_size))

    print(f"\n{'seconds':34s} {'ours':>8s} {'reference':>10s} {'speed-up':>9s}")
    for label, ours, ref in (("ROAD (vs ROADCombined)", t_ours_road, t_ref_road),
                             ("deletion + insertion (vs loop)", t_ours_curves, t_ref_curves),
                             ("all", t_ours_road + t_ours_curves, t_ref_road + t_ref_curves)):
        print(f"{label:34s} {ours:8.2f} {ref:10.2f} {ref / ours:8.2f}x")
    print(f"(target: all >= 2x; ours' forward: {'eager' if args.eager else 'inference_forward'}, made in "
          f"{t_forward:.2f} s, counted in ROAD; load average before {load_before[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f})")

    print(forward_alone(model, forward, x, args.batch_size))
    road_diff = max(float(np.abs(ours_road[m].combined - ref_road[m]).max()) for m in maps)
    curve_diff = max(float(np.abs(ours_curves[m].deletion - ref_curves[m][0]).max()) for m in maps)
    curve_diff = max(curve_diff, *(float(np.abs(ours_curves[m].insertion - ref_curves[m][1]).max()) for m in maps))
    auc_diff = max(float(np.abs(ours_curves[m].deletion_auc - P.auc(ref_curves[m][0])).max()) +
                   float(np.abs(ours_curves[m].insertion_auc - P.auc(ref_curves[m][1])).max()) for m in maps)
    print(f"max |ours - reference|: ROAD combined {road_diff:.1e}, curves {curve_diff:.1e}, AUCs {auc_diff:.1e}")
    for m in maps:
        print(f"  {m:10s} ROAD {ours_road[m].combined.mean():+.4f}  deletion AUC "
              f"{ours_curves[m].deletion_auc.mean():.4f}  insertion AUC {ours_curves[m].insertion_auc.mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
