"""Extension points: a CAM method is one function plus one record, registered here in the test and seen
validated, computed, drawn, written to arrays.npz and report.json with no other edit; stages run in the
order their requirements give."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reportgen import methods
from reportgen.cli import main
from reportgen.config import AnalysesConfig, Config, FeatureMapsConfig, GradientsConfig, SummaryConfig
from reportgen.errors import ReportgenError
from reportgen.engine import Engine
from reportgen.methods.cam import scale_cams
from reportgen.methods.dispatch import Settings, explain
from reportgen.stages import planned, spec, stage_names

ROOT = Path(__file__).resolve().parents[1]


def toycam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A gradient-based CAM: activations weighted by the magnitude of their gradients. (N, C, h, w) -> (N, h, w)."""
    return (a * g.abs()).sum(dim=1)


@pytest.fixture
def toy_method():
    record = methods.register(methods.Method(id="toycam", family="cam", title="Toy-CAM", aliases=("toy cam",),
                                             needs=frozenset({"activations", "gradients"}), compute=toycam))
    yield record
    methods.unregister("toycam")


def test_a_registered_cam_method_is_validated_computed_drawn_and_written(project, toy_method):
    config = project.base()
    config["analyses"] = {"cam": {"methods": ["Toy-CAM", "gradcam"], "target_layers": ["3"]}}  # tinynet's 2nd conv
    config["output"]["save_arrays"] = True
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["cam"]["methods"] == ["toycam", "gradcam"]  # the alias resolved to the id
    html = (out / "report.html").read_text()
    assert "Toy-CAM" in html
    arrays = np.load(out / "arrays.npz")
    keys = [k for k in arrays.files if k.startswith("cam/toycam/3/")]
    assert len(keys) == 2  # two images, top-1 each

    # the same map by hand: activations and gradients of layer 3, then pytorch-grad-cam's post-processing
    from reportgen.inputs import prepare_image, read_image
    from reportgen.config import Preprocess
    import sys

    sys.path.insert(0, str(project.root))
    try:
        import tinynet
    finally:
        sys.path.remove(str(project.root))
    model = tinynet.build(num_classes=3).eval()
    x = torch.stack([prepare_image(read_image(project.root / "images" / name), Preprocess(normalize=None),
                                   (3, 16, 16)).tensor for name in ("a.png", "b.jpg")])
    store = {}
    handle = model[3].register_forward_hook(lambda _m, _i, o: store.update(a=o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    classes = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), store["a"])
    expected = scale_cams(scale_cams(toycam(store["a"].detach(), g).clamp_min(0), (16, 16)).clamp_min(0))
    for i, name in enumerate(("a", "b")):
        got = arrays[f"cam/toycam/3/{name}/{int(classes[i])}"]
        assert np.abs(got - expected[i].numpy()).max() < 1e-5


def test_an_unknown_method_is_refused_with_the_registered_ones_suggested(project, toy_method):
    config = project.base()
    config["analyses"] = {"cam": {"methods": ["toycm"]}}
    done = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert done.exit_code == 2
    assert "unknown method `toycm`" in done.stderr and "Did you mean `toycam`" in done.stderr


def test_every_stage_has_one_record_and_the_records_order_the_run():
    for name in stage_names():
        record = spec(name)
        assert record.name == name and record.title and record.options.__name__.endswith("Config")
    config = Config(analyses=AnalysesConfig(gradients=GradientsConfig(), summary=SummaryConfig(),
                                            feature_maps=FeatureMapsConfig()))
    assert [s.name for s in planned(config)] == ["summary", "feature_maps", "gradients"]


def test_a_stage_runs_after_what_it_requires_and_a_missing_requirement_is_named():
    import dataclasses

    from reportgen.registry import STAGES

    original = spec("summary")
    STAGES.register(dataclasses.replace(original, requires=("feature_maps",)))
    try:
        config = Config(analyses=AnalysesConfig(summary=SummaryConfig(), feature_maps=FeatureMapsConfig()))
        assert [s.name for s in planned(config)] == ["feature_maps", "summary"]
        with pytest.raises(ReportgenError, match=r"`analyses.summary` needs `analyses.feature_maps`"):
            planned(Config(analyses=AnalysesConfig(summary=SummaryConfig())))
    finally:
        STAGES.register(original)


