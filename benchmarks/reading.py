"""Reading the images against the model: the forward-only first pass at `batch_size: 8` against a bare forward.

    python benchmarks/reading.py [--images 597] [--size 28] [--batch-size 8] [--repeats 5]

An ImageFolder of scikit-learn's digits (`--images` of them, `--size`² PNGs, benchmarks/digits.py) and the
CNN of PyTorch's MNIST example (random weights). Timed in this process (torch's threads, OMP_WAIT_POLICY=PASSIVE
unless set, as `reportgen build` runs), each `--repeats` times, alternating:

(a) the build's first pass (`collection.collect`): every image read and prepared (`datasets.scan`) and the
    forward (no grad) in batches of `--batch-size`: what a build pays before any stage;
(b) the baseline, measured in the same run: the same forward in the same batches over the same tensors, read
    beforehand (a bare loop of `torch.stack` and the model's forward).

(c) reading alone: `datasets.read_entry` over every image in this thread, no model.

Prints median, min and max seconds of each, the ratio of the medians (a)/(b) (target <= 1.1) and a lower bound
on that ratio that no schedule of reading and forward can beat on this machine: the CPU seconds
(`time.process_time`, every thread of the process) of (b) plus those of (c), spread over the usable cores
without any loss, divided by (b)'s wall time. The bound counts the work, not how it is arranged: a ratio near
it means what is left is reading's own cost, not the way reading and the model share the cores. Exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `reportgen build` runs (README, "Threads"): before torch
import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table  # noqa: E402
from benchmarks.digits import model_config, write_digits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=597)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from reportgen import datasets
    from reportgen.collection import collect
    from reportgen.config import load_config
    from reportgen.pipeline import prepare_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_digits(root, args.images, args.size)
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump({
            "model": model_config(args.size),
            "inputs": {"images": [str(folder)], "preprocess": {"normalize": "none"}, "batch_size": args.batch_size},
            "analyses": {"summary": {}}, "output": {"dir": str(root / "out")}}))
        sys.path.insert(0, tmp)  # digitsnet.py
        config = load_config(path)
        info, loaded = prepare_model(config)
        device = loaded.device
        first = collect(config, info, device)  # warms the caches (and the files) up
        tensors = [first.read(i)[1] for i in range(len(first))]

        def bare() -> torch.Tensor:
            out = []
            with torch.no_grad():
                for lo in range(0, len(tensors), args.batch_size):
                    out.append(info.forward(torch.stack(tensors[lo:lo + args.batch_size]).to(device)).float().cpu())
            return torch.cat(out)

        entries = datasets.select(config, info.labels, info.num_classes)

        def read_alone() -> None:
            for entry in entries:
                datasets.read_entry(entry, config, info.preprocess)

        assert torch.allclose(bare(), first.logits[:], atol=1e-5)
        runs = {"first pass (read + forward)": lambda: collect(config, info, device),
                "bare forward, preloaded": bare, "reading alone, one thread": read_alone}
        timed: dict[str, list[float]] = {label: [] for label in runs}
        cpu: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeats):  # alternated, so that a change in the machine's load hits all
            for label, run in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                timed[label].append(time.perf_counter() - start)
                cpu[label].append(time.process_time() - start_cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"{len(tensors)} digits at {args.size}², batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{cores} usable cores")
    print_table(list(timed.items()))
    bare_s = statistics.median(timed["bare forward, preloaded"])
    ratio = statistics.median(timed["first pass (read + forward)"]) / bare_s
    work = statistics.median(cpu["bare forward, preloaded"]) + statistics.median(cpu["reading alone, one thread"])
    print(f"\nCPU seconds (median): bare forward {statistics.median(cpu['bare forward, preloaded']):.3f}, reading "
          f"alone {statistics.median(cpu['reading alone, one thread']):.3f}")
    print(f"first pass / bare forward: {ratio:.2f} (target <= 1.1); lower bound on this machine "
          f"(CPU s of both / {cores} cores / bare wall s): {work / cores / bare_s:.2f}; "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
