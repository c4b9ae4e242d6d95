"""Reading the images against the model: the forward-only first pass at `batch_size: 8` against a bare forward.

    python benchmarks/reading.py [--images 597] [--size 28] [--batch-size 8] [--repeats 5]

An ImageFolder of scikit-learn's digits (`--images` of them, `--size`² PNGs, benchmarks/digits.py) and the
CNN of PyTorch's MNIST example (random weights). Timed in this process (torch's threads, OMP_WAIT_POLICY=PASSIVE
unless set, as `reportgen build` runs), each `--repeats` times, alternating:

(a) the build's first pass (`collection.collect`): every image read and prepared (`datasets.scan`) and the
    forward (no grad) in batches of `--batch-size`: what a build pays before any stage;
(b) the baseline, measured in the same run: the same forward in the same batches over the same tensors, read
    beforehand (a bare loop of `torch.stack` and the model's forward).

Prints median, min and max seconds of each and the ratio of the medians (a)/(b) (target <= 1.1). Exits 0.
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

        assert torch.allclose(bare(), first.logits[:], atol=1e-5)
        timed: dict[str, list[float]] = {"first pass (read + forward)": [], "bare forward, preloaded": []}
        for _ in range(args.repeats):  # alternated, so that a change in the machine's load hits both
            for label, run in (("first pass (read + forward)", lambda: collect(config, info, device)),
                               ("bare forward, preloaded", bare)):
                start = time.perf_counter()
                run()
                timed[label].append(time.perf_counter() - start)
    print(f"{len(tensors)} digits at {args.size}², batch {args.batch_size}, {torch.get_num_threads()} threads")
    print_table(list(timed.items()))
    ratio = statistics.median(timed["first pass (read + forward)"]) / statistics.median(timed["bare forward, preloaded"])
    print(f"\nfirst pass / bare forward: {ratio:.2f} (target <= 1.1); load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
