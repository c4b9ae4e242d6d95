"""The `kernels` stage: weights, layer selection, activation maximisation, figures and template."""
from __future__ import annotations

import io
import json

import numpy as np
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from reportgen.config import parse_config
from reportgen.config import (AnalysesConfig, Config, InputsConfig, KernelsConfig, LayerPattern, Normalize,
                              OptimizeConfig, Preprocess)
from reportgen.errors import ReportgenError
from reportgen.figures import kernels as kernel_figures
from reportgen.figures.grid import grid_cols, grid_size
from reportgen.hooks import count_hooks
from tests.helpers import make_context
from reportgen.stages import kernels
from tests.conftest import render_section


class Net(nn.Module):
    """`head` is registered before `stem` but called after it: the default layer must follow the forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(8, 12, 3, padding=1)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU())
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 4)
        self.forwards = 0  # counts forward calls without registering hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        x = self.act(self.head(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def make_ctx(kcfg: KernelsConfig, seed: int = 0, n: int = 2, size: int = 24):
    torch.manual_seed(seed)
    model = Net()
    batch = torch.randn(n, 3, size, size)
    config = Config(analyses=AnalysesConfig(kernels=kcfg), seed=seed,
                    inputs=InputsConfig(preprocess=Preprocess(normalize=Normalize((0.5,) * 3, (0.25,) * 3))))
    return make_context(model, batch, config=config)


def test_kernels_array_equals_module_weight_and_default_is_first_called_conv():
    ctx = make_ctx(KernelsConfig())
    result = kernels.run(ctx, KernelsConfig())
    assert [layer.name for layer in result.layers] == ["stem.0"]  # not `head`, registered first
    out = kernels.arrays(result)
    assert list(out) == ["kernels/stem.0"]
    expected = ctx.model.stem[0].weight.detach().numpy()
    assert out["kernels/stem.0"].dtype == np.float32
    np.testing.assert_array_equal(out["kernels/stem.0"], expected)
    norms = np.sqrt((expected.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(result.layers[0].norms, norms, rtol=1e-6)
    assert count_hooks(ctx.model) == 0
    json.dumps(kernels.to_json(result))


def test_pattern_selects_by_type_and_depth_in_forward_order():
    cfg = KernelsConfig(layers=(LayerPattern(type="Conv2d"),))
    ctx = make_ctx(cfg)
    assert kernels.kernel_layers(ctx.info, cfg) == ["stem.0", "head"]
    cfg = KernelsConfig(layers=(LayerPattern(type="Conv2d", depth=1), "stem.0", LayerPattern(type="Conv2d")))
    assert kernels.kernel_layers(ctx.info, cfg) == ["head", "stem.0"]  # no duplicates, order given
    result = kernels.run(ctx, cfg)
    out = kernels.arrays(result)
    np.testing.assert_array_equal(out["kernels/head"], ctx.model.head.weight.detach().numpy())


@pytest.mark.parametrize("spec, message", [
    ("stemm.0", "Did you mean `stem.0`?"),
    ("stem", "is a Sequential, not a Conv2d"),
    ("fc", "is a Linear, not a Conv2d"),
    (LayerPattern(type="Conv3d"), "Types in the model: AdaptiveAvgPool2d, Conv2d, Linear, ReLU, Sequential"),
    (LayerPattern(type="Linear", depth=2), "Types at depth 2: Conv2d, ReLU"),
])
def test_bad_layers_are_clear_errors(spec, message):
    cfg = KernelsConfig(layers=(spec,))
    ctx = make_ctx(cfg)
    with pytest.raises(ReportgenError, match="analyses.kernels.layers") as err:
        kernels.check(ctx.info, cfg)
    assert message in str(err.value)


def test_non_conv_error_lists_the_convs_inside():
    cfg = KernelsConfig(layers=("stem",))
    with pytest.raises(ReportgenError, match=r"Conv layers inside it: stem\.0"):
        kernels.check(make_ctx(cfg).info, cfg)


def test_optimize_settings_are_checked_before_running():
    ctx = make_ctx(KernelsConfig())
    with pytest.raises(ReportgenError, match="filter 12 does not exist in `head`, which has 12 channels"):
        kernels.check(ctx.info, KernelsConfig(optimize=OptimizeConfig(layers=("head",), filters=(0, 12))))
    with pytest.raises(ReportgenError, match="outputs shape \\(1, 4\\), not an \\(N, C, H, W\\) feature map"):
        kernels.check(ctx.info, KernelsConfig(optimize=OptimizeConfig(layers=("fc",))))
    with pytest.raises(ReportgenError, match=r"`analyses.kernels.optimize.jitter` \(c.yaml, line 3\): must be at least 0"):
        parse_config("model: {name: r}\nanalyses:\n  kernels: {optimize: {jitter: -1}}\n", base_dir=Path("."),
                     origin="c.yaml")  # ranges are the schema's: checked when the config is read
    # the default filter list (0..15) is clipped to the 8 channels of stem.0, with a note
    filters, note = kernels.filters_for(ctx.info, "stem.0", OptimizeConfig())
    assert filters == list(range(8)) and "8 channels" in note


def test_activation_maximisation_raises_the_target_filters_activation():
    torch.manual_seed(1)
    model = Net().eval()
    filters = [0, 3, 5, 7]
    vis = kernels.maximize_activation(model, "stem", filters, size=(24, 24), steps=24, lr=0.1, blur=0.5,
                                      blur_every=4, jitter=2, normalize=Normalize((0.5,) * 3, (0.25,) * 3), seed=3)
    # oracle: the images' activations measured independently, from the returned pixels
    x = (torch.from_numpy(vis.images).permute(0, 3, 1, 2) - 0.5) / 0.25
    with torch.no_grad():
        act = model.stem(x)  # (F, 8, 24, 24)
    measured = act[torch.arange(len(filters)), torch.tensor(filters)].mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(vis.end, measured, rtol=1e-4, atol=1e-6)
    assert (vis.start > 0).all()
    assert (vis.end / vis.start).min() > 10.0  # well above the random start, for every filter (seen: 16 to 62)
    assert vis.images.shape == (4, 24, 24, 3) and vis.images.min() >= 0 and vis.images.max() <= 1
    assert count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_activation_maximisation_stops_each_forward_at_the_target_layer():
    """The layers after the target cannot change its activation: they are not run at all."""
    torch.manual_seed(1)
    model = Net().eval()
    model.head.forward = lambda x, real=model.head.forward: (setattr(model, "heads", model.heads + 1), real(x))[1]
    model.heads = 0
    kernels.maximize_activation(model, "stem", [0, 1], size=(16, 16), steps=5, seed=0)
    assert model.forwards == 5 + 2 and model.heads == 0 and count_hooks(model) == 0
    kernels.maximize_activation(model, "head", [0, 1], size=(16, 16), steps=5, seed=0)
    assert model.heads == 5 + 2


def test_activation_maximisation_runs_on_one_thread_and_restores_the_count():
    """Many tiny parallel ops: one intra-op thread keeps it steady on shared cores (see `_one_thread`)."""
    torch.manual_seed(1)
    model = Net().eval()
    seen = []
    handle = model.stem.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernels.maximize_activation(model, "stem", [0, 1], size=(16, 16), steps=3, seed=0)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(before)


def test_activation_maximisation_is_one_batch_for_all_filters_and_seeded():
    torch.manual_seed(2)
    model = Net().eval()
    settings = dict(size=(16, 16), steps=6, lr=0.05, jitter=1, seed=7)
    model.forwards = 0
    many = kernels.maximize_activation(model, "head", list(range(8)), **settings)
    assert model.forwards == settings["steps"] + 2  # start, steps, end: whatever the number of filters
    again = kernels.maximize_activation(model, "head", list(range(8)), **settings)
    np.testing.assert_array_equal(many.images, again.images)
    # the batch is a set of independent runs: filter 0 alone gives (almost) the same image
    alone = kernels.maximize_activation(model, "head", [0], **settings)
    np.testing.assert_allclose(alone.images[0], many.images[0], atol=1e-4)


def test_stage_runs_optimize_with_the_configured_normalisation():
    cfg = KernelsConfig(layers=("stem.0", "head"), optimize=OptimizeConfig(layers=("stem",), filters=(1, 2),
                                                                            steps=3))
    ctx = make_ctx(cfg)
    result = kernels.run(ctx, cfg)
    assert [v.layer for v in result.optimized] == ["stem"]
    vis = result.optimized[0]
    assert vis.filters == (1, 2) and vis.images.shape == (2, 24, 24, 3) and vis.seed == ctx.config.seed
    assert count_hooks(ctx.model) == 0
    assert list(kernels.arrays(result)) == ["kernels/stem.0", "kernels/head"]


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _tile_count(pixels: np.ndarray, width: int) -> int:
    """Tiles in a grid picture: cells between the white padding lines that hold any non-white pixel."""
    region = pixels[:, :width]
    ink = (region != 255).any(axis=2)
    rows = _runs(ink.any(axis=1))
    cols = _runs(ink.any(axis=0))
    return sum(bool(ink[r0:r1, c0:c1].any()) for r0, r1 in rows for c0, c1 in cols)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_kernel_figures_have_one_tile_per_filter():
    cfg = KernelsConfig(layers=("stem.0", "head"), max_filters=10, max_channels=3,
                        optimize=OptimizeConfig(layers=("head",), filters=(0, 1, 2), steps=2))
    ctx = make_ctx(cfg)
    section = kernel_figures.plot(kernels.run(ctx, cfg), ctx)
    rgb, deep = section["layers"]
    # stem.0: 8 filters of (3, 5, 5) -> 8 RGB tiles, 5 px upscaled by ceil(42 / 5) = 9
    pixels = _decode(rgb["grid"].png)
    cols = grid_cols(8)
    gh, gw = grid_size(8, (45, 45), cols, pad=2)
    assert pixels.shape[0] == gh and pixels.shape[1] > gw  # the colour bar sits to the right
    assert _tile_count(pixels, gw) == 8
    assert (rgb["grid"].width, rgb["grid"].height) == (pixels.shape[1], pixels.shape[0])
    assert "all 8 filters" in rgb["caption"]
    # head: 12 filters x 8 channels, capped at 10 filters x 3 channels
    assert "10 of 12 filters" in deep["caption"] and "input channels 0 to 2 of 8" in deep["caption"]
    # ... drawn as 10 strips of a label cell and 3 channel tiles (3x3 upscaled by 8), padded 1 px, 6 px apart
    strip = grid_size(4, (24, 24), 4, pad=1)
    cols = grid_cols(10, aspect=2.0 * strip[0] / strip[1])
    gh, gw = grid_size(10, strip, cols, pad=6)
    pixels = _decode(deep["grid"].png)
    assert pixels.shape[0] == gh and _tile_count(pixels, gw) == 10 * 4
    vis = _decode(section["optimized"][0]["grid"].png)
    assert _tile_count(vis, vis.shape[1]) == 3
    Image.open(io.BytesIO(rgb["stats"].png)).verify()
    # reproducible bytes: the same figures twice
    again = kernel_figures.plot(kernels.run(ctx, cfg), ctx)
    assert again["layers"][0]["stats"].png == rgb["stats"].png
    assert again["layers"][1]["grid"].png == deep["grid"].png


def test_template_renders_and_escapes():
    cfg = KernelsConfig(optimize=OptimizeConfig(filters=(0, 1), steps=2))
    ctx = make_ctx(cfg)
    section = kernel_figures.plot(kernels.run(ctx, cfg), ctx)
    section["warnings"] = ["<script>alert(1)</script>"]
    html = render_section("kernels", section)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<figure") == 3  # kernel grid, weight statistics, filter visualisation
    assert "<code>stem.0</code>" in html and 'style="' not in html
