"""LRP (reportgen.methods.lrp): `lrp` equal to Captum 0.9.0's LRP on VGG-11-BN and VGG-16-BN, the three composites
equal to Zennit 0.5.1's (with its canonizers) on ResNet-18 and VGG-16-BN, per image; refusals naming the layer; the
model left as it was; a build that draws, writes and scores them."""
from __future__ import annotations

import json
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from reportgen.cli import main
from reportgen.config import Config, GradientsConfig, TargetSpec
from reportgen.config.values import Normalize
from reportgen.errors import ReportgenError
from reportgen.methods.lrp import COMPOSITES, compute_lrp
from reportgen.stages import gradients as G
from tests.helpers import make_context
from tests.test_gradients import batch
from tests.test_gradients_more import with_batch_norm_stats

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-4  # per image: |ours − reference| ≤ TOL · max |reference| (float32 sums in another order)
METHODS = ("lrp", *COMPOSITES)


def model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return with_batch_norm_stats(getattr(torchvision.models, name)(num_classes=10))


def per_image(ours: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.detach().numpy()
    return max(float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(ours, ref))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11_bn", "vgg16_bn"])
def test_lrp_equals_captum_per_image(name):
    from captum.attr import LRP

    net, x = model(name), batch(n=2, size=32)
    result = G.run(make_context(net, x), GradientsConfig(methods=("lrp",), targets=TargetSpec(k=2)))
    for r in range(2):
        targets = result.classes[:, r].tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LRP(net).attribute(x, target=targets).detach()
        assert float(ref.abs().max()) > 0
        assert per_image(result.maps["lrp"][:, r], ref) <= TOL, r
        # relevance is conserved up to the biases: Captum's scale (the logit), not zennit's (1)
        assert abs(float(ref[0].sum())) > 1e-3


def zennit_maps(net: nn.Module, x: torch.Tensor, targets: list[int], low: torch.Tensor, high: torch.Tensor) -> dict:
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    out = {}
    for method, composite in zip(COMPOSITES, (EpsilonPlusFlat, EpsilonGammaBox, EpsilonAlpha2Beta1Flat)):
        canonizers = [ResNetCanonizer()] if isinstance(net, torchvision.models.ResNet) else [SequentialMergeBatchNorm()]
        kwargs = {"low": low, "high": high} if composite is EpsilonGammaBox else {}
        with Gradient(net, composite(canonizers=canonizers, **kwargs)) as attributor:
            _, out[method] = attributor(x.clone(), torch.eye(10)[targets])  # zennit's one-hot output relevance
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn"])
def test_composites_equal_zennit_with_its_canonizers(name):
    net, x = model(name), batch(n=2, size=32)
    config = Config()
    norm = config.inputs.preprocess.normalize  # the default: ImageNet's statistics
    assert norm == Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ctx = make_context(net, x, config=config)
    # the box: pixels 0 and 1 after the config's normalisation
    low = torch.tensor([-m / s for m, s in zip(norm.mean, norm.std)]).view(1, 3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(norm.mean, norm.std)]).view(1, 3, 1, 1)
    found = G.input_range(ctx.info, 3)
    np.testing.assert_allclose(np.array(found), torch.cat([low, high]).view(2, 3).numpy(), rtol=1e-6)
    result = G.run(ctx, GradientsConfig(methods=tuple(COMPOSITES)))
    targets = result.classes[:, 0].tolist()
    ref = zennit_maps(net, x, targets, low, high)
    for method in COMPOSITES:
        assert float(ref[method].abs().max()) > 0, method
        assert per_image(result.maps[method][:, 0], ref[method]) <= TOL, method
    # the box follows the normalisation: other bounds give another map
    other = compute_lrp(net, x, [targets], method="lrp_epsilon_gamma_box", low=(0.0,), high=(1.0,))[0]
    assert per_image(other.numpy(), ref["lrp_epsilon_gamma_box"]) > 1e-3


def test_the_model_is_left_as_it_was():
    net, x = model("resnet18"), batch(n=2, size=32)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        before = net(x)
    for method in COMPOSITES:
        compute_lrp(net, x, [[1, 2]], method=method)
    vgg = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 15 * 15, 3)).eval()
    vgg_state = {k: v.clone() for k, v in vgg.state_dict().items()}
    compute_lrp(vgg, x, [[0, 1]], method="lrp")
    assert all(torch.equal(v, vgg.state_dict()[k]) for k, v in vgg_state.items())
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(net(x), before)
    for m in [*net.modules(), *vgg.modules()]:
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), m
        assert "forward" not in m.__dict__  # no method replaced (zennit's ResNet canonizer replaces `forward`)


