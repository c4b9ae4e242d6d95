"""The plug-in's model source (a small CNN whose width is an option of its own) and stage (pixel statistics)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reportgen.config.rules import setting
from reportgen.models.adapter import ModelAdapter, Source
from reportgen.stages import Stage

HERE = Path(__file__).resolve().parent


# ---- a model source: a small CNN, its width an option of its own


@dataclass(frozen=True)
class TinyOptions:
    width: int = setting(4, ge=1, le=64)  # channels of its convolutions
    classes: int = setting(3, ge=2)  # its outputs


def build(width: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def load_tiny(cfg, base_dir: Path | None = None) -> ModelAdapter:
    options = cfg.options
    return ModelAdapter(model=build(options.width, options.classes), source="tinyplug",
                        description=f"the plug-in's tiny CNN, width {options.width}")


SOURCE = Source(name="tinyplug", options=TinyOptions, load=load_tiny, note="a plug-in's model source")


# ---- a stage: each detail image's mean and standard deviation per channel, as the model sees it


@dataclass(frozen=True)
class PixelStatsConfig:
    digits: int = setting(3, ge=1, le=8)  # decimals shown


@dataclass(frozen=True)
class PixelStatsResult:
    config: PixelStatsConfig
    images: tuple[str, ...]
    mean: np.ndarray  # (N, C) float32
    std: np.ndarray  # (N, C) float32


def run(ctx, cfg: PixelStatsConfig) -> PixelStatsResult:
    x = ctx.batch.detach().float().cpu()
    return PixelStatsResult(config=cfg, images=tuple(im.name for im in ctx.images),
                            mean=x.mean(dim=(2, 3)).numpy(), std=x.std(dim=(2, 3)).numpy())


def arrays(result: PixelStatsResult) -> dict[str, np.ndarray]:
    return {f"pixel_stats/{name}/mean": result.mean[i] for i, name in enumerate(result.images)}


SPEC = Stage(name="pixel_stats", title="Pixel statistics", options=PixelStatsConfig, run=run, arrays=arrays,
             to_json=lambda r: {"mean": r.mean.tolist(), "std": r.std.tolist()},
             figures="reportgen_demo_plugin.figures", template=str(HERE / "pixel_stats.html.jinja2"))
