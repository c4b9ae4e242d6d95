"""The `dataset` stage: its numbers against scikit-learn and hand computations, batching, the section, a build."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import sklearn.metrics
import torch
from click.testing import CliRunner
from torch import nn

from reportgen.cli import main
from reportgen.config import AnalysesConfig, Config, DatasetConfig
from reportgen.figures import dataset as figures
from reportgen.stages import dataset
from tests.conftest import render_section
from tests.helpers import make_context


def random_case(n=200, k=7, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), truth] += rng.normal(1.0, 1.0, n).astype(np.float32)  # better than chance
    return truth, logits


def result_of(truth, logits, cfg=DatasetConfig(), labels=None):
    truth = np.asarray(truth, dtype=np.int64)
    pred, hit, conf = dataset.per_image(torch.from_numpy(logits), truth)
    k = logits.shape[1]
    labels = tuple(labels or (f"class {i}" for i in range(k)))
    return dataset.summarize(tuple(f"img{i}" for i in range(len(truth))), truth, pred, hit, conf, labels, cfg)


@pytest.mark.parametrize("k, seed", [(7, 0), (3, 1), (12, 2)])
def test_accuracy_per_class_scores_and_confusion_equal_sklearn(k, seed):
    truth, logits = random_case(k=k, seed=seed)
    truth[truth == 1] = 2  # a class that is predicted but never true: precision defined, recall 0 by zero_division
    result = result_of(truth, logits)
    m = result.metrics
    pred = logits.argmax(axis=1)
    assert np.array_equal(result.pred, pred)
    assert m.accuracy == pytest.approx(sklearn.metrics.accuracy_score(truth, pred), abs=1e-12)
    p, r, f, s = sklearn.metrics.precision_recall_fscore_support(truth, pred, zero_division=0)
    assert np.array_equal(m.scores.classes, sklearn.utils.multiclass.unique_labels(truth, pred))
    np.testing.assert_allclose(m.scores.precision, p, atol=1e-12)
    np.testing.assert_allclose(m.scores.recall, r, atol=1e-12)
    np.testing.assert_allclose(m.scores.f1, f, atol=1e-12)
    assert np.array_equal(m.scores.support, s)
    for average, mine in (("macro", m.macro), ("weighted", m.weighted)):
        ap, ar, af, _ = sklearn.metrics.precision_recall_fscore_support(truth, pred, average=average, zero_division=0)
        assert (mine["precision"], mine["recall"], mine["f1"]) == pytest.approx((ap, ar, af), abs=1e-12)
    assert np.array_equal(m.confusion, sklearn.metrics.confusion_matrix(truth, pred, labels=range(k)))
    assert np.array_equal(dataset.arrays(result)["dataset/confusion"], m.confusion.astype(np.float32))
    assert dataset.arrays(result)["dataset/confusion"].dtype == np.float32


def test_top5_by_hand():
    logits = np.array([
        [9, 8, 7, 6, 5, 4, 3],  # top 5: 0..4
        [0, 1, 2, 3, 4, 5, 6],  # top 5: 2..6
        [5, 0, 0, 0, 0, 0, 9],  # top 5: 6, 0, then three of the zeros
    ], dtype=np.float32)
    truth = [4, 1, 6]
    m = result_of(truth, logits).metrics
    assert m.top_k == 5 and m.top_k_accuracy == pytest.approx(2 / 3)
    assert m.accuracy == pytest.approx(1 / 3)  # only the third is right at top 1
    assert sklearn.metrics.top_k_accuracy_score(truth, logits, k=5, labels=range(7)) == pytest.approx(2 / 3)
    # fewer classes than 5: top-k is top-K, every labelled image hits
    assert result_of([0, 1], np.array([[0, 1, 2], [3, 2, 1]], np.float32)).metrics.top_k_accuracy == 1.0


def test_ece_by_hand_with_known_bins():
    # 5 bins of width 0.2, (lo, hi]: 0.0 and 0.2 fall in bin 0, 0.4 in bin 1, 0.6 in bin 2, 0.9 and 1.0 in bin 4
    confidence = np.array([0.0, 0.2, 0.4, 0.6, 0.9, 1.0])
    correct = np.array([False, True, True, False, True, True])
    cal = dataset.calibration(confidence, correct, bins=5)
    assert cal.counts.tolist() == [2, 1, 1, 0, 2]
    np.testing.assert_allclose(cal.confidence, [0.1, 0.4, 0.6, 0.0, 0.95])
    np.testing.assert_allclose(cal.accuracy, [0.5, 1.0, 0.0, 0.0, 1.0])
    ece = 2 / 6 * 0.4 + 1 / 6 * 0.6 + 1 / 6 * 0.6 + 2 / 6 * 0.05
    assert cal.ece == pytest.approx(ece, abs=1e-12)
    assert cal.mce == pytest.approx(0.6)
    # the 15-bin default against a direct loop over (lo, hi]
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.2, 1.0, 500)
    right = rng.uniform(size=500) < conf
    edges = np.linspace(0, 1, 16)
    direct = sum(((lo < conf) & (conf <= hi)).mean() * abs(right[(lo < conf) & (conf <= hi)].mean()
                                                            - conf[(lo < conf) & (conf <= hi)].mean())
                 for lo, hi in zip(edges[:-1], edges[1:]) if ((lo < conf) & (conf <= hi)).any())
    assert dataset.calibration(conf, right, 15).ece == pytest.approx(direct, abs=1e-12)


def test_the_stage_on_a_context_with_labels_and_the_reduce_over_batches_equals_one_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    config = Config(analyses=AnalysesConfig(dataset=DatasetConfig(bins=10)))
    ctx = make_context(model, torch.randn(9, 3, 4, 4), config=config, labels=list("abcde"))
    truth = [0, 1, 2, 3, 4, 0, None, 2, 1]  # one image without a true class
    ctx.images = [dataclasses.replace(im, label=t) for im, t in zip(ctx.images, truth)]
    cfg = config.analyses.dataset
    whole = dataset.run(ctx, cfg)
    parts = dataset.reduce([dataset.run(ctx.for_batch(ctx.images[a:b], ctx.batch[a:b], ctx.logits[a:b], a), cfg)
                            for a, b in ((0, 4), (4, 8), (8, 9))])
    assert dataset.to_json(parts) == dataset.to_json(whole)
    assert np.array_equal(dataset.arrays(parts)["dataset/confusion"], dataset.arrays(whole)["dataset/confusion"])
    data = dataset.to_json(whole)
    known = [i for i, t in enumerate(truth) if t is not None]
    pred = ctx.logits.argmax(dim=1).numpy()
    assert data["labelled"] == 8 and data["unlabelled"] == 1 and data["images"] == 9
    assert data["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score([truth[i] for i in known], pred[known]))
    assert data["confusion"]["labels"] == list("abcde") and np.array(data["confusion"]["matrix"]).sum() == 8
    assert len(data["calibration"]["counts"]) == 10 and sum(data["calibration"]["counts"]) == 8
    assert "img0" not in json.dumps(data)  # no per-image data
    html = render_section("dataset", figures.plot(whole, ctx))
    assert "1 of 9 images have no true class" in html and "top-5 accuracy" in html


def test_many_classes_list_the_most_confused_pairs_instead_of_a_matrix():
    truth = np.array([0] * 10 + [1] * 4 + [2] * 3 + [3] * 2)
    pred = np.array([5] * 6 + [0] * 4 + [2] * 4 + [4] * 3 + [3] * 2)
    k = 40
    logits = np.zeros((truth.size, k), np.float32)
    logits[np.arange(truth.size), pred] = 5
    result = result_of(truth, logits, DatasetConfig(top_confused=2, max_matrix_classes=30))
    m = result.metrics
    assert m.confusion is None
    assert m.confused == ((0, 5, 6, 0.6), (1, 2, 4, 1.0))  # then (2, 4, 3): cut by top_confused
    data = dataset.to_json(result)
    assert "confusion" not in data and [(p["truth"], p["predicted"], p["count"]) for p in data["confused_pairs"]] \
        == [(0, 5, 6), (1, 2, 4)]
    full = sklearn.metrics.confusion_matrix(truth, pred, labels=range(k))
    assert np.array_equal(dataset.arrays(result)["dataset/confusion"], full.astype(np.float32))
    html = render_section("dataset", figures.plot(result))
    assert "Most confused classes" in html and len(figures.plot(result)["figures"]) == 2  # no matrix picture


def test_the_section_escapes_a_hostile_label_and_draws_the_figures():
    hostile = '<script>alert("x")</script>'
    truth, logits = random_case(n=40, k=3, seed=4)
    result = result_of(truth, logits, labels=(hostile, "b$c$", "c"))
    section = figures.plot(result)
    assert len(section["figures"]) == 3 and all(f.png.startswith(b"\x89PNG") for f in section["figures"])
    html = render_section("dataset", section)
    assert "<script>" not in html and "&lt;script&gt;" in html
    # many labelled classes: the pairs table with the hostile label, escaped
    big = np.zeros((4, 35), np.float32)
    big[:, 7] = 1
    pairs = result_of([0, 0, 1, 7], big, labels=[hostile] + [f"c{i}" for i in range(1, 35)])
    html = render_section("dataset", figures.plot(pairs))
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 2


def test_without_labels_the_overview_shows_predictions_and_confidences():
    truth, logits = random_case(n=30, k=25, seed=5)
    result = result_of(np.full(30, -1), logits, labels=["<b>x</b>"] + [f"c{i}" for i in range(1, 25)])
    assert result.metrics is None and dataset.arrays(result) == {}
    data = dataset.to_json(result)
    assert data["labelled"] == 0 and "accuracy" not in data
    assert sum(p["count"] for p in data["predicted"]) == 30 and sum(data["confidence"]["counts"]) == 30
    assert data["predicted"] == sorted(data["predicted"], key=lambda p: (-p["count"], p["index"]))
    section = figures.plot(result)
    assert len(section["figures"]) == 2
    html = render_section("dataset", section)
    assert "No image has a true class" in html and "<b>" not in html


def test_a_build_with_the_dataset_stage(project):
    config = project.base()
    config["analyses"] = {"dataset": {}}
    config["output"]["save_arrays"] = True
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    data = json.loads((project.root / "out" / "report.json").read_text())
    assert [s["status"] for s in data["stages"] if s["name"] == "dataset"] == ["ok"]
    entry = data["dataset"]
    assert entry["images"] == 2 and entry["labelled"] == 0 and entry["num_classes"] == 3
    assert sum(p["count"] for p in entry["predicted"]) == 2
    html = (project.root / "out" / "report.html").read_text()
    assert "Data set overview" in html and "No image has a true class" in html
    with np.load(project.root / "out" / "arrays.npz") as npz:
        assert not [key for key in npz.files if key.startswith("dataset/")]


def test_config_rules():
    from reportgen.config import parse_config
    from reportgen.errors import ConfigError
    from pathlib import Path

    config = parse_config("model: {name: r}\nanalyses: {dataset: {}}", base_dir=Path("/b"), origin="c.yaml")
    assert config.analyses.dataset == DatasetConfig() and config.analyses.enabled() == ["dataset"]
    with pytest.raises(ConfigError, match="bins"):
        parse_config("model: {name: r}\nanalyses: {dataset: {bins: 1}}", base_dir=Path("/b"), origin="c.yaml")


def test_an_image_folder_build_reports_accuracy_and_the_confusion_matrix_of_its_truth(project):
    """End to end: class folders give the truth, the overview's numbers equal sklearn's on the build's own
    predictions (report.json's top-1), and the page shows the section."""
    import sklearn.metrics

    from tests.conftest import labelled_folder

    config = labelled_folder(project, 3, seed=20)
    config["inputs"]["batch_size"] = 4  # streamed in three batches
    config["analyses"] = {"dataset": {}}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    data = json.loads((project.root / "out" / "report.json").read_text())
    records = [json.loads(line) for line in (project.root / "out" / "images.jsonl").read_text().splitlines()]
    truth = [image["truth"]["index"] for image in records]  # every image (report.json: the detailed ones)
    predicted = [image["top_k"][0]["index"] for image in records]
    assert sorted(truth) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(data["images"]) == data["inputs"]["detail"] < 9
    overview = data["dataset"]
    assert overview["labelled"] == 9 and overview["accuracy"] == sklearn.metrics.accuracy_score(truth, predicted)
    assert overview["confusion"]["matrix"] == sklearn.metrics.confusion_matrix(truth, predicted,
                                                                               labels=[0, 1, 2]).tolist()
    assert 'id="dataset"' in (project.root / "out" / "report.html").read_text()
