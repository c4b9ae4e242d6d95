"""Property-based: whatever the config file holds, `reportgen validate` answers exit 0, or exit 2 with exactly
one `error:` line; never a traceback. Valid configs of a tiny model and the same configs broken at random:
wrong types, unknown keys, out-of-range numbers, odd YAML (tabs, anchors and aliases, duplicate keys, deep
nesting, non-UTF-8 bytes, huge numbers) and --set overrides."""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reportgen.cli import main

FACTORY = '''
from torch import nn

def build(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

_FOLDER: Path | None = None


def folder() -> Path:
    """One folder for every example: the factory module, two images, a labels file."""
    global _FOLDER
    if _FOLDER is None:
        _FOLDER = Path(tempfile.mkdtemp(prefix="reportgen-fuzz-"))
        (_FOLDER / "fuzztiny.py").write_text(FACTORY)
        (_FOLDER / "images").mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(_FOLDER / "images" / "a.png")
        Image.fromarray(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8), "RGBA").save(_FOLDER / "images" / "b.png")
        (_FOLDER / "labels.txt").write_text("cat\ndog\nbird\n")
    return _FOLDER


safe_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-. *?+[]{}:#&!|>'\"%@`,", max_size=12)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.floats(allow_nan=True, allow_infinity=True),
                   safe_text, st.sampled_from([2**70, -(2**70), 10**30, 1e308, 0, -1, 0.0, 1.0, 100]))
junk = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(safe_text, inner, max_size=3)), max_leaves=6)


@st.composite
def valid_config(draw) -> dict:
    labels = draw(st.sampled_from([None, "labels.txt"]))
    named = ["cat", ["dog", 1], {"classes": ["bird"]}] if labels else []
    targets = draw(st.sampled_from(["top1", "top2", {"topk": 2}, [0, 2], 1] + named))
    convs = draw(st.sampled_from([[], ["0"], [{"type": "Conv2d"}], ["2", {"type": "Conv2d", "depth": 1}]]))
    layers = draw(st.sampled_from([[], ["0"], [{"type": "ReLU"}], ["3", {"depth": 1}]]))
    config = {
        "title": draw(safe_text),
        "seed": draw(st.integers(0, 2**40)),
        "model": {"source": "module", "factory": "fuzztiny:build",
                  "kwargs": draw(st.sampled_from([{}, {"num_classes": 3}, {"width": 2}])),
                  "input_size": draw(st.sampled_from([[3, 16, 16], [3, 12, 20]])),
                  "labels": labels, "device": "cpu",
                  "output": draw(st.sampled_from([None, None]))},
        "inputs": {"images": draw(st.sampled_from([["images/"], ["images/*.png"], "images/a.png"])),
                   "preprocess": draw(st.sampled_from([{"normalize": "none"}, {"resize": 16, "center_crop": 16},
                                                       {"normalize": {"mean": [0.5], "std": [0.25]},
                                                        "interpolation": "bicubic"}, None])),
                   "top_k": draw(st.integers(1, 5)), "alpha": draw(st.sampled_from(["drop", "white", "black"])),
                   "max_value": draw(st.sampled_from([None, 4095]))},
        "analyses": {"summary": draw(st.sampled_from([None, {"depth": 2}])),
                     "kernels": {"layers": convs, "optimize": draw(st.sampled_from([None, {"steps": 2, "size": 8}]))},
                     "feature_maps": {"layers": layers, "max_channels": draw(st.integers(1, 8))},
                     "cam": {"methods": draw(st.sampled_from([["gradcam"], ["Grad-CAM++", "eigencam"]])),
                             "targets": targets, "alpha": draw(st.floats(0, 1))},
                     "gradients": {"methods": ["saliency"], "targets": targets,
                                   "sign": draw(st.sampled_from(["all", "positive"]))},
                     "training": {"logs": ["runs"], "smoothing": draw(st.floats(0, 0.99))}},
        "output": {"dir": "out"},
    }
    for section in draw(st.sets(st.sampled_from(list(config["analyses"])))):
        del config["analyses"][section]  # a random subset of the stages
    return config


def _paths(node, path=()):
    """Every key path of the config, but not inside model.kwargs (the factory's own arguments)."""
    yield path
    if path == ("model", "kwargs"):
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, path + (i,))


@st.composite
def mutated(draw, config: dict) -> dict:
    config = copy.deepcopy(config)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(config) if p]
        path = draw(st.sampled_from(paths))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        kind = draw(st.sampled_from(["value", "unknown key", "number", "delete"]))
        if kind == "value":
            parent[path[-1]] = draw(junk)
        elif kind == "number":
            parent[path[-1]] = draw(st.sampled_from([-1, 0, -0.5, 1.5, 2**64, 10**40, 1e300, float("nan"),
                                                     float("inf"), -(10**20), 101, True]))
        elif kind == "unknown key" and isinstance(parent, dict):
            parent[draw(safe_text.filter(bool))] = draw(junk)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    return config


def odd_yaml(draw, text: str) -> bytes:
    lines = text.splitlines()
    kind = draw(st.sampled_from(["tab", "duplicate", "anchors", "deep", "bytes", "huge", "bomb", "self", "none"]))
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    if kind == "tab" and lines:
        lines[i] = "\t" + lines[i]
    elif kind == "duplicate" and lines:
        lines.insert(i, lines[i])
    elif kind == "anchors":
        lines = ["title: &t " + draw(safe_text).replace("#", "").replace("&", "") or "x"] + [
            line for line in lines if not line.startswith("title:")] + ["x_alias: *t"]
    elif kind == "deep":
        depth = draw(st.integers(10, 2000))
        lines.append("deep: " + "[" * depth + "]" * depth)
    elif kind == "bytes":
        return ("\n".join(lines)).encode() + draw(st.binary(min_size=1, max_size=8)) + b"\xff\xfe"
    elif kind == "huge":
        lines.append(f"seed: {draw(st.sampled_from(['9' * 5000, '1.0e999', '-9' * 40, '0x' + 'f' * 40]))}")
    elif kind == "bomb":
        lines = [line for line in lines if not line.startswith("inputs:")]
        lines += ["b0: &b0 [a, a, a, a, a, a, a, a, a]"] + [
            f"b{n}: &b{n} [{', '.join([f'*b{n - 1}'] * 9)}]" for n in range(1, 8)] + ["inputs: {images: *b7}"]
    elif kind == "self":
        lines.append("loop: &l [*l]" if draw(st.booleans()) else "loop: &l {x: *l}")
    return "\n".join(lines).encode()


OVERRIDES = st.lists(st.tuples(st.sampled_from(["model.name", "analyses.cam.targets", "inputs.top_k", "seed",
                                                "output.dir", "analyses.summary.depth", "inputs.alpha", "x.y",
                                                "analyses.cam.methods", "inputs.images"]),
                               st.sampled_from(["3", "[Cat]", "dog", "-1", "{topk: 2}", "[", "a: b", "", "out2",
                                                "images/a.png", "99999999999999999999999", "&a [*a]"])),
                     max_size=2)


@settings(max_examples=int(os.environ.get("REPORTGEN_FUZZ_EXAMPLES", 120)), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_validate_never_crashes(data):
    root = folder()
    config = data.draw(valid_config())
    broken = data.draw(st.sampled_from(["valid", "mutated", "odd yaml", "mutated"]))
    if broken == "mutated":
        config = data.draw(mutated(config))
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    body = odd_yaml(data.draw, text) if broken == "odd yaml" else text.encode()
    path = root / "config.yaml"
    path.write_bytes(body)
    args = ["validate", str(path)]
    for key, value in data.draw(OVERRIDES) if data.draw(st.integers(0, 3)) == 0 else ():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
    if broken == "valid" and not args[2:]:
        assert result.exit_code == 0, result.output
