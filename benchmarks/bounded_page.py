"""The bounded page: ResNet-18 over a data set of N photos against a build over only the images it details.

    python benchmarks/bounded_page.py [--images 2000] [--size 224] [--batch-size 32] [--threads 2]

Writes N variants of matplotlib's photo of Grace Hopper (seeded crops, flips and colour shifts, so that figures
compress like photos) and a manifest with a seeded random ImageNet class per image, then builds ResNet-18
(random weights, ImageNet labels, 224²) with every stage at its default methods (summary, dataset, kernels,
feature maps, cam, gradients; `report.detail` at its defaults) over all N (the whole data set), and again
over only the images that build chose to detail (the baseline, measured in the same run). Prints both
pages' sizes and their ratio, report.json's and images.jsonl's sizes, and the builds' wall times. Targets
(the issue): the page under 10 MB, at most 1.15x the baseline's; report.json under 5 MB. Exits 1 when a
target is missed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
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


def write_images(folder: Path, n: int) -> Path:
    """n photo variants and manifest.csv (path, label): seeded."""
    rng = np.random.default_rng(0)
    photo = Image.open(ROOT / "example_configs" / "grace_hopper.jpg").convert("RGB")
    w, h = photo.size
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        x0, y0 = rng.integers(0, w // 4), rng.integers(0, h // 4)
        image = photo.crop((x0, y0, x0 + w * 3 // 4, y0 + h * 3 // 4))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        pixels = np.asarray(image).astype(np.float32) * rng.uniform(0.7, 1.3, size=3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((256, 256)).save(
            folder / f"img{i:05d}.jpg", quality=90)
        rows.append((f"img{i:05d}.jpg", int(rng.integers(0, 1000))))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return manifest


def config(manifest: Path, out: Path, size: int, batch_size: int) -> dict:
    return {
        "title": "bounded page",
        "model": {"source": "torchvision", "name": "resnet18", "weights": None, "input_size": [3, size, size],
                  "labels": "imagenet", "device": "cpu"},
        "inputs": {"images": [str(manifest)], "preprocess": {"normalize": "imagenet"}, "batch_size": batch_size},
        "analyses": {"summary": {}, "dataset": {}, "kernels": {}, "feature_maps": {}, "cam": {}, "gradients": {}},
        "output": {"dir": str(out)},
    }


def build(cfg: dict, path: Path, threads: int) -> float:
    path.write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reportgen", "build", str(path), "-q"], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if done.returncode != 0:
        sys.exit(f"build failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_images(tmp / "images", args.images)
        whole = config(manifest, tmp / "all", args.size, args.batch_size)
        seconds = build(whole, tmp / "all.yaml", args.threads)
        records = [json.loads(line) for line in (tmp / "all" / "images.jsonl").read_text().splitlines()]
        chosen = {r["name"] for r in records if r["detail"]}
        with manifest.open() as handle:
            rows = [row for row in csv.DictReader(handle) if Path(row["path"]).stem in chosen]
        few = tmp / "images" / "detail.csv"
        with few.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
        baseline = build(config(few, tmp / "few", args.size, args.batch_size), tmp / "few.yaml", args.threads)
        page, alone = ((tmp / d / "report.html").stat().st_size for d in ("all", "few"))
        report_json = (tmp / "all" / "report.json").stat().st_size
        jsonl = (tmp / "all" / "images.jsonl").stat().st_size
    ratio = page / alone
    print(f"ResNet-18 at {args.size}², every stage at default methods, batch {args.batch_size}, {args.threads} threads")
    print(f"{'build':>28s} {'images':>7s} {'detail':>7s} {'wall s':>7s} {'page MB':>8s}")
    print(f"{'the whole data set':>28s} {len(records):7d} {len(chosen):7d} {seconds:7.1f} {page / MB:8.2f}")
    print(f"{'only its detail images':>28s} {len(rows):7d} {len(rows):7d} {baseline:7.1f} {alone / MB:8.2f}")
    print(f"page ratio {ratio:.3f} (target <= 1.15), page {page / MB:.2f} MB (target < 10), report.json "
          f"{report_json / MB:.2f} MB (target < 5), images.jsonl {jsonl / MB:.2f} MB")
    return 0 if ratio <= 1.15 and page < 10 * MB and report_json < 5 * MB else 1


if __name__ == "__main__":
    sys.exit(main())
