"""The schema validates itself: rules beside the dataclasses, YAML limits,
--set locations and paths, and the keys added with it."""
import dataclasses
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import reportgen.config as C
from reportgen.config import (STARTER, InputsConfig, ModelConfig, Preprocess, TargetSpec, canonical_methods,
                              parse_config)
from reportgen.errors import ConfigError
from reportgen.config.convert import Ctx, convert
from reportgen.config.yamlfile import Lines


def parse(text, overrides=()):
    return parse_config(text, base_dir=Path("/base"), origin="c.yaml", overrides=overrides)


def error(text, overrides=()):
    with pytest.raises(ConfigError) as err:
        parse(text, overrides)
    return str(err.value)


def test_preprocess_interpolation_in_yaml():
    config = parse("model: {name: r}\ninputs:\n  preprocess: {resize: 256, center_crop: 224, interpolation: bicubic}")
    assert config.inputs.preprocess == Preprocess(resize=(256,), center_crop=(224,), interpolation="bicubic")
    assert "`inputs.preprocess.interpolation` (c.yaml, line 3): `bicubc` is not one of bilinear, bicubic, nearest." \
           " Did you mean `bicubic`?" in error("model: {name: r}\ninputs:\n  preprocess: {interpolation: bicubc}")


@pytest.mark.parametrize("text, expected", [
    ("inputs: {preprocess: {resise: 256}}",
     "unknown key `inputs.preprocess.resise` (c.yaml, line 2). Did you mean `resize`?"),
    ("inputs: {preprocess: {interpolaton: bicubic}}", "Did you mean `interpolation`?"),
    ("inputs: {preprocess: {normalize: {mean: [0.5], sdt: [0.5]}}}",
     "unknown key `inputs.preprocess.normalize.sdt` (c.yaml, line 2). Did you mean `std`?"),
    ("inputs: {preprocess: {normalize: {mean: [0.5], std: [0]}}}",
     "`inputs.preprocess.normalize.std[0]` (c.yaml, line 2): must be positive, got 0.0."),
    ("inputs: {preprocess: {resize: [1, 2, 3]}}", "expected a positive size or [height, width], got [1, 2, 3]."),
    ("inputs: {preprocess: {center_crop: 0}}",
     "`inputs.preprocess.center_crop[0]` (c.yaml, line 2): must be between 1 and 16384, got 0."),
    ("inputs: {preprocess: 5}", "expected from_weights or a mapping (resize, center_crop, normalize, interpolation)"),
    ("inputs: {alpha: trasparent}", "`inputs.alpha` (c.yaml, line 2): `trasparent` is not one of drop, white, black."),
    ("inputs: {max_value: 0}", "`inputs.max_value` (c.yaml, line 2): must be at least 1, got 0."),
    ("inputs: {top_k: 0}", "must be at least 1, got 0."),
    ("inputs: {images: [a, 3]}", "expected a path, a folder or a glob"),
    ("analyses: {kernels: {layers: [{type: Conv2d, detph: 2}]}}",
     "unknown key `analyses.kernels.layers[0].detph` (c.yaml, line 2). Did you mean `depth`?"),
    ("analyses: {kernels: {layers: [{depth: 0}]}}",
     "`analyses.kernels.layers[0].depth` (c.yaml, line 2): must be at least 1, got 0."),
    ("analyses: {kernels: {layers: [{}]}}", "a layer pattern needs `type:` and/or `depth:`."),
    ("analyses: {kernels: {optimize: {lr: 0}}}", "`analyses.kernels.optimize.lr` (c.yaml, line 2): must be positive, got 0.0."),
    ("analyses: {kernels: {optimize: {jitter: -1}}}", "must be at least 0, got -1."),
    ("analyses: {kernels: {optimize: {size: 4}}}", "must be between 8 and 16384, got 4."),
    ("analyses: {cam: {alpha: 1.5}}", "`analyses.cam.alpha` (c.yaml, line 2): must be between 0 and 1, got 1.5."),
    ("analyses: {cam: {alpha: .nan}}", "expected a finite number, got nan."),
    ("analyses: {cam: {methods: []}}", "`analyses.cam.methods` (c.yaml, line 2): needs at least one method."),
    ("analyses: {cam: {colormap: jte}}", "unknown colour map `jte`."),
    ("analyses: {cam: {targets: {topk: 0}}}", "`analyses.cam.targets.topk` (c.yaml, line 2): must be at least 1, got 0."),
    ("analyses: {cam: {targets: {tpok: 3}}}", "unknown key `analyses.cam.targets.tpok` (c.yaml, line 2). Did you mean `topk`?"),
    ("analyses: {cam: {targets: [-1]}}", "`analyses.cam.targets[0]` (c.yaml, line 2): must be at least 0, got -1."),
    ("analyses: {gradients: {methods: [saliency, smothgrad]}}",
     "`analyses.gradients.methods[1]` (c.yaml, line 2): unknown method `smothgrad`. "
     "Did you mean `smoothgrad`? Methods: saliency"),
    ("analyses: {gradients: {outlier_perc: 100}}", "must be in [0, 100), got 100.0."),
    ("analyses: {gradients: {stdev: -0.1}}", "must be at least 0, got -0.1."),
    ("analyses: {training: {smoothing: 1}}", "must be in [0, 1), got 1.0."),
    ("seed: -1", "`seed` (c.yaml, line 2): must be at least 0, got -1."),
    ("seed: 123456789012345678901234567890", "`seed` (c.yaml, line 2): expected an integer of at most"),
    ("analyses: {cam: {alpha: 1" + "0" * 320 + "}}",
     "expected a finite number, got a huge integer."),
    ("output: {dir: \"a\\0b\"}", "`output.dir` (c.yaml, line 2): a path cannot hold a NUL character."),
])
def test_rules_come_from_the_schema(text, expected):
    assert expected in error("model: {name: resnet18}\n" + text)


