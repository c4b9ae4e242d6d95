"""The `feature_maps` stage: captured maps against independent hooks, hook hygiene, layer choice, figures."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from reportgen.config import AnalysesConfig, Config, FeatureMapsConfig, InputsConfig, LayerPattern
from reportgen.errors import ReportgenError
from reportgen.figures import feature_maps as fm_figures
from reportgen.figures.grid import compose_grid, grid_cols, grid_size
from reportgen.hooks import count_hooks
from tests.helpers import make_context
from reportgen.stages import feature_maps
from tests.conftest import render_section


class Boom(nn.Module):
    """Raises during the forward pass when armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(10, 12, 3, padding=1), nn.ReLU(), Boom()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 3)
        self.forwards = 0  # counts forward calls without registering hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.fc(self.pool(self.features(x)).flatten(1))


def make_ctx(cfg: FeatureMapsConfig, n: int = 3, batch_size: int = 8, size: int = 16):
    torch.manual_seed(0)
    config = Config(analyses=AnalysesConfig(feature_maps=cfg), inputs=InputsConfig(batch_size=batch_size))
    return make_context(Net(), torch.randn(n, 3, size, size), config=config)


def independent_outputs(model: nn.Module, batch: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """The oracle: plain forward hooks registered here, one image at a time."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for image in batch:
        handles = [model.get_submodule(name).register_forward_hook(
            lambda _m, _i, o, name=name: out[name].append(o.detach().numpy().copy())) for name in names]
        try:
            with torch.no_grad():
                model(image[None])
        finally:
            for h in handles:
                h.remove()
    return {name: np.concatenate(v) for name, v in out.items()}


def test_arrays_equal_independent_hooks_from_one_forward_per_chunk():
    cfg = FeatureMapsConfig(layers=("features.0", "features.1.0", LayerPattern(type="ReLU", depth=3)))
    ctx = make_ctx(cfg, n=5, batch_size=2)
    ctx.model.forwards = 0
    result = feature_maps.run(ctx, cfg)
    assert ctx.model.forwards == 3  # 5 images in chunks of 2: all layers captured in the same passes
    names = [layer.name for layer in result.layers]
    assert names == ["features.0", "features.1.0", "features.0.1", "features.1.1", "features.2.1"]
    oracle = independent_outputs(ctx.model, ctx.batch, names)
    out = feature_maps.arrays(result)
    assert len(out) == 5 * 5
    for name in names:
        for i, image in enumerate(ctx.images):
            got = out[f"feature_maps/{name}/{image.name}"]
            assert got.dtype == np.float32 and got.shape == oracle[name][i].shape
            np.testing.assert_allclose(got, oracle[name][i], rtol=1e-5, atol=1e-5)  # batches of 2 against 1
    assert count_hooks(ctx.model) == 0
    json.dumps(feature_maps.to_json(result))


class InplaceNet(nn.Module):
    """conv -> BN -> ReLU(inplace=True): the ReLU overwrites the BN's output tensor after the BN returns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


def cloned_outputs(model: nn.Module, batch: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """The oracle for in-place models: each output cloned inside an independent hook, as the layer returns it."""
    out: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, o, name=name: out.__setitem__(name, o.detach().clone())) for name in names]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return {name: v.numpy() for name, v in out.items()}


def test_maps_are_copied_before_a_later_inplace_op_changes_them():
    torch.manual_seed(0)
    cfg = FeatureMapsConfig(layers=("bn", "relu"))
    config = Config(analyses=AnalysesConfig(feature_maps=cfg), inputs=InputsConfig(batch_size=2))
    ctx = make_context(InplaceNet().eval(), torch.randn(3, 3, 12, 12), config=config)
    result = feature_maps.run(ctx, cfg)
    bn, relu = result.layers
    oracle = cloned_outputs(ctx.model, ctx.batch, ["bn", "relu"])
    np.testing.assert_allclose(bn.maps, oracle["bn"], rtol=1e-5, atol=1e-5)  # batches of 2 against one of 3
    np.testing.assert_allclose(relu.maps, oracle["relu"], rtol=1e-5, atol=1e-5)
    assert bn.maps.min() < 0 and relu.maps.min() == 0  # the BN's own output, not the ReLU's
    for i in range(3):  # the statistics are the BN's too: almost no exact zeros before the ReLU
        assert bn.zeros[i] == pytest.approx(float((oracle["bn"][i] == 0).mean()))
        near = float((np.abs(oracle["bn"][i]) <= 1e-5).mean())  # what another batching may put either side of 0
        assert relu.zeros[i] == pytest.approx(float((oracle["relu"][i] == 0).mean()), abs=near + 1e-12)
        assert relu.zeros[i] > 0.2
    assert count_hooks(ctx.model) == 0


