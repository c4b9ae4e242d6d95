"""Writing the report: ownership (a build deletes and replaces only what reportgen wrote), interrupts and
crashes (the previous report survives, no temporary file stays behind)."""
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reportgen.registry import STAGES
from reportgen import write
from reportgen.cli import main
from reportgen.errors import ReportgenError

USER_PAGE = "<h1>my site</h1>\n"


def files_in(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def temporaries(folder: Path) -> list:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def report(out: Path, title="first", assets=None, arrays=None, self_contained=True, **kwargs) -> dict:
    return write.write_report(out, html=f"<h1>{title}</h1>", report_json={"title": title, "versions":
                              {"reportgen": "0.1.0"}}, arrays=arrays, assets=assets or {},
                              self_contained=self_contained, **kwargs)


def asset(n: int) -> str:
    return f"{n:020x}.png"


# ownership


def test_a_users_page_in_the_output_folder_survives_a_build(project):
    site = project.root / "site"
    site.mkdir()
    (site / "index.html").write_text(USER_PAGE)
    result = CliRunner().invoke(main, ["build", str(project.write()), "-o", str(site), "-q"])
    assert result.exit_code == 0, result.output
    assert (site / "index.html").read_text() == USER_PAGE
    assert (site / "report.html").is_file()
    assert json.loads((site / write.MANIFEST).read_text())["files"] == ["images.jsonl", "report.html", "report.json"]
    again = CliRunner().invoke(main, ["build", str(project.write()), "-o", str(site), "-q"])
    assert again.exit_code == 0 and (site / "index.html").read_text() == USER_PAGE


@pytest.mark.parametrize("name", ["index.html", "report.html", "report.json"])
def test_a_build_refuses_to_overwrite_a_users_file(project, name):
    site = project.root / "site"
    site.mkdir()
    (site / name).write_text(USER_PAGE)
    config = project.base()
    config["output"]["self_contained"] = name != "index.html"
    for command in ("validate", "build"):  # validate tells before a build would
        result = CliRunner().invoke(main, [command, str(project.write(config)), "--set", f"output.dir={site}"])
        assert result.exit_code == 2, result.output
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.output
        assert f"{site / name} exists and reportgen did not write it" in result.stderr
        assert "-o DIR" in result.stderr and f"remove {name}" in result.stderr
        assert files_in(site) == {name: USER_PAGE.encode()}


def test_write_report_refuses_a_users_file_and_writes_nothing(tmp_path):
    (tmp_path / "report.json").write_text('{"mine": true}')
    with pytest.raises(ReportgenError, match="report.json exists and reportgen did not write it"):
        report(tmp_path)
    assert files_in(tmp_path) == {"report.json": b'{"mine": true}'}
    (tmp_path / "assets").mkdir()
    (tmp_path / "report.json").unlink()
    (tmp_path / "assets" / asset(1)).write_bytes(b"the user's")
    with pytest.raises(ReportgenError, match=f"remove assets/{asset(1)}"):
        report(tmp_path, assets={asset(1): b"ours"}, self_contained=False)
    report(tmp_path, assets={asset(1): b"the user's"}, self_contained=False)  # the same bytes: nothing to replace
    assert (tmp_path / "assets" / asset(1)).read_bytes() == b"the user's"
    assert asset(1) not in (tmp_path / write.MANIFEST).read_text()  # not claimed...
    report(tmp_path, self_contained=False)
    assert (tmp_path / "assets" / asset(1)).read_bytes() == b"the user's"  # ...so never removed


def test_a_rebuild_removes_only_what_the_previous_build_wrote(tmp_path):
    out = tmp_path / "out"
    first = report(out, assets={asset(1): b"one", asset(2): b"two"}, arrays={"x": np.zeros(2, np.float32)},
                   self_contained=False)
    assert first["files"] == ["arrays.npz", f"assets/{asset(1)}", f"assets/{asset(2)}", "index.html",
                              "report.json"]
    (out / "assets" / asset(3)).write_bytes(b"the user's, named like an asset")
    (out / "notes.txt").write_text("mine")
    report(out, title="second", assets={asset(2): b"two"}, self_contained=False)
    assert sorted(files_in(out)) == [write.MANIFEST, f"assets/{asset(2)}", f"assets/{asset(3)}", "index.html",
                                     "notes.txt", "report.json"]
    report(out, title="third")
    assert sorted(files_in(out)) == [write.MANIFEST, f"assets/{asset(3)}", "notes.txt", "report.html",
                                     "report.json"]
    assert json.loads((out / write.MANIFEST).read_text())["files"] == ["report.html", "report.json"]


def test_a_folder_an_older_reportgen_wrote_is_recognised_by_each_file_it_wrote(tmp_path):
    """No manifest: a report.json with versions.reportgen, a page with reportgen's generator tag and an asset
    named by its own hash count as ours; a user's index.html beside them, an arrays.npz and an asset whose name
    is not its hash stay."""
    import hashlib

    (tmp_path / "assets").mkdir()
    hashed = hashlib.sha256(b"old asset").hexdigest()[:20] + ".png"
    old = {"report.json": json.dumps({"title": "old", "versions": {"reportgen": "0.0.9"}}).encode(),
           "index.html": b'<html><head><meta name="generator" content="reportgen 0.0.9">', "arrays.npz": b"old arrays",
           f"assets/{hashed}": b"old asset", f"assets/{asset(7)}": b"not its hash", "assets/notes.txt": b"mine",
           "notes.txt": b"mine"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    report(tmp_path, title="new")
    assert sorted(files_in(tmp_path)) == [write.MANIFEST, "arrays.npz", f"assets/{asset(7)}", "assets/notes.txt",
                                          "notes.txt", "report.html", "report.json"]
    assert json.loads((tmp_path / "report.json").read_text())["title"] == "new"


def test_a_users_page_beside_an_old_report_json_is_never_removed_nor_replaced(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"title": "old", "versions": {"reportgen": "0.0.9"}}))
    (tmp_path / "index.html").write_text("<h1>my own page</h1>")
    report(tmp_path)  # report.html: the user's index.html is not stale, it is theirs
    assert (tmp_path / "index.html").read_text() == "<h1>my own page</h1>"
    (tmp_path / write.MANIFEST).unlink()
    (tmp_path / "report.html").unlink()
    with pytest.raises(ReportgenError, match="index.html exists and reportgen did not write it"):
        report(tmp_path, self_contained=False)
    assert (tmp_path / "index.html").read_text() == "<h1>my own page</h1>"


