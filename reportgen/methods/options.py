"""The options of the methods that have some: one dataclass per method (or per methods that share them), named by
the method's record (`Method.options`). The stage that computes a family takes every option of its methods as a
key of its own (`analyses.gradients.steps`): a key applies to each configured method that has it. No torch here.

A forward-only (perturbation) method's options also say what one map of one image costs, `forwards(size)` (size:
the input's (H, W)): the evaluation bounds what recomputing its maps may cost against its deletion curve."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config.rules import COUNT, setting
from ..errors import ReportgenError


@dataclass(frozen=True)
class MaskedOptions:
    """Score-CAM and Ablation-CAM: forwards of masked copies of each image."""

    batch_size: int = setting(32, **COUNT)  # masked forwards of scorecam / ablationcam
    max_channels: int | None = setting(None, **COUNT)  # scorecam / ablationcam: mask only the most active channels


@dataclass(frozen=True)
class IntegratedGradientsOptions:
    steps: int = setting(50, **COUNT)  # integrated gradients: Gauss-Legendre steps from the baseline
    baseline: Literal["zero", "blur", "uniform"] | Path = setting("zero", kind="path")  # or a .npy (C, H, W)
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)


@dataclass(frozen=True)
class SmoothGradOptions:
    samples: int = setting(25, **COUNT)  # noisy copies of each image (gradientshap: random points)
    stdev: float = setting(0.15, ge=0)  # smoothgrad noise, fraction of the input range
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)


@dataclass(frozen=True)
class GuidedGradCamOptions:
    cam_layer: str | None = None  # guided_gradcam; default: the cam stage's layer or the auto-picked one


@dataclass(frozen=True)
class DriseOptions:
    """D-RISE (detectors only): one forward of the detector per random mask of each image, shared by its boxes."""

    drise_masks: int = setting(500, **COUNT)  # drise: random masks per image (a masked forward each)
    drise_cells: int = setting(8, **COUNT)  # drise: mask grid cells along the image's longer side
    drise_p: float = setting(0.5, gt=0, le=1)  # drise: the probability that a cell is kept


# ---------------------------------------------------------------------------- part m26grad: Captum's GradientShap


@dataclass(frozen=True)
class GradientShapOptions:
    samples: int = setting(25, **COUNT)  # noisy copies of each image (gradientshap: random points)
    shap_stdev: float = setting(0.0, ge=0)  # gradientshap noise, fraction of the input range (Captum's default 0)
    baseline: Literal["zero", "blur", "uniform"] | Path = setting("zero", kind="path")  # or a .npy (C, H, W)
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)


@dataclass(frozen=True)
class DeepLiftOptions:
    baseline: Literal["zero", "blur", "uniform"] | Path = setting("zero", kind="path")  # or a .npy (C, H, W)
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)


# ---------------------------------------------------------------------------- perturbation methods (m26pert)


@dataclass(frozen=True)
class RiseOptions:
    """RISE (classifiers): one forward per random mask of each image, the masks D-RISE draws."""

    rise_masks: int = setting(1000, **COUNT)  # rise: random masks per image (a masked forward each)
    rise_cell: int | None = setting(None, **COUNT)  # rise: a mask cell's side in pixels; null: RISE's 7 × 7 grid
    rise_p: float = setting(0.5, gt=0, le=1)  # rise: the probability that a cell is kept
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)

    def forwards(self, size: tuple[int, int]) -> int:
        """Forwards one map of one image costs (the evaluation bounds what recomputing it costs)."""
        return self.rise_masks


@dataclass(frozen=True)
class OcclusionOptions:
    """Occlusion (classifiers): one forward per position of a square window of zeros (Captum's Occlusion)."""

    occlusion_window: int = setting(15, **COUNT)  # occlusion: the occluding square's side in pixels
    occlusion_stride: int = setting(8, **COUNT)  # occlusion: pixels between window positions, at most the window
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)

    def forwards(self, size: tuple[int, int]) -> int:
        """Forwards one map of one image costs: Captum's window positions, ceil((side − window) / stride) + 1 a side."""
        w, s = self.occlusion_window, self.occlusion_stride
        return math.prod(-(-(side - w) // s) + 1 for side in size)

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError unless the window fits an input of `size` (H, W) and the stride leaves no pixel out."""
        if self.occlusion_window > min(size):
            raise ReportgenError(f"`analyses.gradients.occlusion_window`: {self.occlusion_window} px is larger than "
                                 f"the input ({size[0]} × {size[1]} px); take at most {min(size)}.")
        if self.occlusion_stride > self.occlusion_window:
            raise ReportgenError(f"`analyses.gradients.occlusion_stride`: {self.occlusion_stride} px is larger than "
                                 f"the window ({self.occlusion_window} px): pixels between two positions would never "
                                 "be occluded (Captum refuses it too).")


# ---------------------------------------------------------------------------- part m26fa: superpixel feature masks

SUPERPIXELS_INSTALL = "pip install 'reportgen[superpixels]'"


@dataclass(frozen=True)
class SuperpixelOptions:
    """What the methods over a feature mask share (feature_ablation, shapley_value_sampling, lime, kernel_shap): the
    mask (a user's, else scikit-image's SLIC, deterministic) and the inputs per forward."""

    slic_segments: int = setting(50, **COUNT)  # superpixels: SLIC's n_segments (about that many superpixels)
    slic_compactness: float = setting(10.0, gt=0)  # superpixels: SLIC's compactness (higher: squarer superpixels)
    slic_sigma: float = setting(1.0, ge=0)  # superpixels: SLIC's Gaussian smoothing before segmenting, in px
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)
    # a .npy (H, W) of integer labels in input pixels, every image's feature mask (a manifest's `segments` first);
    feature_mask: Path | None = setting(None, kind="path")  # null: SLIC superpixels

    def features(self, size: tuple[int, int]) -> int:
        """About how many features an image has: the file's labels, else `slic_segments`."""
        if self.feature_mask is None:
            return self.slic_segments
        from ..segments import load_feature_mask  # numpy: read only when a file is given

        return int(load_feature_mask(self.feature_mask, size).max()) + 1

    def forwards(self, size: tuple[int, int]) -> int:
        """Forwards one map of one image costs: one per feature, and the image (feature_ablation)."""
        return self.features(size) + 1

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError for a feature-mask file that is no (H, W) label map of `size`, or when scikit-image (the
        `superpixels` extra) is missing."""
        check_feature_mask(self.feature_mask, size)


@dataclass(frozen=True)
class FeatureAblationOptions(SuperpixelOptions):
    """FeatureAblation (classifiers): one forward per superpixel of each image (scikit-image's SLIC, deterministic)."""


@dataclass(frozen=True)
class ShapleySamplingOptions(SuperpixelOptions):
    """ShapleyValueSampling (classifiers): per image, `shapley_samples` random orders of its superpixels, one forward
    per superpixel added."""

    shapley_samples: int = setting(25, **COUNT)  # shapley_value_sampling: random superpixel orders per image

    def forwards(self, size: tuple[int, int]) -> int:
        """Forwards one map of one image costs: one per superpixel put back, along each order."""
        return self.shapley_samples * self.features(size) + 1


def check_feature_mask(path: Path | None, size: tuple[int, int]) -> None:
    """The feature-mask file read and checked against the input's `size` (H, W) (`segments.load_feature_mask`);
    without one, scikit-image is required (SLIC makes the mask; a manifest's `segments` may not cover every image)."""
    if path is None:
        require_skimage()
        return
    from ..segments import load_feature_mask  # numpy: read only when a file is given

    load_feature_mask(path, size)


def require_skimage() -> None:
    """A ReportgenError naming the extra when scikit-image cannot be imported (the superpixels come from its SLIC)."""
    import importlib.util
    if importlib.util.find_spec("skimage") is None:
        raise ReportgenError("the superpixel feature mask (feature_ablation, shapley_value_sampling, lime, kernel_shap) needs "
                             f"scikit-image: {SUPERPIXELS_INSTALL}")


# ---------------------------------------------------------------------------- part m26tc2: torchcam's sample counts,
# DeepLiftShap's baselines, VarGrad's samples, LeGrad's blocks


@dataclass(frozen=True)
class SSCamOptions:
    """SS-CAM (torchcam's `SSCAM`): its noisy masked forwards per channel and the noise; torchcam's defaults."""

    sscam_samples: int = setting(35, **COUNT)  # sscam: noisy masked forwards per channel (torchcam's num_samples)
    sscam_std: float = setting(2.0, gt=0)  # sscam: the masks' Gaussian noise standard deviation (torchcam's std)


@dataclass(frozen=True)
class ISCamOptions:
    """IS-CAM (torchcam's `ISCAM`): its integration steps per channel; torchcam's default."""

    iscam_steps: int = setting(10, **COUNT)  # iscam: masked inputs per channel, scaled 0.1, 0.3, … (num_samples)


@dataclass(frozen=True)
class SmoothGradCamppOptions:
    """Smooth Grad-CAM++ (torchcam's `SmoothGradCAMpp`): its noisy passes and the noise; torchcam's defaults."""

    smoothgradcampp_samples: int = setting(4, **COUNT)  # smoothgradcampp: noisy forward + backward passes per rank
    smoothgradcampp_std: float = setting(0.3, gt=0)  # smoothgradcampp: the input noise's standard deviation


@dataclass(frozen=True)
class VarGradOptions(SmoothGradOptions):
    """VarGrad: SmoothGrad's keys; a variance needs two samples at least (one gives a map of zeros)."""

    def check(self, size: tuple[int, int]) -> None:
        if self.samples < 2:
            raise ReportgenError(f"`analyses.gradients.samples`: vargrad is the variance of the gradient over the "
                                 f"noisy copies, which needs at least 2 of them ({self.samples} gives a map of "
                                 "zeros); take 2 or more.")


@dataclass(frozen=True)
class DeepLiftShapOptions:
    """DeepLiftShap (Captum's `DeepLiftShap`): DeepLift averaged over a distribution of baselines, here
    `shap_baselines` copies of the configured baseline plus seeded Gaussian noise (sd `shap_baseline_stdev` × the
    image's range). Captum needs at least 2 baselines."""

    baseline: Literal["zero", "blur", "uniform"] | Path = setting("zero", kind="path")  # or a .npy (C, H, W)
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)
    shap_baselines: int = setting(10, **COUNT)  # deepliftshap: baselines in its distribution (at least 2)
    shap_baseline_stdev: float = setting(0.1, ge=0)  # deepliftshap: the baselines' noise, fraction of the input range

    def check(self, size: tuple[int, int]) -> None:
        if self.shap_baselines < 2:
            raise ReportgenError(f"`analyses.gradients.shap_baselines`: deepliftshap averages DeepLift over a "
                                 f"distribution of baselines, which needs at least 2 (Captum refuses fewer); got "
                                 f"{self.shap_baselines}. For one baseline use `deeplift`.")


@dataclass(frozen=True)
class LeGradOptions:
    """LeGrad (torchcam's `LeGrad`, vision transformers): which blocks it reads."""

    legrad_blocks: int | None = setting(None, **COUNT)  # legrad: the last this many transformer blocks; null: all
# ---------------------------------------------------------------------------- part m26lrp: LRP (reportgen.methods.lrp)


def _check_lrp_model(model, method: str, forward, input_size) -> None:
    from .lrp import check_model  # torch: imported when a config with LRP is checked against its model
    check_model(model, method, forward, input_size)


@dataclass(frozen=True)
class CaptumLrpOptions:
    """Captum's LRP (`lrp`): its default rules, no option; the model's layers are checked against them."""

    def check_model(self, model, method: str, forward=None, input_size=None) -> None:
        """A ReportgenError naming the first layer of `model` (or join of branches, from one forward of a zero input
        of `input_size` through `forward`) the rules of `method` do not cover."""
        _check_lrp_model(model, method, forward, input_size)


@dataclass(frozen=True)
class LrpOptions:
    """Zennit's LRP composites (`lrp_epsilon_*`); the model's layers are checked against their rules."""

    lrp_epsilon: float = setting(1e-6, gt=0)  # lrp_epsilon_*: the epsilon rule's stabiliser (Zennit's default)
    lrp_gamma: float = setting(0.25, ge=0)  # lrp_epsilon_gamma_box: the gamma rule's γ (Zennit's default)

    def check_model(self, model, method: str, forward=None, input_size=None) -> None:
        """A ReportgenError naming the first layer of `model` (or join of branches, from one forward of a zero input
        of `input_size` through `forward`) the rules of `method` do not cover."""
        _check_lrp_model(model, method, forward, input_size)


# ---------------------------------------------------------------------------- part m26lime: surrogate models


@dataclass(frozen=True)
class LimeOptions(SuperpixelOptions):
    """Lime (classifiers): per image, `lime_samples` random subsets of its superpixels (a forward each) and a Lasso
    fitted to the logit over them (Captum's Lime)."""

    lime_samples: int = setting(200, **COUNT)  # lime: random superpixel subsets per image (a forward each)
    lime_kernel_width: float = setting(1.0, gt=0)  # lime: width of the exponential kernel on the cosine distance
    lime_alpha: float = setting(0.01, ge=0)  # lime: the Lasso's L1 weight (Captum's SkLearnLasso(alpha=0.01))

    def forwards(self, size: tuple[int, int]) -> int:
        return self.lime_samples

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError for a bad feature-mask file, when scikit-image is missing, or for fewer than 2 samples (a
        fit with an intercept learns nothing from one)."""
        super().check(size)
        if self.lime_samples < 2:
            raise ReportgenError(f"`analyses.gradients.lime_samples`: {self.lime_samples} is too few; lime fits a "
                                 "linear model with an intercept to the samples and needs at least 2 (default 200).")


@dataclass(frozen=True)
class KernelShapOptions(SuperpixelOptions):
    """KernelShap (classifiers): per image, `kernel_shap_samples` subsets of its superpixels (all, none, then random
    ones of Shapley-kernel sizes; a forward each) and a weighted least-squares fit of the logit over them."""

    kernel_shap_samples: int = setting(200, **COUNT)  # kernel_shap: superpixel subsets per image (a forward each)

    def forwards(self, size: tuple[int, int]) -> int:
        return self.kernel_shap_samples

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError for a bad feature-mask file, when scikit-image is missing, or for fewer samples than the
        fit's unknowns: a value per feature (the file's labels, else about `slic_segments`) and an intercept. (A
        manifest's own segments are counted when read: more than the samples allow get the minimum-norm fit.)"""
        super().check(size)
        k = self.features(size)
        if self.kernel_shap_samples < k + 1:
            what = "the feature mask's labels" if self.feature_mask is not None else "superpixels (`slic_segments`)"
            raise ReportgenError(
                f"`analyses.gradients.kernel_shap_samples`: {self.kernel_shap_samples} is too few for {k} {what}; "
                f"kernel_shap fits a value per feature and an intercept, so it needs at least {k + 1} samples "
                "(default 200).")
