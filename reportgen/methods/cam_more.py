"""More of pytorch-grad-cam 1.5.7's CAMs (issue 26): Grad-CAM element-wise, RandomCAM, KPCA-CAM, FEM, ShapleyCAM
and FinerCAM.

Each is a function named by its record in `reportgen.methods` and called like the CAMs of `methods.cam` (see there):
`fn(a, g)` for a gradient CAM, `fn(job)` with a `CamJob` otherwise; pytorch-grad-cam's post-processing (ReLU,
min-max, resize, multi-layer mean) comes after, in `methods.cam.postprocess`.

- `gradcam_elementwise`: Σ_c relu(g·A) (`GradCAMElementWise`).
- `randomcam`: channel weights uniform in [-1, 1) (`RandomCAM`, a baseline). pytorch-grad-cam draws them from numpy's
  global generator; we draw the same numbers from a generator of our own seeded with `RANDOM_SEED`: per layer, one
  (N, C) draw per target rank in rank order, which is what pytorch-grad-cam draws for that layer alone after
  `np.random.seed(RANDOM_SEED)` (the build stays deterministic and leaves numpy's global state alone).
- `kpcacam`: each image's centred (h·w, C) activations projected on the first kernel principal component
  (`KPCA_CAM` with its defaults: scikit-learn's `KernelPCA(n_components=1, kernel="sigmoid")`, gamma = 1/C,
  coef0 = 1), written out in torch: the centred kernel's top eigenvector (largest eigenvalue), its sign such that
  its entry of largest magnitude is positive (scikit-learn's `svd_flip`), times √eigenvalue (negative ones: 0).
- `fem`: channel weights = the share of the channel's cells above its mean + 2 standard deviations (`FEM`, k = 2).
- `shapleycam`: channel weights = spatial mean of g − ½·H·A, H the Hessian of the target score with respect to the
  layer's activations (`ShapleyCAM`): one forward, then per rank a backward that keeps its graph and one
  Hessian-vector product. On a model that is piecewise linear after the layer (ReLU, pooling, a linear head) H·A = 0
  and it is Grad-CAM.
- `finercam`: Grad-CAM of `FinerWeightedTarget` (α = 1) against the 3 classes whose logits are nearest the target's
  (`FinerCAM` with its defaults; pgc picks them for the top class, or for `target_idx`; we for each target class).

- `fullgrad`: FullGrad (input·gradient plus every Conv2d / BatchNorm2d bias·gradient), the same map on every target
  layer (it reads none); its raw map has the input's size.

ShapleyCAM, FinerCAM and FullGrad take passes of their own (`_own_passes`): one forward per chunk of `batch_size` images that
keeps its graph, with the layer's output hooked; not on a layer that holds its channels last (tokens).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine import for_rows
from ..hooks import get_layer
from ..ops import batches
from .cam import CamJob, NotApplicable

RANDOM_SEED = 0  # randomcam's draws (see the module)
FEM_K = 2.0  # fem: a cell counts when above mean + k·std of its channel (pytorch-grad-cam's default)


def gradcam_elementwise(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).clamp_min(0).sum(dim=1)


def randomcam(job: CamJob) -> torch.Tensor:
    a = job.activations
    k, (n, c) = len(job.class_sets), a.shape[:2]
    draws = np.random.RandomState(RANDOM_SEED).uniform(-1, 1, size=(k, n, c))  # rank-major, as pgc's calls
    weights = torch.as_tensor(draws, dtype=torch.float32, device=a.device)
    return torch.einsum("knc,nchw->knhw", weights, a)


def kpcacam(job: CamJob) -> torch.Tensor:
    return kernel_projection(job.activations).expand(len(job.class_sets), -1, -1, -1)


def kernel_projection(values: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h, w): scikit-learn's `KernelPCA(n_components=1, kernel="sigmoid").fit_transform` of each
    image's centred (h·w, C) matrix (NaN -> 0), in float64."""
    n, c, h, w = values.shape
    x = torch.nan_to_num(values.double(), nan=0.0).reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    kernel = torch.tanh(x @ x.transpose(1, 2) / c + 1.0)  # sigmoid kernel, gamma = 1 / n_features, coef0 = 1
    kernel = (kernel - kernel.mean(dim=1, keepdim=True) - kernel.mean(dim=2, keepdim=True)
              + kernel.mean(dim=(1, 2), keepdim=True))  # centred in feature space (KernelCenterer)
    values_, vectors = torch.linalg.eigh(kernel)  # ascending
    top, v = values_[:, -1], vectors[:, :, -1]  # (N,), (N, hw)
    biggest = v.abs().argmax(dim=1, keepdim=True)
    v = v * torch.sign(v.gather(1, biggest))  # svd_flip: the entry of largest magnitude is positive
    return (v * top.clamp_min(0).sqrt()[:, None]).reshape(n, h, w).float()


def fem(job: CamJob) -> torch.Tensor:
    a = job.activations.double()
    threshold = a.mean(dim=(2, 3), keepdim=True) + FEM_K * a.std(dim=(2, 3), correction=0, keepdim=True)
    weights = (a > threshold).double().mean(dim=(2, 3))  # (N, C)
    cam = torch.einsum("nc,nchw->nhw", weights, a).float()
    return cam.expand(len(job.class_sets), -1, -1, -1)


def shapleycam(job: CamJob) -> torch.Tensor:
    def weights(logits, a, index, target):
        (g,) = torch.autograd.grad(logits[index, target].sum(), a, retain_graph=True, create_graph=True)
        hvp = None
        if g.requires_grad:  # else nothing after the layer has curvature (frozen, linear): H·A = 0
            (hvp,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True)
        hvp = torch.zeros_like(g) if hvp is None else hvp
        return (g - 0.5 * hvp).detach().float().mean(dim=(2, 3))

    return _own_passes(job, "ShapleyCAM's Hessian-vector product", weights)


