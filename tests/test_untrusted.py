"""Configs and model files from strangers: `--untrusted` ($REPORTGEN_UNTRUSTED=1) refuses every path that runs
their code, a Hugging Face folder with remote code is refused always, and a factory that exits or returns
something else than a model is one message, exit 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from reportgen.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _trusted_after(monkeypatch):
    """`--untrusted` sets $REPORTGEN_UNTRUSTED in the process (for torchrun's too): unset after each test."""
    monkeypatch.setenv("REPORTGEN_UNTRUSTED", "0")


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A factory module whose import writes a file: the sign that a stranger's code ran."""
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nimport torch\n"
                                      "def build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                                      "torch.nn.Linear(768, 3))\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "ran"
    import sys

    sys.modules.pop("evil", None)


@pytest.mark.parametrize("command", ["build", "validate"])
def test_untrusted_refuses_a_factory_before_it_runs(project, marker, command, monkeypatch):
    config = project.base()
    config["model"] |= {"factory": "evil:build", "kwargs": {}}
    done = CliRunner().invoke(main, [command, str(project.write(config)), "--untrusted"])
    assert done.exit_code == 2 and "`model.source: module`" in done.output and "--untrusted" in done.output, done.output
    assert not marker.exists()
    monkeypatch.setenv("REPORTGEN_UNTRUSTED", "0")  # the flag set it for this process (and torchrun's)
    done = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert done.exit_code == 0, done.output
    assert marker.exists()


def test_untrusted_refuses_layers_of_a_factory_and_a_torchscript_file(marker, tmp_path):
    assert CliRunner().invoke(main, ["layers", "evil:build", "--untrusted"]).exit_code == 2
    assert not marker.exists()
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "m.pt"))
    done = CliRunner().invoke(main, ["layers", str(tmp_path / "m.pt"), "--untrusted", "--input-size", "1,1,2"])
    assert done.exit_code == 2 and "TorchScript program" in done.output, done.output


def test_untrusted_refuses_trust_checkpoint(project, monkeypatch):
    monkeypatch.setenv("REPORTGEN_UNTRUSTED", "1")
    config = project.base()
    config["model"] = {"source": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 3}, "input_size": [3, 16, 16],
                       "checkpoint": "w.pt", "trust_checkpoint": True, "labels": None}
    torch.save({}, project.root / "w.pt")
    done = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert done.exit_code == 2 and "trust_checkpoint" in done.output and "unpickles" in done.output, done.output


@pytest.mark.parametrize("factory, said", [("builtins:exit", "SystemExit"), ("builtins:dict", "not an nn.Module")])
def test_a_factory_that_exits_or_returns_no_model_is_one_message(factory, said, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(main, ["layers", factory])
    assert done.exit_code == 2 and said in done.output, done.output


def test_a_hugging_face_folder_with_remote_code_is_refused(project, tmp_path):
    pytest.importorskip("transformers")
    folder = tmp_path / "remote"
    shutil.copytree(ROOT / "example_configs" / "hf_tiny_vit", folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    cfg = project.base()
    cfg["model"] = {"source": "huggingface", "path": str(folder), "input_size": [3, 32, 32], "labels": None}
    done = CliRunner().invoke(main, ["validate", str(project.write(cfg))])
    assert done.exit_code == 2 and "auto_map" in done.output, done.output
    assert not (tmp_path / "ran").exists()


def test_layers_bounds_the_input_size():
    done = CliRunner().invoke(main, ["layers", "resnet18", "--input-size", "3,99999,99999"])
    assert done.exit_code == 2 and "16 384" in done.output, done.output
