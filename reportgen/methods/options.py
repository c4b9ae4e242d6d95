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
        raise ReportgenError("the superpixel feature mask (feature_ablation, shapley_value_sampling) needs "
                             f"scikit-image: {SUPERPIXELS_INSTALL}")


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