def test_a_report_json_without_reportgens_versions_is_the_users(tmp_path):
    (tmp_path / "report.json").write_text('{"title": "my own data"}')
    (tmp_path / "arrays.npz").write_bytes(b"mine too")
    with pytest.raises(ReportgenError, match="report.json exists and reportgen did not write it"):
        report(tmp_path)
    (tmp_path / "report.json").unlink()
    report(tmp_path)  # arrays.npz is not written: left alone, never claimed
    assert (tmp_path / "arrays.npz").read_bytes() == b"mine too"
    assert "arrays.npz" not in (tmp_path / write.MANIFEST).read_text()


def test_a_manifest_cannot_point_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    report(out)
    (tmp_path / "precious.txt").write_text("keep")
    (out / write.MANIFEST).write_text(json.dumps({"files": ["../precious.txt", "report.html", "report.json"]}))
    report(out)
    assert (tmp_path / "precious.txt").read_text() == "keep"


# interrupts and crashes


def _previous(out: Path) -> dict:
    report(out, title="previous", arrays={"x": np.ones(3, np.float32)})
    return files_in(out)


def _fail_on_call(monkeypatch, target, name, number: int, exc: BaseException):
    real = getattr(target, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)
    return calls


@pytest.mark.parametrize("number", [1, 2, 3, 4])
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")],
                         ids=["interrupt", "oserror"])
