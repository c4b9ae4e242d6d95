"""A build's threads beside a busy process: the shipped default against one thread, on idle cores and busy ones.

    python benchmarks/threads.py [--images 597] [--size 28] [--repeats 1]

An ImageFolder of scikit-learn's digits (`--images`, `--size`² PNGs) and the CNN of PyTorch's MNIST example
(random weights; benchmarks/digits.py); the config runs three CAMs (Grad-CAM, Grad-CAM++, LayerCAM) and the
evaluation at their defaults, `inputs.batch_size` at its default. Each build is `python -m reportgen build -q`
in a child process (imports included), timed under each setting:

- default: what the command line does unless told otherwise (torch's threads, OMP_WAIT_POLICY=PASSIVE);
- one thread: OMP_NUM_THREADS=1;
- spinning: torch imported before the command line runs (what the Python API gets when the user imported torch
  first, and every build before the default changed): OpenMP's own wait policy, which spins;

on idle cores and beside a busy process: one other process running a one-thread torch matmul loop
(`torch.set_num_threads(1)`), started before and stopped after each build. Each repeat runs every state and
setting once, in a seeded shuffled order (so that no setting always runs first, or right after the busy loop
ends). Prints median, min and max seconds per state and setting, the ratio of each median to one thread's in the
same state (target: busy default <= 1.1) and, on idle cores, to the best idle median (target: default <= 1.1),
and the load average before and after. Exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.digits import model_config, write_digits  # noqa: E402

BUSY = """
import sys, torch
torch.set_num_threads(1)
a = torch.randn(256, 256)
print("ready", flush=True)
while True:
    a = (a @ a).tanh_()
"""
# main() with no arguments: the command as its own process, as `python -m reportgen` runs it, but after torch
TORCH_FIRST = "import sys, torch; from reportgen.cli import main; sys.argv[0] = 'reportgen'; main()"
SETTINGS = {"default": ({}, False), "one thread": ({"OMP_NUM_THREADS": "1"}, False), "spinning": ({}, True)}


def build(config: Path, cwd: Path, env: dict[str, str], torch_first: bool) -> float:
    """Seconds of one `reportgen build -q` in a child process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_"))}
    command = ["-c", TORCH_FIRST] if torch_first else ["-m", "reportgen"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command, "build", str(config), "-q"], cwd=cwd, capture_output=True,
                          text=True, env={**clean, **env, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:  # 1: built, a stage failed (the report says which and why)
        report = cwd / "out" / "report.json"
        failed = [s for s in json.loads(report.read_text())["stages"] if s.get("status") == "failed"] \
            if report.exists() else []
        sys.exit(f"build failed ({done.returncode}): {done.stderr[-2000:]} {failed}")
    return seconds


def busy() -> subprocess.Popen:
    """The other process, once its loop runs."""
    process = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True,
                               env={k: v for k, v in os.environ.items() if not k.startswith("OMP_")})
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=597)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    load_before = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_digits(root, args.images, args.size)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({
            "title": "digits", "model": model_config(args.size),
            "inputs": {"images": [str(folder)], "preprocess": {"normalize": "none"}},
            "analyses": {"cam": {"methods": ["gradcam", "gradcampp", "layercam"]}, "evaluation": {}},
            "output": {"dir": str(root / "out")}}, sort_keys=False))
        for repeat in range(args.repeats):
            runs = [(state, setting) for state in ("idle", "busy") for setting in SETTINGS]
            random.Random(repeat).shuffle(runs)
            for state, setting in runs:
                env, torch_first = SETTINGS[setting]
                other = busy() if state == "busy" else None
                try:
                    times.setdefault((state, setting), []).append(build(config, root, env, torch_first))
                finally:
                    if other is not None:
                        other.kill()
                        other.wait()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.images} digits at {args.size}², 3 CAMs + evaluation, {cores} cores, {args.repeats} repeat(s)")
    print(f"\n{'state':6s} {'setting':11s} {'median s':>9s} {'min':>7s} {'max':>7s} {'÷ 1 thread':>11s} {'÷ best idle':>12s}")
    medians = {key: statistics.median(values) for key, values in times.items()}
    best_idle = min(m for (state, _), m in medians.items() if state == "idle")
    for (state, setting), values in times.items():
        median = medians[(state, setting)]
        versus_best = f"{median / best_idle:12.2f}" if state == "idle" else f"{'':>12s}"
        print(f"{state:6s} {setting:11s} {median:9.2f} {min(values):7.2f} {max(values):7.2f} "
              f"{median / medians[(state, 'one thread')]:11.2f} {versus_best}")
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); targets: busy default "
          "÷ 1 thread <= 1.1, idle default ÷ best idle <= 1.1")


if __name__ == "__main__":
    main()
