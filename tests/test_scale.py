"""Data sets at scale: the detail images, a streamed build equal to one batch, flat memory, torchrun."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from reportgen import detail, dist
from reportgen.cli import main
from reportgen.config import Config
from reportgen.errors import ReportgenError
from tests.conftest import TINYNET, make_image
from tests.test_browser import driver  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- choosing the detail images

def choose(truth, pred, conf, **kw):
    args = dict(budget=4, mistakes=2, uncertain=1, per_class=1, seed=0) | kw
    return detail.choose(np.array(truth), np.array(pred), np.array(conf), **args)


def test_the_detail_images_are_the_confident_mistakes_the_unsure_right_ones_then_a_sample_per_class():
    truth = [0, 0, 1, 1, 2, 2, 0, 1]
    pred = [1, 0, 1, 0, 2, 2, 2, 1]
    conf = [0.9, 0.5, 0.3, 0.95, 0.8, 0.99, 0.4, 0.6]
    d = choose(truth, pred, conf, budget=5)
    # mistakes by confidence: 3 (0.95), 0 (0.9); the least confident right one: 2 (0.3)
    assert [i for i, r in d.reasons.items() if r == detail.MISTAKE] == [3, 0]
    assert [i for i, r in d.reasons.items() if r == detail.UNCERTAIN] == [2]
    samples = [i for i, r in d.reasons.items() if r == detail.SAMPLE]
    assert len(samples) == 2 and len({truth[i] for i in samples}) == 2  # two classes, one image each
    assert d.indices == tuple(sorted(d.reasons)) and len(d.indices) == 5 and not d.notes
    assert choose(truth, pred, conf, budget=5) == d  # seeded: the same every time
    assert choose(truth, pred, conf, budget=8).reasons == dict.fromkeys(range(8), detail.ALL)  # all fit


def test_asking_for_more_than_exists_takes_what_exists_and_says_so():
    d = choose([0, 1, 2, 0, 1], [0, 1, 2, 1, 1], [0.5] * 5, budget=4, mistakes=3, uncertain=0, per_class=0)
    assert list(d.reasons) == [3] and "asks for 3 confident mistakes; there is 1: all shown" in d.notes[0]


def test_without_ground_truth_the_least_confident_predictions_and_a_sample_per_predicted_class():
    d = choose([-1] * 6, [0, 0, 1, 1, 2, 2], [0.9, 0.2, 0.8, 0.7, 0.1, 0.6], budget=3, mistakes=2, uncertain=2)
    assert [i for i, r in d.reasons.items() if r == detail.LEAST_CONFIDENT] == [4, 1]
    assert len(d.indices) == 3 and not d.notes  # no mistakes to look for without truth: no note either


# ---------------------------------------------------------------------------- builds over a data set

def write_set(root: Path, n: int, size: int = 24, classes: int = 3) -> Path:
    """An ImageFolder of n images in `classes` class folders named after the tiny net's labels."""
    folder = root / "set"
    for i in range(n):
        (folder / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        make_image(folder / f"c{i % classes}" / f"im{i:04d}.png", size=(size, size), seed=i)
    return folder


def config(root: Path, images, **over) -> Path:
    (root / "tinynet.py").write_text(TINYNET)
    (root / "labels.txt").write_text("c0\nc1\nc2\n")
    cfg = {
        "model": {"source": "module", "factory": "tinynet:build", "kwargs": {"num_classes": 3},
                  "input_size": [3, 16, 16], "labels": "labels.txt", "device": "cpu"},
        "inputs": {"images": [str(p) for p in images], "preprocess": {"normalize": "imagenet"}, "batch_size": 4},
        "analyses": {"summary": {}, "dataset": {}, "feature_maps": {"order": "mean"},
                     "cam": {"methods": ["gradcam", "layercam", "scorecam"]},
                     "gradients": {"methods": ["saliency", "smoothgrad", "integrated_gradients"], "samples": 3,
                                   "steps": 8, "baseline": "uniform"}},
        "report": {"detail": {"budget": 5}},
        "output": {"dir": str(root / "out"), "save_arrays": True},
    }
    for key, value in over.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path = root / f"config{len(list(root.glob('config*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def build(path: Path, *args: str) -> Path:
    out = path.parent / f"out-{path.stem}"
    result = CliRunner().invoke(main, ["build", str(path), "-q", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def read(out: Path) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    data = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    with np.load(out / "arrays.npz") as arrays:
        return data, records, {k: arrays[k] for k in arrays.files}


def assert_same_numbers(a, b, path="", tol=1e-5):
    """Two report.json trees equal, numbers within `tol` (times and paths aside)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k not in ("seconds", "created", "dir", "device"):
                assert_same_numbers(a[k], b[k], f"{path}/{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float):
        assert abs(a - b) <= tol * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def assert_same_build(one: Path, other: Path) -> None:
    (data, records, arrays), (data2, records2, arrays2) = read(one), read(other)
    config, config2 = data.pop("config"), data2.pop("config")
    assert config["inputs"]["images"] == config2["inputs"]["images"]
    assert_same_numbers(data, data2)
    assert_same_numbers(records, records2)
    assert list(arrays) and sorted(arrays) == sorted(arrays2)
    for key, value in arrays.items():
        np.testing.assert_allclose(value, arrays2[key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_a_streamed_build_equals_one_batch_of_every_image(tmp_path):
    images = write_set(tmp_path, 14)
    streamed = build(config(tmp_path, [images]))  # batches of 4, 5 detail images of 14
    whole = build(config(tmp_path, [images], inputs__batch_size=64))
    assert_same_build(streamed, whole)
    data, records, arrays = read(streamed)
    assert len(records) == 14 and data["inputs"] == {"images": 14, "detail": 5, "records": "images.jsonl"}
    shown = [r["name"] for r in records if r["detail"]]
    assert [i["name"] for i in data["images"]] == shown == [i["name"] for i in data["cam"]["images"]]
    assert len(shown) == 5
    assert data["dataset"]["images"] == 14  # the overview counts every image, the figures only the chosen
    assert {k.split("/")[-2] for k in arrays if k.startswith("cam/gradcam/")} == {r["name"] for r in records}
    # every image's own facts, not only the detail ones': feature-map statistics, explained classes, IG's gap
    layer = data["feature_maps"]["layers"][0]
    assert all(set(r["feature_maps"]) == {fm["name"] for fm in data["feature_maps"]["layers"]} for r in records)
    by_name = {r["name"]: r for r in records}
    for entry in layer["images"]:
        assert by_name[entry["image"]]["feature_maps"][layer["name"]] == {k: v for k, v in entry.items() if k != "image"}
    assert all(len(r["gradients"]["integrated_gradients_gap"]) == len(r["gradients"]["classes"]) == 1 for r in records)


def test_logits_kept_in_a_temporary_file_give_the_same_build(tmp_path, monkeypatch):
    """Past `Logits.MEMORY` the logits go to a temporary file and are read back a batch at a time: the same
    report, records and arrays as logits kept in memory."""
    from reportgen.collection import Logits

    images = write_set(tmp_path, 9)
    kept = build(config(tmp_path, [images]))
    monkeypatch.setattr(Logits, "MEMORY", 40)  # three images' logits: the rest spill
    spilled = build(config(tmp_path, [images]))
    assert_same_build(kept, spilled)


def test_logits_read_back_by_rows_from_memory_and_from_the_file(monkeypatch):
    from reportgen.collection import Logits

    batches = [torch.randn(n, 7) for n in (3, 5, 2)]
    whole = torch.cat(batches)
    for memory, spilled in ((Logits.MEMORY, False), (100, True)):
        monkeypatch.setattr(Logits, "MEMORY", memory)
        logits = Logits(7)
        for batch in batches:
            logits.append(batch)
        assert logits.shape == (10, 7) and (logits._file is not None) == spilled
        assert torch.equal(logits[:], whole) and torch.equal(logits[2:6], whole[2:6])
        assert torch.equal(logits[[9, 0, 4]], whole[[9, 0, 4]])
        assert torch.equal(torch.cat([rows for _, rows in logits.chunks(4)]), whole)


def test_a_manifest_row_costs_a_few_hundred_bytes(tmp_path):
    """What a build keeps per image of a manifest is its entry: 200 000 rows cost tens of MB, not GB
    (`benchmarks/dataset.py --manifest-rows 200000` measures the whole build)."""
    import gc
    import tracemalloc

    from reportgen.entries import read_manifest

    make_image(tmp_path / "a.png", size=(8, 8))
    for i in range(2000):
        (tmp_path / f"{i}.png").symlink_to(tmp_path / "a.png")
    manifest = tmp_path / "rows.csv"
    manifest.write_text("path,label\n" + "".join(f"{i}.png,{i % 5}\n" for i in range(2000)))
    gc.collect()
    tracemalloc.start()
    entries = read_manifest(manifest)
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(entries) == 2000 and entries[7].path == tmp_path / "7.png" and entries[7].where.endswith("line 9")
    assert kept / 2000 < 400, f"{kept / 2000:.0f} bytes a row"


def test_the_detail_images_get_the_same_figures_as_a_build_over_only_them(tmp_path, driver):
    """The page grows with the detail budget, not with the number of images: a build over 40 images is at
    most 1.15x the page of a build over its 5 detail images alone, and its table, in Chromium, has a row for
    each of the 40, the detail ones linked to their figures."""
    from tests.test_browser import assert_offline_and_clean, js, open_page

    images = write_set(tmp_path, 40)
    many = build(config(tmp_path, [images], output__save_arrays=False))
    records = [json.loads(line) for line in (many / "images.jsonl").read_text().splitlines()]
    chosen = [images / f"c{int(r['name'][2:]) % 3}" / f"{r['name']}.png" for r in records if r["detail"]]
    few = build(config(tmp_path, chosen, output__save_arrays=False))
    page, alone = (many / "report.html").stat().st_size, (few / "report.html").stat().st_size
    assert page <= 1.15 * alone, (page, alone)
    html = (many / "report.html").read_text()
    assert all(r["name"] in html for r in records)  # every image is a row of the table's data
    data, data_few = (json.loads((o / "report.json").read_text()) for o in (many, few))
    assert [i["name"] for i in data["images"]] == [i["name"] for i in data_few["images"]]
    for layer, _ in zip(data["feature_maps"]["layers"], data_few["feature_maps"]["layers"]):
        assert len(layer["images"]) == 5  # channels chosen over all 40 images may differ from over 5
    assert (many / "report.json").stat().st_size < (few / "report.json").stat().st_size * 1.5
    assert_offline_and_clean(open_page(driver, many / "report.html"))
    rows = js(driver, "return [...document.querySelectorAll('#images-table tbody tr')].map(tr => tr.cells[0].textContent)")
    assert rows == [r["name"] for r in records]
    targets = js(driver, """return [...document.querySelectorAll('#images-table tbody a')].map(a =>
        (document.getElementById(a.hash.slice(1)) || {}).className)""")
    assert targets == ["card"] * 5


MEMORY = textwrap.dedent('''
    import resource, sys
    from reportgen.cli import main
    try:
        main(["build", sys.argv[1], "-q"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
''')


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Builds over 80 and 320 images of 128x128 in child processes: peak RSS within 80 MB of each other. Keeping
    every image's pixels and maps, as builds did before streaming, costs about 11 MB an image here (2.6 GB more
    at 320); the first batches warm caches up (so the smaller build is not smaller still) and the allocator
    makes the peak vary by about ±15 MB from run to run."""
    peaks = []
    for n in (80, 320):
        root = tmp_path / str(n)
        root.mkdir()
        path = config(root, [write_set(root, n, size=128)], model__input_size=[3, 128, 128],
                      analyses__gradients={"methods": ["saliency"]}, analyses__cam={"methods": ["gradcam"]},
                      output__save_arrays=False, inputs__batch_size=10)
        done = subprocess.run([sys.executable, "-c", MEMORY, str(path)], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 0, done.stderr[-3000:]
        peaks.append(int(done.stdout.split()[-1]) / 1024)
    assert peaks[1] - peaks[0] < 80, f"peak RSS {peaks[0]:.0f} MB at 80 images, {peaks[1]:.0f} MB at 320"


# ---------------------------------------------------------------------------- torchrun

@pytest.mark.slow
def torchrun_build(path: Path, out: Path) -> Path:
    """`reportgen build` of `path` into `out` by two processes under torchrun (one thread each)."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "reportgen", "build", str(path), "-q", "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_processes_under_torchrun_build_what_one_builds(tmp_path):
    images = write_set(tmp_path, 15)
    path = config(tmp_path, [images])
    one = build(path)
    two = torchrun_build(path, tmp_path / "two")
    assert_same_build(one, two)
    assert not [p.name for p in two.iterdir() if p.name.startswith(".arrays")]  # the shards are merged and gone


def _rank(rank: int, init: str, titles: list[str], errors) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        dist.check_same_config(dist.Group(rank, 2, rank), Config(title=titles[rank]))
        errors.put((rank, None))
    except ReportgenError as exc:
        errors.put((rank, str(exc)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes start torch, per case
@pytest.mark.parametrize("titles", [["a", "a"], ["a", "b"]])
def test_ranks_that_read_different_configs_are_refused_on_every_rank(tmp_path, titles):
    mp = torch.multiprocessing.get_context("spawn")
    errors = mp.Queue()
    procs = [mp.Process(target=_rank, args=(r, f"file://{tmp_path}/rendezvous", titles, errors)) for r in (0, 1)]
    for p in procs:
        p.start()
    found = dict(errors.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    if titles[0] == titles[1]:
        assert found == {0: None, 1: None}
    else:
        assert all("rank 1 read a different config than rank 0" in found[r] for r in (0, 1))


def test_shards_split_the_images_in_contiguous_runs():
    runs = [dist.shard(dist.Group(r, 3, r), 10) for r in range(3)]
    assert [list(r) for r in runs] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize("input_grad", [False, True])
def test_feature_maps_read_from_the_cam_pass_equal_a_forward_of_their_own(input_grad):
    """A ResNet block's output changed in place later (`relu(out += identity)`): the copies the engine's
    gradient pass takes as each layer returns equal the feature maps stage's own no-grad forward, with the
    graph cut at the CAM layer or recorded from the input (input gradients)."""
    import torchvision

    from reportgen.config import AnalysesConfig, CamConfig, FeatureMapsConfig, GradientsConfig, InputsConfig
    from reportgen.stages import feature_maps
    from tests.helpers import make_context

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    grads = GradientsConfig(methods=("saliency",)) if input_grad else None
    cfg = Config(inputs=InputsConfig(batch_size=2), analyses=AnalysesConfig(
        feature_maps=FeatureMapsConfig(layers=("bn1", "layer1", "layer3.0.bn2")), cam=CamConfig(), gradients=grads))
    ctx = make_context(model, torch.randn(3, 3, 64, 64), config=cfg)
    assert ctx.engine.observe == ("bn1", "layer1", "layer3.0.bn2")
    own, _ = feature_maps.capture_maps(model, ctx.batch, ctx.engine.observe, 2)
    assert ctx.engine.observed(ctx.engine.observe) is None  # no pass yet: the stage runs its own forward
    ctx.engine.passes(["layer4"], [[0, 1, 2]])
    observed, _ = feature_maps.capture_maps(model, ctx.batch, ctx.engine.observe, 2, engine=ctx.engine)
    assert len(ctx.engine.observed(ctx.engine.observe)) == 2  # two chunks of the pass
    for name in own:
        np.testing.assert_array_equal(observed[name], own[name])


# ---------------------------------------------------------------------------- the cost of a small build

def test_a_small_build_runs_one_batched_forward_for_predictions_cams_feature_maps_and_guided_backprop(tmp_path):
    """Images that fit one batch and the detail budget: the first pass's forward is the CAM pass's, its graph
    kept (`Engine.first_logits`); the feature maps are copied from it and guided backprop adds a backward to it.
    The model runs on the whole batch once (and on one image for the layer description); the arrays equal those
    of a build in batches of one image (a first pass of its own, then a CAM pass that guided backprop shares)."""
    (tmp_path / "tinynet.py").write_text(TINYNET)
    for i in range(3):
        make_image(tmp_path / f"{i}.png", seed=i)
    config = {"model": {"source": "module", "factory": "tinynet:build", "input_size": [3, 16, 16], "device": "cpu"},
              "inputs": {"images": ["*.png"], "preprocess": {"normalize": "none"}},
              "analyses": {"feature_maps": {}, "cam": {"methods": ["gradcam", "layercam"]},
                           "gradients": {"methods": ["saliency", "guided_backprop", "deconvnet"]}},
              "output": {"dir": "out", "save_arrays": True}}
    calls = []

    def count(module, args):
        if isinstance(module, torch.nn.Sequential):  # tinynet's top level
            calls.append(args[0].shape[0])

    arrays = {}
    for batch_size in (8, 1):
        config["inputs"]["batch_size"] = batch_size
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        calls.clear()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            done = CliRunner().invoke(main, ["build", str(tmp_path / "config.yaml"), "-q"])
        finally:
            handle.remove()
        assert done.exit_code == 0, done.output
        assert sorted(calls) == ([1, 3] if batch_size == 8 else [1] * (1 + 3 * 2)), calls
        with np.load(tmp_path / "out" / "arrays.npz") as npz:
            arrays[batch_size] = {key: npz[key] for key in npz.files}
    assert set(arrays[8]) == set(arrays[1])
    for key, value in arrays[8].items():  # within what oneDNN's batch-size-dependent kernels allow
        assert np.abs(arrays[1][key] - value).max() <= 1e-5 * (1 + np.abs(value).max()), key


@pytest.mark.slow  # torchrun starts two processes that import torch
@pytest.mark.parametrize("change, said", [
    ({"nope": 1}, "unknown key `nope`"),
    pytest.param({"device": "cuda"}, "is cuda under torchrun, but this machine has no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")),
], ids=["bad config", "cuda without one"])
def test_under_torchrun_a_bad_config_or_a_missing_gpu_is_said_once_with_exit_2(tmp_path, change, said):
    path = config(tmp_path, [write_set(tmp_path, 2)])
    data = yaml.safe_load(path.read_text())
    if "device" in change:
        data["model"]["device"] = change["device"]
    else:
        data.update(change)
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "reportgen", "build", str(path), "-q"],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and said in errors[0], done.stderr[-3000:]
    assert not re.search(r'File ".*reportgen/', done.stderr)  # torchrun's own traceback (ChildFailedError) only
    assert "exitcode  : 2" in done.stderr and "terminated, nothing written" not in done.stderr
