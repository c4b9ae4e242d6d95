"""A build over a data set: throughput, peak memory and page size as the number of images grows.

    python benchmarks/dataset.py [--counts 100 400 1600] [--size 96] [--batch-size 16] [--threads 2]
    python benchmarks/dataset.py --manifest-rows 200000 [--threads 2]

One config (torchvision ResNet-18, random weights, 10 classes, input `--size`², feature maps, three gradient
CAMs (Grad-CAM, Grad-CAM++, LayerCAM), saliency and input × gradient) built over N images that the benchmark
generates (an ImageFolder of 10 class folders), each build in a child process (`reportgen build -q`). Per
N it prints the build's wall time, images per second, the child's peak RSS (`ru_maxrss`), report.html's
size, and, as the baseline measured in the same run, the throughput of a bare forward + backward of the
same model at the same batch size and thread count (in a child process too) and the child's peak RSS
right after the model is loaded (the floor every build pays). Ratios: throughput ÷ the bare pass's, peak
RSS ÷ the smallest N's, time per image ÷ the previous N's. Exits 0.

`--manifest-rows R` measures what a build keeps per image, not what it computes: a CSV manifest of R rows
(path, label), each its own symbolic link to one of eight real 16×16 images (a manifest's repeated rows are
one image), the shipped shapes network (random weights, 32×32 input),
the data-set analysis (`analyses.dataset`) and the default outputs (arrays.npz, images.jsonl). It builds the
same config over 2 rows, the baseline, then over R, each in a child process, and prints both peak RSS and
their ratio (the target is at most 1.25).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

BARE = """
import resource, sys, time, torch, torchvision
torch.set_num_threads({threads})
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10).eval()
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = torch.randn({batch}, 3, {size}, {size})
def step():
    xi = x.clone().requires_grad_()
    model(xi)[:, 0].sum().backward()
step()
start = time.perf_counter()
for _ in range({repeats}):
    step()
seconds = (time.perf_counter() - start) / {repeats}
print(f"{{{batch} / seconds}} {{loaded}}")
"""


def make_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = folder / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(cls / f"img{i:05d}.png")


def config_text(images: Path, out: Path, size: int, batch_size: int) -> str:
    return f"""title: data set benchmark
model: {{source: torchvision, name: resnet18, kwargs: {{num_classes: 10}}, input_size: [3, {size}, {size}],
        labels: null, device: cpu}}
inputs: {{images: ["{images}"], preprocess: {{normalize: imagenet}}, batch_size: {batch_size}}}
analyses:
  feature_maps: {{}}
  cam: {{methods: [gradcam, gradcampp, layercam]}}
  gradients: {{methods: [saliency, input_x_gradient]}}
output: {{dir: "{out}"}}
"""


def build(config: Path, threads: int) -> tuple[float, int]:
    """(wall seconds, peak RSS in kB) of `reportgen build` in a fresh child process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    code = ("import resource, sys; from reportgen.cli import main\n"
            "try:\n main(['build', sys.argv[1], '-q'])\nexcept SystemExit as exit:\n code = exit.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"build failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, int(done.stdout.strip().splitlines()[-1])


MANIFEST_CONFIG = """title: manifest benchmark
model: {{source: module, factory: "reportgen.demo.shapes:build_model", kwargs: {{num_classes: 5}},
        input_size: [3, 32, 32], labels: null, device: cpu}}
inputs: {{images: ["{manifest}"], preprocess: {{normalize: {{mean: 0.5, std: 0.25}}}}, batch_size: 256}}
analyses: {{dataset: {{}}}}
output: {{dir: "{out}"}}
"""


def manifest_rows(rows: int, threads: int) -> None:
    """Peak RSS of a build over `rows` manifest rows ÷ that over 2 rows (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        peaks = {}
        links = folder / "links"
        links.mkdir()
        for i in range(rows):
            (links / f"{i}.png").symlink_to(folder / f"img{i % 8}.png")
        for n in (2, rows):
            manifest = folder / f"rows{n}.csv"
            with manifest.open("w") as f:
                f.write("path,label\n")
                f.writelines(f"links/{i}.png,{i % 5}\n" for i in range(n))
            config = folder / f"rows{n}.yaml"
            config.write_text(MANIFEST_CONFIG.format(manifest=manifest, out=folder / f"out{n}"))
            seconds, peaks[n] = build(config, threads)
            print(f"{n:8d} rows: {seconds:7.1f} s, peak RSS {peaks[n] / 1024:7.0f} MB")
        print(f"peak RSS at {rows} rows ÷ at 2 rows: {peaks[rows] / peaks[2]:.2f} (target ≤ 1.25)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--manifest-rows", type=int, help="measure memory over a manifest of this many rows")
    args = parser.parse_args()
    if args.manifest_rows:
        return manifest_rows(args.manifest_rows, args.threads)
    bare = subprocess.run([sys.executable, "-c", BARE.format(threads=args.threads, batch=args.batch_size,
                                                             size=args.size, repeats=5)],
                          capture_output=True, text=True, check=True)
    bare_rate, loaded_kb = (float(v) for v in bare.stdout.split())
    print(f"ResNet-18 at {args.size}², batch {args.batch_size}, {args.threads} threads; bare forward+backward "
          f"{bare_rate:.1f} images/s; RSS after loading the model {loaded_kb / 1024:.0f} MB")
    print(f"{'images':>7s} {'build s':>8s} {'img/s':>7s} {'÷ bare':>7s} {'peak RSS MB':>12s} {'÷ first':>8s} "
          f"{'s/img ÷ prev':>13s} {'page MB':>8s}")
    first_rss, previous = None, None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            images, out = Path(tmp) / f"images{n}", Path(tmp) / f"out{n}"
            make_images(images, n, args.size)
            config = Path(tmp) / f"config{n}.yaml"
            config.write_text(config_text(images, out, args.size, args.batch_size))
            seconds, rss = build(config, args.threads)
            first_rss = first_rss or rss
            per_image = seconds / n
            growth = f"{per_image / previous:13.2f}" if previous else f"{'':>13s}"
            previous = per_image
            page = (out / "report.html").stat().st_size / 1e6
            print(f"{n:7d} {seconds:8.1f} {n / seconds:7.1f} {n / seconds / bare_rate:7.2f} {rss / 1024:12.0f} "
                  f"{rss / first_rss:8.2f} {growth} {page:8.1f}")
    print(json.dumps({"note": "peak RSS from ru_maxrss of each child (kB on Linux)"}))


if __name__ == "__main__":
    main()
