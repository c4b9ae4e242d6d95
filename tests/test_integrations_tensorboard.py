"""`output.attach.tensorboard`: what `output.tensorboard` writes, plus a text naming the report, read back with
TensorBoard's EventAccumulator."""
from __future__ import annotations

from click.testing import CliRunner
from tensorboard.backend.event_processing import event_accumulator

from reportgen.cli import main


def _events(logdir):
    """Everything in `logdir`'s event files (size guidance 0: nothing sampled away)."""
    events = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0, "histograms": 0,
                                                                            "tensors": 0, "scalars": 0})
    return events.Reload()


def test_the_figures_histograms_summary_and_a_text_naming_the_report(project):
    config = project.base() | {"analyses": {"summary": {}, "kernels": {}, "cam": {"methods": ["gradcam"]}}}
    config["output"] |= {"attach": {"tensorboard": {"dir": "runs/exp1"}}, "tensorboard": "runs/plain"}
    done = CliRunner().invoke(main, ["build", str(project.write(config))])
    assert done.exit_code == 0, done.output
    assert "attached the report to TensorBoard events" in done.output
    attached, plain = _events(project.root / "runs" / "exp1"), _events(project.root / "runs" / "plain")
    tags, plain_tags = attached.Tags(), plain.Tags()
    # what `output.tensorboard` writes, and the text that names the report on top
    assert tags["images"] == plain_tags["images"] and any(t.startswith("cam/") for t in tags["images"])
    assert tags["histograms"] == plain_tags["histograms"] == ["0.weight", "3.weight"]
    assert set(tags["tensors"]) == set(plain_tags["tensors"]) | {"reportgen/report/text_summary"}
    (text,) = attached.Tensors("reportgen/report/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert str((project.root / "out" / "report.html").resolve()) in shown and "Tiny" in shown and text.step == 0


def test_attach_tensorboard_needs_its_folder(project):
    config = project.base()
    config["output"] |= {"attach": ["tensorboard"]}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 2 and "Traceback" not in done.output
    line = project.write(config).read_text().splitlines().index("  attach:") + 1
    assert f"`output.attach.tensorboard.dir` (config.yaml, line {line}): the TensorBoard log folder is required " \
           "(like `dir: runs/exp1`)." in done.output
    assert not (project.root / "out").exists()
