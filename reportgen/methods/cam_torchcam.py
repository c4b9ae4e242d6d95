"""torchcam 0.5.0's CAMs (issue 26): SS-CAM, IS-CAM and Smooth Grad-CAM++.

Each is a function named by its record in `reportgen.methods` and called like the CAMs of `methods.cam` (`fn(job)`
with a `CamJob`, see there); it returns the raw map Σ_c w_c·A_c (k, N, h, w). torchcam's own post-processing (ReLU,
then min-max per map with eps 1e-8, at the layer's resolution) differs from pytorch-grad-cam's (ReLU, min-max,
resize to the input) only in the order of resizing, so the report applies its shared post-processing
(`methods.cam.postprocess`) and the parity tests compare torchcam's normalised maps with ReLU + min-max of the raw
maps at the layer's resolution.

Both read torchcam's masks: each channel of the layer's activations min-max normalised over its own cells (eps
1e-8; torchcam normalises per channel, not over all channels as its docstring's formula says), upsampled bilinearly
(`align_corners=False`) to the input, times the input. The channel weights are softmax over channels of the mean,
over `num_samples` masked forwards, of score(masked input) − score(input), the score being the target's logit.

- `sscam` (`SSCAM`, defaults num_samples = 35, std = 2): each forward's mask gets Gaussian noise N(0, std²) at the
  input's resolution. torchcam draws it from torch's global CPU generator (`Normal(0, std).sample`, then `.to`);
  we draw the same numbers from a CPU generator of our own seeded with `RANDOM_SEED` (the build stays deterministic
  and leaves torch's global state alone): per layer, per target rank in rank order (torchcam: one call per rank),
  `num_samples` draws of shape (N, C, H, W), N the engine's batch. That is what torchcam draws for that layer alone
  after `torch.manual_seed(RANDOM_SEED)`. The noise of one draw is held whole: N·C·H·W floats.
- `iscam` (`ISCAM`, default num_samples = 10): no noise; forward i scales the masked input by
  Σ_{j≤i} j / num_samples (torchcam's running `coeff`). The masks do not depend on the target, so one set of
  forwards scores every rank.

- `smoothgradcampp` (`SmoothGradCAMpp`, defaults num_samples = 4, std = 0.3): `num_samples` forwards and backwards
  of the input plus Gaussian noise N(0, std²) (drawn as SS-CAM's, shape (N, C, H, W) of the input, per rank in rank
  order); α = mean g² / (2·mean g² + Σ_cells (mean g³)·A + 1e-8) with A the clean activations, weights
  Σ_cells α·relu(g), g the LAST noisy pass's gradients, and the map Σ_c w_c·A'_c with A' the last noisy pass's
  activations: torchcam's hooks keep recording during its noisy passes, so that is what it multiplies. Its passes
  are its own (one per chunk of `job.batch_size` images); not on a layer that holds its channels last.

The masked forwards go through the engine's forward (`engine.for_rows`) in chunks of `job.batch_size`
(`analyses.cam.batch_size`, Score-CAM's key). The counts and noise are the records' options (`job.options`:
`sscam_samples`, `sscam_std`, `iscam_steps`, `smoothgradcampp_samples`, `smoothgradcampp_std`), torchcam's defaults
unless configured; a job without options takes those defaults.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import for_rows
from ..hooks import get_layer
from ..ops import batches
from .cam import CamJob, NotApplicable
from .options import ISCamOptions, SmoothGradCamppOptions, SSCamOptions

RANDOM_SEED = 0  # sscam's noise (see the module)


def sscam(job: CamJob) -> torch.Tensor:
    options = job.options or SSCamOptions()
    samples = options.sscam_samples
    masks = _masks(job)  # (N, C, H, W)
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    mean, std = torch.tensor(0.0), torch.tensor(float(options.sscam_std))
    weights = []
    for classes in job.class_sets:
        total = torch.zeros(masks.shape[:2], device=masks.device)
        for _ in range(samples):
            # torchcam's `Normal(0, std).sample(size)`: torch.normal of the expanded parameters, on the CPU
            noise = torch.normal(mean.expand(masks.shape), std.expand(masks.shape), generator=generator)
            gains = _score_gains(job, masks + noise.to(masks.device), 1.0)  # (N, C, K)
            total += gains.gather(2, _targets(classes, masks)).squeeze(2)
        weights.append(torch.softmax(total / samples, dim=1))
    return torch.einsum("knc,nchw->knhw", torch.stack(weights), job.activations)


def iscam(job: CamJob) -> torch.Tensor:
    steps = (job.options or ISCamOptions()).iscam_steps
    masks = _masks(job)
    k = len(job.class_sets)
    total = torch.zeros(k, *masks.shape[:2], device=masks.device)
    coeff = 0.0
    for i in range(steps):
        coeff += (i + 1) / steps
        gains = _score_gains(job, masks, coeff)  # (N, C, K)
        for r, classes in enumerate(job.class_sets):
            total[r] += gains.gather(2, _targets(classes, masks)).squeeze(2)
    weights = torch.softmax(total / steps, dim=2)  # (k, N, C)
    return torch.einsum("knc,nchw->knhw", weights, job.activations)


def _masks(job: CamJob) -> torch.Tensor:
    """(N, C, H, W): each channel min-max normalised over its cells, upsampled to the input (torchcam's masks)."""
    a = job.activations.float()
    a = a - a.amin(dim=(2, 3), keepdim=True)
    a = a / (a.amax(dim=(2, 3), keepdim=True) + 1e-8)
    return F.interpolate(a, job.batch.shape[2:], mode="bilinear", align_corners=False)


def _targets(classes, masks: torch.Tensor) -> torch.Tensor:
    """(N, C, 1): each image's target class, for gathering (N, C, K) scores."""
    index = torch.as_tensor(classes, device=masks.device, dtype=torch.long)
    return index[:, None, None].expand(-1, masks.shape[1], 1)


def _score_gains(job: CamJob, masks: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, C, K): logits of `scale`·mask·input for every (image, channel), less the image's own logits."""
    n, c = masks.shape[:2]
    flat = masks.flatten(0, 1).unsqueeze(1)  # (N·C, 1, H, W), torchcam's order: image-major
    owner = torch.arange(n, device=masks.device).repeat_interleave(c)
    out = []
    with torch.no_grad():
        for rows in batches(n * c, job.batch_size):
            x = scale * (flat[rows] * job.batch[owner[rows]])
            out.append(for_rows(job.forward, owner[rows].cpu())(x).float())
    logits = torch.cat(out).view(n, c, -1)
    return logits - job.logits.float()[:, None, :].to(logits.device)


def smoothgradcampp(job: CamJob) -> torch.Tensor:
    if job.channels_last:
        raise NotApplicable("Smooth Grad-CAM++ takes (N, C, h, w) activations from passes of its own; this layer "
                            "holds its channels last (tokens), which it does not read yet.")
    options = job.options or SmoothGradCamppOptions()
    samples = options.smoothgradcampp_samples
    clean = job.activations.float()
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    mean, std = torch.tensor(0.0), torch.tensor(float(options.smoothgradcampp_std))
    shape = job.batch.shape
    out = []
    for classes in job.class_sets:
        g2, g3 = torch.zeros_like(clean), torch.zeros_like(clean)
        for _ in range(samples):
            noise = torch.normal(mean.expand(shape), std.expand(shape), generator=generator)  # as torchcam's draw
            a, g = _noisy_pass(job, job.batch + noise.to(job.batch), classes)
            g2 += g.pow(2)
            g3 += g.pow(3)
        g2, g3 = g2 / samples, g3 / samples
        alpha = g2 / (2 * g2 + (g3 * clean).sum(dim=(2, 3), keepdim=True) + 1e-8)
        weights = (alpha * g.clamp_min(0)).sum(dim=(2, 3))  # the last pass's gradients, as torchcam's
        out.append(torch.einsum("nc,nchw->nhw", weights, a))  # and its activations
    return torch.stack(out)


def _noisy_pass(job: CamJob, x: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activations and the gradients of the classes' logits there (N, C, h, w), for the input `x`, in
    chunks of `job.batch_size` images."""
    layer = get_layer(job.model, job.layer)
    acts, grads = [], []
    for rows in batches(x.shape[0], job.batch_size):
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
        try:
            with torch.enable_grad():
                logits = for_rows(job.forward, torch.arange(x.shape[0])[rows])(x[rows].detach().requires_grad_(True))
                target = torch.as_tensor(classes[rows], device=logits.device)
                score = logits.gather(1, target[:, None]).sum()
                (g,) = torch.autograd.grad(score, seen[-1])
        finally:
            handle.remove()
        acts.append(seen[-1].detach().float())
        grads.append(g.float())
    return torch.cat(acts), torch.cat(grads)
