"""The `evaluation` stage: a streamed build's report.json and images.jsonl against the metric functions called
directly on the same maps, the bootstrap, the subset, bad input (exit 2, one message), the section, and the sanity
check on the shipped shapes model. (The closed-form linear-model deletion test is tests/test_metrics_perturbation.py's
`test_linear_model_closed_form_and_best_order`; the metrics' parity with grad-cam, Captum and Quantus is in the
other test_metrics_* files.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from reportgen.registry import STAGES
from reportgen.cli import main
from reportgen.config import EvaluationConfig, SanityConfig
from reportgen.methods.gradients import image_generator
from reportgen.metrics import columns, localisation, perturbation, robustness, scoring
from reportgen.stages import evaluation
from tests.conftest import render_section

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
BOXES = {"a": (4, 6, 20, 26), "b": (10, 2, 30, 14), "c": (0, 0, 16, 16)}


def boxed_project(project):
    """Three 32x32 images in a CSV manifest with boxes; a 32² input that needs no resize: x = pixels / 255."""
    rng = np.random.default_rng(3)
    rows = ["path,x0,y0,x1,y1"]
    for name, box in BOXES.items():
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(project.root / f"{name}.png")
        rows.append(f"{name}.png," + ",".join(map(str, box)))
    (project.root / "set.csv").write_text("\n".join(rows) + "\n")
    config = project.base()
    config["model"]["input_size"] = [3, SIZE, SIZE]
    config["inputs"] = {"images": ["set.csv"], "preprocess": {"normalize": "none"}, "batch_size": 2}
    config["analyses"] = {"cam": {"methods": ["gradcam"]}, "gradients": {"methods": ["saliency"]},
                          "evaluation": {"step": 16, "batch_size": 32, "sanity": {"images": 2}}}
    config["output"]["save_arrays"] = True
    return config


def build(project, config, *args):
    return CliRunner().invoke(main, ["build", str(project.write(config)), "-q", *args])


def test_a_streamed_build_scores_every_map_as_the_metric_functions_do(project):
    config = boxed_project(project)
    done = build(project, config)
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    data = json.loads((out / "report.json").read_text())
    records = {r["name"]: r for r in map(json.loads, (out / "images.jsonl").read_text().splitlines())}
    with np.load(out / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    ev = data["evaluation"]
    layer = data["cam"]["layers"][0]
    assert [(r["method"], r["layer"]) for r in ev["rows"]] == [("gradcam", layer), ("saliency", None),
                                                         ("baseline_centre", None)]  # the computed baseline last
    assert ev["images"] == 3 and ev["step"] == 16
    assert {c["id"] for c in ev["columns"]} == {c.id for c in scoring.COLUMNS}

    # the model and inputs as the build had them
    import sys
    sys.path.insert(0, str(project.root))
    import tinynet
    model = tinynet.build(num_classes=3).eval()
    forward = lambda x: model(x)  # noqa: E731
    names = list(BOXES)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(project.root / f"{n}.png"), dtype=np.float32) / 255)
                     .permute(2, 0, 1) for n in names])
    targets = model(x).argmax(1).detach().numpy()
    assert [records[n]["top_k"][0]["index"] for n in names] == targets.tolist()
    cam = np.stack([arrays[f"cam/gradcam/{layer}/{n}/{t}"] for n, t in zip(names, targets)])
    attr = np.stack([arrays[f"gradients/saliency/{n}/{t}"] for n, t in zip(names, targets)])
    sal = np.abs(attr).sum(1)
    sal = sal / sal.max(axis=(1, 2), keepdims=True)
    maps = {"gradcam": cam, "saliency": sal}
    keys = {"gradcam": f"gradcam/{layer}", "saliency": "saliency"}
    masks = np.stack([localisation.box_mask(BOXES[n], (SIZE, SIZE)) for n in names])

    with torch.no_grad():
        curves = perturbation.deletion_insertion(forward, x, maps, targets, step=16)
        change = perturbation.confidence_change(forward, x, maps, targets)
    for method, m in maps.items():
        expected = {
            "deletion_auc": curves[method].deletion_auc, "insertion_auc": curves[method].insertion_auc,
            "road": [perturbation.road(forward, x[i:i + 1], {method: m[i:i + 1]}, targets[i:i + 1],
                                       generator=image_generator(0, i))[method].combined[0] for i in range(3)],
            "drop_in_confidence": change[method].drop_in_confidence, "average_drop": change[method].average_drop,
            "increase_in_confidence": change[method].increase_in_confidence,
            "pointing_game": [float(h) for h in localisation.pointing_game(m, masks)],
            "energy_pointing_game": localisation.energy_pointing_game(m, masks),
            "top_iou": localisation.top_iou(m, masks),
        }
        if method == "saliency":
            t = torch.as_tensor(targets)
            expected["infidelity"] = [robustness.infidelity(forward, x[i:i + 1], torch.from_numpy(attr[i:i + 1]),
                                                            t[i:i + 1], generator=image_generator(0, i))[0]
                                      for i in range(3)]

            def explain(xs, ts):
                with torch.enable_grad():
                    xs = xs.detach().clone().requires_grad_()
                    (g,) = torch.autograd.grad(model(xs).gather(1, ts.view(-1, 1)).sum(), xs)
                return g.abs()
            expected["sensitivity"] = [robustness.sensitivity_max(explain, x[i:i + 1], t[i:i + 1],
                                                                  generator=image_generator(0, i))[0]
                                       for i in range(3)]
        row = next(r for r in ev["rows"] if r["method"] == method)
        for column, values in expected.items():
            ours = [records[n]["evaluation"][keys[method]][column] for n in names]
            np.testing.assert_allclose(ours, np.asarray(values, dtype=np.float64), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{method} {column}")
            assert row["scores"][column]["mean"] == pytest.approx(np.mean(ours), abs=2e-6), (method, column)
            s = row["scores"][column]
            assert s["low"] <= s["mean"] <= s["high"] and s["n"] == 3
        mean_deletion = next(c for c in ev["curves"]["rows"] if c["row"] == keys[method])["deletion"]
        np.testing.assert_allclose(mean_deletion, curves[method].deletion.mean(0), atol=6e-5)  # 4 decimals
    assert "infidelity" not in records["a"]["evaluation"][f"gradcam/{layer}"]  # gradient methods only
    # the best mark is the better mean of each column
    for column in ev["columns"]:
        rows = [r for r in ev["rows"] if r["scores"][column["id"]] is not None]
        best = (min if column["better"] == "lower" else max)(r["scores"][column["id"]]["mean"] for r in rows)
        assert all((column["id"] in r["best"]) == (r["scores"][column["id"]]["mean"] == best) for r in rows)
    # the sanity cascade ran once, on the first detail images (the first batch's two), every block of TINYNET
    sanity = ev["sanity"]
    assert sanity["images"] == ["a", "b"] and sanity["blocks"] == ["7", "3", "1", "0"]
    assert {r["row"] for r in sanity["rows"]} == set(keys.values())
    assert arrays["evaluation/sanity/saliency"].shape == (5, SIZE, SIZE)
    assert len(ev["localisation"]["hits"]) == 3 * 3  # gradcam, saliency and the centre baseline, 3 images
    assert ev["localisation"]["boxes"] == {n: list(map(float, b)) for n, b in BOXES.items()}
    assert [s["name"] for s in data["stages"]] == ["cam", "gradients", "evaluation"]
    html = (out / "report.html").read_text()
    assert 'id="evaluation-table"' in html and "Deletion and insertion" in html and "Localisation" in html


def test_bootstrap_interval_holds_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(size=40)
    a, b = columns.bootstrap(values, seed=5), columns.bootstrap(values, seed=5)
    assert a == b and a["low"] < a["mean"] < a["high"] and a["n"] == 40
    assert a["mean"] == pytest.approx(values.mean())
    assert columns.bootstrap(values, seed=6) != a
    # the interval is about the normal one (2 x 1.96 standard errors) for 40 normal values
    assert a["high"] - a["low"] == pytest.approx(2 * 1.96 * values.std() / np.sqrt(40), rel=0.2)
    assert columns.bootstrap(np.array([np.nan, 2.0]), 0) == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 1}
    assert columns.bootstrap(np.array([np.nan]), 0) is None


def test_the_subset_keeps_every_detail_image_and_is_seeded():
    chosen = evaluation.subset(1000, (3, 500, 999), 64, seed=1)
    assert len(chosen) == 64 and {3, 500, 999} <= chosen
    assert chosen == evaluation.subset(1000, (3, 500, 999), 64, seed=1) != evaluation.subset(1000, (3,), 64, 2)
    assert evaluation.subset(10, (1, 2), 64, 0) == set(range(10))
    assert evaluation.subset(100, tuple(range(20)), 8, 0) == set(range(20))  # detail images beyond `images`


def test_gradients_alone_and_chosen_metrics(project):
    config = boxed_project(project)
    config["analyses"] = {"gradients": {"methods": ["saliency", "input_x_gradient"]},
                          "evaluation": {"metrics": ["Deletion", "infidelity", "deletion"], "step": 64}}
    done = build(project, config)
    assert done.exit_code == 0, done.output
    data = json.loads((project.root / "out" / "report.json").read_text())
    ev = data["evaluation"]
    assert [c["id"] for c in ev["columns"]] == ["deletion_auc", "infidelity"]
    assert [r["method"] for r in ev["rows"]] == ["saliency", "input_x_gradient", "baseline_centre"]
    assert "sanity" not in ev and "curves" in ev
    # the headline metrics (Report.metrics(), report.json "metrics"): every mean, `evaluation/<column>/<row>`
    assert {k: v for k, v in data["metrics"].items() if k.startswith("evaluation/")} == pytest.approx(
        {f"evaluation/{c}/{r['method']}": r["scores"][c]["mean"] for r in ev["rows"] for c in r["scores"]
         if r["scores"][c] is not None},  # the centre baseline has no infidelity (no raw attribution)
        rel=1e-5, abs=1e-6)  # report.json: 6 decimals


@pytest.mark.parametrize("fails_on", [1, 2])
def test_when_cam_fails_the_gradients_maps_are_scored_unless_it_had_started(project, monkeypatch, fails_on):
    """cam fails on its first batch (before the evaluation starts): the evaluation scores the gradient maps.
    cam fails on its second batch, after the evaluation scored the first batch's CAMs: it is skipped, as its
    CAM rows would cover some images only."""
    import dataclasses

    import reportgen.stages.cam as cam

    calls = []

    def breaks(ctx, cfg):
        calls.append(len(calls) + 1)
        if len(calls) == fails_on:
            raise RuntimeError("cam broke")
        return run(ctx, cfg)

    run = cam.SPEC.run
    monkeypatch.setitem(STAGES, "cam", dataclasses.replace(cam.SPEC, run=breaks))
    config = boxed_project(project)
    config["analyses"]["evaluation"] = {"metrics": ["deletion"], "step": 64}
    done = build(project, config)
    assert done.exit_code == 1  # a failed stage
    data = json.loads((project.root / "out" / "report.json").read_text())
    status = {s["name"]: (s["status"], s.get("error")) for s in data["stages"]}
    assert status["cam"] == ("failed", "RuntimeError: cam broke") and status["gradients"][0] == "ok"
    if fails_on == 1:
        assert status["evaluation"][0] == "ok"
        assert [r["method"] for r in data["evaluation"]["rows"]] == ["saliency", "baseline_centre"]
        assert data["evaluation"]["images"] == 3  # every image, the first batch's included
    else:
        assert status["evaluation"] == ("skipped", "it needs the cam section, which failed")


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["analyses"].pop("cam") and c["analyses"].pop("gradients"),
     "needs `analyses.cam` or `analyses.gradients`: add one to the config."),
    (lambda c: c["analyses"]["evaluation"].update(metrics=["deletion", "ROAD", "insertoin"]),
     "unknown metric `insertoin`. Did you mean `insertion`? Metrics: deletion, insertion, road, "
     "confidence_change, infidelity, sensitivity, localisation, sanity."),
    (lambda c: c["analyses"]["evaluation"].update(step=1024), "1024 pixels a step is the whole 32×32 input"),
    (lambda c: c["analyses"]["evaluation"].update(step=0), "`analyses.evaluation.step` (config.yaml, line"),
    (lambda c: c["analyses"]["evaluation"].update(percentiles=[]), "needs at least one percentile"),
    (lambda c: c["analyses"]["evaluation"].update(sanity={"blocks": "layers"}),
     "`layers` is not one of blocks, modules."),
    (lambda c: (c["analyses"]["evaluation"].update(metrics=["localisation"]), c["inputs"].update(images=["*.png"])),
     "asks for localisation, but 3 of 3 images have no box or mask: a.png, b.png, c.png."),
])
def test_bad_input_is_one_message_and_exit_2(project, change, expected):
    config = boxed_project(project)
    change(config)
    for command in ("validate", "build"):
        done = CliRunner().invoke(main, [command, str(project.write(config))])
        assert done.exit_code == 2, done.output
        assert expected in done.output and "Traceback" not in done.output
        assert sum(line.startswith("error:") for line in done.output.splitlines()) == 1, done.output
    assert not (project.root / "out").exists()


def test_the_section_escapes_names_and_marks_the_best_and_the_failed_sanity():
    section = {
        "images": 2, "step": 16, "seed": 0, "notes": [], "warnings": ["<script>w</script>"], "sigma": 0.25,
        "columns": [{"id": "deletion_auc", "label": "Deletion AUC", "better": "lower", "definition": "d"}],
        "rows": [{"title": "<b>x</b>", "family": "cam", "verdict": 0.9, "baseline": False,
                  "cells": [{"text": "0.100", "interval": "0.05–0.2", "sort": "0.1", "best": True, "n": 2,
                             "not_better": ""}]},
                 {"title": "y", "family": "gradients", "verdict": None, "baseline": False,
                  "cells": [{"text": "–", "interval": "", "sort": "", "best": False, "n": 0, "not_better": ""}]}],
        "config": EvaluationConfig(), "curves": None, "localisation": [], "sanity_limit": 0.5,
        "sanity": {"chart": _fig("chart"), "maps": _fig("maps"), "images": ["i"], "image": "i", "blocks": ["fc"],
                   "mode": "blocks", "seed": 0, "verdicts": [{"title": "<i>gb</i>", "spearman": 0.8}],
                   "final": [{"title": "gb", "spearman": 0.8, "ssim": 0.7}]},
    }
    html = render_section("evaluation", section)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<script>w" not in html
    assert "★ 0.100" in html and html.count("fails the sanity check") == 1
    assert "&lt;i&gt;gb&lt;/i&gt;</strong> does not depend on what the model" in html


def _fig(alt):
    from reportgen.figures.common import Figure
    return Figure(png=b"", alt=alt)


# ---------------------------------------------------------------- the shipped shapes model

SHIPPED = Path(__file__).resolve().parents[1] / "example_configs" / "shapes"


def test_sanity_on_the_shapes_model_gradcam_falls_guided_backprop_stays():
    from reportgen.config import AnalysesConfig, CamConfig, Config, GradientsConfig
    from reportgen.demo import shapes
    from reportgen.stages import cam, gradients
    from tests.helpers import make_context

    model = shapes.load_model(SHIPPED / "model.pt")
    batch = shapes.generate(4, seed=5)
    x = shapes.to_input(batch.images)
    cfg = EvaluationConfig(metrics=("sanity",), sanity=SanityConfig(images=4))
    config = Config(analyses=AnalysesConfig(cam=CamConfig(target_layers=("features.3",)),
                                            gradients=GradientsConfig(methods=("guided_backprop", "saliency")),
                                            evaluation=cfg))
    ctx = make_context(model, x, config=config)
    ctx.results.add(cam.run(ctx, config.analyses.cam))
    ctx.results.add(gradients.run(ctx, config.analyses.gradients))
    result = evaluation.reduce([evaluation.run(ctx, cfg)])
    s = result.sanity
    assert s.cascade.blocks == ("fc", "features.3", "features.2", "features.1", "features.0")
    gradcam = s.cascade.mean_spearman("gradcam/features.3")
    guided = s.cascade.mean_spearman("guided_backprop")
    print("gradcam", np.round(gradcam, 3), "guided backprop", np.round(guided, 3),
          "saliency", np.round(s.cascade.mean_spearman("saliency"), 3))
    assert gradcam[1] < 0.5 and gradcam[-1] <= 0.5  # head and last block randomised: well below the start (1)
    # the paper's finding, that guided backprop barely changes: here it stays above 0.5 while the head and the last
    # block are random (Grad-CAM is near 0 by then), and falls only once the early blocks are random too
    assert guided[1] > 0.5 > gradcam[1] and guided[-1] > gradcam[-1]
    verdicts = evaluation.sanity_verdicts(result)
    assert "gradcam/features.3" not in verdicts
    table = {row["key"]: row for row in evaluation.summarize(result)}
    # an all-zero CAM of the random model has no ranks: that image is left out of the mean
    assert 1 <= table["gradcam/features.3"]["scores"]["sanity_spearman"]["n"] <= 4


# ---------------------------------------------------------------- batching and torchrun


def _scores(out: Path) -> tuple[dict, list]:
    from tests.test_scale import read

    data, records, _ = read(out)
    return data["evaluation"], [r["evaluation"] for r in records]


def test_the_scores_do_not_depend_on_how_the_images_are_batched(project):
    """Each image's noise is seeded by its index and the sanity check runs on the same detail images: batches of 2
    (two batches) and of 8 (one) give the same numbers."""
    from tests.test_scale import assert_same_numbers

    config = boxed_project(project)
    found = {}
    for size in (2, 8):
        config["inputs"]["batch_size"] = size
        config["output"]["dir"] = f"out{size}"
        done = build(project, config)
        assert done.exit_code == 0, done.output
        found[size] = _scores(project.root / f"out{size}")
    assert_same_numbers(found[2], found[8])


@pytest.mark.slow  # two processes start torch: about 10 s
def test_two_processes_under_torchrun_score_what_one_scores(project):
    import os
    import subprocess
    import sys

    from tests.test_scale import ROOT, assert_same_numbers

    config = boxed_project(project)
    done = build(project, config)
    assert done.exit_code == 0, done.output
    two = project.root / "two"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "reportgen", "build", str(project.write(config)), "-q", "-o", str(two)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_numbers(_scores(project.root / "out"), _scores(two))


def test_the_maps_recomputed_for_sanity_and_sensitivity_equal_the_stages_maps():
    """The cascade compares maps recomputed on the model's copy: on the trained model they are the report's."""
    from reportgen.config import AnalysesConfig, CamConfig, Config, GradientsConfig
    from reportgen.stages import cam, gradients
    from tests.helpers import make_context

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    methods = ("saliency", "input_x_gradient", "guided_backprop", "guided_gradcam", "smoothgrad",
               "integrated_gradients")
    config = Config(analyses=AnalysesConfig(
        cam=CamConfig(methods=("gradcam", "gradcampp", "cam", "scorecam"), target_layers=("0", "2")),
        gradients=GradientsConfig(methods=methods, samples=3, steps=4, baseline="uniform")))
    ctx = make_context(model, x, config=config)
    cams = cam.run(ctx, config.analyses.cam)
    ctx.results.add(cams)
    grads = gradients.run(ctx, config.analyses.gradients)
    targets = grads.classes[:, 0]
    found = gradients.recompute(grads, ctx.info, evaluation.engine_for(ctx.info, model, x), targets, list(methods),
                                seed=0)
    for method in methods:
        np.testing.assert_allclose(found[method].numpy(), grads.maps[method][:, 0], atol=1e-5, err_msg=method)
    recomputed = cam.recompute(cams, ctx.info, evaluation.engine_for(ctx.info, model, x),
                               np.array([t[0] for t in cams.targets]))
    assert set(recomputed) == {(m, layer) for m, layer, i, _ in cams.maps if i == 0} and len(recomputed) >= 8
    for (method, layer), maps in recomputed.items():
        expected = np.stack([cams.maps[(method, layer, i, cams.targets[i][0])] for i in range(3)])
        np.testing.assert_allclose(maps, expected, atol=1e-5, err_msg=f"{method} {layer}")


def build_cam_methods(project, methods, **options) -> tuple[dict, object]:
    """A build of `boxed_project` with `methods` as the cam stage's (and its `options`) and a one-image sanity
    cascade: its report.json data and output folder; the methods are all drawn (none "not applicable") and each is a
    row of the evaluation."""
    config = boxed_project(project)
    config["analyses"]["cam"] = {"methods": list(methods), **options}
    config["analyses"]["evaluation"]["sanity"] = {"images": 1}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["cam"]["methods"] == list(methods) and data["cam"]["not_applicable"] == {}
    assert {r["method"] for r in data["evaluation"]["rows"]} >= set(methods)
    return data, out
