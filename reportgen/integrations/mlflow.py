"""`output.attach.mlflow`: the report's files as artifacts of an MLflow run, its headline numbers as run metrics.

MLflow previews an `.html` artifact in a sandboxed iframe (up to 50 MiB) where links to other artifacts do not
resolve: a self-contained report (the default) shows whole; `index.html` + `assets/` is logged as it is, for
download. Needs `pip install 'reportgen[mlflow]'`.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReportgenError
from . import Tracker

PREVIEW_LIMIT = 50 * 2**20  # bytes: MLflow's UI does not preview a larger HTML artifact
BATCH = 1000  # metrics per log_batch call (MLflow's limit)


@dataclass(frozen=True)
class MlflowOptions:
    run_id: str | None = None  # default: the active run (`mlflow.start_run()`), else $MLFLOW_RUN_ID
    artifact_path: str | None = None  # a folder in the run's artifacts; default: their root
    arrays: bool = False  # also log arrays.npz (needs `output.save_arrays`; it can be large)


def find_run(options: MlflowOptions, config):
    """(client, run id) of the run to log to: `run_id` (which must exist in the tracking store), the active run,
    or $MLFLOW_RUN_ID. (The Lightning callback gives its MLFlowLogger's client and run id instead.)"""
    import mlflow

    if options.arrays and not config.output.save_arrays:
        raise ReportgenError("`output.attach.mlflow.arrays`: `true` logs arrays.npz, which only "
                             "`output.save_arrays: true` writes: set both, or neither.")
    run_id, key = options.run_id, "`output.attach.mlflow.run_id`"
    if run_id is None:
        run = mlflow.active_run()
        if run is not None:
            return mlflow.MlflowClient(), run.info.run_id
        run_id, key = os.environ.get("MLFLOW_RUN_ID"), "MLFLOW_RUN_ID"  # what `mlflow run` sets
        if not run_id:
            raise ReportgenError("`output.attach.mlflow`: there is no active MLflow run and no `run_id`: call "
                                 "reportgen.build inside `with mlflow.start_run():`, give "
                                 "`output.attach.mlflow.run_id`, or set MLFLOW_RUN_ID.")
    if not _store_exists():  # asking would make MLflow's default store, ./mlflow.db, which cannot hold the run
        raise ReportgenError(f"{key}: no run `{run_id}`: no tracking store is set (MLFLOW_TRACKING_URI) and MLflow's "
                             f"default one, {mlflow.get_tracking_uri()}, does not exist. Set MLFLOW_TRACKING_URI to "
                             "the store that holds the run.")
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow.MlflowClient()
        return client, client.get_run(run_id).info.run_id
    except MlflowException as exc:
        raise ReportgenError(f"{key}: no run `{run_id}` in the tracking store "
                             f"{mlflow.get_tracking_uri()} ({exc.error_code}).") from None


def _store_exists() -> bool:
    """Whether the tracking store is one the user chose (a tracking URI set) or one that exists already: MLflow's
    default store is a ./mlflow.db that merely asking for a run would create."""
    import mlflow

    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
    except ImportError:  # another MLflow: ask as it answers
        return True
    if is_tracking_uri_set():
        return True
    uri = mlflow.get_tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def attach(report, options: MlflowOptions, run, *, model=None, step: int | None = None) -> str:
    from mlflow.entities import Metric

    client, run_id = run
    html = report.html_path
    size = html.stat().st_size
    if size > PREVIEW_LIMIT:
        warnings.warn(f"{html.name} is {size / 2**20:.0f} MiB: MLflow logs it, but its preview shows pages up to "
                      f"50 MiB only (download it from the run's artifacts). Fewer detail images "
                      f"(`report.detail.budget`) make a smaller page.", UserWarning, stacklevel=2)
    for path, folder in report_files(report, arrays=options.arrays):
        client.log_artifact(run_id, str(path), _join(options.artifact_path, folder))
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step or 0) for key, value in report.metrics().items()]
    for i in range(0, len(metrics), BATCH):
        # synchronous: with MLFLOW_ENABLE_ASYNC_LOGGING the metrics would sit in a queue that only an exit
        # handler drains (and not always before the process ends): a build returns once its run holds them
        client.log_batch(run_id, metrics=metrics[i:i + BATCH], synchronous=True)
    where = _join(options.artifact_path, html.name)
    return f"MLflow run {run_id} ({where} and {len(metrics)} metrics)"


def report_files(report, *, arrays: bool) -> list[tuple[Path, str | None]]:
    """(file, artifact sub-folder) of what a run gets: the page (with the assets it links to), report.json,
    images.jsonl and, with `arrays`, arrays.npz."""
    out = report.out_dir
    files: list[tuple[Path, str | None]] = [(report.html_path, None)]
    if not report.config.output.self_contained:  # only the assets this page links to (not older builds')
        linked = sorted(set(re.findall(r"assets/([0-9a-f]{20}\.png)", report.html_path.read_text(encoding="utf-8"))))
        files += [(out / "assets" / name, "assets") for name in linked]
    files.append((report.json_path, None))
    files += [(out / name, None) for name in ["images.jsonl"] + (["arrays.npz"] if arrays else [])
              if (out / name).is_file()]
    return files


def _join(*parts: str | None) -> str | None:
    return "/".join(p.strip("/") for p in parts if p) or None


TRACKER = Tracker(name="mlflow", package="mlflow", options=MlflowOptions, find=find_run, attach=attach, order=10)
