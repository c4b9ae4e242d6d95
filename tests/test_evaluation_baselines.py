"""Baselines in the evaluation's ranking (`reportgen.metrics.baselines`): the centre-Gaussian row is scored on a tiny
build next to the methods, randomcam's rows are baselines, the "not better than a baseline" marking on hand-made
intervals, and the section renders both marks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import EvaluationConfig
from reportgen.metrics import baselines, perturbation
from tests.conftest import render_section

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_centre_map_is_a_gaussian_of_a_quarter_of_the_shorter_side():
    m = baselines.centre_map(9, 13)
    assert m.shape == (9, 13) and m.dtype == np.float32
    assert m[4, 6] == 1.0 and m.max() == 1.0  # odd sizes: the centre pixel
    sigma = 9 / 4
    assert m[4, 0] == pytest.approx(np.exp(-36 / (2 * sigma ** 2)), rel=1e-6)
    assert m[0, 6] == pytest.approx(np.exp(-16 / (2 * sigma ** 2)), rel=1e-6)
    np.testing.assert_array_equal(m, m[::-1, ::-1])  # symmetric about the centre


def test_a_tiny_build_scores_the_centre_row_and_marks_randomcam_a_baseline(project):
    config = project.base()
    config["analyses"] = {"cam": {"methods": ["gradcam", "randomcam"]}, "gradients": {"methods": ["saliency"]},
                          "evaluation": {"metrics": ["deletion", "insertion", "infidelity"], "step": 64}}
    config["output"]["save_arrays"] = True
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    ev = json.loads((out / "report.json").read_text())["evaluation"]
    rows = {(r["method"], r["layer"]): r for r in ev["rows"]}
    centre = rows[("baseline_centre", None)]
    assert centre["baseline"] and centre["family"] == "baseline" and centre["not_better"] == {}
    assert centre["scores"]["infidelity"] is None  # a gradient method's column: no raw attribution
    assert {r["baseline"] for (m, _), r in rows.items() if m == "randomcam"} == {True}
    assert not any(r["baseline"] for (m, _), r in rows.items() if m in ("gradcam", "saliency"))

    assert np.isfinite(centre["scores"]["deletion_auc"]["mean"]) and centre["scores"]["deletion_auc"]["n"] == 2
    with np.load(out / "arrays.npz") as npz:
        assert npz["evaluation/insertion_auc/baseline_centre"].shape == (2,)
    html = (out / "report.html").read_text()
    badges = sum(r["baseline"] for r in ev["rows"])  # the centre and randomcam's rows (its layer, `fused` if any)
    assert badges >= 2 and html.count('<span class="badge baseline"') == badges
    assert "Centre Gaussian (baseline)" in html
    # the marks are the rule on report.json's intervals (the tiny model barely changes p: its rows may all be apart)
    better = {c["id"]: c["better"] for c in ev["columns"]}
    for r in ev["rows"]:
        expected = {c: [b["method"] + (f"/{b['layer']}" if b["layer"] else "") for b in ev["rows"] if b["baseline"]
                        and b["scores"][c] is not None
                        and baselines.not_better(s["low"], s["high"], b["scores"][c]["low"], b["scores"][c]["high"],
                                                 better[c])]
                    for c, s in r["scores"].items() if s is not None and not r["baseline"]}
        assert r["not_better"] == {c: keys for c, keys in expected.items() if keys}, r["method"]
    marked = sum(len(r["not_better"]) for r in ev["rows"])
    assert html.count(">not better than a baseline</span>") == marked


def test_the_centre_row_is_the_metric_on_the_gaussian_map():
    """The stage run on a batch by hand: the centre row's deletion and insertion AUCs are the metric function's on
    the centre map, for each image's gradcam target."""
    import torch
    from torch import nn

    from reportgen.config import AnalysesConfig, CamConfig, Config
    from reportgen.stages import cam, evaluation
    from tests.helpers import make_context

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.rand(3, 3, 16, 20)
    cfg = EvaluationConfig(metrics=("deletion", "insertion"), step=32)
    config = Config(analyses=AnalysesConfig(cam=CamConfig(methods=("gradcam",), target_layers=("0",)),
                                            evaluation=cfg))
    ctx = make_context(model, x, config=config)
    ctx.results.add(cam.run(ctx, config.analyses.cam))
    result = evaluation.reduce([evaluation.run(ctx, cfg)])
    assert result.rows[-1] == ("baseline_centre", "")
    targets = model(x).argmax(1).numpy()
    m = np.broadcast_to(baselines.centre_map(16, 20), (3, 16, 20))
    with torch.no_grad():
        direct = perturbation.deletion_insertion(model, x, {"c": m}, targets, step=32, substrate="zero",
                                                 insertion_substrate="blur")["c"]
    np.testing.assert_allclose(result.scores["baseline_centre"]["deletion_auc"], direct.deletion_auc, atol=1e-5)
    np.testing.assert_allclose(result.scores["baseline_centre"]["insertion_auc"], direct.insertion_auc, atol=1e-5)
    assert not np.allclose(result.scores["baseline_centre"]["deletion_auc"],
                           result.scores["gradcam/0"]["deletion_auc"])  # its own map, not a copy of a method's


