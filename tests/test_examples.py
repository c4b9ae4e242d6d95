"""Every shipped config is valid, and the quickstart builds end to end offline."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "example_configs"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_config_validates(path):
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "valid" in result.output


def test_quickstart_builds_end_to_end(tmp_path):
    config = EXAMPLES / "quickstart.yaml"
    result = CliRunner().invoke(main, ["build", str(config), "-o", str(tmp_path), "-q", "--save-arrays"])
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    enabled = load_config(config).analyses.enabled()
    assert [s["name"] for s in data["stages"]] == enabled
    assert all(s["status"] == "ok" for s in data["stages"]), data["stages"]
    html = (tmp_path / "report.html").read_text()
    for name in enabled:
        assert f'<section id="{name}"' in html
    # the shipped model is trained: every sample is classified correctly
    for image in data["images"]:
        assert image["name"].rsplit("_", 1)[0] == image["top_k"][0]["label"]
