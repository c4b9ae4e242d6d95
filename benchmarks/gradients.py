"""Gradient saliency: reportgen's stage against Captum 0.9.0 for the same methods, in one run.

    python benchmarks/gradients.py [--model resnet18] [--images 4] [--size 128] [--repeat 3]
                                   [--steps 50] [--samples 10] [--top 1] [--threads N]

Random-weight torchvision model (no download), random inputs, on the CPU (or `--device cuda`).

1. Per method: `reportgen.stages.gradients.run` with that one method (no pass shared with the CAM
   stage; the result copied to numpy) against the Captum call that gives the same numbers:
   Saliency, InputXGradient, GuidedBackprop, Deconvolution, GuidedGradCam (the auto-picked CAM
   layer), NoiseTunnel(Saliency) smoothgrad, IntegratedGradients (Gauss-Legendre). The two are
   timed alternately, `--repeat` times; the median (and min) of each and the ratio ours / Captum are printed.
2. Shared pass: the CAM stage (gradcam, gradcampp, xgradcam, layercam, hirescam) followed by the
   gradients stage (saliency, input_x_gradient) on one context, against ONE bare forward+backward
   (`engine.forward_backward` with the CAM layer and the input gradient); forward calls counted.
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

from reportgen.config import AnalysesConfig, CamConfig, Config, GradientsConfig, TargetSpec  # noqa: E402
from reportgen import methods  # noqa: E402
from reportgen.engine import forward_backward  # noqa: E402
from reportgen.layers import default_cam_layer  # noqa: E402
from reportgen.stages import gradients as G  # noqa: E402
from tests.helpers import make_context  # noqa: E402

GRADIENT_CAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")


def captum_call(method: str, model, x: torch.Tensor, targets: list[int], layer: str, args) -> torch.Tensor:
    from captum.attr import (Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients,
                             NoiseTunnel, Saliency)

    if method == "saliency":
        return Saliency(model).attribute(x, target=targets)
    if method == "input_x_gradient":
        return InputXGradient(model).attribute(x, target=targets)
    if method == "guided_backprop":
        return GuidedBackprop(model).attribute(x, target=targets)
    if method == "deconvnet":
        return Deconvolution(model).attribute(x, target=targets)
    if method == "guided_gradcam":
        return GuidedGradCam(model, model.get_submodule(layer)).attribute(x, target=targets)
    if method == "smoothgrad":  # one call on the batch: the same N x samples forward/backward passes as ours
        stdev = args.stdev * float((x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).mean())
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=args.samples,
                                                      stdevs=stdev, target=targets)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(x, target=targets, n_steps=args.steps)
    raise ValueError(method)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision classification model name")
    parser.add_argument("--images", type=int, default=4, help="batch size")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (median and min reported)")
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients steps")
    parser.add_argument("--samples", type=int, default=10, help="smoothgrad samples")
    parser.add_argument("--stdev", type=float, default=0.15, help="smoothgrad noise, fraction of the input range")
    parser.add_argument("--top", type=int, default=1, help="target ranks (top-k classes)")
    parser.add_argument("--methods", default=",".join(methods.ids("gradients")), help="comma-separated method ids")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Captum's notes about ReLU hooks and input gradients

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    ctx = make_context(model, x)
    layer = default_cam_layer(ctx.info)
    targets = ctx.targets(TargetSpec(k=args.top))
    class_sets = [[t[r] for t in targets] for r in range(args.top)]
    print(f"{args.model}, {args.images} images of {args.size}x{args.size}, top-{args.top}, {args.repeat} runs, "
          f"device {device}, {torch.get_num_threads()} threads; IG {args.steps} steps, smoothgrad {args.samples} "
          f"samples; CAM layer {layer}")
    print(f"{'method':22s} {'ours s':>9s} {'captum s':>9s} {'ratio':>7s}   (median of {args.repeat}; min in brackets)")
    for method in args.methods.split(","):
        cfg = GradientsConfig(methods=(method,), targets=TargetSpec(k=args.top), steps=args.steps,
                              samples=args.samples, stdev=args.stdev, cam_layer=layer)

        def ours():
            ctx.engine.clear()  # no pass kept from the previous run
            G.run(ctx, cfg)

        def theirs():
            for classes in class_sets:
                captum_call(method, model, x, classes, layer, args).detach().cpu().numpy()

        ours(), theirs()  # warm-up
        times_ours, times_theirs = [], []
        for _ in range(args.repeat):
            times_ours.append(timed(ours))
            times_theirs.append(timed(theirs))
        a, b = statistics.median(times_ours), statistics.median(times_theirs)
        lo_a, lo_b = min(times_ours), min(times_theirs)
        print(f"{method:22s} {a:9.3f} {b:9.3f} {a / b:7.2f}   ({lo_a:.3f} {lo_b:.3f} {lo_a / lo_b:.2f})")

    # the shared pass: gradient CAMs + saliency + input_x_gradient against one bare forward+backward
    from reportgen.stages import cam

    analyses = AnalysesConfig(cam=CamConfig(methods=GRADIENT_CAMS, target_layers=(layer,), targets=TargetSpec(k=1)),
                              gradients=GradientsConfig(methods=("saliency", "input_x_gradient")))
    shared_ctx = make_context(model, x, config=Config(analyses=analyses))

    def both():
        shared_ctx.engine.clear()
        cam.run(shared_ctx, analyses.cam)
        G.run(shared_ctx, analyses.gradients)

    def bare():
        forward_backward(model, x, [layer], class_sets[0], input_grad=True)

    both(), bare()
    counter = ForwardCounter(model)
    both()
    counter.handle.remove()
    times_both, times_bare = [], []
    for _ in range(args.repeat):
        times_both.append(timed(both))
        times_bare.append(timed(bare))
    a, b = statistics.median(times_both), statistics.median(times_bare)
    print(f"\ncam ({', '.join(GRADIENT_CAMS)}) + saliency + input_x_gradient: {counter.calls} forward call(s), "
          f"{a:.3f} s; one bare forward+backward {b:.3f} s; ratio {a / b:.2f} "
          f"(min {min(times_both):.3f} / {min(times_bare):.3f} = {min(times_both) / min(times_bare):.2f})")


if __name__ == "__main__":
    main()