def test_resnet_bn_outputs_keep_their_negative_values():
    """ResNet-18 `bn1` (then ReLU(inplace=True)) and `layer1.0.bn2` (then `out += identity` and the ReLU)."""
    torch.manual_seed(0)
    names = ["bn1", "layer1.0.bn2", "layer1.0"]
    cfg = FeatureMapsConfig(layers=tuple(names))
    config = Config(analyses=AnalysesConfig(feature_maps=cfg))
    ctx = make_context(torchvision.models.resnet18().eval(), torch.randn(2, 3, 32, 32), config=config)
    result = feature_maps.run(ctx, cfg)
    oracle = cloned_outputs(ctx.model, ctx.batch, names)
    for layer in result.layers:
        np.testing.assert_allclose(layer.maps, oracle[layer.name], rtol=1e-5, atol=1e-5)
    by_name = {layer.name: layer for layer in result.layers}
    assert by_name["bn1"].maps.min() < 0 and by_name["layer1.0.bn2"].maps.min() < 0
    assert by_name["layer1.0"].maps.min() == 0


def test_hooks_are_removed_when_a_layer_raises():
    cfg = FeatureMapsConfig(layers=("features.0", "features.2"))
    ctx = make_ctx(cfg)
    ctx.model.features[2][2].armed = True
    with pytest.raises(RuntimeError, match="boom"):
        feature_maps.run(ctx, cfg)
    assert count_hooks(ctx.model) == 0


def test_statistics_match_numpy():
    cfg = FeatureMapsConfig(layers=("features.1.1",), max_channels=4, order="mean")
    ctx = make_ctx(cfg)
    ctx.model.features[1][0].bias.data[[2, 7]] = -100.0  # two dead ReLU channels
    result = feature_maps.run(ctx, cfg)
    (layer,) = result.layers
    maps = layer.maps  # (N, 10, 16, 16)
    for i in range(maps.shape[0]):
        assert layer.zeros[i] == pytest.approx(float((maps[i] == 0).mean()))
        assert layer.mean[i] == pytest.approx(float(maps[i].mean()), rel=1e-5)
        assert layer.std[i] == pytest.approx(float(maps[i].std()), rel=1e-4)
        assert layer.dead_channels[i] >= 2
        means = maps[i].mean(axis=(1, 2))
        assert list(layer.top[i]) == list(np.argsort(-means, kind="stable")[:3])
    assert len(layer.channels) == 4 and not {2, 7} & set(layer.channels)


@pytest.mark.parametrize("order", ["index", "mean", "max"])
def test_channel_order(order):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 9, 4, 5)).astype(np.float32)
    pick = lambda m, k: feature_maps.choose_channels(feature_maps.channel_score(m, order), k, order)  # noqa: E731
    chosen = pick(maps, 4)
    if order == "index":
        assert chosen == (0, 1, 2, 3)
    else:
        reduce = np.mean if order == "mean" else np.max
        score = np.array([np.mean([reduce(maps[n, c]) for n in range(3)]) for c in range(9)])
        assert chosen == tuple(np.argsort(-score)[:4])
        assert list(score[list(chosen)]) == sorted(score[list(chosen)], reverse=True)
    assert len(pick(maps, 50)) == 9
    # over batches: the scores add up, so any split chooses what all images at once choose
    assert pick(maps, 4) == feature_maps.choose_channels(
        feature_maps.channel_score(maps[:1], order) + feature_maps.channel_score(maps[1:], order), 4, order)


def test_default_layers_are_the_top_level_blocks():
    ctx = make_ctx(FeatureMapsConfig())
    assert feature_maps.default_layers(ctx.info) == ["features.0", "features.1", "features.2"]

    class Flat(nn.Module):  # a VGG-like `features` of leaves: the last layer before each size change
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c = 3
            for _ in range(4):
                layers += [nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                           nn.MaxPool2d(2)]
                c = 4
            self.features = nn.Sequential(*layers)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))

        def forward(self, x):
            return self.head(self.features(x))

    resnet = make_context(torchvision.models.resnet18(num_classes=4), torch.randn(1, 3, 64, 64))
    assert feature_maps.default_layers(resnet.info) == ["layer1", "layer2", "layer3", "layer4"]  # not the stem
    flat = make_context(Flat(), torch.randn(1, 3, 16, 16))
    # sizes 16 (0-3), 8 (4-8), 4 (9-13), 2 (14-18), 1 (19: not spatial)
    assert feature_maps.default_layers(flat.info) == ["features.3", "features.8", "features.13", "features.18"]


