"""The method registry: one record per CAM and gradient method, the only place a method is named.

A record says what the method is called (id, aliases, title), which stage computes it (`family`), what
it needs from the engine and whether it needs hooks on the model's layers. Config validation reads the
records (ids, aliases, family) and so does everything after it: the stages dispatch on `needs`, the
figures take the titles, the pipeline refuses hooked methods on a model that takes no hooks.

This module imports no torch: `reportgen --help` and `reportgen validate`'s parsing stay fast. The
computation is named by `compute`, a "module:function" string resolved on first use (or the function
itself, for a method registered at run time: a plug-in or a test).

What a CAM method's function receives depends on `needs` (see `reportgen.methods.cam`):

- `needs` has "gradients": `fn(a, g) -> (N, h, w)` from the layer's activations and gradients
  (N, C, h, w) of the engine's one forward and one backward pass, called once per target rank;
- otherwise `fn(job) -> (k, N, h, w)` with a `CamJob` (the model, the batch, the layer's activations,
  the logits, the classes, ...); it may raise `NotApplicable(why)` for a layer it does not apply to.

Either returns raw maps: ReLU, min-max and resizing (pytorch-grad-cam's post-processing) come after.

A gradient method's function (see `reportgen.methods.gradients`) gets:

- `needs` has "input_grad": `fn(x, grad) -> (N, C, H, W)` per rank, from the input gradient;
- `relu_rule` set: `fn(pass_, r) -> (N, C, H, W)` from the one forward with switchable ReLU rules;
- otherwise `fn(job) -> list of (N, C, H, W)`, one per rank, with a `GradientJob`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..registry import METHODS
from .options import (
    DeepLiftOptions, DriseOptions, FeatureAblationOptions, GradientShapOptions, GuidedGradCamOptions,
    IntegratedGradientsOptions, KernelShapOptions, LimeOptions, MaskedOptions, OcclusionOptions, RiseOptions,
    ShapleySamplingOptions, SmoothGradOptions,
)
from .options import (  # part m26tc2
    DeepLiftShapOptions, ISCamOptions, LeGradOptions, SmoothGradCamppOptions, SSCamOptions, VarGradOptions,
)
from .options import CaptumLrpOptions, LrpOptions  # part m26lrp

FAMILIES = ("cam", "gradients")
# how the page's method picker groups each family's methods, in this order (a record names its `group`; a plug-in
# may name a group of its own, listed after these)
GROUPS = {
    "cam": ("Gradient-weighted CAMs", "Gradient-free CAMs", "Perturbation CAMs", "Baselines"),
    "gradients": ("Gradients", "Noise and paths", "Propagation rules", "Perturbation (black box)", "Baselines"),
}
# what a method can need from the engine
NEEDS = ("activations", "gradients", "input_grad", "masked_forwards", "head", "relu_rule", "own_passes")


@dataclass(frozen=True)
class Method:
    id: str  # the config's method id and the `<method>` of arrays.npz keys
    family: str  # "cam" or "gradients": the stage that computes it
    title: str  # what the report calls it
    aliases: tuple[str, ...] = ()  # other spellings a config may use (compared without case and punctuation)
    needs: frozenset[str] = frozenset()  # from NEEDS
    relu_rule: str | None = None  # gradient methods: the ReLU backward rule ("guided", "deconv")
    hooks: bool = True  # needs hooks on the model's layers (a TorchScript model takes none)
    compute: str | Callable | None = field(default=None, compare=False)  # "module:function" or the function
    note: str = ""  # one line for the docs' method list
    # its options (a dataclass, `options.py`): keys of its family's stage, given to every configured method that has
    # them; None: no options
    options: type | None = field(default=None, compare=False)
    # a baseline, not an explanation (the random map): its rows of the evaluation's ranking are the bar a method must
    # clear (`metrics.baselines`)
    baseline: bool = False
    # the group the page's method picker lists it under (`GROUPS`); "": its family's first group
    group: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.id!r}: family must be one of {FAMILIES}, got {self.family!r}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"method {self.id!r}: unknown needs {sorted(unknown)}; known: {NEEDS}")
        object.__setattr__(self, "needs", frozenset(self.needs))
        if not self.group:
            object.__setattr__(self, "group", "Baselines" if self.baseline else GROUPS[self.family][0])

    def options_from(self, values: Any = None) -> Any:
        """Its options (its `options` dataclass) read from `values`, which holds them as attributes (its stage's
        options), or their defaults without `values`; None for a method without options."""
        if self.options is None:
            return None
        if values is None:
            return self.options()
        return self.options(**{f.name: getattr(values, f.name) for f in fields(self.options)})

    def function(self) -> Callable:
        """The computation (imported on first use when named by a string)."""
        if callable(self.compute):
            return self.compute
        if not isinstance(self.compute, str):
            raise TypeError(f"method {self.id!r} has no compute function")
        module, _, name = self.compute.partition(":")
        return getattr(importlib.import_module(module), name)


class _Table(Mapping):
    """The method records by id, plug-ins included: a read-only view of the registry."""

    def __getitem__(self, method_id: str) -> Method:
        record = METHODS.find(method_id)
        if record is None:
            raise KeyError(method_id)
        return record

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS.names())

    def __len__(self) -> int:
        return len(METHODS.names())


REGISTRY: Mapping[str, Method] = _Table()
BUILT_IN: list[Method] = []  # reportgen's own methods, declared below; `reportgen.registry` reads them


def register(method: Method) -> Method:
    """Add a method (or replace one with the same id) at run time. Returns it. (A pip-installed plug-in names
    its records in the `reportgen.methods` entry point group instead.)"""
    return METHODS.register(method)


def unregister(method_id: str) -> None:
    METHODS.unregister(method_id)


def get(method_id: str) -> Method:
    return REGISTRY[method_id]


def ids(family: str) -> tuple[str, ...]:
    """The family's method ids, in registration order."""
    return tuple(m.id for m in METHODS if m.family == family)