def test_model_rules_and_new_keys():
    assert "`model.input_size[1]` (c.yaml, line 1): must be between 1 and 16384, got 100000." in \
           error("model: {name: r, input_size: [3, 100000, 3]}")
    assert "`model.factory` (c.yaml, line 1): expected \"package.module:function\", got `nocolon`." in \
           error("model: {source: module, factory: nocolon}")
    assert "source `torchscript` needs `path:`" in error("model: {source: torchscript}")
    assert parse("model: {name: r, output: 0}").model.output == 0
    assert parse("model: {name: r, output: logits}").model.output == "logits"
    assert "`model.output` (c.yaml, line 1)" in error("model: {name: r, output: [1]}")
    inputs = parse("model: {name: r}\ninputs: {alpha: white, max_value: 4095}").inputs
    assert (inputs.alpha, inputs.max_value) == ("white", 4095)
    assert InputsConfig().alpha == "drop" and ModelConfig().output is None


def test_the_hand_kept_sets_are_gone_and_rules_live_on_the_fields():
    for name in ("_POSITIVE", "_PATH_FIELDS", "_PATTERN_FIELDS", "_PATH_TEXT_FIELDS", "_SPECIAL", "_check_object",
                 "_preprocess", "_normalize", "_targets", "_layer_pattern"):
        assert not hasattr(C, name), name
    rules = {f.name: C.rules_of(f) for f in dataclasses.fields(C.GradientsConfig)}
    assert rules["outlier_perc"].bounds_text() == "in [0, 100)" and rules["methods"].methods == "gradients"
    # a new field's rule needs nothing else: add one and it is checked, with its key suggested
    @dataclasses.dataclass(frozen=True)
    class Extra:
        count: int = C.setting(2, ge=2, le=5)

    ctx = Ctx(Lines(None, "x.yaml"), Path("/"))
    assert convert({"count": 4}, Extra, ("extra",), ctx) == Extra(4)
    with pytest.raises(ConfigError, match=r"`extra.count` \(x.yaml\): must be between 2 and 5, got 9."):
        convert({"count": 9}, Extra, ("extra",), ctx)
    with pytest.raises(ConfigError, match="Did you mean `count`"):
        convert({"cuont": 4}, Extra, ("extra",), ctx)


