"""`output.attach.mlflow`: a local MLflow tracking store (SQLite, artifacts in a temporary folder), read back with
MlflowClient: the report's files are the run's artifacts and its headline numbers the run's metrics."""
from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner

import reportgen
from reportgen.cli import main
from tests.conftest import make_image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine (checked at each use)
import mlflow


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A tracking store of this module's own: SQLite in a temporary folder (created once: a second), the previous
    URI restored after."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def store(tracking, tmp_path):
    """(client, an experiment of this test's own with its artifacts in tmp_path)."""
    experiment = tracking.create_experiment(tmp_path.name, artifact_location=str(tmp_path / "artifacts"))
    yield tracking, experiment
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _labelled(project) -> dict:
    """The tiny network on labelled images (class folders), with summary and dataset stages: several metrics."""
    for label in ("0", "1", "2"):
        (project.root / "set" / label).mkdir(parents=True)
        for i in range(2):
            make_image(project.root / "set" / label / f"{i}.png", seed=10 * int(label) + i)
    config = project.base() | {"analyses": {"summary": {}, "dataset": {}, "cam": {"methods": ["gradcam"]}}}
    config["model"] |= {"labels": str(project.write(text="0\n1\n2\n", name="labels.txt"))}
    config["inputs"]["images"] = ["set"]
    return config


def test_the_active_run_gets_the_page_its_records_and_the_headline_metrics(project, store):
    client, experiment = store
    config = _labelled(project)
    config["output"] |= {"attach": ["mlflow"]}
    with mlflow.start_run(experiment_id=experiment) as run:
        report = reportgen.build(project.write(config))
    assert report.exit_code == 0
    run_id = run.info.run_id
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["images.jsonl", "report.html", "report.json"]
    page = client.download_artifacts(run_id, "report.html", str(project.root / "down"))
    assert open(page, "rb").read() == report.html_path.read_bytes()
    metrics = report.metrics()
    assert "dataset/top1_accuracy" in metrics and "summary/total_params" in metrics
    assert client.get_run(run_id).data.metrics == pytest.approx(metrics)
    assert json.loads(report.json_path.read_text())["config"]["output"]["attach"]["mlflow"]["arrays"] is False


def test_a_run_id_an_artifact_path_a_static_site_page_and_its_arrays_from_the_command_line(project, store):
    client, experiment = store
    run_id = client.create_run(experiment).info.run_id  # not active: named by its id
    config = project.base() | {"analyses": {"summary": {}, "kernels": {}}}
    config["output"] |= {"self_contained": False, "save_arrays": True,
                         "attach": {"mlflow": {"run_id": run_id, "artifact_path": "explained/v1", "arrays": True}}}
    done = CliRunner().invoke(main, ["build", str(project.write(config))])
    assert done.exit_code == 0, done.output
    assert f"attached the report to MLflow run {run_id}" in done.output
    out = project.root / "out"
    linked = sorted(set(re.findall(r"assets/([0-9a-f]{20}\.png)", (out / "index.html").read_text())))
    assert linked
    logged = sorted(a.path for a in client.list_artifacts(run_id, "explained/v1"))
    assert logged == sorted(f"explained/v1/{name}" for name in
                            ("arrays.npz", "assets", "images.jsonl", "index.html", "report.json"))
    assert sorted(a.path for a in client.list_artifacts(run_id, "explained/v1/assets")) == \
        [f"explained/v1/assets/{name}" for name in linked]  # the page's pictures, so its links resolve on download
    assert set(client.get_run(run_id).data.metrics) == {"summary/total_params", "summary/trainable_params",
                                                        "summary/mult_adds"}


def test_a_page_too_large_for_the_preview_is_logged_with_a_warning(project, store, monkeypatch):
    import reportgen.integrations.mlflow as attach_mlflow

    client, experiment = store
    monkeypatch.setattr(attach_mlflow, "PREVIEW_LIMIT", 1000)  # a 50 MiB page takes minutes to build: the limit moves
    config = project.base()
    config["output"] |= {"attach": ["mlflow"]}
    with mlflow.start_run(experiment_id=experiment) as run, \
            pytest.warns(UserWarning, match=r"report.html is \d+ MiB: MLflow logs it, but its preview shows pages up to 50 MiB"):
        reportgen.build(project.write(config))
    assert "report.html" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.parametrize("attach, message", [
    ("[mlflow]", "`output.attach.mlflow` (from --set): there is no active MLflow run and no `run_id`: call reportgen.build "
                        "inside `with mlflow.start_run():`, give `output.attach.mlflow.run_id`, or set MLFLOW_RUN_ID."),
    ("{mlflow: {run_id: 0123abc}}", "`output.attach.mlflow.run_id` (from --set): no run `0123abc` in the "
                                           "tracking store sqlite:///"),
    ("{mlflow: {arrays: true}}", "`output.attach.mlflow.arrays` (from --set): `true` logs arrays.npz, which only "
                                        "`output.save_arrays: true` writes"),
])
def test_no_run_to_attach_to_exits_2_before_any_work_and_writes_nothing(project, store, attach, message):
    config = project.base()
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "--set", f"output.attach={attach}", "-q"])
    assert done.exit_code == 2 and message in done.output and "Traceback" not in done.output, done.output
    assert not (project.root / "out").exists()


def test_the_command_line_attaches_to_the_run_mlflow_run_names_in_its_environment(project, store, monkeypatch):
    client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # as `mlflow run` sets it for its entry point
    done = CliRunner().invoke(main, ["build", str(project.write()), "--set", "output.attach=[mlflow]", "-q"])
    assert done.exit_code == 0, done.output
    assert "report.html" in [a.path for a in client.list_artifacts(run_id)]
    monkeypatch.setenv("MLFLOW_RUN_ID", "0badc0de")
    done = CliRunner().invoke(main, ["build", str(project.write()), "--set", "output.attach=[mlflow]", "-q"])
    assert done.exit_code == 2 and "error: MLFLOW_RUN_ID: no run `0badc0de` in the tracking store sqlite:///" \
        in done.output
