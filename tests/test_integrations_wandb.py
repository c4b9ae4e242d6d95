"""`output.attach.wandb`: a W&B run in offline mode (nothing leaves the machine), read back from the offline run's
folder: the page as logged media, the headline metrics in the run's transaction log (history and summary)."""
from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

import reportgen
from reportgen.cli import main

import wandb


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, silent, without telemetry, error reports, git, stats or console capture; files in tmp_path."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_ERROR_REPORTING": "false", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                       "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()


def records(path):
    """The records of a run's transaction log (`run-<id>.wandb`: LevelDB's log format, 32 KiB blocks of chunks
    with a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last) after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def finished_records(path, wait: float = 60.0):
    """The records of a finished run's log, read once its `exit` record is there: W&B's service process writes
    the log, and on a loaded machine it can still be writing when `run.finish()` returns (once, a build's history
    record was missing when the log was read at once)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        found = list(records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            assert any(r.WhichOneof("record_type") == "exit" for r in found), "the run's log has no exit record"
            return found
        time.sleep(0.2)


@pytest.mark.slow  # wandb starts a service process: about 10 s
def test_the_active_run_gets_the_page_as_html_media_and_the_metrics(project, offline):
    config = project.base() | {"analyses": {"summary": {}, "cam": {"methods": ["gradcam"]}}}
    config["output"] |= {"attach": {"wandb": {"key": "explained"}}}
    run = wandb.init(project="reportgen", settings=wandb.Settings(x_disable_stats=True, x_disable_machine_info=True))
    report = reportgen.build(project.write(config))
    run.finish()
    folder = next((offline / "wandb").glob("offline-run-*"))
    logged, summary = {}, {}
    for record in finished_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            logged |= {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        elif kind == "summary":
            summary |= {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update}
    assert logged["explained/_type"] == "html-file"  # the media's fields, flattened into the step's row
    page = folder / "files" / logged["explained/path"]
    assert page.read_text() == report.html_path.read_text()  # as it is: inject=False added no stylesheet link
    metrics = report.metrics()
    assert metrics and {key: logged[key] for key in metrics} == pytest.approx(metrics)
    assert {key: summary[key] for key in metrics} == pytest.approx(metrics)  # the run's summary: the last values


def test_no_active_run_exits_2_before_any_work(project, offline):
    done = CliRunner().invoke(main, ["build", str(project.write()), "--set", "output.attach=[wandb]", "-q"])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert "error: `output.attach.wandb` (from --set): there is no active W&B run: call reportgen.build after " \
           "`wandb.init()` (and before `run.finish()`)." in done.output
    assert not (project.root / "out").exists()


def test_a_page_with_its_assets_beside_it_is_attached_with_a_warning(project, offline):
    config = project.base() | {"analyses": {"summary": {}}}
    config["output"] |= {"self_contained": False, "attach": ["wandb"]}
    run = wandb.init(project="reportgen", settings=wandb.Settings(x_disable_stats=True, x_disable_machine_info=True))
    with pytest.warns(UserWarning, match=r"W&B shows the page without its pictures: assets/ is not uploaded"):
        reportgen.build(project.write(config))
    run.finish()
