"""reportgen.metrics.robustness against Captum 0.9.0's infidelity / sensitivity_max (same noise draws)."""
import numpy as np
import pytest
import torch
from torch import nn

from reportgen.metrics import robustness

from captum import metrics as captum_metrics

TOL = 1e-5  # relative; measured difference on this case: 0 (bit-identical float32)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def saliency(model: nn.Module):
    def explain(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(model(x).gather(1, targets.view(-1, 1)).sum(), x)
        return grad.abs()
    return explain


@pytest.fixture
def case():
    model = tiny_model()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2, 1])
    return model, x, targets


def test_infidelity_equals_captum(case):
    model, x, targets = case
    attr = saliency(model)(x, targets)
    ours = robustness.infidelity(model, x, attr, targets, sd=0.1, n_samples=10,
                                 generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    theirs = captum_metrics.infidelity(model, lambda rows: robustness.gaussian_perturbation(rows, 0.1, gen), x,
                                       attr, target=targets, n_perturb_samples=10, normalize=True)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=TOL)
    assert (ours > 0).all()


def test_infidelity_of_a_2d_map_is_the_map_on_every_channel(case):
    model, x, targets = case
    attr = saliency(model)(x, targets).sum(1)  # (N, H, W)
    ours = robustness.infidelity(model, x, attr, targets, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    theirs = captum_metrics.infidelity(model, lambda rows: robustness.gaussian_perturbation(rows, 0.1, gen), x,
                                       attr.unsqueeze(1).expand_as(x), target=targets, normalize=True)
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=TOL)


def test_infidelity_ignores_the_maps_scale_and_sees_a_wrong_map(case):
    model, x, targets = case
    attr = saliency(model)(x, targets)

    def score(a):
        return robustness.infidelity(model, x, a, targets, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(score(attr), score(attr * 7.0), rtol=1e-5)
    # the true gradient (signed) of this piecewise linear model beats a random map
    with torch.enable_grad():
        xg = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(xg).gather(1, targets.view(-1, 1)).sum(), xg)
    assert (score(grad) < score(torch.randn_like(grad))).all()


def test_sensitivity_max_equals_captum_default(case):
    model, x, targets = case
    explain = saliency(model)
    ours = robustness.sensitivity_max(explain, x, targets, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)  # Captum's default perturbation draws from the global generator
    # Captum passes the inputs as a tuple and expects a tuple back (it iterates the original's explanation)
    theirs = captum_metrics.sensitivity_max(lambda inputs, target: (explain(inputs[0], target),), (x,), target=targets)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=TOL)
    assert (ours > 0).all()


def test_sensitivity_max_of_a_constant_explanation_is_zero(case):
    model, x, targets = case
    zero = robustness.sensitivity_max(lambda rows, t: torch.zeros_like(rows), x, targets)
    np.testing.assert_array_equal(zero, 0.0)


def test_inputs_are_not_modified(case):
    model, x, targets = case
    before = x.clone()
    robustness.infidelity(model, x, x, targets)
    robustness.sensitivity_max(saliency(model), x, targets)
    assert torch.equal(x, before)