def _row(method, low, high, mean=None, layer=None):
    mean = (low + high) / 2 if mean is None else mean
    return {"method": method, "layer": layer, "best": [],
            "scores": {"deletion_auc": {"mean": mean, "low": low, "high": high, "n": 4},
                       "insertion_auc": {"mean": mean, "low": low, "high": high, "n": 4}}}


@pytest.mark.parametrize("low, high, deletion, insertion", [
    (0.50, 0.60, True, True),    # inside the baseline's interval: overlaps either way
    (0.25, 0.41, True, True),    # touches its low end (0.40 ≤ 0.41)
    (0.10, 0.39, False, True),   # wholly below: better for deletion (↓), worse for insertion (↑)
    (0.71, 0.90, True, False),   # wholly above: worse for deletion, better for insertion
])
def test_not_better_on_hand_made_intervals(low, high, deletion, insertion):
    table = [_row("gradcam", low, high, layer="4"), _row("baseline_centre", 0.40, 0.70)]
    baselines.mark(table, ("deletion_auc", "insertion_auc"))
    method, base = table
    assert base["baseline"] and base["not_better"] == {} and not method["baseline"]
    assert ("deletion_auc" in method["not_better"]) == deletion
    assert ("insertion_auc" in method["not_better"]) == insertion
    if deletion:
        assert method["not_better"]["deletion_auc"] == ["baseline_centre"]


def test_every_baseline_counts_and_unscored_cells_are_left_out():
    rand = _row("randomcam", 0.05, 0.12, layer="layer4")  # a record with baseline=True
    table = [_row("gradcam", 0.10, 0.20, layer="layer4"), rand, _row("baseline_centre", 0.50, 0.60)]
    table[0]["scores"]["insertion_auc"] = None
    baselines.mark(table, ("deletion_auc", "insertion_auc"))
    assert table[1]["baseline"]
    assert table[0]["not_better"] == {"deletion_auc": ["randomcam/layer4"]}  # overlaps the random map only


def test_the_section_renders_the_baseline_and_the_not_better_marks():
    cell = {"text": "0.500", "interval": "0.4–0.6", "sort": "0.5", "best": False, "n": 4}
    section = {
        "images": 4, "step": 16, "seed": 0, "notes": [], "warnings": [], "sigma": 0.25,
        "columns": [{"id": "deletion_auc", "label": "Deletion AUC", "better": "lower", "definition": "d"}],
        "rows": [{"title": "Grad-CAM", "family": "cam", "verdict": None, "baseline": False,
                  "cells": [{**cell, "not_better": "<Centre> (baseline)"}]},
                 {"title": "Saliency", "family": "gradients", "verdict": None, "baseline": False,
                  "cells": [{**cell, "not_better": ""}]},
                 {"title": "Centre Gaussian (baseline)", "family": "baseline", "verdict": None, "baseline": True,
                  "cells": [{**cell, "not_better": ""}]}],
        "config": EvaluationConfig(), "curves": None, "sanity": None, "localisation": [], "sanity_limit": 0.5,
    }
    html = render_section("evaluation", section)
    body = html.split("<tbody>")[1]
    assert body.count(">not better than a baseline</span>") == 1
    assert "that of: &lt;Centre&gt; (baseline)" in body  # the baseline named, escaped
    assert body.count('<span class="badge baseline"') == 1
    rows = body.split("<tr>")[1:]
    assert "not better than a baseline" in rows[0] and "not better" not in rows[1] + rows[2]
