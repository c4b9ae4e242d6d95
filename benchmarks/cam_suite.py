"""Six gradient CAMs: reportgen's engine against pytorch-grad-cam 1.5.7, against a bare pass, in one run.

    python benchmarks/cam_suite.py [--model resnet50] [--images 8] [--size 224] [--repeats 3]
                                   [--layer NAME] [--threads N] [--device cpu] [--no-reference]

Random-weight torchvision model (no download), random inputs, the auto-picked CAM layer (`layer4` for
ResNets) unless `--layer`, each image's top-1 class as target. Each repeat times, in this order:

(a) bare: one forward and `backward()` of Σ_i logit[i, c_i] (parameter gradients included, as a
    training step or pytorch-grad-cam's own `loss.backward()` computes them);
(b) pytorch-grad-cam: GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenGradCAM one after
    another, each `with Method(model, [layer]) as cam: cam(x, targets)` (its `grayscale_cam`);
(c) reportgen: `methods.cam.compute_maps` for the same six methods, copied to numpy.

Prints the median (and min) seconds of each, the ratios (b)/(a) and (c)/(a), the speed-up (b)/(c), and
the largest difference between the two maps for the five methods with a defined sign (EigenGrad-CAM's
principal component has an arbitrary sign; tests/test_cam.py compares it both ways). Also shown: a
forward pass alone without autograd, for scale. The machine may be shared: compare ratios of one run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reportgen.config import Config  # noqa: E402
from reportgen.layers import default_cam_layer  # noqa: E402
from reportgen.methods.cam import compute_maps  # noqa: E402
from tests.helpers import make_context  # noqa: E402

SIX = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam")


def reference_classes():
    import pytorch_grad_cam as pgc

    return {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
            "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "eigengradcam": pgc.EigenGradCAM}


def bare(model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(x)
    logits.gather(1, torch.tensor(classes, device=x.device).view(-1, 1)).sum().backward()
    model.zero_grad(set_to_none=True)


def forward_only(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def theirs(model: torch.nn.Module, x: torch.Tensor, layer: str, classes: list[int]) -> dict:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = {}
    targets = [ClassifierOutputTarget(c) for c in classes]
    for method, cls in reference_classes().items():
        with cls(model, [model.get_submodule(layer)]) as cam:
            out[method] = cam(x, targets)  # (N, H, W) float32
    model.zero_grad(set_to_none=True)
    return out


def ours(model: torch.nn.Module, x: torch.Tensor, layer: str, classes: list[int]) -> dict:
    computed = compute_maps(model, x, [layer], SIX, [classes])
    final = computed.final[layer][:, 0].cpu().numpy()  # (6, N, H, W)
    return {method: final[m] for m, method in enumerate(computed.methods)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision.models name (random weights)")
    parser.add_argument("--images", type=int, default=8, help="batch size")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of (a), (b), (c)")
    parser.add_argument("--layer", default=None, help="CAM target layer (default: the auto-picked one)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-reference", action="store_true", help="leave out (b), where pytorch-grad-cam is missing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = getattr(torchvision.models, args.model)().eval().to(device)
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    ctx = make_context(model, x[:1], config=Config())
    layer = args.layer or default_cam_layer(ctx.info)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    print(f"{args.model}, {args.images} images at {args.size}x{args.size}, layer `{layer}`, device {device}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps = {
        "(a) bare forward+backward": lambda: bare(model, x, classes),
        "(b) pytorch-grad-cam, six methods": lambda: theirs(model, x, layer, classes),
        "(c) reportgen, six methods": lambda: ours(model, x, layer, classes),
        "    forward alone, no autograd": lambda: forward_only(model, x),
    }
    if args.no_reference:
        del steps["(b) pytorch-grad-cam, six methods"]
    for step in steps.values():  # warm-up (allocator, oneDNN kernels)
        with contextlib.redirect_stderr(io.StringIO()):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    results = {}
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            value = step()
            sync()
            times[name].append(time.perf_counter() - start)
            results[name] = value
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:36s} median {median[name]:8.3f} s   min {min(t):8.3f} s")
    a, c = median["(a) bare forward+backward"], median["(c) reportgen, six methods"]
    print(f"reportgen        / bare pass: {c / a:5.2f}x   (target <= 1.3x)")
    if args.no_reference:
        return 0
    b = median["(b) pytorch-grad-cam, six methods"]
    print(f"pytorch-grad-cam / bare pass: {b / a:5.2f}x")
    print(f"reportgen is {b / c:.1f}x faster than pytorch-grad-cam (target >= 3.5x)")
    theirs_maps, ours_maps = results["(b) pytorch-grad-cam, six methods"], results["(c) reportgen, six methods"]
    diffs = {m: float(abs(ours_maps[m] - theirs_maps[m]).max()) for m in SIX if m != "eigengradcam"}
    print("max |reportgen - pytorch-grad-cam|: " + ", ".join(f"{m} {d:.1e}" for m, d in diffs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
