"""The whole build of ResNet-50 over 8 images with every cheap stage, against a bare forward+backward, in one run.

    python benchmarks/whole_build.py [--repeats 5] [--threads N] [--images 8] [--size 224] [--keep DIR]
                                     [--device cpu]

Writes into a temporary folder, once: a state_dict of a seeded random torchvision resnet50 (`checkpoint.pt`; no
network), --images seeded random-noise PNGs of --size², and a config: torchvision resnet50 with that
`checkpoint:`, labels imagenet, analyses summary, kernels (conv1), feature_maps (layer1..layer4), cam (gradcam,
gradcampp, xgradcam, layercam, hirescam, eigengradcam on layer4, top1) and gradients (saliency,
input_x_gradient, guided_backprop). Then, --repeats times, interleaved so that a busy moment of a shared
machine hits both:

- build: the wall time of `reportgen build CONFIG -o <fresh dir> -q` as a subprocess (interpreter start and
  imports included); each run's report.json "stages" gives the per-stage seconds;
- bare pass (the baseline): in THIS process, after one warm-up, one forward and `backward()` of
  Σ_i logit[i, c_i] (parameter gradients included) of the same batch (N×3×size×size) through the same
  model in eval mode, with the same intra-op thread count as the build subprocess.

Printed: the build's median wall as a multiple of the bare pass's median (the issue's ratio; target ≤ 4×), and
a breakdown of the build: import time (`python -c "import reportgen.pipeline; os._exit(0)"` as a subprocess:
interpreter start and imports, not the interpreter's teardown, which the CLI skips as well), model load
time (a subprocess that imports reportgen.pipeline, then times `load_model` alone), the per-stage seconds, and
the rest (wall − imports − model load − stages: reading images, the layer description, rendering, writing).
With --threads N the subprocesses get OMP_NUM_THREADS=N and this process `torch.set_num_threads(N)`; without
it both keep torch's default. Load averages before and after are printed: on a shared machine compare the
ratio of one run, and the ratio of the minimums (each side at its least contended) beside the medians' ratio:
contention slows the two-thread bare pass more than the build (OpenMP threads spin), so a busy run's medians
flatter the build. Exits 0, or 1 when a build fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, record_stages  # benchmarks/common.py

ROOT = Path(__file__).resolve().parent.parent
TARGET = 4.0  # the issue: the whole build ≤ 4× the bare pass
CAMS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam"]
GRADIENTS = ["saliency", "input_x_gradient", "guided_backprop"]
LOAD_MODEL = """
import sys, time
import reportgen.pipeline
from reportgen.config import load_config
from reportgen.models import load_model
cfg = load_config(sys.argv[1])
start = time.perf_counter()
load_model(cfg.model, base_dir=cfg.source.parent)
print(time.perf_counter() - start)
"""


def reportgen_command() -> list[str]:
    """The console script next to this interpreter, else `python -m reportgen` (same code, same imports)."""
    script = Path(sys.executable).with_name("reportgen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reportgen"]


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    begin = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def write_inputs(folder: Path, images: int, size: int, device: str = "cpu") -> Path:
    """The checkpoint, the images and the config; returns the config's path."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), folder / "checkpoint.pt")
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    for i in range(images):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"img{i}.png")
    config = folder / "config.yaml"
    config.write_text(f"""title: ResNet-50, whole build benchmark
seed: 0
model:
  source: torchvision
  name: resnet50
  checkpoint: checkpoint.pt
  input_size: [3, {size}, {size}]
  labels: imagenet
  device: {device}
inputs:
  images: [images/*.png]
  preprocess: {{normalize: imagenet}}
analyses:
  summary: {{depth: 3}}
  kernels: {{layers: [conv1]}}
  feature_maps: {{layers: [layer1, layer2, layer3, layer4]}}
  cam: {{methods: [{', '.join(CAMS)}], target_layers: [layer4], targets: top1}}
  gradients: {{methods: [{', '.join(GRADIENTS)}]}}
output:
  dir: out
""")
    return config


def bare_pass(folder: Path, images: int, size: int, threads: int | None, device: str = "cpu"):
    """A callable timing one forward + backward of the batch through the checkpoint's resnet50 (eval mode)."""
    import torch
    import torchvision

    if threads is not None:
        torch.set_num_threads(threads)
    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(folder / "checkpoint.pt", weights_only=True))
    model.eval().to(device)
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        classes = model(x).argmax(1).view(-1, 1)

    def once() -> float:
        begin = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(x).gather(1, classes).sum().backward()
        model.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - begin

    once()  # warm-up
    return once, torch.get_num_threads()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="builds (and bare passes, imports, loads) to time")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the subprocesses and torch threads here (default: torch's)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--keep", type=Path, default=None, help="copy the last build's output here")
    parser.add_argument("--device", default="cpu", help="the config's model.device and the bare pass's: cpu or cuda")
    args = parser.parse_args()

    env = dict(os.environ)
    # this checkout's reportgen, whatever copy is installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    build = reportgen_command()
    imports = [sys.executable, "-c", "import os, reportgen.pipeline; os._exit(0)"]
    print(f"load average before {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="reportgen-whole-build-") as tmp:
        folder = Path(tmp)
        config = write_inputs(folder, args.images, args.size, args.device)
        bare, threads = bare_pass(folder, args.images, args.size, args.threads, args.device)
        print(f"build:     {' '.join(build)} build <tmp>/config.yaml -o <tmp>/runN -q  (subprocess)")
        print(f"baseline:  bare forward+backward of {args.images}x3x{args.size}x{args.size}, resnet50, in-process "
              f"after one warm-up, {threads} threads, device {args.device}")
        print(f"{args.repeats} repeats, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')}")
        run(imports, env)  # warm the file cache once
        walls, bares, importing, loading, others = [], [], [], [], []
        stages: dict[str, list[float]] = {}
        for index in range(args.repeats):
            bares.append(bare())
            importing.append(run(imports, env)[0])
            loading.append(float(run([sys.executable, "-c", LOAD_MODEL, str(config)], env)[1].split()[-1]))
            out = folder / f"run{index}"
            try:
                walls.append(run([*build, "build", str(config), "-o", str(out), "-q"], env)[0])
            except RuntimeError as error:
                print(f"build {index + 1} failed: {error}", file=sys.stderr)
                return 1
            recorded = record_stages(out, stages)
            staged = sum(float(stage["seconds"]) for stage in recorded)
            others.append(walls[-1] - importing[-1] - loading[-1] - staged)
            print(f"  run {index + 1}: build {walls[-1]:6.2f} s, bare {bares[-1]:5.2f} s, import {importing[-1]:5.2f} s, "
                  f"load {loading[-1]:5.2f} s, " + ", ".join(f"{s['name']} {float(s['seconds']):.2f}" for s in recorded),
                  flush=True)
        if args.keep:
            shutil.copytree(folder / f"run{args.repeats - 1}", args.keep, dirs_exist_ok=True)

    print_table([("build wall (subprocess)", walls), ("  import reportgen.pipeline", importing),
                 ("  load_model", loading)] + [("  stage " + name, values) for name, values in stages.items()]
                + [("  other (start, images, render)", others), ("baseline: bare forward+backward", bares)], width=32)
    ratio = statistics.median(walls) / statistics.median(bares)
    print(f"\nwhole build / bare pass: {ratio:.1f}x (medians; target <= {TARGET:g}x; per run: "
          + ", ".join(f"{w / b:.1f}" for w, b in zip(walls, bares)) + ")")
    print(f"least contended (min / min): {min(walls) / min(bares):.1f}x")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
