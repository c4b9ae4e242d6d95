"""The local forward (`reportgen.local_forward`): inputs that differ from a reference in a box, run with the model's
first layers on a crop, give the whole forward's logits (within 1e-5 relative, the fast forward's documented
float32 tolerance), for boxes anywhere (inside, corners, edges, one pixel, the whole input, none), chained or not;
models without a local start run whole."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reportgen.metrics.forward import inference_forward
from reportgen.local_forward import Whole, near

TOLERANCE = 1e-5


def _models():
    torch.manual_seed(0)
    return {"resnet18": torchvision.models.resnet18(weights=None, num_classes=10),
            "vgg11_bn": torchvision.models.vgg11_bn(weights=None, num_classes=10),
            "mobilenet_v3_small": torchvision.models.mobilenet_v3_small(weights=None, num_classes=10),
            "densenet121": torchvision.models.densenet121(weights=None, num_classes=10)}


def _randomised(model: nn.Module) -> nn.Module:
    """Batch-norm statistics away from the identity, so that a wrong crop shows in the logits."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) * 0.1 + 0.02)
    return model.eval()


BOXES = [(20, 20, 28, 28), (0, 0, 9, 9), (55, 50, 64, 64), (0, 30, 64, 37), (31, 31, 32, 32), (0, 0, 64, 64),
         (64, 64, 0, 0), (10, 40, 50, 64)]


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "mobilenet_v3_small", "densenet121"])
def test_boxes_anywhere_give_the_whole_forwards_logits(name):
    model = _randomised(_models()[name])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    forward = inference_forward(model, images[:1])
    local = near(forward)
    assert not isinstance(local, Whole)  # each of these models starts with local layers
    x = images[torch.arange(len(BOXES)) % 2].clone()
    for r, (y0, x0, y1, x1) in enumerate(BOXES):
        x[r, :, y0:y1, x0:x1] = 0.25 * r
    expected = forward(x)
    got = local(x, local.features(images), torch.arange(len(BOXES)) % 2, BOXES)
    scale = float(expected.abs().max())
    assert (got - expected).abs().max() <= TOLERANCE * max(1.0, scale)
    changed = (expected - forward(images[torch.arange(len(BOXES)) % 2])).abs().max()
    assert changed > 100 * TOLERANCE * scale  # the boxes do change the logits


def test_the_resnet_cut_at_224_lies_after_its_first_stage_and_chains():
    """At 224² ResNet-18's prefix is the stem and layer1 (field 43 px); rows chained on the row before (Shapley's
    steps) give the whole forward's logits too."""
    model = _randomised(_models()["resnet18"])
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    forward = inference_forward(model, image)
    local = near(forward)
    assert local.parts.geometry.field == (43, 43) and local.parts.geometry.jump == (4, 4)
    boxes = [(100, 100, 130, 120), (0, 200, 30, 224), (180, 0, 224, 40), (60, 60, 61, 61)]
    x = image.repeat(len(boxes), 1, 1, 1)
    for r, (y0, x0, y1, x1) in enumerate(boxes):  # cumulative: each row keeps the boxes before it
        x[r:, :, y0:y1, x0:x1] = -1.0
    expected = forward(x)
    got = local(x, local.features(image), torch.zeros(len(boxes), dtype=torch.long), boxes,
                chain=[False, True, True, True])
    assert (got - expected).abs().max() <= TOLERANCE * max(1.0, float(expected.abs().max()))


class Centred(nn.Module):
    """Subtracts the image's mean first: no position is local, so there is no split."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = x - x.mean(dim=(2, 3), keepdim=True)
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_a_model_without_a_local_start_runs_whole():
    model = Centred().eval()
    x = torch.randn(2, 3, 16, 16)
    forward = inference_forward(model, x[:1])
    local = near(forward)
    assert isinstance(local, Whole)
    assert torch.equal(local(x, local.features(x), torch.arange(2), [(0, 0, 4, 4)] * 2), forward(x))
