"""`output.attach` in the config, and what is refused before any work: an unknown tracker (with the closest
name), a tracker whose package is not installed (exit 2 naming the extra to install)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import parse_config
from reportgen.errors import ConfigError
from reportgen.registry import TRACKERS

ROOT = Path(__file__).resolve().parents[1]


def parse(text):
    return parse_config("model: {name: resnet18}\n" + text, base_dir=Path("/base"), origin="c.yaml")


def test_a_list_of_names_is_each_trackers_defaults_and_a_mapping_gives_options():
    attach = parse("output: {attach: [mlflow, wandb]}").output.attach
    assert [name for name, _ in attach.items()] == ["mlflow", "wandb"] and attach
    assert attach.mlflow == TRACKERS["mlflow"].options() and attach.wandb == TRACKERS["wandb"].options()
    attach = parse("output:\n  attach:\n    mlflow: {run_id: abc, artifact_path: reports, arrays: true}\n"
                   "    clearml:\n    tensorboard: {dir: runs}").output.attach
    assert (attach.mlflow.run_id, attach.mlflow.artifact_path, attach.mlflow.arrays) == ("abc", "reports", True)
    assert attach.clearml == TRACKERS["clearml"].options() and attach.wandb is None
    assert attach.tensorboard.dir == Path("/base/runs")  # paths resolve against the config's folder
    assert not parse("output: {attach: []}").output.attach and not parse("output: {}").output.attach


@pytest.mark.parametrize("text, message", [
    ("output: {attach: [mlflow, wandbb]}", "`output.attach[1]` (c.yaml, line 2): unknown tracker `wandbb`. Did you "
                                           "mean `wandb`? Trackers: mlflow, wandb, clearml, tensorboard."),
    ("output: {attach: {mlfow: {}}}", "unknown key `output.attach.mlfow` (c.yaml, line 2). Did you mean `mlflow`?"),
    ("output: {attach: {mlflow: {runid: x}}}", "unknown key `output.attach.mlflow.runid` (c.yaml, line 2). Did you "
                                               "mean `run_id`?"),
    ("output: {attach: 3}", "`output.attach` (c.yaml, line 2): expected a list of trackers (mlflow, wandb, clearml, "
                            "tensorboard) or a mapping of tracker to options, got 3."),
])
def test_unknown_trackers_and_options_name_the_closest(text, message):
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert message in str(err.value)


def test_an_unknown_tracker_given_with_set_exits_2(project):
    done = CliRunner().invoke(main, ["build", str(project.write()), "--set", "output.attach=[tensorbord]"])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert "error: `output.attach[0]` (from --set): unknown tracker `tensorbord`. Did you mean `tensorboard`?" \
           in done.output


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_whose_package_is_missing_exits_2_before_any_work_naming_the_extra(project, name):
    """The package is made unimportable in a fresh interpreter (None in sys.modules: `import` raises
    ModuleNotFoundError, as when it is not installed); the CLI runs there as it does from the shell."""
    config = project.write()
    script = textwrap.dedent(f"""
        import sys
        sys.modules[{name!r}] = None
        from reportgen.cli import main
        main(["build", {str(config)!r}, "--set", "output.attach=[{name}]", "-q"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=project.root,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: `output.attach.{name}` (from --set) needs the {name} package: pip install "
                           f"'reportgen[{name}]' (or remove `{name}` from `output.attach`).\n")
    assert not (project.root / "out").exists()


def test_every_tracker_is_an_extra_and_the_test_extra_pins_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for name, tracker in ((t.name, t) for t in TRACKERS):
        assert any(req.startswith(tracker.package) for req in extras[name]), name
    assert any(req.startswith("lightning") for req in extras["lightning"])
    pinned = {req.split("==")[0] for req in extras["test"] if "==" in req}
    assert {"mlflow", "wandb", "clearml", "lightning"} <= pinned
    assert "reportgen.integrations" in (ROOT / "pyproject.toml").read_text()
