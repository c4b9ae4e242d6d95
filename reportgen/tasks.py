"""The task registry: what a model does (`model.task`), one record per task, the only place a task is named.

A task record says what applies to a model of that task and what does not: the stages (`stages`, None: every
one), the methods (`methods_refused`: method id -> why not), the config keys that belong to another task
(`settings_refused`: dotted key -> what applies instead), and the stages it computes its own way (`variants`:
stage name -> "module:ATTRIBUTE" of a `Stage` record that replaces the stage's for this task: the data-set
metrics of a segmenter). How a model's output is read for a task is the model adapter's (`models.pick_output`);
what a target is (a class; a class inside its predicted region) is the methods' (`methods.regions`).

The task is what the config says (`model.task`), or what the model says: torchvision's segmentation builders,
a Hugging Face `...ForSemanticSegmentation` folder, an output `{"out": (N, K, H, W)}`; else classification.

This module imports no torch (config validation reads it). A plug-in adds a task in the `reportgen.tasks` entry
point group.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ReportgenError
from .registry import TASKS


@dataclass(frozen=True)
class Task:
    name: str  # `model.task`
    title: str  # what the report calls it
    note: str = ""  # one line for the docs
    order: int = 100
    outputs: str = "(N, K)"  # what the model's output is read as, for messages and the docs
    stages: frozenset[str] | None = None  # the stages that apply (None: every one)
    methods_refused: Mapping[str, str] = field(default_factory=dict)  # method id -> why it does not apply
    settings_refused: Mapping[str, str] = field(default_factory=dict)  # dotted config key -> what applies instead
    variants: Mapping[str, str] = field(default_factory=dict)  # stage name -> "module:ATTRIBUTE" of its Stage record
    named_targets: bool = True  # whether `targets: [classes]` applies (a refused `targets` is then only its top-k)

    def variant(self, stage):
        """The stage record this task runs for `stage` (its own `variants` entry, else `stage` itself)."""
        name = self.variants.get(stage.name)
        if name is None:
            return stage
        module, _, attribute = name.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def refuse(self, config) -> None:
        """A ReportgenError for the first stage, method or setting of `config` that does not apply to this task."""
        analyses = config.analyses
        configured = list(analyses.enabled())
        if self.stages is not None:
            for name in configured:
                if name not in self.stages:
                    raise ReportgenError(f"`analyses.{name}` does not apply to a {self.name} model (`model.task: "
                                         f"{self.name}`); what applies: "
                                         f"{', '.join(f'`{s}`' for s in sorted(self.stages))}.")
        for name in configured:
            methods = getattr(getattr(analyses, name), "methods", ()) or ()
            for method in methods:
                if method in self.methods_refused:
                    raise ReportgenError(f"`analyses.{name}.methods`: `{method}` does not apply to a {self.name} "
                                         f"model: {self.methods_refused[method]}")
        for key, instead in self.settings_refused.items():
            if _is_set(config, key, self.named_targets):
                raise ReportgenError(f"`{key}` does not apply to a {self.name} model (`model.task: {self.name}`): "
                                     f"{instead}")


def _is_set(config, key: str, named_targets: bool = True) -> bool:
    """Whether the dotted `key` of `config` is present and differs from its default (with `named_targets`, an
    explicit list of classes for `targets` is not a top-k: it applies)."""
    owner: object = config
    *path, name = key.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return False
    value = getattr(owner, name, None)
    if named_targets and getattr(value, "explicit", False):
        return False
    return value != getattr(type(owner)(), name, None)


_NOT_DETECTION = {"detection": "it holds a detector's options (`model.task: detection`); remove the section."}
_BOXES = ("a detector's maps explain its boxes, whatever their class: `detection.score_threshold` and "
          "`detection.max_boxes` choose them; leave `targets` out.")

BUILT_IN: list[Task] = [
    Task(name="classification", title="Classification", order=10, outputs="logits (N, K)",
         note="one class per image: logits (N, K)", settings_refused=_NOT_DETECTION,
         methods_refused={"drise": "D-RISE explains a detector's boxes; for a classifier use RISE-like occlusion "
                                   "or the gradient methods."}),
    Task(name="segmentation", title="Semantic segmentation", order=20, outputs="logits (N, K, H, W)",
         note="a class per pixel: logits (N, K, H, W); explained per class inside its predicted region",
         stages=frozenset({"summary", "kernels", "feature_maps", "cam", "gradients", "dataset", "evaluation",
                           "training"}),
         methods_refused={"cam": "the original CAM needs a linear head after global pooling, which a segmenter "
                                 "has not; Grad-CAM and the others apply.",
                          "drise": "D-RISE explains a detector's boxes; a segmenter's classes are explained by the "
                                   "CAM and gradient methods.",
                          "rise": "RISE weighs its masks by a classifier's class probability; a segmenter's classes "
                                  "are explained by the CAM and gradient methods.",
                          "occlusion": "Occlusion reads a classifier's logit; a segmenter's classes are explained by "
                                       "the CAM and gradient methods.",
                          "feature_ablation": "FeatureAblation reads a classifier's logit; a segmenter's classes are "
                                              "explained by the CAM and gradient methods.",
                          "shapley_value_sampling": "Shapley value sampling reads a classifier's logit; a segmenter's "
                                                    "classes are explained by the CAM and gradient methods."},
         settings_refused={**_NOT_DETECTION,
             "analyses.dataset.top_confused": "a segmenter's data-set section lists every class's IoU and draws the "
                                              "confusion matrix of pixels up to `max_matrix_classes` classes.",
             "analyses.cam.targets": "a segmenter's maps explain every class present in the prediction; leave "
                                     "`targets` out, or name classes (`targets: [person, car]`).",
             "analyses.gradients.targets": "a segmenter's maps explain every class present in the prediction; "
                                           "leave `targets` out, or name classes (`targets: [person, car]`).",
             "inputs.top_k": "a segmenter's records list the classes by the share of the pixels predicted as them.",
             "analyses.evaluation.tolerance": "it is the pointing game's, and localisation does not apply to a "
                                              "segmenter; its evaluation scores deletion, insertion, ROAD, the "
                                              "confidence change and the sanity cascade.",
             "analyses.evaluation.infidelity_sd": "it is infidelity's noise, and infidelity does not apply to a "
                                                  "segmenter; its evaluation scores deletion, insertion, ROAD, the "
                                                  "confidence change and the sanity cascade.",
         },
         variants={"dataset": "reportgen.stages.dataset_segmentation:VARIANT"}),
    Task(name="detection", title="Object detection", order=30, outputs="boxes, labels, scores per image",
         note="boxes with a class and a score: torchvision's list of dicts, or DETR-style `logits` and `pred_boxes`; "
              "explained per box, scored with COCO's AP",
         stages=frozenset({"summary", "kernels", "feature_maps", "cam", "dataset", "evaluation", "training"}),
         methods_refused={"cam": "the original CAM needs a linear head after global pooling, which a detector has "
                                 "not; Grad-CAM and the others apply."},
         settings_refused={
             "analyses.dataset.top_confused": "a detector's data-set section lists COCO's AP per class and draws "
                                              "its precision-recall curves.",
             "analyses.cam.targets": _BOXES,
             "analyses.evaluation.infidelity_sd": "it is infidelity's noise, and infidelity does not apply to a "
                                                  "detector; its evaluation scores deletion, insertion, ROAD, the "
                                                  "confidence change, the pointing game against the true boxes and "
                                                  "the sanity cascade.",
         },
         variants={"dataset": "reportgen.stages.dataset_detection:VARIANT",
                   "cam": "reportgen.stages.cam_detection:VARIANT",
                   "evaluation": "reportgen.stages.evaluation_boxes:VARIANT"},
         named_targets=False),
]


def get(name: str) -> Task:
    return TASKS.get(name, key="model.task")


def names() -> tuple[str, ...]:
    return TASKS.names()
