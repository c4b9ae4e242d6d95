"""Shared fixtures: a tiny network beside a config in a temporary folder, and images the tests make."""
from __future__ import annotations

import textwrap
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

torch.set_num_threads(2)

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

TINYNET = textwrap.dedent('''
    import torch
    from torch import nn

    def build(num_classes=3, width=8):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )
''')


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Tests that drive the browser (the `driver` fixture) are `slow`. The `gpu` tests run only when the `-m`
    expression names them (`-m gpu`); any other run deselects them, so a run without CUDA reports no skip."""
    for item in items:
        if "driver" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def make_image(path: Path, size=(40, 32), seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def labelled_folder(project, per_class: int, seed: int) -> dict:
    """`project`'s base config over `val/`, an ImageFolder of three classes (cat, dog, bird) of `per_class`
    generated images each, with labels.txt naming them."""
    (project.root / "labels.txt").write_text("cat\ndog\nbird\n")
    for k, label in enumerate(("cat", "dog", "bird")):
        (project.root / "val" / label).mkdir(parents=True)
        for i in range(per_class):
            make_image(project.root / "val" / label / f"{label}{i}.png", seed=seed + per_class * k + i)
    config = project.base()
    config["model"]["labels"] = "labels.txt"
    config["inputs"]["images"] = ["val"]
    return config


@pytest.fixture
def project(tmp_path: Path):
    """A folder with tinynet.py, two images and a `write(config_dict)` helper returning the YAML path."""
    return make_project(tmp_path)


def make_project(tmp_path: Path):
    """`project`'s folder in `tmp_path` (for a fixture of a wider scope)."""
    (tmp_path / "tinynet.py").write_text(TINYNET)
    (tmp_path / "images").mkdir()
    make_image(tmp_path / "images" / "a.png", seed=1)
    make_image(tmp_path / "images" / "b.jpg", seed=2)

    def base() -> dict:
        return {
            "title": "Tiny",
            "model": {"source": "module", "factory": "tinynet:build", "kwargs": {"num_classes": 3},
                      "input_size": [3, 16, 16], "labels": None, "device": "cpu"},
            "inputs": {"images": ["images/"], "preprocess": {"normalize": "none"}},
            "analyses": {"summary": {"depth": 2}},
            "output": {"dir": "out"},
        }

    def write(config: dict | None = None, name: str = "config.yaml", text: str | None = None) -> Path:
        path = tmp_path / name
        path.write_text(text if text is not None else yaml.safe_dump(config or base(), sort_keys=False))
        return path

    class Project:
        root = tmp_path

    p = Project()
    p.base = base
    p.write = write
    return p


@pytest.fixture(scope="module")
def one_thread():
    """Many small forwards: one intra-op thread is several times faster than two on a busy 2-core machine.
    Use per module: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def render_section(name: str, section: dict) -> str:
    """templates/sections/<name>.html.jinja2 rendered with `section`, autoescaped, with a stub `figure` macro
    (<figure> with the alt text and caption, no image)."""
    stub = ('{% macro figure(fig, cls="") %}<figure><img alt="{{ fig.alt }}" src="data:,">'
            "<figcaption>{{ fig.caption }}</figcaption></figure>{% endmacro %}")
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.DictLoader({"macros.html.jinja2": stub}),
                                    jinja2.FileSystemLoader(TEMPLATES)]),
        autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template(f"sections/{name}.html.jinja2").render(section=section, report={})


def write_config(folder: Path, cfg: dict, over: dict) -> Path:
    """`cfg` with `over`'s keys set (`section__key=value`, or `section=value` for a whole section), written to the
    next free `config<N>.yaml` of `folder`."""
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    path = folder / f"config{len(list(folder.glob('config*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
