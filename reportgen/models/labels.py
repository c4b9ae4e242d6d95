"""Class labels: the ones the model's source knows, ImageNet's, or a text file, one label a line."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ReportgenError


LABELS_LIMIT = 64 * 2**20  # bytes: a million labels of 60 characters


def load_labels(choice: str | None, num_classes: int, categories: Sequence[str] | None = None,
                explicit: bool = False) -> tuple[list[str] | None, str]:
    """(labels or None, a note for the report). `choice` is `model.labels`: "imagenet", a file path, or None.

    "imagenet" takes `categories`, the labels the model's source knows (`ModelAdapter.categories`), when
    given, else torchvision's ImageNet list. Labels that do not fit the model's `num_classes` outputs are
    dropped with a note when "imagenet" is only the default, and are an error when the config asks for them
    (`explicit`): the user said the model has ImageNet's classes, and it does not. A file must hold exactly
    `num_classes` labels.
    """
    if choice is None:
        return None, ""
    if categories is not None and not isinstance(categories, (list, tuple)):
        categories = getattr(categories, "meta", {}).get("categories")  # a torchvision weights enum (old callers)
    if choice == "imagenet":
        if categories:
            labels = list(categories)
        else:
            from .torchvision import import_models

            import_models()  # torchvision without torch._dynamo
            from torchvision.models._meta import _IMAGENET_CATEGORIES

            labels = list(_IMAGENET_CATEGORIES)
        if len(labels) != num_classes:
            fix = "give a labels file (one label a line, in class-index order) or `null`"
            if explicit:
                raise ReportgenError(f"`model.labels`: `imagenet` gives {len(labels)} labels, but the model has "
                                     f"{num_classes} outputs: {fix}.")
            return None, (f"`model.labels` is left at `imagenet`, whose {len(labels)} labels do not fit the model's "
                          f"{num_classes} outputs: classes are shown as `class 0` to `class {num_classes - 1}`. "
                          f"Set `model.labels`: {fix}.")
        return labels, ""
    path = Path(choice)
    labels = read_labels_file(path)
    if len(labels) != num_classes:
        raise ReportgenError(f"`model.labels`: {path.name} has {len(labels)} labels, but the model has "
                             f"{num_classes} outputs: one label a line, in class-index order.")
    return labels, ""


def read_labels_file(path: Path) -> list[str]:
    """The labels of a text file, one a line (blank lines skipped); a clear error for what is not one."""
    try:
        if path.exists() and not path.is_file():  # a folder, /dev/zero, a FIFO: nothing to read to its end
            raise ReportgenError(f"`model.labels`: {path} is not a plain file; give a text file, one label a line.")
        if path.is_file() and path.stat().st_size > LABELS_LIMIT:
            raise ReportgenError(f"`model.labels`: {path} is {path.stat().st_size:,} bytes, more than a labels "
                                 f"file holds ({LABELS_LIMIT:,}); give a text file, one label a line.")
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ReportgenError(f"`model.labels`: cannot read the labels file {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise ReportgenError(f"`model.labels`: {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8, one "
                             "label a line.") from None
    return labels