def title(method_id: str) -> str:
    method = METHODS.find(method_id)
    return method.title if method is not None else method_id.replace("_", " ")


def grouped(method_ids) -> list[tuple[str, list[Method]]]:
    """The methods of `method_ids` by the group the page's picker lists them under: their family's `GROUPS` in
    order, then any other group (a plug-in's) in order of appearance; within a group, in the order given."""
    methods = [get(m) for m in method_ids]
    order = [g for m in methods for g in GROUPS.get(m.family, ())] + [m.group for m in methods]
    return [(g, [m for m in methods if m.group == g]) for g in dict.fromkeys(order)
            if any(m.group == g for m in methods)]


def canonical(name: str, family: str | None = None) -> str | None:
    """The method id `name` spells (an id or an alias, any case), within `family` when given; None if none."""
    method = METHODS.spelled(name, lambda m: family is None or m.family == family)
    return None if method is None else method.id


def _cam(id: str, title: str, needs: set[str], fn: str, aliases: tuple[str, ...] = (), note: str = "",
         options: type | None = None, group: str = "") -> None:
    BUILT_IN.append(Method(id=id, family="cam", title=title, aliases=aliases, needs=frozenset(needs),
                           compute=f"reportgen.methods.cam:{fn}", note=note, options=options, group=group))


def _grad(id: str, title: str, needs: set[str], fn: str, aliases: tuple[str, ...] = (), relu_rule: str | None = None,
          hooks: bool = False, note: str = "", options: type | None = None, group: str = "") -> None:
    BUILT_IN.append(Method(id=id, family="gradients", title=title, aliases=aliases, needs=frozenset(needs),
                           relu_rule=relu_rule, hooks=hooks, compute=f"reportgen.methods.gradients:{fn}", note=note,
                           options=options, group=group))


# ---------------------------------------------------------------------------- the CAM family (pytorch-grad-cam 1.5.7)

_cam("cam", "CAM", {"activations", "head"}, "original_cam", group="Gradient-free CAMs",
     note="the weights of the linear head after global average pooling")
_cam("gradcam", "Grad-CAM", {"activations", "gradients"}, "gradcam", note="channel weights: the mean gradient over the map")
_cam("gradcampp", "Grad-CAM++", {"activations", "gradients"}, "gradcampp", aliases=("gradcamplusplus",),
     note="channel weights: positive gradients weighed by second- and third-order terms")
