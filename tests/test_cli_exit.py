"""The command line ends its process with `os._exit` (skipping the interpreter's slow teardown of torch), but not
after a tracker's package was imported: the trackers a build attached to lose nothing. Each build runs in a
process of its own, the way a user runs it, and the tracker's store is read back after that process ended.
(With os._exit after a tracker, MLflow's asynchronous logging lost every metric and a W&B offline run its page,
its metrics and its exit record.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
import mlflow  # noqa: E402

from tests.test_integrations_wandb import finished_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _build(project, config: dict, env: dict, *, script: str | None = None) -> subprocess.CompletedProcess:
    """`python -m reportgen build CONFIG -q` in its own process (the console script's code: `main()` without
    arguments), or `script` (which calls `main()` itself) with CONFIG as its argument."""
    path = project.write(config)
    command = [sys.executable, "-c", script, str(path)] if script else [sys.executable, "-m", "reportgen", "build",
                                                                        str(path), "-q"]
    done = subprocess.run(command, cwd=project.root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_mlflow_sqlite_store_holds_the_artifacts_and_metrics_after_the_command(project, tmp_path, asynchronous):
    """With `MLFLOW_ENABLE_ASYNC_LOGGING`, MLflow logs from a queue that its exit handler drains, not always
    before the process ends: a build logs its metrics synchronously, so the run holds them when it returns."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("exit", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    config = project.base() | {"analyses": {"summary": {}, "cam": {"methods": ["gradcam"]}}}
    config["output"] |= {"attach": {"mlflow": {"run_id": run_id}}}
    done = _build(project, config, {"MLFLOW_TRACKING_URI": uri,
                                    "MLFLOW_ENABLE_ASYNC_LOGGING": str(asynchronous).lower()})
    assert "INFO" not in done.stderr, done.stderr  # MLflow's own lines are shown with -v only
    out = project.root / "out"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["images.jsonl", "report.html", "report.json"]
    page = client.download_artifacts(run_id, "report.html", str(tmp_path / "down"))
    assert Path(page).read_bytes() == (out / "report.html").read_bytes()
    metrics = json.loads((out / "report.json").read_text())["metrics"]  # what the build says it logged
    assert "summary/total_params" in metrics
    assert client.get_run(run_id).data.metrics == pytest.approx(metrics)


WANDB_RUN = """
import sys, wandb
run = wandb.init(project="reportgen", settings=wandb.Settings(x_disable_stats=True, x_disable_machine_info=True))
sys.argv = ["reportgen", "build", sys.argv[1], "-q"]
from reportgen.cli import main
main()
"""


def test_a_wandb_offline_run_is_complete_after_the_command(project, tmp_path):
    """W&B attaches to the process's active run: a script that opens one and then runs the command's `main()`.
    The run is finished by W&B's exit handler: its transaction log ends with the exit record `wandb sync` needs."""
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
           "WANDB_ERROR_REPORTING": "false", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
           "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(tmp_path / "config"),
           "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")}
    config = project.base() | {"analyses": {"summary": {}}}
    config["output"] |= {"attach": ["wandb"]}
    _build(project, config, env, script=WANDB_RUN)
    folder = next((tmp_path / "wandb").glob("offline-run-*"))
    kinds, logged = [], {}
    for record in finished_records(next(folder.glob("run-*.wandb"))):
        kinds.append(record.WhichOneof("record_type"))
        if kinds[-1] == "history":
            logged |= {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
    assert logged["report/_type"] == "html-file" and "summary/total_params" in logged
    page = folder / "files" / logged["report/path"]
    assert page.read_text() == (project.root / "out" / "report.html").read_text()
    assert "exit" in kinds, kinds  # the run was finished


@pytest.mark.parametrize("command", ["validate", "build"])
def test_without_a_tracking_store_nothing_is_made_and_mlflow_says_nothing(project, tmp_path_factory, command):
    """No MLFLOW_TRACKING_URI and no ./mlflow.db: the run cannot exist. Asking MLflow would make the default
    store (a 954 kB mlflow.db in the current folder) and print its INFO lines; the build is refused first."""
    config = project.base()
    config["output"] |= {"attach": {"mlflow": {"run_id": "0123abc"}}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    here = tmp_path_factory.mktemp("cwd")
    done = subprocess.run([sys.executable, "-m", "reportgen", command, str(project.write(config))],
                          cwd=here, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: `output.attach.mlflow.run_id`") and "no tracking store" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(here.iterdir()) == [] and not (project.root / "mlflow.db").exists()
