"""Values several parts of the schema share: which classes to explain, layer patterns, preprocessing."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import did_you_mean
from .rules import COUNT, SIZE, Shorthand, setting, yaml_fields

if TYPE_CHECKING:
    from .convert import Ctx

@dataclass(frozen=True)
class TargetSpec:
    """Which classes to explain: the top `k` predictions, or an explicit list (indices or labels)."""

    k: int = setting(1, ge=0, yaml="topk")  # 0 with explicit classes
    classes: tuple[int | str, ...] = setting((), ge=0)

    @property
    def explicit(self) -> bool:
        return bool(self.classes)

    _EXPECTED = "expected top1, {topk: N}, or a list of class indices or labels; got "

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: Ctx) -> Any:
        """top1 | topN | {topk: N} | {classes: [...]} | an index or a label | a list of them."""
        if value is None:
            return cls(k=1)
        if isinstance(value, str):
            match = re.fullmatch(r"(?i)top[-_ ]?(\d+)", value.strip())
            if match:
                return cls(k=max(1, int(match.group(1))))
            if not value.strip():
                raise ctx.error(path, f"{cls._EXPECTED}{value!r}.")
            return cls(k=0, classes=(value,))  # one label
        if isinstance(value, dict):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if (isinstance(value, list) and value
                and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value)):
            return Shorthand("classes", value)
        raise ctx.error(path, f"{cls._EXPECTED}{value!r}.")

    def _validate(self, err: Callable[[str, str], None]) -> TargetSpec:
        if self.classes:
            if self.k not in (0, 1):
                err("topk", "give `topk` or `classes`, not both.")
            return TargetSpec(k=0, classes=self.classes)
        if self.k < 1:
            err("topk", f"must be at least 1, got {self.k}.")
        return self


@dataclass(frozen=True)
class LayerPattern:
    """Select layers by type and/or depth (`{type: Conv2d, depth: 2}`) instead of by name."""

    type: str | None = setting(None, pattern=r"[A-Za-z_]\w*", pattern_text="a module class name like Conv2d")
    depth: int | None = setting(None, **COUNT)

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a layer name or {{type: Conv2d, depth: 2}}, got {value!r}.")
        return value

    def _validate(self, err: Callable[[str, str], None]) -> None:
        if self.type is None and self.depth is None:
            err("", "a layer pattern needs `type:` and/or `depth:`.")


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = setting((0.229, 0.224, 0.225), gt=0)

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: Ctx) -> Any:
        """imagenet | none | {mean: [...], std: [...]} (a missing mean is 0, a missing std 1)."""
        if value == "imagenet":
            return cls()
        if value is None or value is False or value == "none":
            return None
        if isinstance(value, dict):
            return {"mean": [0.0], "std": [1.0]} | value
        hint = did_you_mean(value, ["imagenet", "none"]) if isinstance(value, str) else ""
        raise ctx.error(path, f"expected imagenet, none or {{mean: [...], std: [...]}}, got {value!r}.{hint}")


@dataclass(frozen=True)
class Preprocess:
    """resize: shorter side (int) or [h, w]; center_crop: int or [h, w]. Both null: fit to input_size."""

    resize: tuple[int, ...] | None = setting(None, **SIZE)
    center_crop: tuple[int, ...] | None = setting(None, **SIZE)
    normalize: Normalize | None = field(default_factory=Normalize)
    from_weights: bool = setting(False, yaml="")  # set by the shorthand `preprocess: from_weights`
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"  # of `resize` (from_weights: theirs)

    @classmethod
    def _from_yaml(cls, value: Any, path: tuple, ctx: Ctx) -> Any:
        if value == "from_weights":
            return cls(normalize=None, from_weights=True)
        if value is None:
            return cls()
        if not isinstance(value, dict):
            keys = ", ".join(yaml_fields(cls))
            raise ctx.error(path, f"expected from_weights or a mapping ({keys}), got {value!r}.")
        return value

    def _validate(self, err: Callable[[str, str], None]) -> Preprocess:
        if self.from_weights and self.normalize is not None:  # the weights' own normalisation is used
            return dataclasses.replace(self, normalize=None)
        return self