def test_canonical_methods_is_the_one_check():
    ctx = Ctx(Lines(None, "x.yaml"), Path("/"))
    assert canonical_methods(["Grad-CAM++", "gradcampp", "XGradCAM"], "cam", ("m",), ctx) == ("gradcampp", "xgradcam")
    assert canonical_methods(["IG", "Vanilla Gradient"], "gradients", ("m",), ctx) == ("integrated_gradients", "saliency")
    with pytest.raises(ConfigError, match=r"`m\[0\]` \(x.yaml\): unknown method `gradcam`.* Methods: saliency"):
        canonical_methods(["gradcam"], "gradients", ("m",), ctx)
    with pytest.raises(ConfigError, match="needs at least one method"):
        canonical_methods([], "cam", ("m",), ctx)


def test_targets_shorthands_and_a_single_label():
    def targets(value):
        return parse(f"model: {{name: r}}\nanalyses:\n  cam: {{targets: {value}}}").analyses.cam.targets

    assert targets("cat") == TargetSpec(k=0, classes=("cat",))
    assert targets("'tabby cat'") == TargetSpec(k=0, classes=("tabby cat",))
    assert targets("top5") == TargetSpec(k=5) and targets("Top3") == TargetSpec(k=3)
    assert targets("7") == TargetSpec(k=0, classes=(7,))
    assert targets("{classes: [1, cat]}") == TargetSpec(k=0, classes=(1, "cat"))
    assert targets("null") == TargetSpec(k=1)
    assert "expected top1" in error("model: {name: r}\nanalyses:\n  cam: {targets: [true]}")
    assert "give `topk` or `classes`, not both" in error("model: {name: r}\nanalyses:\n  cam: {targets: {topk: 3, classes: [1]}}")


def test_to_dict_keeps_field_names_and_relative_paths():
    config = parse_config(STARTER, base_dir=Path("/base"), source=Path("/base/c.yaml"))
    data = config.to_dict(relative=True)
    assert data["inputs"]["images"] == ["images"] and data["output"]["dir"] == "reports/my-model"
    assert data["analyses"]["cam"]["targets"] == {"k": 1, "classes": []}
    assert "source" not in data and "lines" not in data and data["inputs"]["alpha"] == "drop"


# ---------------------------------------------------------------------------- YAML limits

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    text = BOMB + "model: {name: resnet18}\ninputs:\n  images: *i\n"
    assert len(text.encode()) < 1100
    start = time.perf_counter()
    message = error(text)
    assert time.perf_counter() - start < 1.0
    assert "c.yaml uses YAML aliases that expand to more than 100,000 values" in message
    (tmp_path / "bomb.yaml").write_text(text)
    from reportgen.cli import main

    start = time.perf_counter()
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bomb.yaml")])
    assert time.perf_counter() - start < 1.0
    assert result.exit_code == 2 and "uses YAML aliases that expand to more than" in result.stderr
    # modest aliases stay fine
    config = parse("model: {name: r}\ninputs: {images: &i [a.png, b.png]}\nanalyses: {training: {logs: *i}}")
    assert config.analyses.training.logs == ("/base/a.png", "/base/b.png")


