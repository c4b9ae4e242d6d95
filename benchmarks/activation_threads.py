"""Activation maximisation on one intra-op thread against two, on idle cores and beside busy ones.

    python benchmarks/activation_threads.py [--repeats 5] [--busy 0 1 2] [--threads 1 2]

Times `stages.kernels.maximize_activation` as example_configs/quickstart.yaml runs it (the shipped ShapesNet,
layer `features.2.0`, filters 0-7, 64x64, normalisation mean 0.5 std 0.25, `OptimizeConfig()` defaults),
each call in a fresh process (a build makes one call: the first one is what it pays), with torch set to
each `--threads` count and reportgen's one-thread guard (`kernels._one_thread`) switched off, so the
thread count is the only difference. With `--busy N`, N processes spinning in a Python loop run beside it
(started before, killed after each setting). Prints median, min and max seconds per setting and, per
busy level, the ratio of each thread count's median to one thread's (the baseline, measured in the same
run). Exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CALL = """
import json, sys, time, contextlib
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from reportgen.config import Normalize, OptimizeConfig
from reportgen.demo.shapes import load_model
from reportgen.stages import kernels
kernels._one_thread = lambda device: contextlib.nullcontext()  # the thread count set above holds
model = load_model({model!r}, 5)
opt = OptimizeConfig()
start = time.perf_counter()
kernels.maximize_activation(model, "features.2.0", list(range(8)), channels=3, size=(64, 64),
                            normalize=Normalize(mean=(0.5,) * 3, std=(0.25,) * 3), steps=opt.steps, lr=opt.lr,
                            jitter=opt.jitter, blur=opt.blur, blur_every=opt.blur_every, tv=opt.tv,
                            weight_decay=opt.weight_decay, seed=0)
print(json.dumps(time.perf_counter() - start))
"""


def one_call(threads: int) -> float:
    code = CALL.format(threads=threads, root=str(ROOT), model=str(ROOT / "example_configs" / "shapes" / "model.pt"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"maximize_activation, quickstart settings, {args.repeats} fresh processes per setting")
    print(f"{'busy':>4s} {'threads':>7s} {'median s':>9s} {'min':>7s} {'max':>7s} {'ratio':>6s}")
    for busy in args.busy:
        medians = {}
        for threads in args.threads:
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                times = [one_call(threads) for _ in range(args.repeats)]
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
            medians[threads] = statistics.median(times)
            base = medians.get(args.threads[0], medians[threads])
            print(f"{busy:4d} {threads:7d} {medians[threads]:9.2f} {min(times):7.2f} {max(times):7.2f} "
                  f"{medians[threads] / base:6.2f}")
    print(json.dumps({"note": "ratio: this thread count's median over the first --threads value's, same busy level"}))


if __name__ == "__main__":
    main()