def test_the_method_records_are_read_without_torch():
    import subprocess
    import sys

    code = ("import sys; import reportgen.methods as m; import reportgen.config; "
            "print('gradcam' in m.ids('cam'), 'saliency' in m.ids('gradients'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]


def test_a_methods_options_live_on_its_record_and_become_keys_of_its_stage():
    """A method registered with an options dataclass: its keys are keys of `analyses.gradients`, validated with
    their rules, marked as that method's; a key no method of the stage has is still unknown."""
    import dataclasses

    from reportgen.config import parse_config, rules_of
    from reportgen.config.rules import setting
    from reportgen.errors import ConfigError

    @dataclasses.dataclass(frozen=True)
    class Rounds:
        rounds: int = setting(3, ge=1)  # how many times

    def rounds(job):  # a method with passes of its own: its options come with the job
        return [torch.full_like(job.batch, float(job.options.rounds)) for _ in job.class_sets]

    methods.register(methods.Method(id="toyrounds", family="gradients", title="Toy rounds",
                                    needs=frozenset({"own_passes"}), compute=rounds, options=Rounds))
    try:
        text = "model: {name: resnet18}\nanalyses: {gradients: {methods: [toyrounds], rounds: 7}}\n"
        gradients = parse_config(text, base_dir=ROOT).analyses.gradients
        assert gradients.rounds == 7 and gradients.steps == 50  # integrated gradients' option, its default
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
        batch = torch.rand(2, 3, 2, 2)
        explained = explain(["toyrounds"], Engine(model, batch), [(0, 1)], Settings(options=gradients))
        assert torch.equal(explained.gradients["toyrounds"][0], torch.full_like(batch, 7.0))
        field = next(f for f in dataclasses.fields(gradients) if f.name == "rounds")
        assert field.metadata["only"] == ("toyrounds",) and rules_of(field).ge == 1
        with pytest.raises(ConfigError, match=r"`analyses.gradients.rounds` \(config, line 2\): must be at least 1"):
            parse_config(text.replace("7", "0"), base_dir=ROOT)
    finally:
        methods.unregister("toyrounds")
    with pytest.raises(ConfigError, match="unknown key `analyses.gradients.rounds`"):
        parse_config(text.replace("toyrounds", "saliency"), base_dir=ROOT)


def test_a_record_registered_later_leaves_the_config_classes_it_does_not_change(toy_method):
    """Registering a CAM method without options rebuilds nothing of the schema: the classes are the same objects,
    so a config parsed before it equals one parsed after it (and `reportgen.config.CamConfig` still names them)."""
    import reportgen.config as C

    text = "model: {name: resnet18}\nanalyses: {cam: {methods: [gradcam]}, gradients: {methods: [ig], steps: 8}}\n"
    methods.unregister("toycam")
    before, cam_class = C.parse_config(text, base_dir=ROOT), C.CamConfig
    methods.register(toy_method)
    after = C.parse_config(text, base_dir=ROOT)
    assert C.CamConfig is cam_class and after == before and after.analyses.cam == C.CamConfig(methods=("gradcam",))


def test_a_key_that_changes_nothing_is_one_warning_line(project):
    """Another source's key at its default, and a method's option while `methods` names none of the methods that
    take it: each one line `warning: ...` naming the key and its line; the config is valid."""
    config = project.base()  # source `module`
    config["model"]["weights"] = None  # torchvision's key, at its default
    config["analyses"] = {"gradients": {"methods": ["saliency"], "steps": 8}}
    path = project.write(config)
    lines = path.read_text().splitlines()
    line = {key: next(i for i, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:"))
            for key in ("weights", "steps")}
    done = CliRunner().invoke(main, ["validate", str(path)])
    assert done.exit_code == 0, done.output
    warnings = [text for text in done.stderr.splitlines() if text.startswith("warning: ")]
    assert warnings == [
        f"warning: `model.weights` (config.yaml, line {line['weights']}): does not apply to source `module` and is "
        "ignored (its keys: factory, kwargs; every source's: source, checkpoint, trust_checkpoint, input_size, labels, "
        "device, output, task).",
        f"warning: `analyses.gradients.steps` (config.yaml, line {line['steps']}): applies to integrated_gradients, "
        "which `methods` does not name: it changes nothing."]
