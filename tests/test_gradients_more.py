"""Captum 0.9.0's NoiseTunnel smoothgrad_sq / vargrad and GradientShap: equal to Captum per image, on the panels of
tests/test_gradients.py, with the same draws (seeded per image as `smoothgrad` is; GradientShap's α from a numpy
RandomState seeded as Captum's global one, which the build leaves untouched)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import GradientShap, NoiseTunnel, Saliency

from reportgen.config import GradientsConfig, TargetSpec
from reportgen.stages import gradients as G
from tests.helpers import make_context
from tests.test_gradients import MODELS, batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-4  # per image: |ours − Captum| ≤ TOL · max |Captum| (float32 sums in another order)
MORE = ("smoothgrad_sq", "vargrad", "gradientshap")
SAMPLES, STDEV, SHAP_STDEV, SEED = 4, 0.15, 0.1, 0


def captum_maps(model, x, targets) -> dict:
    """Captum's maps, image by image, after seeding torch (and numpy) with the image's seed as ours."""
    def tunnel(i: int, target: int, nt_type: str) -> torch.Tensor:
        torch.manual_seed(SEED + i)
        return NoiseTunnel(Saliency(model)).attribute(x[i:i + 1], nt_type=nt_type, nt_samples=SAMPLES,
                                                      stdevs=STDEV * float(x[i].max() - x[i].min()), target=target)

    def shap(i: int, target: int) -> torch.Tensor:
        np.random.seed(SEED + i)
        torch.manual_seed(SEED + i)
        return GradientShap(model).attribute(x[i:i + 1], baselines=torch.zeros_like(x[i:i + 1]), n_samples=SAMPLES,
                                             stdevs=SHAP_STDEV * float(x[i].max() - x[i].min()), target=target)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {t: torch.cat([tunnel(i, c, t) for i, c in enumerate(targets)]) for t in ("smoothgrad_sq", "vargrad")}
        out["gradientshap"] = torch.cat([shap(i, c) for i, c in enumerate(targets)])
    return out


def per_image(ours: np.ndarray, ref: torch.Tensor) -> list[float]:
    ref = ref.detach().numpy()
    return [float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(ours, ref)]


@pytest.mark.parametrize("name", list(MODELS))
def test_equal_to_captum_per_image(name):
    build, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = batch()
    before = x.clone()
    state = np.random.get_state()
    cfg = GradientsConfig(methods=MORE, targets=TargetSpec(k=2), samples=SAMPLES, stdev=STDEV, shap_stdev=SHAP_STDEV,
                          internal_batch_size=5 if name == "tiny" else None)  # 5: chunks straddle images
    result = G.run(make_context(model, x), cfg)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    assert torch.equal(x, before)
    saved = G.arrays(result)
    for r in range(2):
        targets = result.classes[:, r].tolist()
        ref = captum_maps(model, x, targets)
        for method in MORE:
            assert float(ref[method].abs().max()) > 0, method
            assert max(per_image(result.maps[method][:, r], ref[method])) <= TOL, (method, r)
            key = f"gradients/{method}/{result.images[0]}/{targets[0]}"
            assert saved[key].dtype == np.float32 and saved[key].shape == (3, 64, 64)


def test_moments_agree_and_without_noise_reduce_to_saliency():
    build, _, _ = MODELS["tiny"]
    model, x = build(), batch(n=2, size=32)
    ctx = make_context(model, x)
    maps = G.run(ctx, GradientsConfig(methods=("smoothgrad", "smoothgrad_sq", "vargrad"), samples=3)).maps
    np.testing.assert_allclose(maps["vargrad"], maps["smoothgrad_sq"] - maps["smoothgrad"] ** 2,
                               atol=1e-6 * np.abs(maps["smoothgrad_sq"]).max())
    assert maps["vargrad"].min() > -1e-6 * np.abs(maps["smoothgrad_sq"]).max()  # a variance
    assert np.abs(maps["vargrad"]).max() > 1e-3 * np.abs(maps["smoothgrad_sq"]).max()  # the noise moves gradients
    plain = G.run(ctx, GradientsConfig(methods=("saliency", "smoothgrad_sq", "vargrad"), samples=2, stdev=0.0)).maps
    np.testing.assert_allclose(plain["smoothgrad_sq"], plain["saliency"] ** 2, rtol=1e-5,
                               atol=1e-7 * (plain["saliency"] ** 2).max())
    assert np.abs(plain["vargrad"]).max() <= 1e-6 * (plain["saliency"] ** 2).max()


def test_gradientshap_is_seeded_and_its_draws_are_per_image():
    build, _, _ = MODELS["tiny"]
    model, x = build(), batch(n=3, size=32)
    cfg = GradientsConfig(methods=("gradientshap",), samples=3)
    whole = G.run(make_context(model, x), cfg).maps["gradientshap"]
    assert np.array_equal(whole, G.run(make_context(model, x), cfg).maps["gradientshap"])
    # the last image alone, offset as the build's shards are, draws what it drew in the batch
    from reportgen.methods.gradients_more import compute_gradientshap
    classes = [[int(c) for c in G.run(make_context(model, x), cfg).classes[:, 0]]]
    alone = compute_gradientshap(model, x[2:], [classes[0][2:]], baseline=torch.zeros_like(x[2:]), samples=3,
                                 stdev=0.0, seed=0, batch_size=4, offset=2)[0]
    np.testing.assert_allclose(alone.numpy()[0], whole[2, 0], rtol=1e-5, atol=1e-7 * np.abs(whole[2, 0]).max())


def test_a_build_draws_writes_and_scores_them(project):
    """The records alone wire them in: the stage writes their arrays, the evaluation scores them (sensitivity and the
    sanity cascade recompute them through the same dispatch)."""
    import json

    from tests.test_evaluation_stage import BOXES, boxed_project, build

    config = boxed_project(project)
    config["analyses"]["gradients"] = {"methods": list(MORE), "samples": 2, "shap_stdev": 0.05}
    done = build(project, config)
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    with np.load(out / "arrays.npz") as npz:
        keys = npz.files
        for method in MORE:
            found = [k for k in keys if k.startswith(f"gradients/{method}/")]
            assert len(found) == len(BOXES) and all(np.isfinite(npz[k]).all() for k in found), method
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["evaluation"]["rows"]}
    for method in MORE:
        scores = rows[method]["scores"]
        for column in ("deletion_auc", "sensitivity", "infidelity"):
            assert scores[column] is not None and np.isfinite(scores[column]["mean"]), (method, column)


def test_the_maps_recomputed_for_the_evaluation_equal_the_stages_maps():
    from reportgen.config import AnalysesConfig, Config
    from reportgen.stages import evaluation

    build_model, _, _ = MODELS["tiny"]
    model, x = build_model(), batch(n=3, size=16)
    config = Config(analyses=AnalysesConfig(gradients=GradientsConfig(methods=MORE, samples=3, shap_stdev=0.1)))
    ctx = make_context(model, x, config=config)
    grads = G.run(ctx, config.analyses.gradients)
    found = G.recompute(grads, ctx.info, evaluation.engine_for(ctx.info, model, x), grads.classes[:, 0], list(MORE),
                        seed=0)
    for method in MORE:
        np.testing.assert_allclose(found[method].numpy(), grads.maps[method][:, 0], rtol=1e-5,
                                   atol=1e-6 * np.abs(grads.maps[method]).max(), err_msg=method)
