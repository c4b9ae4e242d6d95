"""The CLI in-process: a good build, and every bad input -> exit 2, one clear message, nothing written."""
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from reportgen.cli import main
from tests.conftest import make_image


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def files_in(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def test_build_writes_report_json_and_html(project):
    result = run("build", project.write(), "--save-arrays", "-q")
    assert result.exit_code == 0, result.output
    out = project.root / "out"
    assert sorted(p.name for p in out.iterdir()) == [".reportgen-manifest.json", "arrays.npz", "images.jsonl",
                                                     "report.html", "report.json"]
    data = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["a", "b"] and all(r["detail"] == "all images" for r in records)
    assert [{k: r[k] for k in ("name", "source", "top_k", "truth")} for r in records] == data["images"]
    assert data["inputs"] == {"images": 2, "detail": 2, "records": "images.jsonl"}
    assert set(data) >= {"title", "created", "versions", "config", "summary", "images", "stages"}
    assert set(data["versions"]) == {"reportgen", "torch", "torchvision", "python"}
    assert set(data["summary"]["totals"]) == {
        "total_params", "trainable_params", "non_trainable_params", "total_mult_adds", "input_size_mb",
        "forward_backward_pass_size_mb", "params_size_mb", "estimated_total_size_mb"}
    assert set(data["summary"]["rows"][1]) == {"name", "class_name", "depth", "output_shape", "num_params",
                                               "mult_adds", "kernel_size", "trainable"}
    assert [i["name"] for i in data["images"]] == ["a", "b"]
    top = data["images"][0]["top_k"]
    assert len(top) == 3 and abs(sum(t["probability"] for t in top) - 1) < 1e-5
    assert set(top[0]) == {"index", "label", "probability"} and top[0]["label"] == f"class {top[0]['index']}"
    assert data["stages"] == [{"name": "summary", "status": "ok", "seconds": data["stages"][0]["seconds"], "error": None}]
    import numpy as np
    with np.load(out / "arrays.npz") as arrays:
        assert sorted(arrays.files) == ["logits/a", "logits/b"]
        assert arrays["logits/a"].dtype == np.float32 and arrays["logits/a"].shape == (3,)


def test_report_is_self_contained_and_has_a_csp(project):
    assert run("build", project.write(), "-q").exit_code == 0
    html = (project.root / "out" / "report.html").read_text()
    import html as htmllib
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    assert htmllib.unescape(csp.group(1)).startswith("default-src 'none'; img-src data:;")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    assert refs, "expected some src/href"
    for ref in refs:
        assert ref.startswith(("data:", "#")), ref
    assert "http://" not in html.replace("http-equiv", "") and "https://" not in html
    assert 'id="summary"' in html and 'id="inputs"' in html


def test_hostile_title_file_name_and_label_are_escaped(project):
    evil = "<script>alert(1)</script>"
    make_image(project.root / "images" / f"{evil}.png".replace("/", "_"), seed=3)
    labels = project.root / "labels.txt"
    labels.write_text(f"{evil}\n<img src=x onerror=alert(1)>\nok\n")
    config = project.base()
    config["title"] = evil
    config["model"]["labels"] = "labels.txt"
    config["inputs"]["top_k"] = 3
    assert run("build", project.write(config), "-q").exit_code == 0
    html = (project.root / "out" / "report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # ours only


def test_set_and_out_options(project, tmp_path):
    result = run("build", project.write(), "--set", "title=Overridden", "-o", tmp_path / "elsewhere", "-q")
    assert result.exit_code == 0
    data = json.loads((tmp_path / "elsewhere" / "report.json").read_text())
    assert data["title"] == "Overridden"


def test_progress_goes_to_stderr_and_quiet_silences_it(project):
    loud = CliRunner().invoke(main, ["build", str(project.write())])
    assert "stage summary" in loud.stderr and "wrote" in loud.stderr and loud.stdout == ""
    quiet = CliRunner().invoke(main, ["build", str(project.write()), "-q"])
    assert quiet.stderr == "" and quiet.exit_code == 0


def _bad_cases(project):
    """(name, how to break the project, expected message fragment)"""
    def cfg(mutate):
        def apply():
            config = project.base()
            mutate(config)
            return project.write(config)
        return apply

    def text(t):
        return lambda: project.write(text=t)

    def checkpoint(obj):
        def apply():
            torch.save(obj, project.root / "ckpt.pt")
            config = project.base()
            config["model"]["checkpoint"] = "ckpt.pt"
            return project.write(config)
        return apply

    def strict():
        config = project.base()
        config["inputs"]["strict"] = True
        return project.write(config)

    def not_an_image():
        (project.root / "images" / "c.png").write_text("this is text")
        return strict()  # not strict, an unreadable image is skipped with a note (tests/test_datasets.py)

    class Evil:
        def __reduce__(self):
            return (Path.touch, (project.root / "pwned",))

    def module(name: str, source: str):  # a module name of its own: imports are cached for the whole session
        def apply():
            (project.root / f"{name}.py").write_text(source)
            config = project.base()
            config["model"].update(factory=f"{name}:build", kwargs={})
            return project.write(config)
        return apply

    def text_checkpoint():
        (project.root / "ckpt.pt").write_text("not a checkpoint at all " * 10)
        config = project.base()
        config["model"]["checkpoint"] = "ckpt.pt"
        return project.write(config)

    def huge_image():  # a PNG header claiming 20000 x 20000 pixels: over Pillow's decompression-bomb limit
        import struct
        import zlib
        header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        (project.root / "images" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                                           + chunk(b"IEND", b""))
        return strict()

    def unwritable():
        (project.root / "locked").write_text("a file where a folder should be")
        config = project.base()
        config["output"]["dir"] = "locked/out"
        return project.write(config)

    return [
        ("malformed yaml", text("title: [unclosed\nmodel: {}"), "not valid YAML at line"),
        ("empty config", text(""), "config.yaml has no `model:` section"),
        ("duplicate key", text("title: a\nanalyses: {summary: {}}\ntitle: b\n"),
         "`title` is given twice (config.yaml, lines 1 and 3)"),
        ("wrong type", cfg(lambda c: c["analyses"].update(summary={"depth": "three"})), "`analyses.summary.depth`"),
        ("unknown key", cfg(lambda c: c["analyses"].update(sumary={})), "Did you mean `summary`?"),
        ("python tag", text("title: !!python/object/apply:os.system ['touch pwned']"), "python tags are refused"),
        ("missing image", cfg(lambda c: c["inputs"].update(images=["images/nope.png"])), "nope.png does not exist"),
        ("no match", cfg(lambda c: c["inputs"].update(images=["images/*.tif"])), "no image matches"),
        ("not an image", not_an_image, "c.png is not an image"),
        ("unknown model", cfg(lambda c: c.update(model={**{k: v for k, v in c["model"].items()
                                                           if k not in ("factory", "kwargs")},
                                                        "source": "torchvision", "name": "resnet181"})),
         "Did you mean `resnet18`?"),
        ("bad factory", cfg(lambda c: c["model"].update(factory="tinynet:buidl")), "Did you mean `build`?"),
        ("mismatched checkpoint", checkpoint({"0.weight": torch.zeros(2, 2)}), "does not match the model: missing"),
        ("unsafe checkpoint", checkpoint({"state_dict": Evil()}), "needs full unpickling"),
        ("unknown layer", cfg(lambda c: c["analyses"].update(cam={"target_layers": ["4x"]})), "layer `4x` does not exist"),
        ("labels count", cfg(lambda c: c["model"].update(labels="images/../tinynet.py")), "labels, but the model has 3"),
        ("unwritable output", unwritable, "cannot write to"),
        ("text checkpoint", text_checkpoint, "ckpt.pt is not a PyTorch checkpoint"),
        ("factory raises", module("raising", "def build():\n    raise RuntimeError('no GPU here')\n"),
         "raising:build() raised RuntimeError: no GPU here"),
        ("module with a syntax error", module("broken", "def build(:\n"), "importing `broken` failed: SyntaxError"),
        ("huge image", huge_image, "huge.png is too large to read safely"),
    ]


CASES = [c[0] for c in _bad_cases(type("P", (), {"root": Path("."), "base": dict, "write": None})())]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(project, case):
    name, apply, expected = next(c for c in _bad_cases(project) if c[0] == case)
    # a previous good report must survive untouched
    good = run("build", project.write(), "-q")
    assert good.exit_code == 0
    before = files_in(project.root / "out")
    config_path = apply()
    result = CliRunner().invoke(main, ["build", str(config_path)])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert result.stderr.count("error:") == 1
    assert files_in(project.root / "out") == before
    assert not (project.root / "pwned").exists()
    # validate says the same
    checked = CliRunner().invoke(main, ["validate", str(config_path)])
    assert checked.exit_code == 2 and expected in checked.stderr


def test_trusted_checkpoint_loads_when_allowed(project):
    from tests.conftest import TINYNET
    namespace = {}
    exec(TINYNET, namespace)
    model = namespace["build"](num_classes=3)
    torch.save({"model": model, "epoch": 3}, project.root / "full.pt")  # a whole pickled module
    config = project.base()
    config["model"]["checkpoint"] = "full.pt"
    refused = run("build", project.write(config), "-q")
    assert refused.exit_code == 2
    config["model"]["trust_checkpoint"] = True
    assert run("build", project.write(config), "-q").exit_code == 0


def test_validate_layers_and_init(project, tmp_path, monkeypatch):
    result = run("validate", project.write())
    assert result.exit_code == 0 and "valid" in result.output
    layers = run("layers", project.write())
    assert layers.exit_code == 0
    assert re.search(r"^2\s+ReLU\s+1x8x16x16", layers.output, re.M)
    assert "default CAM layer: 4" in layers.output
    tv = run("layers", "resnet18", "--input-size", "3,64,64")
    assert "layer4.1.conv2" in tv.output and "default CAM layer: layer4" in tv.output
    monkeypatch.chdir(project.root)  # a factory's module beside the working folder, and a TorchScript file
    factory = run("layers", "tinynet:build", "--input-size", "3,16,16")
    assert factory.exit_code == 0 and re.search(r"^2\s+ReLU\s+1x8x16x16", factory.output, re.M)
    import torch
    from tests.conftest import TINYNET
    namespace = {}
    exec(TINYNET, namespace)
    torch.jit.save(torch.jit.script(namespace["build"]()), "tiny.ts")
    scripted = run("layers", "tiny.ts", "--input-size", "3,16,16")
    assert scripted.exit_code == 0 and re.search(r"^3\s+Conv2d\s+-", scripted.output, re.M), scripted.output
    assert "TorchScript model takes no hooks" in scripted.output
    monkeypatch.chdir(tmp_path)
    assert run("init").exit_code == 0
    assert yaml.safe_load(Path("reportgen.yaml").read_text())["model"]["name"] == "resnet18"
    again = CliRunner().invoke(main, ["init"])
    assert again.exit_code == 2 and "exists" in again.stderr


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from reportgen.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


def test_errors_found_after_parsing_name_the_key_and_its_line(project):
    """Model, file and layer problems surface after the YAML is parsed; they still say where the key is."""
    config = project.base()
    config["model"]["factory"] = "tinynet:buidl"
    config["analyses"]["cam"] = {"targets": [7]}
    path = project.write(config)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "factory:" in text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and f"`model.factory` (config.yaml, line {line}): " in result.stderr
    config["model"]["factory"] = "tinynet:build"
    path = project.write(config)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip() == "cam:")
    result = CliRunner().invoke(main, ["build", str(path)])
    assert result.exit_code == 2, result.output
    assert f"`analyses.cam` (config.yaml, line {line}): class index 7 is outside" in result.stderr
    result = CliRunner().invoke(main, ["validate", str(path), "--set", "analyses.cam.targets=[0]",
                                       "--set", "model.name=resnet181", "--set", "model.source=torchvision",
                                       "--set", "model.factory=null"])
    assert "`model.name` (from --set): `resnet181`" in result.stderr


def test_a_torchscript_model_builds_what_needs_no_hooks_and_says_what_does(project):
    import torch
    from tests.conftest import TINYNET
    namespace = {}
    exec(TINYNET, namespace)
    torch.jit.save(torch.jit.script(namespace["build"]()), project.root / "tiny.ts")
    config = project.base()
    config["model"] = {"source": "torchscript", "path": "tiny.ts", "input_size": [3, 16, 16], "labels": None,
                       "device": "cpu"}
    config["analyses"].update(kernels={}, gradients={"methods": ["saliency", "integrated_gradients"], "steps": 8})
    built = run("build", project.write(config), "-q")
    assert built.exit_code == 0, built.output
    stages = json.loads((project.root / "out" / "report.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [("summary", "ok"), ("kernels", "ok"), ("gradients", "ok")]
    config["analyses"]["gradients"]["methods"] = ["saliency", "guided_backprop"]
    config["analyses"]["feature_maps"] = {}
    refused = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert refused.exit_code == 2 and "`analyses.feature_maps`" in refused.stderr
    assert "a TorchScript model does not take" in refused.stderr
    del config["analyses"]["feature_maps"]
    refused = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert "`analyses.gradients` (config.yaml, line" in refused.stderr and "guided_backprop needs hooks" in refused.stderr


def test_init_dash_writes_to_standard_output(tmp_path, monkeypatch):
    from reportgen.config import STARTER

    monkeypatch.chdir(tmp_path)
    result = run("init", "-")
    assert result.exit_code == 0 and result.stdout == STARTER
    assert list(tmp_path.iterdir()) == []
    yaml.safe_load(result.stdout)


@pytest.mark.parametrize("size", ["64,64", "1,3,64,64", "3,0,64", "3,x,64", ""])
def test_layers_input_size_takes_exactly_c_h_w(size):
    result = CliRunner().invoke(main, ["layers", "resnet18", "--input-size", size])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--input-size'" in result.stderr and "C,H,W" in result.stderr
    assert "Traceback" not in result.output


def test_set_and_out_paths_resolve_against_the_current_folder(project, tmp_path_factory, monkeypatch):
    help_text = " ".join(run("build", "--help").output.split())
    assert "(overrides output.dir); a relative path resolves against the current folder" in help_text
    assert "A relative path given here resolves against the current folder; paths written in the config " \
           "file resolve against its folder" in help_text
    assert "resolves against the current folder" in " ".join(run("validate", "--help").output.split())
    here = tmp_path_factory.mktemp("here")
    (here / "pics").mkdir()
    make_image(here / "pics" / "elsewhere.png", seed=5)
    monkeypatch.chdir(here)
    config = project.write()
    result = run("build", config, "--set", "inputs.images=[pics/]", "-o", "site", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads((here / "site" / "report.json").read_text())
    assert [i["name"] for i in data["images"]] == ["elsewhere"]
    assert run("build", config, "--set", "output={dir: out2}", "-q").exit_code == 0  # inside a mapping too
    assert (here / "out2" / "report.json").is_file()
    assert run("build", config, "-q").exit_code == 0  # written in the file: the config's folder
    assert (project.root / "out" / "report.json").is_file()


def test_library_warnings_are_silenced_ours_are_not(project, monkeypatch):
    """torchvision's GoogLeNet FutureWarning (default weight initialization) is nothing a user can act on."""
    import warnings

    import torchvision

    with warnings.catch_warnings(record=True) as seen:  # the control: the warning is there to silence
        warnings.simplefilter("always")
        torchvision.models.googlenet(weights=None, aux_logits=False, num_classes=4)
    assert any("default weight initialization" in str(w.message) for w in seen)
    with warnings.catch_warnings(record=True) as seen:  # what is recorded here is what a terminal shows
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["layers", "googlenet", "--input-size", "3,64,64"])
    assert result.exit_code == 0, result.output
    assert "inception5b" in result.output
    assert "default weight initialization" not in result.output
    assert not [w for w in seen if "default weight initialization" in str(w.message)], [str(w.message) for w in seen]
    (project.root / "warner.py").write_text(
        "import warnings\nfrom tinynet import build as tiny\n\n"
        "def build():\n    warnings.warn('a warning of the user\\'s own', UserWarning)\n    return tiny()\n")
    monkeypatch.chdir(project.root)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["layers", "warner:build", "--input-size", "3,16,16"])
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in seen] == ["a warning of the user's own"]


def test_the_command_in_a_process_of_its_own_keeps_its_exit_code_and_output(tmp_path):
    """`python -m reportgen` ends with os._exit (no interpreter teardown): the exit code and everything
    printed still come out."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}

    def command(*args):
        return subprocess.run([sys.executable, "-m", "reportgen", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    started = command("init", "-")
    assert started.returncode == 0 and started.stdout.startswith("# reportgen config")
    missing = command("validate", "missing.yaml")
    assert missing.returncode == 2 and "missing.yaml" in missing.stderr
    unknown = command("bogus")
    assert unknown.returncode == 2 and "No such command" in unknown.stderr


def test_layers_of_a_file_that_is_no_torchscript_model_is_exit_2_naming_what_it_takes(project, monkeypatch):
    import torch

    monkeypatch.chdir(project.root)
    torch.save(torch.nn.Linear(2, 2).state_dict(), "weights.pt")
    Path("notes.ts").write_text("not a model")
    takes = ("`reportgen layers` takes a config file (.yaml), a torchvision model name, a TorchScript file (.pt, .ts, "
             "from torch.jit.save) or a factory `package.module:function`.")
    for target, says in [("tinynet.py", "tinynet.py is a Python file: " + takes + " For a model built in tinynet.py, "
                                        "name the function that returns it: `tinynet:<function>`."),
                         ("missing.py", "missing.py is a Python file: "),
                         ("weights.pt", "weights.pt is not a TorchScript model (a checkpoint or other file): " + takes
                          + " For a checkpoint, write a config with `model.checkpoint` and give that."),
                         ("notes.ts", "notes.ts is not a TorchScript model")]:
        result = CliRunner().invoke(main, ["layers", target])
        assert result.exit_code == 2 and "Traceback" not in result.output, (target, result.output)
        assert result.stderr.startswith(f"error: {says}"), (target, result.stderr)


def test_set_false_switches_a_stage_off_and_an_empty_value_runs_it(project):
    config = project.base()
    config["analyses"] |= {"kernels": {}}
    path = project.write(config)
    assert run("build", path, "--set", "analyses.kernels=false", "-q").exit_code == 0
    data = json.loads((project.root / "out" / "report.json").read_text())
    assert "summary" in data and "kernels" not in data
    assert run("build", path, "--set", "analyses.kernels=false", "--set", "analyses.kernels=", "-q").exit_code == 0
    assert "kernels" in json.loads((project.root / "out" / "report.json").read_text())


GRAYNET = '''
import torch
from torch import nn

def build(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''


def _graynet(project, **model) -> dict:
    """A 1-channel, 10-class model in the project (like one trained on MNIST or scikit-learn's digits)."""
    (project.root / "graynet.py").write_text(GRAYNET)
    config = project.base()
    config["model"] |= {"factory": "graynet:build", "kwargs": {}, "input_size": [1, 16, 16], **model}
    return config


def test_imagenet_normalisation_on_a_1_channel_model_says_what_is_wrong_and_the_way_out(project):
    result = CliRunner().invoke(main, ["build", str(project.write(_graynet(project))), "-q",
                                       "--set", "inputs.preprocess.normalize=imagenet"])
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert "1 or 1" not in message and "Traceback" not in message
    assert "the model takes 1-channel images" in message and "ImageNet's, 3 values each" in message
    assert "1 value each" in message and "`normalize: none`" in message
    assert not (project.root / "out").exists()


def test_imagenet_labels_on_a_10_class_model_warn_once_when_left_at_the_default_and_are_exit_2_when_asked_for(project):
    config = _graynet(project)
    del config["model"]["labels"]  # left at its default, imagenet
    left = CliRunner().invoke(main, ["build", str(project.write(config))])
    assert left.exit_code == 0, left.output
    assert left.stderr.count("warning: `model.labels` is left at `imagenet`") == 1
    assert "classes are shown as `class 0` to `class 9`" in left.stderr
    data = json.loads((project.root / "out" / "report.json").read_text())
    top = data["images"][0]["top_k"]
    assert [p["label"] for p in top] == [f"class {p['index']}" for p in top]
    config["model"]["labels"] = "imagenet"
    for args in ([], ["--set", "model.labels=imagenet"]):
        asked = CliRunner().invoke(main, ["validate", str(project.write(config if not args else _graynet(project))),
                                          *args])
        assert asked.exit_code == 2 and "Traceback" not in asked.output
        assert "`model.labels` (" in asked.stderr  # where it is written
        assert "`imagenet` gives 1000 labels, but the model has 10 outputs" in asked.stderr


def test_an_image_folder_whose_file_names_repeat_across_classes_names_them_class_slash_file(project):
    for cls in ("circle", "square"):
        (project.root / "set" / cls).mkdir(parents=True)
        for i in range(2):
            make_image(project.root / "set" / cls / f"{i}.png", seed=i)
    make_image(project.root / "set" / "square" / "only.png", seed=5)
    config = project.base()
    config["model"] |= {"labels": None, "kwargs": {"num_classes": 2}}
    config["inputs"]["images"] = ["set"]
    assert run("build", project.write(config), "-q").exit_code == 0
    records = [json.loads(line) for line in (project.root / "out" / "images.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["circle/0", "circle/1", "square/0", "square/1", "only"]


def test_the_build_modules_import_no_torchvision_nor_what_only_one_task_needs():
    """A classifier's build pays for no detector's code: the pipeline, the methods' dispatch and the stages import
    neither torchvision (a detector's box IoU; its import pulls sympy in: 150 MB of a small build's memory) nor
    transformers, timm or pycocotools."""
    import subprocess
    import sys

    code = ("import sys, reportgen.pipeline, reportgen.render, reportgen.methods.dispatch, reportgen.stages.cam, "
            "reportgen.stages.gradients, reportgen.stages.evaluation\n"
            "print([m for m in ('torchvision', 'sympy', 'transformers', 'timm', 'pycocotools') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]"), out.stdout