_cam("xgradcam", "XGrad-CAM", {"activations", "gradients"}, "xgradcam",
     note="channel weights: gradient × activation over the activation's sum")
_cam("layercam", "LayerCAM", {"activations", "gradients"}, "layercam", aliases=("layerwisecam",),
     note="relu(gradient) × activation per cell, summed over channels")
_cam("hirescam", "HiResCAM", {"activations", "gradients"}, "hirescam",
     note="gradient × activation per cell, summed over channels")
_cam("eigencam", "Eigen-CAM", {"activations"}, "eigencam", group="Gradient-free CAMs",
     note="the activations' first principal component")
_cam("eigengradcam", "EigenGrad-CAM", {"activations", "gradients"}, "eigengradcam",
     note="the first principal component of gradient × activation")
_cam("scorecam", "Score-CAM", {"activations", "masked_forwards"}, "scorecam", options=MaskedOptions,
     group="Perturbation CAMs", note="channel weights: the class probability of the input masked by each channel")
_cam("ablationcam", "Ablation-CAM", {"activations", "masked_forwards"}, "ablationcam", options=MaskedOptions,
     group="Perturbation CAMs", note="channel weights: the score's relative drop when the channel is zeroed")
# detectors only (the task records refuse it for the others): black-box, masked forwards of the detector, no layer
BUILT_IN.append(Method(id="drise", family="cam", title="D-RISE", aliases=("detrise",), hooks=False, group="Perturbation CAMs",
                       compute="reportgen.methods.boxes:drise_cam", options=DriseOptions,
                       note="detectors only: saliency of random masks weighed by the box's detection similarity"))

# issue 26, the rest of pytorch-grad-cam 1.5.7's CAMs (reportgen.methods.cam_more)
_MORE = "reportgen.methods.cam_more"
BUILT_IN += [
    Method(id="gradcam_elementwise", family="cam", title="Grad-CAM element-wise", aliases=("gradcamelementwise",),
           needs=frozenset({"activations", "gradients"}), compute=f"{_MORE}:gradcam_elementwise",
           note="Σ_c relu(gradient × activation)"),
    Method(id="randomcam", family="cam", title="Random CAM", needs=frozenset({"activations"}),
           compute=f"{_MORE}:randomcam", note="a baseline: seeded random channel weights in [-1, 1)",
           baseline=True),
    Method(id="kpcacam", family="cam", title="KPCA-CAM", aliases=("kpca_cam",), needs=frozenset({"activations"}),
           compute=f"{_MORE}:kpcacam", group="Gradient-free CAMs",
           note="the activations' first kernel principal component (sigmoid kernel)"),
    Method(id="fem", family="cam", title="FEM", needs=frozenset({"activations"}), compute=f"{_MORE}:fem",
           group="Gradient-free CAMs",
           note="weights: each channel's share of cells above its mean + 2 standard deviations"),
    Method(id="shapleycam", family="cam", title="ShapleyCAM", needs=frozenset({"activations", "own_passes"}),
           compute=f"{_MORE}:shapleycam", note="weights: gradient − ½ Hessian × activations (a second-order pass)"),
    Method(id="finercam", family="cam", title="FinerCAM", aliases=("finer_cam",),
           needs=frozenset({"activations", "own_passes"}), compute=f"{_MORE}:finercam",
           note="Grad-CAM of the target's score against its 3 nearest classes (a backward of its own)"),
    Method(id="fullgrad", family="cam", title="FullGrad", aliases=("full_grad",),
           needs=frozenset({"own_passes"}), compute=f"{_MORE}:fullgrad",
           note="input × gradient plus every conv / batch-norm bias × gradient; reads no target layer"),
]

