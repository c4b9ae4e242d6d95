"""Plug-ins: a pip-installed package extends `reportgen build` through entry points. The distribution in
tests/plugin (its code and a .dist-info with entry_points.txt, as pip would leave them; nothing installed) brings
one method, one stage and one model source; a subprocess with that folder on PYTHONPATH builds a report with all
three and gets the plug-in's names suggested for a misspelling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

PLUGIN = Path(__file__).resolve().parent / "plugin"


def reportgen(*args: str, cwd: Path, plugin: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != PLUGIN]
    env["PYTHONPATH"] = os.pathsep.join(([str(PLUGIN)] if plugin else []) + inherited)
    return subprocess.run([sys.executable, "-m", "reportgen", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def plugin_config(project) -> dict:
    config = project.base()
    config["model"] = {"source": "tinyplug", "width": 6, "classes": 4, "input_size": [3, 16, 16], "labels": None,
                       "device": "cpu"}
    config["analyses"] = {"summary": {"depth": 2}, "cam": {"methods": ["abscam", "gradcam"], "target_layers": ["2"]},
                          "pixel_stats": {"digits": 2}}
    config["output"]["save_arrays"] = True
    return config


def test_a_plugin_brings_a_method_a_stage_and_a_model_source_to_reportgen_build(project):
    done = reportgen("build", str(project.write(plugin_config(project))), "-q", cwd=project.root)
    assert done.returncode == 0, done.stderr
    out = project.root / "out"
    data = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in data["stages"]] == ["summary", "cam", "pixel_stats"]
    assert all(s["status"] == "ok" for s in data["stages"])
    assert data["model"]["description"] == "the plug-in's tiny CNN, width 6" and data["model"]["num_classes"] == 4
    assert data["cam"]["methods"] == ["abscam", "gradcam"]
    html = (out / "report.html").read_text()
    assert "Abs-CAM" in html and 'id="pixel_stats"' in html and "Pixel statistics" in html
    arrays = np.load(out / "arrays.npz")
    assert {k.split("/")[1] for k in arrays.files if k.startswith("cam/")} == {"abscam", "gradcam"}
    # the stage's numbers are the images' own: channel means of what the model sees, shown with 2 decimals
    means = np.stack([arrays[f"pixel_stats/{name}/mean"] for name in ("a", "b")])
    assert means.shape == (2, 3) and np.allclose(means, np.asarray(data["pixel_stats"]["mean"]), atol=1e-6)
    assert f"{means[0, 0]:.2f}" in html


def test_validate_suggests_the_plugins_names(project):
    config = plugin_config(project)
    cases = [("model", "source", "tinyplg", "Did you mean `tinyplug`?"),
             ("analyses", "pixel_stat", {}, "Did you mean `pixel_stats`?")]
    for section, key, value, hint in cases:
        bad = yaml.safe_load(yaml.safe_dump(config))
        if section == "analyses":
            bad["analyses"][key] = bad["analyses"].pop("pixel_stats")
        else:
            bad[section][key] = value
        done = reportgen("validate", str(project.write(bad)), cwd=project.root)
        assert done.returncode == 2 and hint in done.stderr and "Traceback" not in done.stderr, done.stderr
    config["analyses"]["cam"]["methods"] = ["abscm"]
    done = reportgen("validate", str(project.write(config)), cwd=project.root)
    assert done.returncode == 2 and "unknown method `abscm`. Did you mean `abscam`?" in done.stderr, done.stderr
    # a source's own key is refused for another source, naming the keys that apply
    config = plugin_config(project)
    config["model"] = {**project.base()["model"], "width": 8}
    done = reportgen("validate", str(project.write(config)), cwd=project.root)
    assert done.returncode == 2 and "`model.width`" in done.stderr and "does not apply to source `module`" in \
        done.stderr and "its keys: factory, kwargs" in done.stderr, done.stderr


def test_without_the_plugin_its_names_are_unknown(project):
    done = reportgen("validate", str(project.write(plugin_config(project))), cwd=project.root, plugin=False)
    assert done.returncode == 2 and "`tinyplug` is not a model source" in done.stderr, done.stderr


@pytest.mark.slow
def test_the_schema_cam_parity_and_extending_tests_pass_with_a_plugin_installed(tmp_path):
    """Tests that survive extension: with the plug-in's method (a gradient CAM), stage and source registered, the
    schema, CAM-parity and extending test modules still pass (none counts records or looks a reference up by a
    registry id)."""
    root = Path(__file__).resolve().parents[1]
    modules = ["tests/test_config_schema.py", "tests/test_cam.py", "tests/test_extending.py"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGIN), str(root)]))
    check = subprocess.run([sys.executable, "-c", "from reportgen.registry import METHODS, STAGES, SOURCES; "
                            "print('abscam' in METHODS, 'pixel_stats' in STAGES, 'tinyplug' in SOURCES)"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["True", "True", "True"], check.stderr
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *modules],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_a_broken_plugin_is_one_message_naming_it(tmp_path, monkeypatch):
    """A plug-in whose entry point does not load, names no record, or reuses a built-in's name: a ReportgenError
    naming the entry point (the CLI's exit 2), not a traceback."""
    from importlib.metadata import EntryPoint

    from reportgen.errors import ReportgenError
    from reportgen.registry import Registry

    (tmp_path / "broken_plugin.py").write_text("import not_installed_anywhere\n")
    (tmp_path / "odd_plugin.py").write_text("THING = 42\n")
    (tmp_path / "twin_plugin.py").write_text("from types import SimpleNamespace\nRECORD = SimpleNamespace(name='summary')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [("broken_plugin:RECORD", r"plug-in `broken_plugin:RECORD` \(entry point `x` of group `test.group`\) "
                                      r"does not load: ModuleNotFoundError"),
             ("odd_plugin:THING", r"plug-in `odd_plugin:THING` .* gives 42, not a stage record"),
             ("twin_plugin:RECORD", r"adds the stage `summary`, which is already registered: rename it")]
    for value, message in cases:
        registry = Registry("stage", "test.group", lambda: [SimpleNamespace(name="summary")])
        monkeypatch.setattr("reportgen.registry.entry_points",
                            lambda group, value=value: [EntryPoint(name="x", value=value, group=group)])
        with pytest.raises(ReportgenError, match=message):
            registry.names()
