"""Captum 0.9.0's NoiseTunnel smoothgrad_sq / vargrad, GradientShap and DeepLift: equal to Captum per image, on the
panels of tests/test_gradients.py (DeepLift: VGG-11-BN, and ResNet-18 against Captum on a copy with its own ReLUs),
with the same draws (seeded per image as `smoothgrad` is; GradientShap's α from a numpy RandomState seeded as
Captum's global one, which the build leaves untouched)."""
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
    config["analyses"]["gradients"] = {"methods": [*MORE, "deeplift"], "samples": 2, "shap_stdev": 0.05}
    done = build(project, config)
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    with np.load(out / "arrays.npz") as npz:
        keys = npz.files
        for method in (*MORE, "deeplift"):
            found = [k for k in keys if k.startswith(f"gradients/{method}/")]
            assert len(found) == len(BOXES) and all(np.isfinite(npz[k]).all() for k in found), method
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["evaluation"]["rows"]}
    for method in (*MORE, "deeplift"):
        scores = rows[method]["scores"]
        for column in ("deletion_auc", "sensitivity", "infidelity"):
            assert scores[column] is not None and np.isfinite(scores[column]["mean"]), (method, column)


def test_the_maps_recomputed_for_the_evaluation_equal_the_stages_maps():
    from reportgen.config import AnalysesConfig, Config
    from reportgen.stages import evaluation

    build_model, _, _ = MODELS["tiny"]
    model, x = build_model(), batch(n=3, size=16)
    methods = (*MORE, "deeplift")
    config = Config(analyses=AnalysesConfig(gradients=GradientsConfig(methods=methods, samples=3, shap_stdev=0.1)))
    ctx = make_context(model, x, config=config)
    grads = G.run(ctx, config.analyses.gradients)
    found = G.recompute(grads, ctx.info, evaluation.engine_for(ctx.info, model, x), grads.classes[:, 0], list(methods),
                        seed=0)
    for method in methods:
        np.testing.assert_allclose(found[method].numpy(), grads.maps[method][:, 0], rtol=1e-5,
                                   atol=1e-6 * np.abs(grads.maps[method]).max(), err_msg=method)


# ---------------------------------------------------------------------------- DeepLift


def own_relus(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a torchvision ResNet whose blocks call a second ReLU module instead of their one ReLU twice (Captum
    raises on a module called twice); the same function."""
    import copy
    import types

    from torchvision.models.resnet import BasicBlock

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu2(out + identity)

    model = copy.deepcopy(model)
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.relu2 = torch.nn.ReLU(inplace=True)
            block.forward = types.MethodType(forward, block)
    return model


def with_batch_norm_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Seeded BatchNorm statistics and affine terms (the defaults make eval-mode BN an identity)."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.1, 0.1), (m.running_var, 0.5, 1.5), (m.weight.data, 0.5, 1.5),
                              (m.bias.data, -0.1, 0.1)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18"])
def test_deeplift_equals_captum_per_image(name):
    import torchvision
    from captum.attr import DeepLift

    torch.manual_seed(0)
    model = with_batch_norm_stats(getattr(torchvision.models, name)(num_classes=10))
    x = batch(n=2, size=32)
    result = G.run(make_context(model, x), GradientsConfig(methods=("deeplift",), baseline="zero"))
    targets = result.classes[:, 0].tolist()
    reference = own_relus(model) if name == "resnet18" else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "resnet18":  # the reason for the copy: Captum refuses ResNet's ReLU called twice
            with pytest.raises(RuntimeError, match="more than once"):
                DeepLift(model).attribute(x[:1], baselines=torch.zeros_like(x[:1]), target=targets[0])
        # image by image, as the other references here
        ref = torch.cat([DeepLift(reference).attribute(x[i:i + 1], baselines=torch.zeros_like(x[i:i + 1]), target=t)
                         for i, t in enumerate(targets)]).detach()
    assert float(ref.abs().max()) > 0
    assert max(per_image(result.maps["deeplift"][:, 0], ref)) <= TOL
    from reportgen.hooks import count_hooks
    assert count_hooks(model) == 0
    # not saliency or input × gradient under another name
    with torch.enable_grad():
        xs = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(xs).gather(1, torch.tensor(targets).view(-1, 1)).sum(), xs)
    assert max(per_image((x * grad).numpy(), ref)) > 1e-2