# issue 26, torchcam 0.5.0's Score-CAM variants (m26tc: reportgen.methods.cam_torchcam)
_TC = "reportgen.methods.cam_torchcam"
BUILT_IN += [
    Method(id="sscam", family="cam", title="SS-CAM", aliases=("smoothed_scorecam",),
           needs=frozenset({"activations"}), compute=f"{_TC}:sscam", options=SSCamOptions,
           group="Perturbation CAMs",
           note="Score-CAM's weights averaged over `sscam_samples` (35) forwards with seeded Gaussian noise "
                "(`sscam_std` 2) on the masks"),
    Method(id="iscam", family="cam", title="IS-CAM", aliases=("integrated_scorecam",),
           needs=frozenset({"activations"}), compute=f"{_TC}:iscam", options=ISCamOptions,
           group="Perturbation CAMs",
           note="Score-CAM's weights averaged over `iscam_steps` (10) masked inputs scaled by torchcam's running "
                "sums 0.1, 0.3, …"),
    Method(id="smoothgradcampp", family="cam", title="Smooth Grad-CAM++", aliases=("smoothgradcamplusplus",),
           needs=frozenset({"activations", "own_passes"}), compute=f"{_TC}:smoothgradcampp",
           options=SmoothGradCamppOptions,
           note="Grad-CAM++ with gradient moments averaged over `smoothgradcampp_samples` (4) passes of the input "
                "plus seeded noise (`smoothgradcampp_std` 0.3)"),
]
# part m26tc2: torchcam 0.5.0's LeGrad for vision transformers (reportgen.methods.legrad)
BUILT_IN.append(Method(id="legrad", family="cam", title="LeGrad", needs=frozenset({"own_passes"}),
                       group="Gradient-weighted CAMs",
                       compute="reportgen.methods.legrad:legrad", options=LeGradOptions,
                       note="vision transformers: positive gradients of each block's class score with respect to its "
                            "attention, averaged over heads, queries and blocks; reads no target layer"))

# ---------------------------------------------------------------------------- the gradient family (Captum 0.9.0)

_grad("saliency", "Saliency", {"input_grad"}, "saliency", aliases=("vanillagradient",), note="|gradient| of the logit")
_grad("input_x_gradient", "Input × gradient", {"input_grad"}, "input_x_gradient", aliases=("inputxgradient",),
      note="input × gradient")
_grad("guided_backprop", "Guided backprop", {"relu_rule"}, "guided_backprop", relu_rule="guided", hooks=True,
      group="Propagation rules", aliases=("guidedbackpropagation",),
      note="the gradient with each ReLU passing back only positive gradients at positive inputs")
_grad("deconvnet", "Deconvnet", {"relu_rule"}, "deconvnet", relu_rule="deconv", hooks=True, group="Propagation rules",
      aliases=("deconvolution",), note="the gradient with each ReLU passing back only positive gradients")
_grad("guided_gradcam", "Guided Grad-CAM", {"relu_rule", "activations", "gradients"}, "guided_gradcam",
      relu_rule="guided", hooks=True, options=GuidedGradCamOptions, group="Propagation rules",
      note="guided backprop × the Grad-CAM of the CAM layer, upsampled")
_grad("smoothgrad", "SmoothGrad", {"own_passes"}, "smoothgrad", aliases=("noisetunnel",), options=SmoothGradOptions,
      group="Noise and paths", note="mean gradient over noisy copies of the input")
_grad("integrated_gradients", "Integrated gradients", {"own_passes"}, "integrated_gradients", aliases=("ig",),
      options=IntegratedGradientsOptions, group="Noise and paths",
      note="(x − baseline) × the gradient's mean along the straight path from the baseline")
# part m26grad: more of Captum's gradient family (reportgen.methods.gradients_more)
for _id, _title, _fn, _options, _note in (
        ("smoothgrad_sq", "SmoothGrad²", "smoothgrad_sq", SmoothGradOptions,
         "mean squared gradient over SmoothGrad's noisy copies"),
        ("vargrad", "VarGrad", "vargrad", VarGradOptions, "variance of |gradient| over SmoothGrad's noisy copies"),
        ("gradientshap", "GradientShap", "gradientshap", GradientShapOptions,
         "(x − baseline) × gradient at random points between them, averaged"),
        ("deeplift", "DeepLift", "deeplift", DeepLiftOptions,
         "rescale rule from the baseline; a ReLU module called twice (ResNet's) is two calls")):
    BUILT_IN.append(Method(id=_id, family="gradients", title=_title, needs=frozenset({"own_passes"}),
                           hooks=_id == "deeplift",  # its rule hooks the non-linear modules: no TorchScript
                           compute=f"reportgen.methods.gradients_more:{_fn}", note=_note, options=_options,
                           group="Propagation rules" if _id == "deeplift" else "Noise and paths"))
