from pathlib import Path

import pytest

from reportgen.config import STARTER, CamConfig, TargetSpec, load_config, parse_config
from reportgen.errors import ConfigError

BAD = """\
title: t
model:
  name: resnet18
analyses:
  summary: {}
  feature_map: {layers: [layer1]}
"""


def parse(text, overrides=()):
    return parse_config(text, base_dir=Path("/base"), origin="c.yaml", overrides=overrides)


def test_starter_config_is_valid_and_paths_resolve_against_the_config_folder():
    config = parse(STARTER)
    assert config.analyses.enabled() == ["summary", "kernels", "feature_maps", "cam", "gradients"]
    assert config.inputs.images == ("/base/images",)
    assert config.output.dir == Path("/base/reports/my-model")


def test_unknown_key_names_path_line_and_closest_spelling():
    with pytest.raises(ConfigError) as err:
        parse(BAD)
    assert str(err.value) == "unknown key `analyses.feature_map` (c.yaml, line 6). Did you mean `feature_maps`?"


@pytest.mark.parametrize("text, expected", [
    ("model: {name: resnet18, input_size: [3, 224]}", "`model.input_size` (c.yaml, line 1): expected [channels, height, width]"),
    ("model: {name: resnet18, device: gpu}", "`model.device` (c.yaml, line 1): `gpu` is not one of auto, cpu, cuda"),
    ("model: {name: resnet18}\nanalyses:\n  summary: {depth: deep}",
     "`analyses.summary.depth` (c.yaml, line 3): expected an integer"),
    ("model: {name: resnet18}\nanalyses:\n  cam: {methods: [gradcam, scorcam]}", "Did you mean `scorecam`?"),
    ("model: {name: resnet18}\nanalyses:\n  feature_maps: {max_channels: 0}", "must be at least 1, got 0"),
    ("model: {name: resnet18}\ninputs: {preprocess: {normalize: imagenett}}", "Did you mean `imagenet`?"),
    ("model: {source: module}", "`model.factory` (c.yaml, line 1): source `module` needs"),
    ("title: [1", "c.yaml is not valid YAML at line 1, column 10"),
    ("x: !!python/object/apply:os.system ['echo hacked']", "python tags are refused"),
    ("- a\n- b", "must be a mapping"),
])
def test_bad_values_are_clear(text, expected):
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert expected in str(err.value)


def test_set_overrides_any_key_with_the_same_validation():
    config = parse(STARTER, overrides=["model.name=resnet50", "analyses.cam.methods=[Grad-CAM++, XGradCAM]",
                                       "analyses.cam.targets={topk: 3}", "output.save_arrays=true"])
    assert config.model.name == "resnet50"
    assert config.analyses.cam == CamConfig(methods=("gradcampp", "xgradcam"), targets=TargetSpec(k=3))
    assert config.output.save_arrays is True
    with pytest.raises(ConfigError, match=r"`analyses.summary.depth` \(from --set\): expected an integer"):
        parse(STARTER, overrides=["analyses.summary.depth=many"])
    with pytest.raises(ConfigError, match="unknown key `analyses.cam.method` .* Did you mean `methods`"):
        parse(STARTER, overrides=["analyses.cam.method=[gradcam]"])
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse(STARTER, overrides=["model.name"])


def test_targets_forms():
    def targets(value):
        return parse(f"model: {{name: resnet18}}\nanalyses:\n  cam: {{targets: {value}}}").analyses.cam.targets

    assert targets("top1") == TargetSpec(k=1)
    assert targets("{topk: 5}") == TargetSpec(k=5)
    assert targets("[3, tabby]") == TargetSpec(k=0, classes=(3, "tabby"))
    assert targets("best") == TargetSpec(k=0, classes=("best",))  # one label, like a one-element list
    with pytest.raises(ConfigError, match="expected top1"):
        targets("3.5")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, reportgen.config, reportgen.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_false_switches_a_stage_off_from_yaml_set_and_null_or_empty_runs_it_with_defaults():
    yaml_off = parse(STARTER.replace("kernels: {}", "kernels: false"))
    assert yaml_off.analyses.kernels is None and "kernels" not in yaml_off.analyses.enabled()
    assert parse(STARTER, overrides=["analyses.cam=false"]).analyses.cam is None
    assert parse(STARTER, overrides=["analyses.cam=off"]).analyses.cam is None  # YAML 1.1's spellings of false
    for on in ("analyses.evaluation=", "analyses.evaluation=null", "analyses.evaluation=true"):
        config = parse(STARTER, overrides=[on])
        assert config.analyses.evaluation == type(config.analyses.evaluation)(), on  # on, with its defaults
    with pytest.raises(ConfigError, match=r"`analyses.kernels` \(from --set\): expected a mapping"):
        parse(STARTER, overrides=["analyses.kernels=nope"])  # only YAML's false switches off; a typo is not silent


def test_the_starter_runs_no_method_that_costs_many_passes_an_image():
    from reportgen.registry import METHODS

    analyses = parse(STARTER).analyses
    methods = analyses.cam.methods + analyses.gradients.methods
    # a masked forward per channel (Score-CAM: 512 an image on resnet18) or `steps` passes (integrated gradients)
    costly = [m for m in methods if METHODS[m].needs & {"masked_forwards", "own_passes"}]
    assert len(methods) >= 3 and costly == []
    assert "# scorecam" in STARTER and "# integrated_gradients" in STARTER  # named, with their cost, in comments