def test_an_interrupted_rename_puts_the_previous_report_back(tmp_path, monkeypatch, number, exc):
    """Manifest, arrays.npz, report.json, report.html are renamed in turn: stopped at any of them, every
    file already renamed is put back."""
    out = tmp_path / "out"
    before = _previous(out)
    calls = _fail_on_call(monkeypatch, os, "replace", number, exc)
    with pytest.raises(type(exc)):
        report(out, title="next", arrays={"x": np.zeros(3, np.float32)})
    assert len(calls) > number or number == 1  # the rollback renamed files back
    monkeypatch.undo()
    assert files_in(out) == before
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_an_interrupt_while_writing_temporaries_leaves_nothing(tmp_path, monkeypatch, number):
    out = tmp_path / "out"
    before = _previous(out)
    _fail_on_call(monkeypatch, write, "_write_temp", number, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        report(out, title="next", arrays={"x": np.zeros(3, np.float32)})
    assert files_in(out) == before and temporaries(tmp_path) == []


def test_an_interrupted_first_build_leaves_no_folder(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, os, "replace", 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        report(tmp_path / "new" / "out", assets={asset(1): b"one"}, self_contained=False)
    assert list(tmp_path.iterdir()) == []


def test_writing_leaves_the_ctrl_c_handler_as_it_was(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    report(tmp_path)
    assert signal.getsignal(signal.SIGINT) is handler


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["pipeline", "stage", "write"])
def test_ctrl_c_during_a_build_exits_130_and_keeps_the_previous_report(project, monkeypatch, where):
    import reportgen.pipeline
    import reportgen.stages.summary

    runner = CliRunner()
    assert runner.invoke(main, ["build", str(project.write()), "-q"]).exit_code == 0
    out = project.root / "out"
    before = files_in(out)
    if where == "pipeline":
        monkeypatch.setattr(reportgen.pipeline, "build", _interrupt)
    elif where == "stage":
        monkeypatch.setitem(STAGES, "summary",
                            dataclasses.replace(reportgen.stages.summary.SPEC, run=_interrupt))
    else:
        _fail_on_call(monkeypatch, os, "replace", 2, KeyboardInterrupt())
    config = project.base()
    config["title"] = "second"
    result = runner.invoke(main, ["build", str(project.write(config))])
    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1] == "interrupted, nothing written"
    assert "Aborted" not in result.output and "Traceback" not in result.output
    monkeypatch.undo()
    assert files_in(out) == before
    assert temporaries(project.root) == []
    quiet = runner.invoke(main, ["build", str(project.write(config)), "-q"])  # still works afterwards
    assert quiet.exit_code == 0


def test_ctrl_c_in_other_commands_exits_130(project, monkeypatch):
    import reportgen.pipeline

    monkeypatch.setattr(reportgen.pipeline, "validate", _interrupt)
    result = CliRunner().invoke(main, ["validate", str(project.write())])
    assert result.exit_code == 130 and result.stderr == "interrupted, nothing written\n"


@pytest.mark.slow  # a subprocess starts torch
@pytest.mark.parametrize("number, code, said", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")], ids=["sigint", "sigterm"])
def test_a_real_ctrl_c_or_sigterm_exits_with_one_line(project, number, code, said):
    """The whole way: SIGINT (Ctrl-C) or SIGTERM (`kill`, `docker stop`) to a `reportgen build` process while
    its model loads."""
    import subprocess
    import sys


    root = Path(__file__).resolve().parent.parent
    ready = project.root / "ready"
    (project.root / "sleepy.py").write_text(
        "import pathlib, time\nfrom tinynet import build as tiny\n\n"
        f"def build():\n    pathlib.Path({str(ready)!r}).touch()\n    time.sleep(60)\n    return tiny()\n")
    config = project.base()
    config["model"].update(factory="sleepy:build", kwargs={})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    # SIGINT as a terminal gives it, also when the tests run in the background (where the shell ignores it)
    process = subprocess.Popen([sys.executable, "-m", "reportgen", "build", str(project.write(config))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(number)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert err.splitlines()[-1] == f"{said}, nothing written" and "Traceback" not in err and out == ""
    assert not (project.root / "out").exists()


def _terminate_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends


def test_sigterm_during_a_build_exits_143_keeps_the_previous_report_and_the_handler(project, monkeypatch):
    import reportgen.stages.summary

    runner = CliRunner()
    assert runner.invoke(main, ["build", str(project.write()), "-q", "--save-arrays"]).exit_code == 0
    out = project.root / "out"
    before = files_in(out)
    monkeypatch.setitem(STAGES, "summary", dataclasses.replace(reportgen.stages.summary.SPEC, run=_terminate_self))
    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # were the CLI's handler missing: not pytest's end
    try:
        result = runner.invoke(main, ["build", str(project.write()), "-q", "--save-arrays"])
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated  # the CLI's handler was put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143 and result.stderr == "terminated, nothing written\n", result.output
    assert files_in(out) == before and temporaries(project.root) == []


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_signal_right_after_a_rename_cannot_tear_the_commit(tmp_path, monkeypatch, number, after):
    """A signal that lands after `os.replace` returned, before the rollback could record it: the whole switch is
    undone (or, had it come later, done), never the old report.html beside the new report.json."""
    out = tmp_path / "out"
    before = _previous(out)
    real, calls = os.replace, []

    def replace_then_signal(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(args)
        if len(calls) == after:
            signal.raise_signal(number)
            time.sleep(0.05)  # the window made wide: a handler runs here if any does

    monkeypatch.setattr(os, "replace", replace_then_signal)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with pytest.raises(KeyboardInterrupt):
            report(out, title="next", arrays={"x": np.zeros(3, np.float32)})
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert files_in(out) == before
    assert temporaries(tmp_path) == []


def _raise_terminated(signum, frame):
    from reportgen.errors import Terminated

    raise Terminated


def test_a_build_removes_the_temporaries_a_killed_build_left_and_no_others(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    report(out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = write._HOST
    left = [out / f".arrays.npz.{dead.stdout.strip()}@{host}.k1ll3d.tmp",
            out / f".report.html.{dead.stdout.strip()}@{host}.k1ll3d.tmp"]
    kept = [out / f".arrays.npz.{os.getpid()}@{host}.runn1n.tmp",  # a running build's
            out / f".arrays.npz.{dead.stdout.strip()}@other-host.abc.tmp",  # another machine's (shared disk)
            out / ".notes.tmp"]  # the user's
    for path in left + kept:
        path.write_bytes(b"x")
    report(out, title="next")
    assert [p for p in left if p.exists()] == [] and all(p.exists() for p in kept)


def test_a_full_disk_while_arrays_npz_is_written_stops_the_build_with_one_message(project, monkeypatch):
    runner = CliRunner()
    assert runner.invoke(main, ["build", str(project.write()), "-q", "--save-arrays"]).exit_code == 0
    out = project.root / "out"
    before = files_in(out)
    real = write._add_array

    def full(target, key, value):
        if key.startswith("summary/") or key.startswith("logits/"):
            raise OSError(28, "No space left on device")
        return real(target, key, value)

    monkeypatch.setattr(write, "_add_array", full)
    result = runner.invoke(main, ["build", str(project.write()), "-q", "--save-arrays"], catch_exceptions=False)
    assert result.exit_code == 2 and result.stderr.startswith("error: `output.save_arrays`"), result.output
    assert "writing arrays.npz" in result.stderr
    assert "No space left on device" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files_in(out) == before and temporaries(project.root) == []
