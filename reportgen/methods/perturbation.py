"""The gradient family's black-box methods for classifiers: forward only, no gradient and no hook. Each method's
function is named by its record in `reportgen.methods`; it gets a `GradientJob` and returns, per target rank, an
(N, C, H, W) attribution (a map of one value per pixel is repeated over the channels, as Captum's attribution of
a feature mask that spans the channels is).

- `rise` (Petsiuk et al., BMVC 2018): S_c = Σ_i p_c(x ⊙ M_i) M_i / (N · p) over N random masks M_i (RISE's masks,
  `boxes.drise_masks`: a grid of cells kept with probability p, upsampled bilinearly and shifted by a random
  fraction of a cell), p_c the softmax probability of class c, x ⊙ M_i in the model's (normalised) input space
  as the authors' code multiplies it. The same masks (seeded by the config's seed) for every image, so an image's
  map does not depend on the batching.
- `occlusion`: Captum 0.9.0's `Occlusion` with a square window spanning the channels, a stride and baseline 0:
  each pixel's mean of f_c(x) − f_c(x with the window at zero) over the window positions that cover it; the last
  position of each axis may stick out of the image (Captum's ceil((H − window) / stride) + 1 positions). f_c is
  the class's LOGIT, as every other method of this family explains (Captum gets the same numbers when given the
  forward the stage uses, which returns logits).

Forwards of the perturbed inputs go through `GradientJob.inference()`: the build's checked fast no-grad forward
(`metrics.forward.inference_forward`), `batch_size` inputs at a time; one forward serves every target rank. An
occluded input differs from its image in one window only, so the model's first, local layers run on a crop around
it (`local_forward`: the same logits, ~20 % less time on ResNet-18 at 224²).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ReportgenError
from ..local_forward import near
from ..ops import batches
from ..progress import track
from .boxes import drise_masks
from .gradients import GradientJob

Forward = Callable[[torch.Tensor], torch.Tensor]
RISE_GRID = 7  # cells along the longer side when `rise_cell` is null: RISE's 7 × 7 grid (32 px cells at 224²)


def rise(job: GradientJob) -> list[torch.Tensor]:
    o = job.options
    size = tuple(job.batch.shape[-2:])
    return compute_rise(_classifier_forward(job, "RISE"), job.batch, job.class_sets, masks=o.rise_masks,
                        cell=o.rise_cell or rise_cell(size), p=o.rise_p, seed=job.seed, batch_size=job.batch_size)


def occlusion(job: GradientJob) -> list[torch.Tensor]:
    o = job.options
    return compute_occlusion(_classifier_forward(job, "Occlusion"), job.batch, job.class_sets,
                             window=o.occlusion_window, stride=o.occlusion_stride, batch_size=job.batch_size)


def rise_cell(size: tuple[int, int]) -> int:
    """The default cell side: the longer side in `RISE_GRID` cells."""
    return math.ceil(max(size) / RISE_GRID)


def compute_rise(forward: Forward, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *, masks: int, cell: int,
                 p: float, seed: int, batch_size: int) -> list[torch.Tensor]:
    """RISE's saliency (see the module) of class `class_sets[r][i]` of image i: per rank (N, C, H, W). `forward`:
    x -> logits without autograd. Rows are mask-major (row = mask · N + image), so each chunk of `batch_size` rows
    upsamples its few masks once for every image."""
    n, c, h, w = batch.shape
    classes = torch.as_tensor([list(s) for s in class_sets], dtype=torch.long, device=batch.device)  # (R, N)
    saliency = torch.zeros(len(class_sets), n, h, w, device=batch.device)
    chunks = list(batches(masks * n, batch_size))
    for chunk in track(chunks, total=len(chunks), desc="RISE", unit="batch"):
        first = chunk.start // n
        m = drise_masks(masks, (h, w), cell, p, seed, rows=slice(first, (chunk.stop - 1) // n + 1)).to(batch)
        rows = torch.arange(chunk.start, chunk.stop, device=batch.device)
        image, mask = rows % n, rows // n - first
        probs = forward(batch[image] * m[mask, None]).float().softmax(dim=1)  # (B, K)
        for k in range(len(class_sets)):
            weight = probs.gather(1, classes[k, image][:, None])  # (B, 1)
            saliency[k].index_add_(0, image, weight[:, :, None] * m[mask])
    saliency /= masks * p
    return [s[:, None].expand(n, c, h, w).contiguous() for s in saliency]


def window_positions(size: int, window: int, stride: int) -> int:
    """Captum's count of window positions along an axis of `size`: ceil((size − window) / stride) + 1."""
    return math.ceil((size - window) / stride) + 1