def test_non_feature_map_layers_fail_by_name_are_skipped_by_pattern_and_unknown_names_fail():
    cfg = FeatureMapsConfig(layers=("features.2", "pool"))
    ctx = make_ctx(cfg)
    result = feature_maps.run(ctx, cfg)
    assert [layer.name for layer in result.layers] == ["features.2", "pool"]  # a 1x1 map is still a map
    # named explicitly: the same clear error CAM gives, at validation
    with pytest.raises(ReportgenError, match=r"layer `fc` \(Linear\) produces shape \(N, 3\), not a \(C, H, W\) "
                                             r"feature map\. Choose layers with an \(N, C, H, W\) output"):
        feature_maps.check(ctx.info, FeatureMapsConfig(layers=("fc", "features.2")))
    # matched by a pattern: skipped with a note
    by_type = FeatureMapsConfig(layers=(LayerPattern(type="Linear"), "features.2"))
    result = feature_maps.run(ctx, by_type)
    assert [layer.name for layer in result.layers] == ["features.2"]
    assert len(result.notes) == 1 and "`fc` (Linear) produces shape (N, 3)" in result.notes[0]
    with pytest.raises(ReportgenError, match="none of the layers matched gives a"):
        feature_maps.check(ctx.info, FeatureMapsConfig(layers=(LayerPattern(type="Linear"),)))
    with pytest.raises(ReportgenError, match=r"layer `featurs.2` does not exist in Net\. Did you mean `features.2`"):
        feature_maps.check(ctx.info, FeatureMapsConfig(layers=("featurs.2",)))
    with pytest.raises(ReportgenError, match="no layer of Net matches {type: Conv3d}"):
        feature_maps.check(ctx.info, FeatureMapsConfig(layers=(LayerPattern(type="Conv3d"),)))


def _tiles(png: bytes, width: int | None = None) -> int:
    """Tiles in a decoded grid: cells between white padding lines that hold any non-white pixel."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[:, :width]
    ink = (pixels != 255).any(axis=2)
    rows, cols = _runs(ink.any(axis=1)), _runs(ink.any(axis=0))
    return sum(bool(ink[r0:r1, c0:c1].any()) for r0, r1 in rows for c0, c1 in cols)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("scale", ["channel", "shared"])
def test_grids_have_one_tile_per_channel(scale):
    cfg = FeatureMapsConfig(layers=("features.0", "features.2"), max_channels=7, scale=scale, order="max")
    ctx = make_ctx(cfg, n=2)
    section = fm_figures.plot(feature_maps.run(ctx, cfg), ctx)
    assert [im["name"] for im in section["images"]] == ["img0", "img1"]
    for image in section["images"]:
        assert image["input"] is not None
        for grid, (channels, side) in zip(image["grids"], [(6, 16), (7, 8)]):
            fig = grid["figure"]
            pixels = np.asarray(Image.open(io.BytesIO(fig.png)))
            tile = side * -(-fm_figures.TILE_MIN // side)  # nearest upscaling by an integer factor
            gh, gw = grid_size(channels, (tile, tile), grid_cols(channels), fm_figures.PAD)
            assert pixels.shape[0] == gh
            assert pixels.shape[1] == gw if scale == "channel" else pixels.shape[1] > gw  # + colour bar
            assert _tiles(fig.png, gw) == channels
            assert grid["layer"] in fig.alt and image["name"] in fig.alt
    assert [len(layer["rows"]) for layer in section["layers"]] == [2, 2]


def test_template_renders_and_escapes():
    cfg = FeatureMapsConfig(layers=("features.1", LayerPattern(type="Linear")), max_channels=4)
    ctx = make_ctx(cfg, n=2)
    section = fm_figures.plot(feature_maps.run(ctx, cfg), ctx)
    section["images"][0]["name"] = "<img src=x onerror=alert(1)>"
    html = render_section("feature_maps", section)
    assert "<img src=x" not in html and "&lt;img src=x" in html
    assert html.count("<figure") == 2 * 2  # per image: the input and one grid
    assert "produces shape (N, 3)" in html and 'class="warn"' in html and 'style="' not in html


@pytest.mark.parametrize("n, cols, channels", [(7, 3, ()), (8, 4, (3,)), (1, 5, ())])
def test_compose_grid_places_every_tile(n, cols, channels):
    rng = np.random.default_rng(n)
    tiles = rng.integers(0, 255, size=(n, 5, 4) + channels, dtype=np.uint8)  # never the pad value 255
    pad = 2
    grid = compose_grid(tiles, cols, pad=pad)
    cols = min(cols, n)
    assert grid.shape[:2] == grid_size(n, (5, 4), cols, pad)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (5 + pad), pad + c * (4 + pad)
        np.testing.assert_array_equal(grid[y:y + 5, x:x + 4], tiles[i])
    assert (grid == 255).sum() == grid.size - tiles.size  # everything else is padding
