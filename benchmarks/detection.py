"""Grad-CAM of every detected box: reportgen's box scores against pytorch-grad-cam 1.5.7's per-box loop, in one run.

    python benchmarks/detection.py [--images 8] [--size 320] [--boxes 8] [--repeats 1] [--threads N]

Faster R-CNN MobileNet-320 (`fasterrcnn_mobilenet_v3_large_320_fpn`, random seeded weights, no download,
`box_score_thresh=0`: random weights detect nothing at the default threshold), random images, each image's
`--boxes` best detections as targets, Grad-CAM on `backbone.body.16` (the body's last block). Timed, in this order:

(a) pytorch-grad-cam, per box: one `GradCAM` object, one call per (image, box) with
    `FasterRCNNBoxScoreTarget([label], [box])` (its tutorial's target, one box at a time): images × boxes calls,
    each a forward and a backward;
(b) pytorch-grad-cam, per box rank: one call per rank j on the whole batch, image i targeting its box j (the
    best one can do with its API): boxes calls;
(c) reportgen: `BoxScores` as the engine's forward, `dispatch.explain(("gradcam",), ...)`: ONE forward of the
    batch and one backward per box rank, from the body's last block.

Finding the boxes (one forward without autograd) is common to all and timed apart. Prints seconds (median over
repeats), the speed-ups (a)/(c) and (b)/(c), and the max |difference| of the maps of (c) and (a), (c) and (b).
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
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget  # noqa: E402

from reportgen.engine import Engine  # noqa: E402
from reportgen.methods.boxes import BoxScores  # noqa: E402
from reportgen.methods.dispatch import Settings, explain  # noqa: E402

LAYER = "backbone.body.16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--boxes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91,
                                                  box_score_thresh=0).eval()
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    layer = model.get_submodule(LAYER)

    start = time.perf_counter()
    scores = BoxScores.of_detections(model, x, max_boxes=args.boxes)
    find = time.perf_counter() - start
    counts = [len(b) for b in scores.boxes]
    print(f"{args.images} images at {args.size}², boxes per image {counts}, {torch.get_num_threads()} threads; "
          f"finding the boxes: {find:.2f} s")

    def per_box() -> torch.Tensor:  # (J, N, H, W)
        out = torch.zeros(scores.width, *x.shape[:1], *x.shape[2:])
        with GradCAM(model, [layer]) as cam:
            for i in range(len(x)):
                for j in range(counts[i]):
                    target = FasterRCNNBoxScoreTarget(scores.labels[i][j:j + 1], scores.boxes[i][j:j + 1])
                    out[j, i] = torch.from_numpy(cam(x[i:i + 1], [target])[0])
        return out

    def per_rank() -> torch.Tensor:
        with GradCAM(model, [layer]) as cam:
            return torch.stack([torch.from_numpy(cam(x, [FasterRCNNBoxScoreTarget(
                scores.labels[i][j:j + 1], scores.boxes[i][j:j + 1]) for i in range(len(x))])) for j in range(scores.width)])

    def ours() -> torch.Tensor:
        engine = Engine(model, x, forward=scores)
        explained = explain(("gradcam",), engine, scores.ranks(), Settings(layers=(LAYER,)))
        assert len(engine.cached_passes()) == scores.width  # one forward, one backward per rank
        return explained.cam.final[LAYER][0]

    times: dict[str, list[float]] = {"pgc per box": [], "pgc per rank": [], "reportgen": []}
    maps = {}
    for _ in range(args.repeats):
        for name, fn in (("pgc per box", per_box), ("pgc per rank", per_rank), ("reportgen", ours)):
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                maps[name] = fn()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    calls = {"pgc per box": sum(counts), "pgc per rank": scores.width, "reportgen": 1}
    print(f"\n{'Grad-CAM of every box':24s} {'seconds':>8s} {'calls':>6s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name in times:
        diff = float((maps[name] - maps["reportgen"]).abs().max())
        print(f"{name:24s} {median[name]:8.2f} {calls[name]:6d} {median[name] / median['reportgen']:8.2f}x "
              f"{diff:11.1e}")


if __name__ == "__main__":
    main()
