"""The options of the methods that have some: one dataclass per method (or per methods that share them), named by
the method's record (`Method.options`). The stage that computes a family takes every option of its methods as a
key of its own (`analyses.gradients.steps`): a key applies to each configured method that has it. No torch here."""
from __future__ import annotations

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


@dataclass(frozen=True)
class OcclusionOptions:
    """Occlusion (classifiers): one forward per position of a square window of zeros (Captum's Occlusion)."""

    occlusion_window: int = setting(15, **COUNT)  # occlusion: the occluding square's side in pixels
    occlusion_stride: int = setting(8, **COUNT)  # occlusion: pixels between window positions, at most the window
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)

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
class FeatureAblationOptions:
    """FeatureAblation (classifiers): one forward per superpixel of each image (scikit-image's SLIC, deterministic)."""

    slic_segments: int = setting(50, **COUNT)  # superpixels: SLIC's n_segments (about that many superpixels)
    slic_compactness: float = setting(10.0, gt=0)  # superpixels: SLIC's compactness (higher: squarer superpixels)
    slic_sigma: float = setting(1.0, ge=0)  # superpixels: SLIC's Gaussian smoothing before segmenting, in px
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError when scikit-image (the `superpixels` extra) is missing."""
        require_skimage()


@dataclass(frozen=True)
class ShapleySamplingOptions:
    """ShapleyValueSampling (classifiers): per image, `shapley_samples` random orders of its superpixels, one forward
    per superpixel added."""

    slic_segments: int = setting(50, **COUNT)  # superpixels: SLIC's n_segments (about that many superpixels)
    slic_compactness: float = setting(10.0, gt=0)  # superpixels: SLIC's compactness (higher: squarer superpixels)
    slic_sigma: float = setting(1.0, ge=0)  # superpixels: SLIC's Gaussian smoothing before segmenting, in px
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)
    shapley_samples: int = setting(25, **COUNT)  # shapley_value_sampling: random superpixel orders per image

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError when scikit-image (the `superpixels` extra) is missing."""
        require_skimage()


def require_skimage() -> None:
    """A ReportgenError naming the extra when scikit-image cannot be imported (the superpixels come from its SLIC)."""
    import importlib.util
    if importlib.util.find_spec("skimage") is None:
        raise ReportgenError("the superpixel feature mask (feature_ablation, shapley_value_sampling, lime, kernel_shap) needs "
                             f"scikit-image: {SUPERPIXELS_INSTALL}")


# ---------------------------------------------------------------------------- part m26lime: surrogate models


@dataclass(frozen=True)
class LimeOptions:
    """Lime (classifiers): per image, `lime_samples` random subsets of its superpixels (a forward each) and a Lasso
    fitted to the logit over them (Captum's Lime)."""

    slic_segments: int = setting(50, **COUNT)  # superpixels: SLIC's n_segments (about that many superpixels)
    slic_compactness: float = setting(10.0, gt=0)  # superpixels: SLIC's compactness (higher: squarer superpixels)
    slic_sigma: float = setting(1.0, ge=0)  # superpixels: SLIC's Gaussian smoothing before segmenting, in px
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)
    lime_samples: int = setting(200, **COUNT)  # lime: random superpixel subsets per image (a forward each)
    lime_kernel_width: float = setting(1.0, gt=0)  # lime: width of the exponential kernel on the cosine distance
    lime_alpha: float = setting(0.01, ge=0)  # lime: the Lasso's L1 weight (Captum's SkLearnLasso(alpha=0.01))

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError when scikit-image is missing, or for fewer than 2 samples (a fit with an intercept learns
        nothing from one)."""
        require_skimage()
        if self.lime_samples < 2:
            raise ReportgenError(f"`analyses.gradients.lime_samples`: {self.lime_samples} is too few; lime fits a "
                                 "linear model with an intercept to the samples and needs at least 2 (default 200).")


@dataclass(frozen=True)
class KernelShapOptions:
    """KernelShap (classifiers): per image, `kernel_shap_samples` subsets of its superpixels (all, none, then random
    ones of Shapley-kernel sizes; a forward each) and a weighted least-squares fit of the logit over them."""

    slic_segments: int = setting(50, **COUNT)  # superpixels: SLIC's n_segments (about that many superpixels)
    slic_compactness: float = setting(10.0, gt=0)  # superpixels: SLIC's compactness (higher: squarer superpixels)
    slic_sigma: float = setting(1.0, ge=0)  # superpixels: SLIC's Gaussian smoothing before segmenting, in px
    internal_batch_size: int | None = setting(None, **COUNT)  # inputs per forward (ig, smoothgrad)
    kernel_shap_samples: int = setting(200, **COUNT)  # kernel_shap: superpixel subsets per image (a forward each)

    def check(self, size: tuple[int, int]) -> None:
        """A ReportgenError when scikit-image is missing, or for fewer samples than the fit's unknowns: a value per
        superpixel (about `slic_segments` of them) and an intercept."""
        require_skimage()
        if self.kernel_shap_samples < self.slic_segments + 1:
            raise ReportgenError(
                f"`analyses.gradients.kernel_shap_samples`: {self.kernel_shap_samples} is too few for "
                f"{self.slic_segments} superpixels (`slic_segments`); kernel_shap fits a value per superpixel and an "
                f"intercept, so it needs at least {self.slic_segments + 1} samples (default 200).")
