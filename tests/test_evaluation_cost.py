"""The evaluation's cost for forward-only methods is bounded: max-sensitivity and the sanity cascade recompute a
map 10 times per image and once per randomised block, so with `recompute: bounded` (the default) a method whose
10 maps cost more forwards than the image's deletion curve is left out of both, and the page says what it would
have cost; `recompute: always` computes them."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import GradientsConfig
from reportgen.metrics import cost


def test_what_a_map_costs_and_which_methods_are_left_out():
    size, step = (16, 16), 1  # the deletion curve: the image, then 256 steps of one pixel
    assert cost.curve_forwards(size, step) == 257
    def result(methods, **options):  # what `costly_recomputes` reads of the gradients stage's result
        return SimpleNamespace(maps=dict.fromkeys(methods), config=GradientsConfig(methods=methods, **options))

    both = ("sensitivity", "sanity")
    grads = result(("saliency", "rise", "occlusion"), rise_masks=100, occlusion_window=6, occlusion_stride=4)
    # occlusion: ceil((16 - 6) / 4) + 1 = 4 positions a side, 16 forwards a map, 160 for ten: kept
    assert cost.costly_recomputes(grads, "bounded", both, size, step) == {"rise": 100}
    assert cost.costly_recomputes(grads, "always", both, size, step) == {}
    assert cost.costly_recomputes(grads, "bounded", ("deletion", "localisation"), size, step) == {}
    assert cost.costly_recomputes(None, "bounded", both, size, step) == {}
    assert cost.costly_recomputes(result(("occlusion",), occlusion_window=3, occlusion_stride=1), "bounded",
                                  ("sanity",), size, step) == {"occlusion": 196}
    note, = cost.costly_note({"rise": 100}, ("sensitivity", "sanity"), size, step)
    assert "RISE (100 forwards a map)" in note and "257 forwards" in note and "recompute: always" in note
    assert cost.costly_note({"rise": 100}, ("deletion",), size, step) == []


def _evaluation(project, recompute: str) -> dict:
    config = project.base()
    config["analyses"] = {"gradients": {"methods": ["saliency", "rise", "occlusion"], "rise_masks": 100,
                                        "occlusion_window": 6, "occlusion_stride": 4},
                          "evaluation": {"metrics": ["sensitivity", "sanity"], "images": 2, "recompute": recompute,
                                         "sanity": {"images": 1}}}
    out = project.root / f"out-{recompute}"
    config["output"]["dir"] = str(out)
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["evaluation"], (out / "report.html").read_text()


def test_a_build_leaves_costly_recomputations_out_and_says_so_unless_asked(project):
    ev, html = _evaluation(project, "bounded")
    rows = {r["method"]: r for r in ev["rows"]}
    assert rows["rise"]["scores"]["sensitivity"] is None  # 10 × 100 forwards > the curve's 257
    assert all(np.isfinite(rows[m]["scores"]["sensitivity"]["mean"]) for m in ("saliency", "occlusion"))
    assert {r["row"] for r in ev["sanity"]["rows"]} >= {"saliency", "occlusion"}
    assert "rise" not in {r["row"] for r in ev["sanity"]["rows"]}
    assert any("RISE (100 forwards a map)" in n for n in ev["notes"]) and "RISE (100 forwards a map)" in html

    ev, _ = _evaluation(project, "always")
    rows = {r["method"]: r for r in ev["rows"]}
    assert np.isfinite(rows["rise"]["scores"]["sensitivity"]["mean"])
    assert "rise" in {r["row"] for r in ev["sanity"]["rows"]}
    assert not any("forwards a map" in n for n in ev["notes"])


def test_no_cascade_when_every_map_is_too_costly_to_recompute(project):
    config = project.base()
    config["analyses"] = {"gradients": {"methods": ["rise"], "rise_masks": 100},
                          "evaluation": {"metrics": ["deletion", "sanity"], "images": 2}}
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    ev = json.loads((project.root / "out" / "report.json").read_text())["evaluation"]
    assert ev.get("sanity") is None and any("RISE (100 forwards a map)" in n for n in ev["notes"])
    assert np.isfinite(ev["rows"][0]["scores"]["deletion_auc"]["mean"])
