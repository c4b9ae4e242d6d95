"""Progress bars for long loops, on stderr (placeholder until the CLI branch lands)."""
from __future__ import annotations

from collections.abc import Iterable

_enabled = False


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def track(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it") -> Iterable:
    if not _enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