def check_window(window: int, stride: int, size: tuple[int, int]) -> None:
    """A ReportgenError unless a `window` fits `size` (H, W) and 1 ≤ `stride` ≤ `window` (Captum's assertions)."""
    if stride < 1:
        raise ReportgenError(f"occlusion: the stride must be at least 1 px, not {stride}.")
    if window < 1 or window > min(size):
        raise ReportgenError(f"occlusion: a window of {window} px does not fit the input ({size[0]} × {size[1]} px).")
    if stride > window:
        raise ReportgenError(f"occlusion: a stride of {stride} px, larger than the window ({window} px), would leave "
                             "pixels never occluded.")


def compute_occlusion(forward: Forward, batch: torch.Tensor, class_sets: Sequence[Sequence[int]], *, window: int,
                      stride: int, batch_size: int, baseline: float = 0.0) -> list[torch.Tensor]:
    """Captum's `Occlusion(forward).attribute(batch, sliding_window_shapes=(C, window, window), strides=stride,
    baselines=baseline, target=class_sets[r])` for every rank r (see the module): per rank (N, C, H, W). `forward`:
    x -> scores (N, K) without autograd; rows are position-major (row = position · N + image)."""
    n, c, h, w = batch.shape
    check_window(window, stride, (h, w))
    ny, nx = window_positions(h, window, stride), window_positions(w, window, stride)
    classes = torch.as_tensor([list(s) for s in class_sets], dtype=torch.long, device=batch.device)  # (R, N)
    before = forward(batch).gather(1, classes.T)  # (N, R): f_c(x), through the same forward as the occluded inputs
    drops = torch.zeros(len(class_sets), n, ny * nx, dtype=before.dtype, device=batch.device)  # f_c(x) − f_c(occluded)
    local = near(forward)  # each occluded input differs from its image in one window: the first layers run near it
    features = local.features(batch)
    chunks = list(batches(ny * nx * n, batch_size))
    for chunk in track(chunks, total=len(chunks), desc="Occlusion", unit="batch"):
        rows = torch.arange(chunk.start, chunk.stop, device=batch.device)
        image, position = rows % n, rows // n
        x = batch[image]  # a copy
        boxes = []
        for row, at in enumerate(position.tolist()):
            y0, x0 = (at // nx) * stride, (at % nx) * stride
            x[row, :, y0:y0 + window, x0:x0 + window] = baseline
            boxes.append((y0, x0, y0 + window, x0 + window))
        out = local(x, features, image, boxes)
        for k in range(len(class_sets)):
            drops[k, image, position] = before[image, k] - out.gather(1, classes[k, image][:, None])[:, 0]
    # Σ over positions of drop · window, and how many windows cover each pixel: a transposed convolution of the
    # (ny, nx) grid of drops with a window of ones places each position's window, cropped where it sticks out
    ones = torch.ones(1, 1, window, window, dtype=drops.dtype, device=batch.device)
    total = F.conv_transpose2d(drops.view(-1, 1, ny, nx), ones, stride=stride)[..., :h, :w]
    count = F.conv_transpose2d(torch.ones_like(drops[:1, :1]).view(1, 1, ny, nx), ones, stride=stride)[..., :h, :w]
    attribution = (total / count).view(len(class_sets), n, h, w)
    return [a[:, None].expand(n, c, h, w).to(batch.dtype).contiguous() for a in attribution]


def _classifier_forward(job: GradientJob, name: str) -> Forward:
    """The job's no-grad logits forward; a ReportgenError for a forward of other scores (a segmenter's class in its
    region, a detector's boxes), which these methods do not explain yet."""
    kind = getattr(job.forward, "score_kind", None)
    if kind is not None:
        raise ReportgenError(f"{name} explains a classifier's class scores, not {kind}.")
    return job.inference()
