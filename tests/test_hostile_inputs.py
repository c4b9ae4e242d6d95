"""Inputs a stranger can hand over that once cost a traceback or unbounded reading: each is one message and
exit 2, at once."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from reportgen.cli import main


def _one_message(done, *said: str) -> None:
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.output, done.output
    for text in said:
        assert text in lines[0], lines[0]
    assert len(lines[0]) < 600


@pytest.mark.parametrize("key", ["output.dir", "output.site", "output.tensorboard", "model.checkpoint",
                                 "model.labels"])
def test_a_path_with_a_name_longer_than_a_file_system_allows_is_one_message(project, key):
    config = project.base()
    section, name = key.split(".")
    config[section][name] = "x" * 300
    _one_message(CliRunner().invoke(main, ["build", str(project.write(config)), "-q"]), f"`{key}`",
                 "longer than a file system allows")
    assert not (project.root / "out").exists()


@pytest.mark.parametrize("key", ["labels", "checkpoint", "config"])
def test_a_device_instead_of_a_file_is_refused_without_reading_it(project, key):
    config = project.base()
    if key == "config":
        done = CliRunner().invoke(main, ["validate", "/dev/zero"])
    else:
        config["model"][key] = "/dev/zero"
        done = CliRunner().invoke(main, ["validate", str(project.write(config))])
    _one_message(done, "/dev/zero", "not a plain file")


def test_a_labels_file_that_is_not_utf8_is_one_message(project):
    (project.root / "labels.txt").write_bytes("chat\nchien\n".encode("utf-16"))
    config = project.base()
    config["model"]["labels"] = "labels.txt"
    _one_message(CliRunner().invoke(main, ["validate", str(project.write(config))]), "`model.labels`", "not UTF-8")


def test_a_huge_value_is_not_echoed_whole(project):
    config = project.base()
    config["model"]["device"] = "cpu" * 70_000
    _one_message(CliRunner().invoke(main, ["validate", str(project.write(config))]), "characters)")


def test_a_model_whose_weights_hold_nan_is_one_message_before_any_stage(project):
    import torch

    from tests.conftest import TINYNET

    namespace: dict = {}
    exec(TINYNET, namespace)  # the project's tiny network, its weights then broken
    model = namespace["build"](num_classes=3)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    torch.save(model.state_dict(), project.root / "nan.pt")
    config = project.base()
    config["model"]["checkpoint"] = "nan.pt"
    config["analyses"] = {"summary": {}, "cam": {"methods": ["gradcam"]}, "gradients": {"methods": ["saliency"]}}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    _one_message(done, "weights are not finite", "NaN or inf")
    assert not (project.root / "out").exists()