@pytest.mark.parametrize("text, expected", [
    ("model: &m {name: r, kwargs: {x: *m}}", "alias inside its own anchor"),
    ("model: {name: r}\ntitle: " + "[" * 200 + "]" * 200, "nested too deeply"),
    ("model: {name: r}\ntitle: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("model: {name: r}\nseed: 1" + "0" * 5000, "value YAML cannot convert"),
    ("model: {name: r}\n\ttitle: x", "not valid YAML"),
    ("model: {name: r}\ntitle: \x07", "not valid YAML"),
    ("model: {name: r}\n---\nmodel: {name: s}", "not valid YAML"),
], ids=["recursive alias", "200 deep", "5000 deep", "5000 digits", "tab", "control character", "two documents"])
def test_odd_yaml_is_one_clear_error(text, expected):
    assert expected in error(text)


def test_merge_keys_and_anchors_are_allowed():
    config = parse("model:\n  <<: &base {name: resnet18, device: cpu}\n  input_size: [3, 32, 32]\n"
                   "analyses: {kernels: {optimize: {seed: 3}}}\n")
    assert config.model.name == "resnet18" and config.model.device == "cpu" and config.model.input_size == (3, 32, 32)


# ---------------------------------------------------------------------------- --set


def test_a_set_value_error_names_the_full_key_and_from_set():
    text = "model: {name: resnet18}\nanalyses:\n  summary: {}\n  cam:\n    methods: [gradcam]\n"
    config = parse(text, overrides=["analyses.cam.targets=[Cat]"])
    assert config.locate("`analyses.cam`: class `Cat` is not in the label list.") == \
           "`analyses.cam.targets` (from --set): class `Cat` is not in the label list."
    # a section error that is not about the --set value keeps the section's line
    assert config.locate("`analyses.cam`: layer `x` does not exist.") == \
           "`analyses.cam` (c.yaml, line 4): layer `x` does not exist."
    config = parse(text, overrides=["analyses.cam.targets=7"])
    assert config.locate("`analyses.cam`: class index 7 is outside the model's 3 outputs") == \
           "`analyses.cam.targets` (from --set): class index 7 is outside the model's 3 outputs"
    assert "`analyses.cam.targets[0]` (from --set): must be at least 0" in error(text, ["analyses.cam.targets=[-3]"])
    config = parse(text, overrides=["analyses.cam={methods: [gradcam], targets: [Cat]}"])
    assert config.locate("`analyses.cam`: class `Cat` is not in the label list.") == \
           "`analyses.cam.targets` (from --set): class `Cat` is not in the label list."


def test_set_error_end_to_end(project):
    from reportgen.cli import main

    config = project.base()
    config["analyses"]["cam"] = {"methods": ["gradcam"]}
    path = project.write(config)
    result = CliRunner().invoke(main, ["validate", str(path), "--set", "analyses.cam.targets=[Cat]"])
    assert result.exit_code == 2
    assert "error: `analyses.cam.targets` (from --set): class `Cat`" in result.stderr, result.stderr


def test_set_paths_resolve_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse(STARTER, overrides=["output.dir=here/out", "inputs.images=[pics/*.png, /abs/x.png]",
                                       "model.labels=labels.txt", "model.checkpoint=w.pt",
                                       "analyses.gradients.baseline=b.npy", "analyses.training={logs: runs}"])
    assert config.output.dir == tmp_path / "here" / "out"
    assert config.inputs.images == (str(tmp_path / "pics" / "*.png"), "/abs/x.png")
    assert config.model.labels == str(tmp_path / "labels.txt") and config.model.checkpoint == tmp_path / "w.pt"
    assert config.analyses.gradients.baseline == tmp_path / "b.npy"
    assert config.analyses.training.logs == (str(tmp_path / "runs"),)
    # paths written in the file still resolve against its folder
    assert parse(STARTER).output.dir == Path("/base/reports/my-model")
    assert parse(STARTER, overrides=["model.name=resnet50"]).inputs.images == ("/base/images",)


def test_set_does_not_change_an_anchors_other_uses():
    text = "model: {name: r}\ninputs: {images: &i [a.png]}\nanalyses: {training: &t {logs: *i}}\n"
    config = parse(text, overrides=["analyses.training.tags=[loss]"])
    assert config.analyses.training.tags == ("loss",)
    assert "error" not in str(parse(text, overrides=["model.name=resnet18"]).model)
    for bad, expected in [("a..b=1", "is not a key path"), ("=1", "--set expects KEY=VALUE"),
                          ("title=" + "[" * 300 + "]" * 300, "nested too deeply")]:
        assert expected in error(text, [bad])
