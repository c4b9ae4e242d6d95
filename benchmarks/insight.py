"""What `analyses.insight` (SpRAy per class) adds to a build: 1 600 shapes (64 px, the shipped model, true classes in
a manifest), a build of `summary`, `dataset` and Grad-CAM, then the same build with `insight` (its defaults: 32² maps,
k = 10, clusters from the eigengap, by predicted class), each in a child process (`reportgen build -q`), alternating,
`--repeats` times. Prints the wall time of each (median, min, max), the insight stage's own seconds from report.json,
the ratio of the medians (the issue's target: at most 1.15) and the child's peak RSS.

    python benchmarks/insight.py [--images 1600] [--repeats 3] [--threads 2] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, record_stages  # noqa: E402
from reportgen.demo import shapes  # noqa: E402

SHAPES = ROOT / "example_configs" / "shapes"


def config_text(manifest: Path, out: Path, batch_size: int, insight: bool) -> str:
    stages = "  summary: {}\n  dataset: {}\n  cam: {methods: [gradcam], target_layers: [features.3]}\n"
    return (f"title: insight benchmark\nseed: 0\n"
            f"model: {{source: module, factory: 'reportgen.demo.shapes:build_model', kwargs: {{num_classes: 5}},\n"
            f"        checkpoint: '{SHAPES / 'model.pt'}', input_size: [3, 64, 64], labels: '{SHAPES / 'labels.txt'}',"
            f" device: cpu}}\n"
            f"inputs: {{images: ['{manifest}'], batch_size: {batch_size},\n"
            f"         preprocess: {{normalize: {{mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}}}}}\n"
            f"analyses:\n{stages}" + ("  insight: {}\n" if insight else "") + f"output: {{dir: '{out}'}}\n")


def build(config: Path, threads: int) -> tuple[float, int]:
    """(wall seconds, peak RSS in kB) of `reportgen build` in a fresh child process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    code = ("import resource, sys; from reportgen.cli import main\n"
            "try:\n main(['build', sys.argv[1], '-q'])\nexcept SystemExit as exit:\n"
            " code = exit.code\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"build failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        batch = shapes.generate(args.images, 4242)
        rows = ["path,label"]
        for i in range(args.images):
            Image.fromarray(batch.images[i]).save(folder / f"s{i:05d}.png")
            rows.append(f"s{i:05d}.png,{int(batch.labels[i])}")
        manifest = folder / "set.csv"
        manifest.write_text("\n".join(rows) + "\n")
        configs = {}
        for name, insight in (("without insight", False), ("with insight", True)):
            configs[name] = folder / f"{insight}.yaml"
            configs[name].write_text(config_text(manifest, folder / f"out-{insight}", args.batch_size, insight))
        walls: dict[str, list[float]] = {name: [] for name in configs}
        peaks: dict[str, int] = {}
        stages: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, config in configs.items():
                seconds, peak = build(config, args.threads)
                walls[name].append(seconds)
                peaks[name] = max(peaks.get(name, 0), peak)
                if name == "with insight":
                    record_stages(folder / "out-True", stages)
        entry = json.loads((folder / "out-True" / "report.json").read_text())["insight"]
    print(f"{args.images} shapes at 64 px, {args.threads} threads, batch {args.batch_size}, {args.repeats} repeats")
    print_table([(name, values) for name, values in walls.items()] + [("insight stage", stages.get("insight", [0]))])
    ratio = statistics.median(walls["with insight"]) / statistics.median(walls["without insight"])
    print(f"\nwith / without insight: {ratio:.3f} (target <= 1.15)")
    print("peak RSS (MB): " + ", ".join(f"{name} {peak / 1024:.0f}" for name, peak in peaks.items()))
    print("classes: " + ", ".join(f"{c['label']} {c['images']} images, {c['clusters']} clusters"
                                  for c in entry["classes"]))


if __name__ == "__main__":
    main()
