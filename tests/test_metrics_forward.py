"""reportgen.metrics.forward: the fast forward equals the eager model, falls back where it cannot be made,
and never changes the caller's model."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from reportgen.metrics import forward as F


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that folding them is tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def snapshot(model: torch.nn.Module) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "layouts": {k: v.is_contiguous() for k, v in model.state_dict().items()},
            "modules": [type(m) for m in model.modules()], "training": [m.training for m in model.modules()],
            "hooks": [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["layouts"] == before["layouts"] and after["modules"] == before["modules"]
    assert after["training"] == before["training"] and after["hooks"] == before["hooks"]
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())


def test_fast_forward_equals_eager_resnet18():
    model = resnet18()
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        forward = F.inference_forward(model, x[:1])
    copy = F.fast_copy(model, x[:1])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())  # folded
    assert sum(isinstance(m, F._Winograd43) for m in copy.modules()) == 9  # the 3x3 stride-1 convs of layer2-4
    with torch.inference_mode():
        got, expected = forward(x), model(x)
    assert got.shape == expected.shape and not got.requires_grad
    assert float((got - expected).abs().max()) <= 1e-4
    assert float((got.softmax(1) - expected.softmax(1)).abs().max()) <= 1e-5
    assert_unchanged(model, before)


@pytest.mark.parametrize("shape", [(128, 128, 8, 8), (128, 130, 5, 7), (129, 128, 13, 14), (128, 256, 1, 1)])
def test_winograd_equals_the_convolution(shape):
    """F(4x4, 3x3) on sizes that are and are not multiples of its 4x4 tile, any channel counts, with a bias."""
    c_in, c_out, h, w = shape
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).eval()
    x = torch.randn(3, c_in, h, w)
    with torch.inference_mode():
        got, expected = F._Winograd43(conv)(x.contiguous(memory_format=torch.channels_last)), conv(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 2e-5 * float(expected.abs().max())
    assert float((got - expected).abs().max()) > 0  # it is not the convolution itself


def test_a_batch_runs_in_chunks_with_the_same_logits(monkeypatch):
    model = resnet18()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert F._chunk(model, x[:1]) >= 5
    whole = F.inference_forward(model, x[:1])
    monkeypatch.setattr(F, "CHUNK_BYTES", 1)  # one image a chunk
    assert F._chunk(model, x[:1]) == 1
    chunked = F.inference_forward(model, x[:1])
    calls, forward = [], F._ChannelsLastInput.forward
    monkeypatch.setattr(F._ChannelsLastInput, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    got = chunked(x)
    assert calls == [1] * 5
    torch.testing.assert_close(got, whole(x), rtol=1e-5, atol=1e-5)


def test_an_output_that_is_not_the_logits_runs_in_chunks_too(monkeypatch):
    monkeypatch.setattr(F, "CHUNK_BYTES", 1)
    torch.manual_seed(0)
    model = _DictOutput().eval()
    x = torch.randn(3, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast copy is made (no fallback warning)
        forward = F.inference_forward(model, x[:1], logits=lambda out: out["logits"])
    torch.testing.assert_close(forward(x), model(x)["logits"], rtol=1e-5, atol=1e-5)


def test_eager_when_asked():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32)
    forward = F.inference_forward(model, x[:1], fast=False)
    with torch.inference_mode():
        assert torch.equal(forward(x), model(x))


class Branchy(torch.nn.Module):
    """Control flow on the input's values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = -y
        return self.head(y.mean((2, 3)))


def test_falls_back_on_a_model_it_cannot_trace():
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(3, 3, 16, 16)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="eager model is used"):
        forward = F.inference_forward(model, x[:1])
    with torch.inference_mode():
        assert torch.equal(forward(x), model(x))
    assert_unchanged(model, before)


def test_the_eager_fallback_runs_in_chunks_unless_that_could_change_the_logits(monkeypatch):
    monkeypatch.setattr(F, "CHUNK_BYTES", 1)  # one image a chunk
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(3, 3, 16, 16)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    with pytest.warns(UserWarning, match="hooks"):
        F.inference_forward(model, x[:1])(x)
    assert calls[-1] == 3  # hooks: whole batches (the hook sees what it would see without us)
    model._forward_pre_hooks.clear()
    with pytest.warns(UserWarning, match="eager model is used"):
        forward = F.inference_forward(model, x[:1])
    with torch.inference_mode():
        assert torch.equal(forward(x), torch.cat([model(x[i:i + 1]) for i in range(3)]))  # one image at a time
    model.train()
    assert F._chunk(model, x[:1]) is None  # batch statistics depend on the batch


def test_falls_back_when_the_model_has_hooks_or_trains():
    model = resnet18()
    handle = model.layer1.register_forward_hook(lambda module, inputs, output: output * 2)
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="hooks"):
        forward = F.inference_forward(model, x[:1])
    with torch.inference_mode():
        assert torch.equal(forward(x), model(x))  # the hook still applies
    assert_unchanged(model, before)
    handle.remove()
    model.train()
    with pytest.warns(UserWarning, match="training"):
        F.inference_forward(model, x[:1])
    assert model.training


def test_falls_back_above_the_tolerance():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="differ"):
        forward = F.inference_forward(model, x[:1], tolerance=1e-12)
    with torch.inference_mode():
        assert torch.equal(forward(x), model(x))


class _DictOutput(torch.nn.Module):
    """A classifier that returns {"logits": ...}, as Hugging Face models return an output object."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                        torch.nn.Linear(4, 3))

    def forward(self, x):
        return {"logits": self.body(x)}


def test_the_logits_are_picked_from_an_output_that_is_not_them():
    torch.manual_seed(0)
    model = _DictOutput().eval()
    x = torch.randn(3, 3, 16, 16)
    expected = model(x)["logits"]
    for fast in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fast copy is made (no fallback warning)
            forward = F.inference_forward(model, x[:1], fast=fast, logits=lambda out: out["logits"])
        torch.testing.assert_close(forward(x), expected, rtol=1e-5, atol=1e-5)
