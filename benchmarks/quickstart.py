"""The quickstart's wall time against the README's claim ("about ten seconds on two cores, imports included").

    python benchmarks/quickstart.py [--repeats 5] [--threads N] [--keep DIR]

Runs `reportgen build example_configs/quickstart.yaml -o <tmp dir> -q` as a subprocess --repeats times (a fresh
output folder each time) and prints the wall time per run (median, min, max) and, from each run's
`<out>/report.json` ("stages": [{name, seconds}]), the seconds each stage recorded (median, min, max) with the
rest of the wall time (interpreter start, imports, model load, rendering, writing) as `other`. The baseline,
measured in the same run and interleaved with the builds so that a busy moment of a shared machine hits both:
the wall time of `python -c "import reportgen.pipeline, reportgen.render"` (the import cost); the build's
median is printed as a multiple of the bare import's median. With --threads N the subprocesses (builds and
baseline) get OMP_NUM_THREADS=N (torch's intra-op threads); without it they inherit the environment. The load
average before and after is printed too: the numbers are only as good as the machine is quiet. Exits 0, or 1
when a build fails.
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
CONFIG = ROOT / "example_configs" / "quickstart.yaml"
IMPORTS = "import reportgen.pipeline, reportgen.render"
CLAIM_S = 7.5  # README: "the build takes about 7.5 seconds on two idle cores, imports included"


def reportgen_command() -> list[str]:
    """The console script next to this interpreter, else `python -m reportgen` (same code, same imports)."""
    script = Path(sys.executable).with_name("reportgen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reportgen"]


def timed(command: list[str], env: dict[str, str]) -> float:
    begin = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="builds (and baseline imports) to time")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the subprocesses (default: inherit the environment)")
    parser.add_argument("--keep", type=Path, default=None, help="copy the last build's output here")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    build = reportgen_command()
    imports = [sys.executable, "-c", IMPORTS]
    print(f"build:    {' '.join(build)} build {CONFIG.relative_to(ROOT)} -o <tmp> -q")
    print(f"baseline: {sys.executable} -c \"{IMPORTS}\"")
    print(f"{args.repeats} repeats, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')}, "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")

    timed(imports, env)  # warm the file cache once, so that the first build is not the odd one out
    walls: list[float] = []
    bases: list[float] = []
    stages: dict[str, list[float]] = {}
    others: list[float] = []
    with tempfile.TemporaryDirectory(prefix="reportgen-quickstart-") as tmp:
        for run in range(args.repeats):
            bases.append(timed(imports, env))
            out = Path(tmp) / f"run{run}"
            try:
                walls.append(timed([*build, "build", str(CONFIG), "-o", str(out), "-q"], env))
            except RuntimeError as error:
                print(f"build {run + 1} failed: {error}", file=sys.stderr)
                return 1
            recorded = record_stages(out, stages)
            others.append(walls[-1] - sum(float(stage["seconds"]) for stage in recorded))
            print(f"  run {run + 1}: build {walls[-1]:6.2f} s, import {bases[-1]:5.2f} s, "
                  + ", ".join(f"{s['name']} {float(s['seconds']):.2f}" for s in recorded), flush=True)
        if args.keep:
            shutil.copytree(Path(tmp) / f"run{args.repeats - 1}", args.keep, dirs_exist_ok=True)

    print_table([("build wall (subprocess)", walls)] + [("  stage " + name, values) for name, values in stages.items()]
                + [("  other (start, imports, io)", others), ("baseline: bare import", bases)])
    ratio = statistics.median(walls) / statistics.median(bases)
    print(f"\nbuild / bare import: {ratio:.1f}x (medians; per run: "
          + ", ".join(f"{w / b:.1f}" for w, b in zip(walls, bases)) + ")")
    print(f"README claim: about {CLAIM_S:g} s; median build {statistics.median(walls):.1f} s "
          f"({statistics.median(walls) / CLAIM_S:.1f}x the claim)")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
