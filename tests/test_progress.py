"""Progress bars: off by default (the Python API prints nothing), tqdm on stderr when the CLI turns them on."""
import dataclasses
import re

import pytest
from click.testing import CliRunner

from reportgen.registry import STAGES
from reportgen import progress
from reportgen.cli import main


@pytest.fixture(autouse=True)
def reset():
    progress.configure(False)
    yield
    progress.configure(False)


def test_off_by_default_passes_the_iterable_through_and_prints_nothing(capsys):
    items = [1, 2, 3]
    assert progress.enabled() is False
    assert progress.track(items, desc="cam", unit="image") is items
    with progress.bar(10, desc="steps", unit="step") as bar:
        bar.update(4)
        bar.set_postfix_str("x")
    assert capsys.readouterr() == ("", "")


def test_on_draws_bars_with_rate_on_stderr(capsys):
    progress.configure(True)
    assert list(progress.track(range(5), desc="cam", unit="image")) == [0, 1, 2, 3, 4]
    out, err = capsys.readouterr()
    assert out == "" and "cam" in err and ("image/s" in err or "s/image" in err)
    assert "0/5" in err  # total from len()
    seen = []
    with progress.bar(total=8, desc="integrated gradients", unit="step") as bar:
        for _ in range(4):
            bar.update(2)
            seen.append(bar.n)
    out, err = capsys.readouterr()
    assert seen == [2, 4, 6, 8] and out == "" and "integrated gradients" in err and "/8" in err


def test_a_bar_is_closed_on_an_error(capsys):
    progress.configure(True)
    with pytest.raises(KeyboardInterrupt):
        with progress.bar(total=3, desc="cam") as bar:
            raise KeyboardInterrupt
    assert bar.disable  # closed: tqdm disables a closed bar


def _stage_sees_progress(monkeypatch):
    import reportgen.stages.summary as summary

    real, states = summary.SPEC.run, []

    def run(ctx, cfg):
        states.append(progress.enabled())
        for _ in progress.track(range(3), desc="summary rows", unit="row"):
            pass
        return real(ctx, cfg)

    monkeypatch.setitem(STAGES, "summary", dataclasses.replace(summary.SPEC, run=run))
    return states


@pytest.mark.parametrize("terminal, quiet, shown", [(True, False, True), (True, True, False),
                                                    (False, False, False)])
def test_build_turns_bars_on_only_for_a_terminal_and_not_under_quiet(project, monkeypatch, terminal, quiet,
                                                                      shown):
    import reportgen.cli

    monkeypatch.setattr(reportgen.cli, "_stderr_is_terminal", lambda: terminal)
    states = _stage_sees_progress(monkeypatch)
    result = CliRunner().invoke(main, ["build", str(project.write()), *(["-q"] if quiet else [])])
    assert result.exit_code == 0, result.output
    assert states == [shown]
    assert ("summary rows" in result.stderr) == shown
    if quiet:
        assert result.stderr == ""
    assert progress.enabled() is False  # off again after the command


def test_the_progress_lines_count_one_image_in_the_singular(project):
    one = str(project.root / "images" / "a.png")
    result = CliRunner().invoke(main, ["build", str(project.write()), "-v", "--set", f"inputs.images=[{one}]",
                                       "--set", "analyses.feature_maps={}"])
    assert result.exit_code == 0, result.output
    assert "stage feature_maps: 1 image in 1 batch\n" in result.stderr, result.stderr
    assert "for 1 image\n" in result.stderr  # the feature maps' detail line
    assert not re.search(r"\b1 (images|batches|layers)\b", result.stderr)
    assert progress.plural(2, "batch", "batches") == "2 batches" and progress.plural(0, "image") == "0 images"
