"""`model.source: huggingface`: an image classifier, semantic segmenter or object detector saved in a local folder
(`save_pretrained`), loaded with `AutoModelForImageClassification` (or, for an architecture `...ForSemanticSegmentation`
in the config's `architectures`, `AutoModelForSemanticSegmentation`; `...ForObjectDetection`,
`AutoModelForObjectDetection`) `.from_pretrained(folder, local_files_only=True)`: nothing is downloaded.

The folder holds `config.json` and the weights (`model.safetensors`, `pytorch_model.bin`, or their sharded
index). The labels are the config's `id2label`; the preprocessing (`inputs.preprocess: from_weights`) is the
folder's `preprocessor_config.json`; the logits are the output's `.logits`. A segmenter's logits (N, K, h, w) may
be smaller than the input (SegFormer's and BEiT's are at 1/4, MobileViT's at 1/32): the adapter upsamples them to
the input's (H, W) as the image processors' `post_process_semantic_segmentation` does (`adapter.pick_segmentation`).

The detectors are DETR (with `use_timm_backbone: false` and a Hugging Face backbone such as `ResNetConfig`, or with
timm installed), YOLOS and RT-DETR (v1) (`DETECTORS`): their `logits` and `pred_boxes` are read as their image
processors' `post_process_object_detection` reads them (`detection.from_queries`). They take `pixel_values`
normalised as their processors do (from_weights: the folder's preprocessor_config.json). Other detectors (RT-DETR
v2, D-FINE, Deformable and Conditional DETR) are refused by name: their post-processing is not checked here.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.rules import setting, string_keys
from ..config.values import Normalize, Preprocess
from ..errors import ReportgenError
from .adapter import ModelAdapter, Source
from .checkpoint import first_line

INSTALL = "pip install 'reportgen[huggingface]'"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as preprocessor configs store them
# the task of an architecture named `...<suffix>` in config.json, and the Auto class that loads it
TASKS = {"ForSemanticSegmentation": ("segmentation", "AutoModelForSemanticSegmentation"),
         "ForObjectDetection": ("detection", "AutoModelForObjectDetection")}
# the object detectors whose outputs reportgen reads (a softmax over classes + "no object", DETR's post-processing)
DETECTORS = ("DetrForObjectDetection", "YolosForObjectDetection", "RTDetrForObjectDetection")
CLASSIFIER = ("classification", "AutoModelForImageClassification")

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class HuggingfaceOptions:
    path: Path | None = setting(None, kind="path")  # a local folder with config.json and the weights
    kwargs: dict = setting(factory=dict, check=string_keys)  # keyword arguments of from_pretrained

    def _validate(self, err) -> None:
        if self.path is None:
            err("path", "source `huggingface` needs `path:` to a local folder with config.json and the weights.")


def load(cfg: ModelConfig, base_dir: Path | None = None) -> ModelAdapter:
    """The classifier or segmenter in the folder `cfg.path`."""
    folder = cfg.path
    if not folder.is_dir():
        raise ReportgenError(f"`model.path`: {folder} is not a folder. A Hugging Face model is a local folder "
                             "with config.json and its weights (`model.save_pretrained(folder)`).")
    if not (folder / "config.json").is_file():
        raise ReportgenError(f"`model.path`: {folder} has no config.json, so it is not a saved Hugging Face model "
                             "(`model.save_pretrained(folder)` writes one).")
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise ReportgenError(f"`model.path`: {folder} has no weights: expected one of {', '.join(WEIGHTS)}. "
                             "reportgen never downloads; put the weights file beside config.json.")
    if cfg.kwargs.get("trust_remote_code"):
        raise ReportgenError("`model.kwargs`: trust_remote_code would run Python code from the model folder; reportgen "
                             "loads only the architectures transformers ships. Leave it out.")
    config = _json(folder / "config.json")
    if "auto_map" in config:
        raise ReportgenError(f"`model.path`: {folder / 'config.json'} has an `auto_map`: the model is Python code in "
                             "the folder, which reportgen does not run. Use a folder of an architecture transformers "
                             "ships.")
    architectures = config.get("architectures") or []
    task, auto = next((TASKS[suffix] for suffix in TASKS for name in architectures
                       if isinstance(name, str) and name.endswith(suffix)), CLASSIFIER)
    unread = [name for name in architectures if task == "detection" and name not in DETECTORS]
    if unread:
        raise ReportgenError(f"`model.path`: {folder} holds a {unread[0]}, whose outputs reportgen does not read; it "
                             f"reads the detectors {', '.join(DETECTORS[:-1])} and {DETECTORS[-1]}.")
    try:
        import transformers
    except ImportError:
        raise ReportgenError("`model.source: huggingface` needs the transformers package, which is not installed: "
                             f"{INSTALL}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            model = getattr(transformers, auto).from_pretrained(
                str(folder), **{**cfg.kwargs, "local_files_only": True, "trust_remote_code": False})
    except Exception as exc:
        raise ReportgenError(f"`model.path`: loading the Hugging Face model in {folder} failed: "
                             f"{type(exc).__name__}: {first_line(exc)}.") from None
    labels = getattr(model.config, "id2label", None) or {}
    categories = [str(labels.get(i, labels.get(str(i), i))) for i in range(len(labels))] or None
    return ModelAdapter(model=model, source="huggingface",
                        description=f"Hugging Face {type(model).__name__} from {folder.name}",
                        categories=categories, prescribed=preprocess_from_folder(folder), task=task)


def _json(path: Path) -> dict:
    """A JSON object of the folder's (at most 16 MiB: a config is a few kB)."""
    try:
        if path.stat().st_size > 2**24 or not path.is_file():
            raise ValueError("not a plain file of at most 16 MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportgenError(f"`model.path`: {path} is not valid JSON ({first_line(exc)}).") from None
    if not isinstance(data, dict):
        raise ReportgenError(f"`model.path`: {path} holds no JSON object.")
    return data


def preprocess_from_folder(folder: Path) -> Preprocess | None:
    """The folder's preprocessor_config.json as a Preprocess (size {height, width}: resized to that; size
    {shortest_edge}: the shorter side; then `crop_size` when `do_center_crop`), or None without one."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    pre = _json(path)

    def size(value) -> tuple[int, ...] | None:
        if isinstance(value, int):
            return (value,)
        if isinstance(value, dict):
            if "height" in value and "width" in value:
                return int(value["height"]), int(value["width"])
            if "shortest_edge" in value:
                return (int(value["shortest_edge"]),)
        return None

    resize = size(pre.get("size")) if pre.get("do_resize", True) else None
    crop = size(pre.get("crop_size")) if pre.get("do_center_crop", False) else None
    normalize = Normalize(mean=tuple(pre.get("image_mean", (0.5,) * 3)), std=tuple(pre.get("image_std", (0.5,) * 3))) \
        if pre.get("do_normalize", True) else None
    return Preprocess(resize=resize, center_crop=crop, normalize=normalize,
                      interpolation=RESAMPLE.get(pre.get("resample", 2), "bilinear"))


SOURCE = Source(name="huggingface", options=HuggingfaceOptions, load=load, order=50,
                note="a local Hugging Face folder (`pip install 'reportgen[huggingface]'`); never downloads")
