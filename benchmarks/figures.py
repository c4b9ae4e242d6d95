"""How much faster is a numpy/Pillow image grid than one matplotlib axes per tile?

    python benchmarks/figures.py [--repeat 5] [--channels 64] [--side 56]

Both ways turn the same (64, 56, 56) float32 feature maps (one image, one layer) into an 8 x 8 grid
of per-channel min-max scaled viridis tiles and encode it as PNG bytes:

- numpy/Pillow: `reportgen.figures.grid` (scale, colour look-up, one array copy, one PNG encode);
- matplotlib: the object API (`Figure`, `FigureCanvasAgg`), one `imshow` axes per tile, `savefig` PNG,
  at a size giving about the same pixels.

Prints the median time of each over `--repeat` runs and the ratio (the baseline is measured in the
same run, on the same machine).
"""
from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reportgen.figures.common import apply_colormap, to_png  # noqa: E402
from reportgen.figures.grid import compose_grid, grid_cols, scale_tiles, to_uint8  # noqa: E402


def grid_numpy(maps: np.ndarray) -> bytes:
    values, _, _ = scale_tiles(maps, "channel")  # (C, h, w) in [0, 1]
    tiles = apply_colormap(to_uint8(values).astype(np.float32) / 255.0, "viridis")  # (C, h, w, 3)
    return to_png(compose_grid(tiles, grid_cols(len(maps)), pad=2))


def grid_matplotlib(maps: np.ndarray) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, h, w = maps.shape
    cols = grid_cols(n)
    rows = math.ceil(n / cols)
    dpi = 100
    fig = Figure(figsize=(cols * (w + 2) / dpi, rows * (h + 2) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(maps[i], cmap="viridis", interpolation="nearest")  # imshow min-max scales each tile
        ax.set_axis_off()
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0.02, hspace=0.02)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def timed(fn, maps: np.ndarray, repeat: int) -> tuple[float, bytes]:
    fn(maps)  # warm-up: imports, font cache, colour look-up tables
    times, png = [], b""
    for _ in range(repeat):
        start = time.perf_counter()
        png = fn(maps)
        times.append(time.perf_counter() - start)
    return statistics.median(times), png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each way (median reported)")
    parser.add_argument("--channels", type=int, default=64, help="tiles in the grid")
    parser.add_argument("--side", type=int, default=56, help="feature map side in pixels (ResNet layer1: 56)")
    args = parser.parse_args(argv)
    maps = np.random.default_rng(0).normal(size=(args.channels, args.side, args.side)).astype(np.float32)
    fast, fast_png = timed(grid_numpy, maps, args.repeat)
    slow, slow_png = timed(grid_matplotlib, maps, args.repeat)
    print(f"{args.channels}-channel grid of {args.side}x{args.side} maps, median of {args.repeat} runs")
    print(f"numpy/Pillow:          {fast * 1000:8.1f} ms  ({len(fast_png) / 1024:.0f} KiB PNG)")
    print(f"matplotlib, axes/tile: {slow * 1000:8.1f} ms  ({len(slow_png) / 1024:.0f} KiB PNG)")
    print(f"ratio (matplotlib / numpy): {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