# part m26tc2: Captum's DeepLiftShap (reportgen.methods.gradients_shap)
BUILT_IN.append(Method(id="deepliftshap", family="gradients", title="DeepLiftShap",
                       needs=frozenset({"own_passes"}), hooks=True,  # DeepLift's rule hooks the non-linear modules
                       compute="reportgen.methods.gradients_shap:deepliftshap", options=DeepLiftShapOptions,
                       group="Propagation rules",
                       note="DeepLift averaged over `shap_baselines` (10) noisy copies of the baseline"))

# -- the perturbation methods: black-box, forward only, through the build's fast inference forward (classifiers)


def _black_box(id: str, title: str, options: type, compute: str, note: str, aliases: tuple[str, ...] = ()) -> None:
    BUILT_IN.append(Method(id=id, family="gradients", title=title, aliases=aliases, hooks=False, options=options,
                           compute=f"reportgen.methods.{compute}", note=f"classifiers: {note}",
                           group="Perturbation (black box)"))


_black_box("rise", "RISE", RiseOptions, "perturbation:rise",
           "the mean of random masks weighed by the class probability of the masked image")
_black_box("occlusion", "Occlusion", OcclusionOptions, "perturbation:occlusion",
           "the logit's drop when a square window of zeros covers the pixel")
# Captum's FeatureAblation and ShapleyValueSampling over superpixels (reportgen.methods.ablation)
_black_box("feature_ablation", "Feature ablation", FeatureAblationOptions, "ablation:feature_ablation",
           "the logit's drop when the pixel's SLIC superpixel is set to zero", aliases=("featureablation",))
_black_box("shapley_value_sampling", "Shapley value sampling", ShapleySamplingOptions,
           "ablation:shapley_value_sampling",
           "each SLIC superpixel's mean logit rise when put back in random orders", aliases=("shapleyvaluesampling",))
# Captum's Lime and KernelShap over the same superpixels (reportgen.methods.surrogate)
_black_box("lime", "LIME", LimeOptions, "surrogate:lime",
           "a Lasso fitted to the logit over random subsets of the SLIC superpixels")
_black_box("kernel_shap", "Kernel SHAP", KernelShapOptions, "surrogate:kernel_shap",
           "superpixel Shapley values from a Shapley-kernel weighted linear fit", aliases=("kernelshap",))
# part m26lrp: layer-wise relevance propagation, Captum's LRP and Zennit's composites (reportgen.methods.lrp); hooked
# (no TorchScript); a layer without a rule is refused at validation
for _id, _title, _options, _note in (
        ("lrp", "LRP", CaptumLrpOptions,
         "Captum's LRP: ε-rule (1e-9) on every layer, × the logit; VGG-like chains only (no residual sums)"),
        ("lrp_epsilon_plus_flat", "LRP ε-plus-flat", LrpOptions,
         "Zennit's EpsilonPlusFlat: flat first layer, z⁺ convolutions, ε dense layers; VGG-like and torchvision ResNets"),
        ("lrp_epsilon_gamma_box", "LRP ε-γ-box", LrpOptions,
         "Zennit's EpsilonGammaBox: z-box first layer (the normalised pixel range), γ convolutions, ε dense layers"),
        ("lrp_epsilon_alpha2_beta1_flat", "LRP ε-α2β1-flat", LrpOptions,
         "Zennit's EpsilonAlpha2Beta1Flat: flat first layer, α2β1 convolutions, ε dense layers")):
    BUILT_IN.append(Method(id=_id, family="gradients", title=_title, needs=frozenset({"own_passes"}), hooks=True,
                           compute=f"reportgen.methods.lrp:{_id}", note=_note, options=_options,
                           group="Propagation rules"))
