"""The report's size budget on a real model: ResNet-18 (random weights) over 4 photos with every stage.

    python benchmarks/report_size.py [--out DIR] [--budget-mb 10] [--all-methods] [--static]

Builds the report (slow on 2 CPU cores: a few minutes), prints its size, the bytes per section and per kind of
payload and per detail image, and exits 1 when the report is over budget (with `--all-methods`: every method of the
registry that applies to a ResNet, `targets: top1`, against 3 MB per detail image; their sample counts are cut, which
changes what a map shows, not what it weighs). The four inputs are matplotlib's photo of Grace Hopper
(example_configs/grace_hopper.jpg) and three variants of it (mirrored, a zoomed crop, a colour shift), so the
figures compress like photos do.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
PER_IMAGE_MB = 3.0  # the budget per detail image with every method on
# methods that do not apply to a ResNet-18 classifier: detectors' D-RISE, a vision transformer's LeGrad, the LRP rules
# that have no rule for a residual sum (each refuses such a model)
NOT_HERE = {"drise", "legrad", "lrp"}
# every method, with its sample counts cut for speed
FEW_SAMPLES = {"cam": {"sscam_samples": 1, "iscam_steps": 2, "max_channels": 64},
               "gradients": {"steps": 8, "samples": 4, "rise_masks": 100, "shapley_samples": 2, "shap_baselines": 2}}


def every(family: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from reportgen.methods import BUILT_IN
    return [m.id for m in BUILT_IN if m.family == family and m.id not in NOT_HERE]


IMAGES = ("hopper", "mirrored", "zoomed", "shifted")  # every one a detail image


def write_images(folder: Path) -> None:
    photo = Image.open(ROOT / "example_configs" / "grace_hopper.jpg").convert("RGB")
    w, h = photo.size
    shifted = np.asarray(photo).astype(np.int16)[..., [1, 2, 0]]
    variants = dict(zip(IMAGES, (
        photo,
        ImageOps.mirror(photo),
        photo.crop((w // 6, h // 8, w - w // 6, h - h // 3)).resize((w, h)),
        Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)),
    )))
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in variants.items():
        image.save(folder / f"{name}.jpg", quality=92)


def config(images: Path, out: Path, all_methods: bool, self_contained: bool) -> dict:
    shapes = ROOT / "example_configs" / "shapes"
    return {
        "title": "ResNet-18 size budget",
        "seed": 0,
        "model": {"source": "torchvision", "name": "resnet18", "weights": None, "input_size": [3, 224, 224],
                  "labels": "imagenet", "device": "cpu"},
        "inputs": {"images": [str(images)], "preprocess": {"resize": 256, "center_crop": 224, "normalize": "imagenet"},
                   "top_k": 5},
        "analyses": {
            "summary": {"depth": 3},
            "kernels": {"layers": ["conv1"]},
            "feature_maps": {"layers": ["layer1", "layer2", "layer3", "layer4"], "max_channels": 32},
            "cam": {"methods": every("cam") if all_methods else ["gradcam", "gradcampp", "layercam", "eigencam"],
                    "target_layers": ["layer4"], "targets": "top1", **(FEW_SAMPLES["cam"] if all_methods else {})},
            "gradients": {"methods": every("gradients") if all_methods else
                          ["saliency", "guided_backprop", "integrated_gradients"], "targets": "top1",
                          **(FEW_SAMPLES["gradients"] if all_methods else {})},
            "training": {"logs": [str(shapes / "train_log.csv"), str(shapes / "metrics.csv")]},
        },
        "output": {"dir": str(out), "self_contained": self_contained},
    }


def breakdown(html: str) -> list[tuple[str, int, int]]:
    """(section id, bytes, figures) for each top-level section of the page."""
    rows = []
    for match in re.finditer(r'<section id="([^"]+)"(.*?)</section>', html, re.S):
        rows.append((match.group(1), len(match.group(0).encode()), len(re.findall(r"<img ", match.group(2)))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the report here (default: a temporary folder)")
    parser.add_argument("--budget-mb", type=float, default=10.0)
    parser.add_argument("--all-methods", action="store_true", help="every CAM and gradient method, not a typical set")
    parser.add_argument("--static", action="store_true", help="static-site mode: index.html + assets/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "report"
        write_images(Path(tmp) / "images")
        path = Path(tmp) / "resnet18-size.yaml"
        path.write_text(yaml.safe_dump(config(Path(tmp) / "images", out.resolve(), args.all_methods,
                                              not args.static), sort_keys=False))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "reportgen", "build", str(path)], cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode not in (0, 1):
            return done.returncode
        page = out / ("index.html" if args.static else "report.html")
        html = page.read_text(encoding="utf-8")
        assets = sorted((out / "assets").glob("*.png")) if args.static else []
        total = len(html.encode()) + sum(p.stat().st_size for p in assets)
        embedded = sum(len(m) for m in re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", html))
        print(f"\nResNet-18, 4 images at 224x224, every stage{' (all methods)' if args.all_methods else ''}: "
              f"built in {seconds:.0f} s")
        for name, size, figures in breakdown(html):
            print(f"  {name:<14} {size / MB:7.2f} MB  {figures:4d} images")
        style = sum(len(m) for m in re.findall(r"<style>(.*?)</style>", html, re.S))
        print(f"  {'(style)':<14} {style / MB:7.2f} MB  the pictures of overlays and heat maps, each once")
        print(f"  {'(embedded PNG)':<14} {embedded / MB:7.2f} MB  of the page")
        if assets:
            print(f"  {'(assets/)':<14} {sum(p.stat().st_size for p in assets) / MB:7.2f} MB  {len(assets)} files")
        budget = (PER_IMAGE_MB * len(IMAGES) if args.all_methods else args.budget_mb) * MB
        verdict = "within" if total < budget else "OVER"
        print(f"report size {total / MB:.2f} MB, {total / len(IMAGES) / MB:.2f} MB per detail image: {verdict} the "
              f"{budget / MB:g} MB budget")
        return 0 if total < budget else 1


if __name__ == "__main__":
    sys.exit(main())
