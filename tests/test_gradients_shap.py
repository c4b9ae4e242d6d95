"""Captum 0.9.0's DeepLiftShap (`reportgen.methods.gradients_shap`): equal to Captum per image on VGG-11-BN and on
ResNet-18 (Captum on a copy whose ReLUs are each their own module; ours on the model as it is), with the same
baselines (ours, handed to Captum: the method is deterministic given them). Also: the baselines are seeded per image,
too few of them are refused at validation, and a build draws, writes and scores the method."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reportgen.cli import main
from reportgen.config import GradientsConfig, TargetSpec
from reportgen.methods.gradients_shap import shap_baselines
from reportgen.stages import gradients as G
from tests.helpers import make_context
from tests.test_gradients import batch
from tests.test_gradients_more import TOL, own_relus, per_image, with_batch_norm_stats

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

COUNT, STDEV, SEED = 3, 0.2, 0


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18"])
def test_deepliftshap_equals_captum_per_image(name):
    import torchvision
    from captum.attr import DeepLift, DeepLiftShap

    torch.manual_seed(0)
    model = with_batch_norm_stats(getattr(torchvision.models, name)(num_classes=10))
    x = batch(n=2, size=32)
    cfg = GradientsConfig(methods=("deepliftshap", "deeplift"), targets=TargetSpec(k=2), baseline="zero",
                          shap_baselines=COUNT, shap_baseline_stdev=STDEV)
    result = G.run(make_context(model, x), cfg)
    baselines = shap_baselines(x, torch.zeros_like(x), count=COUNT, stdev=STDEV, seed=SEED)  # (N, B, C, H, W)
    reference = own_relus(model) if name == "resnet18" else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "resnet18":  # Captum refuses ResNet's ReLU called twice; ours runs on the model as it is
            with pytest.raises(RuntimeError, match="more than once"):
                DeepLiftShap(model).attribute(x[:1], baselines=baselines[0], target=0)
        for r in range(2):
            targets = result.classes[:, r].tolist()
            ref = torch.cat([DeepLiftShap(reference).attribute(x[i:i + 1], baselines=baselines[i], target=t)
                             for i, t in enumerate(targets)]).detach()
            assert float(ref.abs().max()) > 0
            assert max(per_image(result.maps["deepliftshap"][:, r], ref)) <= TOL, r
            # not DeepLift from the plain baseline under another name: the distribution matters
            plain = torch.cat([DeepLift(reference).attribute(x[i:i + 1], baselines=torch.zeros_like(x[:1]), target=t)
                               for i, t in enumerate(targets)]).detach()
            assert max(per_image(result.maps["deepliftshap"][:, r], plain)) > 1e-2
    from reportgen.hooks import count_hooks
    assert count_hooks(model) == 0


def test_without_noise_it_is_deeplift_and_the_baselines_are_seeded_per_image():
    from tests.test_gradients import MODELS

    model = MODELS["tiny"][0]().eval()
    x = batch(n=3, size=16)
    cfg = GradientsConfig(methods=("deepliftshap", "deeplift"), shap_baselines=2, shap_baseline_stdev=0.0)
    result = G.run(make_context(model, x), cfg)
    np.testing.assert_allclose(result.maps["deepliftshap"], result.maps["deeplift"], rtol=1e-5,
                               atol=1e-6 * np.abs(result.maps["deeplift"]).max())
    state = torch.get_rng_state()
    whole = shap_baselines(x, torch.zeros_like(x), count=4, stdev=0.1, seed=7)
    alone = shap_baselines(x[2:], torch.zeros_like(x[2:]), count=4, stdev=0.1, seed=7, offset=2)
    assert torch.equal(whole[2:], alone) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(whole[0], whole[1]) and not torch.equal(whole[0, 0], whole[0, 1])
    assert float(whole[0].std()) == pytest.approx(0.1 * float(x[0].max() - x[0].min()), rel=0.1)


@pytest.mark.parametrize("over, message", [
    ({"methods": ["deepliftshap"], "shap_baselines": 1}, "shap_baselines.*at least 2"),
    ({"methods": ["deepliftshap"], "shap_baselines": 0}, "shap_baselines"),
    ({"methods": ["vargrad"], "samples": 1}, "samples.*vargrad.*at least 2"),
    ({"methods": ["smoothgrad"], "samples": 0}, "samples")])
def test_validate_refuses_too_few_baselines_or_samples(project, over, message):
    """A count below what the method needs: exit 2, the key named, nothing written (samples ≥ 1 is the schema's
    rule for every sampling method; vargrad's variance and deepliftshap's distribution need 2)."""
    config = project.base()
    config["analyses"]["gradients"] = over
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 2, result.output
    assert __import__("re").search(message, result.output.replace("\n", " ")) and "Traceback" not in result.output
    assert not (project.root / "out").exists()


def test_validate_accepts_two_samples_for_vargrad(project):
    config = project.base()
    config["analyses"]["gradients"] = {"methods": ["vargrad", "deepliftshap"], "samples": 2, "shap_baselines": 2}
    result = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert result.exit_code == 0, result.output


def test_a_build_draws_writes_and_scores_it(project):
    """The record alone wires it in: the stage writes its arrays, the evaluation scores it (sensitivity and the
    sanity cascade recompute it through the same dispatch)."""
    from tests.test_evaluation_stage import BOXES, boxed_project, build

    config = boxed_project(project)
    config["analyses"]["gradients"] = {"methods": ["deepliftshap"], "shap_baselines": 2}
    done = build(project, config)
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    with np.load(out / "arrays.npz") as npz:
        found = [k for k in npz.files if k.startswith("gradients/deepliftshap/")]
        assert len(found) == len(BOXES) and all(np.isfinite(npz[k]).all() and np.abs(npz[k]).max() > 0 for k in found)
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["evaluation"]["rows"]}
    for column in ("deletion_auc", "sensitivity", "infidelity"):
        score = rows["deepliftshap"]["scores"][column]
        assert score is not None and np.isfinite(score["mean"]), column
