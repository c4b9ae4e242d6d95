"""`output.attach.clearml`: a ClearML task in offline mode (`Task.set_offline(True)`: nothing leaves the machine), in
a fresh interpreter (Task.init hooks into the process) whose home is a temporary folder; read back from the
offline session folder: the page as media and the headline metrics as scalars."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import clearml  # noqa: F401 (the test extra installs it)

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import reportgen
    from reportgen.errors import ReportgenError

    config = sys.argv[1]
    try:  # no task yet
        reportgen.build(config, overrides={"output.dir": "never"})
    except ReportgenError as exc:
        refused = str(exc)
    from clearml import Task

    Task.set_offline(True)
    task = Task.init(project_name="reportgen", task_name="attach", auto_connect_frameworks=False,
                     auto_connect_arg_parser=False, auto_connect_streams=False, auto_resource_monitoring=False)
    report = reportgen.build(config)
    task.flush(wait_for_uploads=True)  # ClearML's sender writes the session folder
    print(json.dumps({"refused": refused, "folder": str(task.get_offline_mode_folder()),
                      "html": str(report.html_path), "metrics": report.metrics()}))
    sys.stdout.flush()
    os._exit(0)  # Task.close would zip the session (and take seconds): the folder is what is read back
""")


def test_the_current_task_gets_the_page_as_media_and_the_metrics_as_scalars(project):
    config = project.base() | {"analyses": {"summary": {}, "cam": {"methods": ["gradcam"]}}}
    config["output"] |= {"attach": ["clearml"]}
    home = project.root / "home"
    home.mkdir()
    # ClearML's reporter in a thread, not a forked process that would outlive the interpreter by half a minute
    (home / "clearml.conf").write_text("sdk { development { report_use_subprocess: false } }\n")
    env = {"HOME": str(home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(project.write(config))], capture_output=True, text=True,
                          cwd=project.root, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["refused"] == ("`output.attach.clearml`: there is no current ClearML task: call reportgen.build "
                                 "after `Task.init()`.")
    assert not (project.root / "never").exists()
    folder = Path(result["folder"])
    assert folder.is_relative_to(home / ".clearml")
    events = [e for line in (folder / "metrics.jsonl").read_text().splitlines() for e in json.loads(line)]
    (media,) = [e for e in events if e["type"] == "training_debug_image"]
    assert (media["metric"], media["variant"], media["iter"]) == ("reportgen", "report", 0)
    assert Path(media["url"]).is_relative_to(folder) and Path(media["url"]).read_text() == \
        Path(result["html"]).read_text()
    scalars = {f"{e['metric']}/{e['variant']}": e["value"] for e in events if e["type"] == "training_stats_scalar"}
    assert result["metrics"] and scalars == pytest.approx(result["metrics"])
