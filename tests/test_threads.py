"""Beside a busy process the command line gives torch the cores left free, waiting passively
(`OMP_NUM_THREADS`, `OMP_WAIT_POLICY=PASSIVE`), set before torch is imported: two spinning threads made a build
beside a busy process 3x slower than one thread (README, "Threads"). Values the user set stand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the model's factory says what the build's own process sees, once torch is loaded
PROBE = textwrap.dedent('''
    import json, os
    import torch
    from tinynet import build as tiny

    def build(num_classes=3):
        seen = {"policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads()}
        with open("seen.json", "w") as file:  # in the build's folder
            json.dump(seen, file)
        return tiny(num_classes)
''')


def _build(project, **env) -> dict:
    (project.root / "probe.py").write_text(PROBE)
    config = project.base()
    config["model"]["factory"] = "probe:build"
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-m", "reportgen", "build", str(project.write(config)), "-q"],
                          cwd=project.root, capture_output=True, text=True, timeout=300,
                          env={**clean, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((project.root / "seen.json").read_text())


def test_what_the_user_sets_stands_and_torch_is_not_imported_before(project):
    assert _build(project, OMP_WAIT_POLICY="active", OMP_NUM_THREADS="1") == {"policy": "active", "threads": 1}
    # set before torch loads its OpenMP, which reads it once: the command line module imports no torch
    imported = subprocess.run([sys.executable, "-c", "import sys, reportgen.cli; print('torch' in sys.modules)"],
                              capture_output=True, text=True, cwd=ROOT, check=True)
    assert imported.stdout.strip() == "False"


def test_beside_a_busy_process_a_build_leaves_it_its_core(project):
    """A one-thread loop running before the build starts: the build takes the cores it leaves free (at least
    one), as fast beside it as on one thread, where two spinning or waiting threads were 1.1-3x slower."""
    loop = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: sum(range(10000))"])
    try:
        import time

        time.sleep(0.5)  # running, not starting
        cores = len(os.sched_getaffinity(0))
        seen = _build(project)
        assert seen["threads"] <= max(1, cores - 1), seen
        assert cores == 1 or seen["policy"] == "PASSIVE", seen  # one core: torch's one thread, as it was
    finally:
        loop.kill()
        loop.wait()
