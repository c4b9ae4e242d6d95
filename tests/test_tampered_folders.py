"""Report folders from strangers, tampered with, given to `reportgen site` and `reportgen compare`: each either
works or is refused with one message (exit 2); none crashes, reads without bound or writes a half result. The
cases are those a hostile trial used (a string for `model`, a metric that is no number, deep JSON, bad UTF-8,
a bomb picture, arrays.npz that is no zip, pickled or mis-shaped, a record without `name`) and seeded random
replacements of report.json's and images.jsonl's values."""
from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reportgen.cli import main


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Two reports of the tiny model with save_arrays (one with its pictures in assets/), built once."""
    from tests.conftest import make_project

    project = make_project(tmp_path_factory.mktemp("tampered"))
    config = project.base()
    config["analyses"] = {"summary": {}, "cam": {"methods": ["gradcam"]}, "gradients": {"methods": ["saliency"]}}
    config["output"]["save_arrays"] = True
    path = project.write(config)
    for name, extra in (("a", []), ("b", ["--set", "output.self_contained=false"])):
        done = CliRunner().invoke(main, ["build", str(path), "-o", str(project.root / name), "-q", *extra])
        assert done.exit_code == 0, done.output
    return project.root


def _json(folder: Path, change) -> None:
    data = json.loads((folder / "report.json").read_text())
    change(data)
    (folder / "report.json").write_text(json.dumps(data))


def _records(folder: Path, change) -> None:
    lines = [json.loads(line) for line in (folder / "images.jsonl").read_text().splitlines()]
    change(lines)
    (folder / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _npz(folder: Path, arrays: dict, **kwargs) -> None:
    np.savez(folder / "arrays.npz", **arrays, **kwargs)


def _bomb(folder: Path) -> None:
    """The first input picture of a page with assets/ replaced by a small PNG that claims 100 000 x 100 000."""
    data = json.loads((folder / "report.json").read_text())
    picture = folder / data["page"]["first_input"]["picture"]
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    picture.write_bytes(buffer.getvalue())


def _keys(folder: Path) -> list[str]:
    with np.load(folder / "arrays.npz") as npz:
        return [k for k in npz.files if k.startswith(("cam/", "gradients/"))]


CASES = {
    "model is a string": lambda f: _json(f, lambda d: d.update(model="str")),
    "metric is no number": lambda f: _json(f, lambda d: d.update(metrics={"summary/total_params": "many"})),
    "metric is NaN": lambda f: _json(f, lambda d: d.update(metrics={"x": float("nan")})),
    "report.json is a list": lambda f: (f / "report.json").write_text("[1, 2]"),
    "report.json is cut short": lambda f: (f / "report.json").write_bytes((f / "report.json").read_bytes()[:100]),
    "deep JSON": lambda f: (f / "report.json").write_text("[" * 100_000 + "]" * 100_000),
    "bad UTF-8 page": lambda f: next(p for p in (f / "report.html", f / "index.html") if p.exists()).write_bytes(
        b"<html>\xff\xfe\xfa</html>"),
    "bad UTF-8 report.json": lambda f: (f / "report.json").write_bytes(b'{"title": "\xff"}'),
    "no title": lambda f: _json(f, lambda d: d.pop("title")),
    "title is a list": lambda f: _json(f, lambda d: d.update(title=[1])),
    "input_size is text": lambda f: _json(f, lambda d: d["model"].update(input_size="big")),
    "input_size is huge": lambda f: _json(f, lambda d: d["model"].update(input_size=[3, 10**9, 10**9])),
    "page record is a string": lambda f: _json(f, lambda d: d.update(page="x")),
    "images is a string": lambda f: _json(f, lambda d: d.update(inputs={"images": "many"})),
    "summary rows are strings": lambda f: _json(f, lambda d: d.update(summary={"rows": ["x"], "totals": "y"})),
    "evaluation rows are numbers": lambda f: _json(f, lambda d: d.update(evaluation={"rows": [1]})),
    "a record without name": lambda f: _records(f, lambda r: r[0].pop("name")),
    "a record is a list": lambda f: _records(f, lambda r: r.__setitem__(0, [1])),
    "top_k is a string": lambda f: _records(f, lambda r: r[0].update(top_k="x")),
    "probability is text": lambda f: _records(f, lambda r: r[0]["top_k"][0].update(probability="high")),
    "images.jsonl is not JSON": lambda f: (f / "images.jsonl").write_text("{not json\n"),
    "arrays.npz is no zip": lambda f: (f / "arrays.npz").write_bytes(b"not a zip at all"),
    "arrays.npz is one array": lambda f: np.save(f / "arrays.npz", np.zeros(3)),
    "arrays.npz is pickled": lambda f: _npz(f, {k: np.array([{"a": 1}], dtype=object) for k in _keys(f)},
                                            allow_pickle=True),
    "maps are mis-shaped": lambda f: _npz(f, {k: np.zeros((5,), np.float32) for k in _keys(f)}),
    "maps are text": lambda f: _npz(f, {k: np.array(["a"] * 256).reshape(16, 16) for k in _keys(f)}),
    "a map unpacks to gigabytes": lambda f: _big_member(f),
    "a bomb picture": _bomb,
}


def _big_member(folder: Path) -> None:
    """A member whose header claims a 4 GiB array, deflated to a few kB: refused by its unpacked size."""
    keys = _keys(folder)
    with zipfile.ZipFile(folder / "arrays.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in keys:
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                              "shape": (2**15, 2**15)})
                for _ in range(64):
                    member.write(bytes(2**20))


def _random_case(seed: int):
    """Replace one value of report.json or of an images.jsonl record with a value of another type."""
    rng = random.Random(seed)
    values = [None, True, -1, 0, 1e308, float("inf"), "x" * rng.randint(0, 9), [], [1, "a"], {}, {"a": [None]}]

    def paths(value, at=()):
        yield at
        if isinstance(value, dict):
            for key, item in value.items():
                yield from paths(item, at + (key,))
        elif isinstance(value, list):
            for i, item in enumerate(value[:3]):
                yield from paths(item, at + (i,))

    def replace(data):
        target = rng.choice([p for p in paths(data) if p])
        holder = data
        for step in target[:-1]:
            holder = holder[step]
        holder[target[-1]] = rng.choice(values)

    def mutate(folder: Path):
        if rng.random() < 0.6:
            _json(folder, replace)
        else:
            _records(folder, lambda records: replace(records))

    return mutate


def _one_message_or_success(done, folder) -> None:
    assert done.exit_code in (0, 2), (folder, done.exit_code, done.output, done.exception)
    assert "Traceback" not in done.output
    if done.exit_code == 2:
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.output
        assert len(lines[0]) < 1200, lines[0]


@pytest.mark.parametrize("case", [*CASES, *(f"random {seed}" for seed in range(24))])
def test_a_tampered_folder_is_refused_with_one_message_or_works(pristine, tmp_path, case):
    source = pristine / ("b" if case == "a bomb picture" or len(case) % 2 else "a")  # either kind of page
    folder = tmp_path / "stranger"
    shutil.copytree(source, folder)
    (CASES.get(case) or _random_case(int(case.split()[-1])))(folder)
    site = CliRunner().invoke(main, ["site", str(folder), "-o", str(tmp_path / "site")])
    _one_message_or_success(site, folder)
    if site.exit_code == 2:
        assert not (tmp_path / "site").exists()  # checked before anything is written
    compare = CliRunner().invoke(main, ["compare", str(folder), str(pristine / "a"), "-o", str(tmp_path / "cmp")])
    _one_message_or_success(compare, folder)
    if compare.exit_code == 2:
        assert not (tmp_path / "cmp").exists()