FINER_COMPARED = 3  # finercam: the classes compared with the target, the nearest in logit first (pgc's (1, 2, 3))
FINER_ALPHA = 1.0  # finercam: how much of the compared classes' scores is subtracted (pgc's default)


def finercam(job: CamJob) -> torch.Tensor:
    """Grad-CAM of pytorch-grad-cam's `FinerWeightedTarget`: Σ_j p_j·(y_c − α·y_j) / (Σ_j p_j + 1e-9) over the
    `FINER_COMPARED` classes j whose logits are nearest the target's (p: softmax, differentiated as well)."""
    scored = getattr(job.forward, "score_kind", None)
    if scored:
        raise NotApplicable(f"FinerCAM compares a classifier's class scores with each other; {scored} are not.")

    def weights(logits, a, index, target):
        distance = (logits.detach() - logits.detach()[index, target][:, None]).abs()
        compared = distance.argsort(dim=1, stable=True)[:, 1:1 + FINER_COMPARED]  # (n, J): [0] is the target
        p = torch.softmax(logits, dim=1).gather(1, compared)
        main = logits[index, target][:, None]
        loss = ((p * (main - FINER_ALPHA * logits.gather(1, compared))).sum(1) / (p.sum(1) + 1e-9)).sum()
        (g,) = torch.autograd.grad(loss, a, retain_graph=True)
        return g.float().mean(dim=(2, 3))

    return _own_passes(job, "FinerCAM's own backward", weights)


def _own_passes(job: CamJob, what: str, weights) -> torch.Tensor:
    """(k, N, h, w): Σ_c w_c·A_c with w = `weights(logits, a, index, target)` (n, C) per rank, from one forward of
    each chunk of `job.batch_size` images that keeps the graph from the input to the logits through the layer's
    output `a` (hooked)."""
    if job.channels_last:
        raise NotApplicable(f"{what} is taken on (N, C, h, w) activations; this layer holds its channels last "
                            "(tokens), which it does not read yet.")
    layer = get_layer(job.model, job.layer)
    n = job.batch.shape[0]
    out = torch.zeros(len(job.class_sets), n, *job.activations.shape[2:], device=job.activations.device)
    for rows in batches(n, job.batch_size):
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
        try:
            with torch.enable_grad():
                x = job.batch[rows].detach().requires_grad_(True)  # the graph starts at the input, as pgc's
                logits = for_rows(job.forward, torch.arange(n)[rows])(x)
        finally:
            handle.remove()
        a = seen[-1]
        index = torch.arange(len(x), device=logits.device)
        for r, classes in enumerate(job.class_sets):
            target = torch.as_tensor(classes[rows], device=logits.device)
            with torch.enable_grad():
                w = weights(logits, a, index, target)
            out[r, rows] = torch.einsum("nc,nchw->nhw", w.to(out), a.detach().float())
    return out


FULLGRAD_LAYERS = (nn.Conv2d, nn.BatchNorm2d)  # the layers whose bias FullGrad reads (pytorch-grad-cam's choice)


def fullgrad(job: CamJob) -> torch.Tensor:
    """FullGrad (`FullGrad`): Σ over input channels of |x·∂y/∂x| and over every Conv2d / BatchNorm2d with a bias of
    |bias·∂y/∂output| summed over its channels, each channel's map min-max'd, resized to the input. It reads no
    target layer: every target layer gets the same map (k, N, H, W) at the input's size."""
    layers = [m for m in job.model.modules() if type(m) in FULLGRAD_LAYERS and m.bias is not None]
    n, size = job.batch.shape[0], tuple(job.batch.shape[-2:])
    out = torch.zeros(len(job.class_sets), n, *size, device=job.batch.device)
    total: list[torch.Tensor] = []  # the current rank's sum, (n, H, W)

    def add(bias: torch.Tensor, grad: torch.Tensor) -> None:
        maps = _minmax((bias.to(grad)[None, :, None, None] * grad).abs().float()).sum(dim=1, keepdim=True)
        total[0] += F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]  # linear: sum first

    def hook(module, inputs, output):
        if output.requires_grad:  # as pytorch-grad-cam: a tensor hook on the output (what reaches it, in-place ops too)
            bias = _bias(module)
            output.register_hook(lambda grad: add(bias, grad.detach()))

    for rows in batches(n, job.batch_size):
        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with torch.enable_grad():
                x = job.batch[rows].detach().requires_grad_(True)
                logits = for_rows(job.forward, torch.arange(n)[rows])(x)
        finally:
            for handle in handles:
                handle.remove()
        index = torch.arange(len(x), device=logits.device)
        for r, classes in enumerate(job.class_sets):
            total[:] = [torch.zeros(len(x), *size, device=x.device)]
            target = torch.as_tensor(classes[rows], device=logits.device)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(logits[index, target].sum(), x, retain_graph=True)
            out[r, rows] = total[0] + _minmax((g * x.detach()).abs().float()).sum(dim=1)
    return out


def _bias(module: nn.Module) -> torch.Tensor:
    """A Conv2d's bias, or a BatchNorm2d's effective one (β − μ·γ/√(σ² + ε)), as FullGrad's authors."""
    if isinstance(module, nn.BatchNorm2d):
        return (module.bias - module.running_mean * module.weight / torch.sqrt(module.running_var + module.eps)).detach()
    return module.bias.detach()


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w): each map - its min, / (1e-7 + its max), as pytorch-grad-cam's `scale_cam_image`."""
    maps = maps - maps.amin(dim=(2, 3), keepdim=True)
    return maps / (1e-7 + maps.amax(dim=(2, 3), keepdim=True))