class Scaled(nn.Module):
    """A custom layer with a parameter of its own: no rule."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class Residual(nn.Module):
    """A residual sum outside torchvision's ResNet blocks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def chain(*middle: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *middle, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("net, layer, kind", [
    (chain(nn.GELU()), "`1`", "GELU"),
    (chain(nn.LayerNorm([4, 8, 8])), "`1`", "LayerNorm"),
    (chain(nn.ReLU(), Scaled()), "`2`", "Scaled"),
])
def test_a_layer_without_a_rule_is_refused_by_name(method, net, layer, kind):
    rules = "Captum's LRP" if method == "lrp" else COMPOSITES[method][0]
    with pytest.raises(ReportgenError, match=f"{method}: the layer {layer} \\({kind}\\).*{rules}"):
        compute_lrp(net, batch(n=1, size=8), [[0]], method=method)


@pytest.mark.parametrize("method", METHODS)
def test_a_residual_sum_without_a_rule_is_refused(method):
    with pytest.raises(ReportgenError, match=f"{method}: the model joins two branches by `AddBackward0`"):
        compute_lrp(chain(Residual()), batch(n=1, size=8), [[0]], method=method)


def test_captum_lrp_is_refused_on_resnet_and_mobilenet():
    """Captum's LRP runs on ResNet and is wrong there (its residual sums add up both branches' relevance): ours
    refuses; MobileNet's Hardswish has no rule (Captum raises a TypeError)."""
    with pytest.raises(ReportgenError, match="lrp: the model joins two branches by `AddBackward0`.*ResNet"):
        compute_lrp(model("resnet18"), batch(n=1, size=32), [[0]], method="lrp")
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    with pytest.raises(ReportgenError, match=r"lrp: the layer `features.0.2` \(Hardswish\)"):
        compute_lrp(mobilenet, batch(n=1, size=32), [[0]], method="lrp")


VGGLIKE = textwrap.dedent('''
    import torch
    from torch import nn

    def build(num_classes=3, width=6, gelu=False):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU() if gelu else nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 64, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, num_classes),
        )
''')


@pytest.mark.slow
def test_a_build_draws_writes_and_scores_them(project):
    from tests.test_evaluation_stage import BOXES, boxed_project, build

    (project.root / "vgglike.py").write_text(VGGLIKE)
    config = boxed_project(project)
    config["model"]["factory"] = "vgglike:build"
    config["analyses"]["gradients"] = {"methods": list(METHODS)}
    done = build(project, config)
    assert done.exit_code == 0, done.output
    out = project.root / "out"
    with np.load(out / "arrays.npz") as npz:
        for method in METHODS:
            found = [k for k in npz.files if k.startswith(f"gradients/{method}/")]
            assert len(found) == len(BOXES) and all(np.isfinite(npz[k]).all() and np.abs(npz[k]).max() > 0
                                                    for k in found), method
    rows = {r["method"]: r for r in json.loads((out / "report.json").read_text())["evaluation"]["rows"]}
    for method in METHODS:
        for column in ("deletion_auc", "sensitivity", "infidelity"):
            score = rows[method]["scores"][column]
            assert score is not None and np.isfinite(score["mean"]), (method, column)


def test_the_cli_refuses_a_layer_without_a_rule_before_writing(project):
    (project.root / "vgglike.py").write_text(VGGLIKE)
    config = project.base()
    config["model"]["factory"] = "vgglike:build"
    config["model"]["kwargs"] = {"num_classes": 3, "gelu": True}
    config["model"]["input_size"] = [3, 32, 32]
    config["analyses"] = {"gradients": {"methods": ["saliency", "lrp_epsilon_gamma_box"]}}
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 2, done.output
    assert "lrp_epsilon_gamma_box: the layer `2` (GELU)" in done.output and "EpsilonGammaBox" in done.output
    assert not (project.root / "out").exists()


@pytest.mark.parametrize("method", METHODS)
def test_torchscript_is_refused_at_validation(project, method):
    (project.root / "vgglike.py").write_text(VGGLIKE)
    namespace: dict = {}
    exec(VGGLIKE, namespace)
    torch.jit.save(torch.jit.script(namespace["build"]().eval()), project.root / "tiny.ts")
    config = project.base()
    config["model"] = {"source": "torchscript", "path": "tiny.ts", "input_size": [3, 32, 32], "labels": None,
                       "device": "cpu"}
    config["analyses"] = {"gradients": {"methods": [method]}}
    refused = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert refused.exit_code == 2 and f"{method} needs hooks" in refused.stderr


def test_the_cli_refuses_captum_lrp_on_a_residual_model_at_validation(project):
    (project.root / "residual.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 3, 3, padding=1)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(3, 3)

            def forward(self, x):
                return self.fc(self.pool(x + self.conv(x)).flatten(1))

        def build(num_classes=3):
            torch.manual_seed(0)
            return Net()
    '''))
    config = project.base()
    config["model"]["factory"] = "residual:build"
    config["analyses"] = {"gradients": {"methods": ["lrp"]}}
    refused = CliRunner().invoke(main, ["validate", str(project.write(config))])
    assert refused.exit_code == 2 and "lrp: the model joins two branches by `AddBackward0`" in refused.stderr
