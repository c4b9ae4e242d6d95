"""Progress bars for long loops (tqdm on stderr, with rate and ETA), switched on by the CLI only.

    from . import progress
    for image in progress.track(images, desc="cam", unit="image"):
        ...
    with progress.bar(total=steps * len(images), desc="integrated gradients", unit="step") as bar:
        ...
        bar.update(steps)

Off by default: the Python API and tests print nothing. `reportgen build` calls
`configure(not quiet and sys.stderr.isatty())`: bars on a terminal, nothing per step when stderr is a file
or a pipe (the CLI's one line per stage is enough there), nothing at all under -q.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled = False


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`1 image`, `3 images`, `2 batches` (`nouns`: a plural that is not `noun` + s): counts in progress lines and
    messages."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def configure(enabled: bool) -> None:
    """Turn progress bars on or off for this process (the CLI decides; the default is off)."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
    """`iterable` with a progress bar on stderr while it is consumed (when enabled), else `iterable` itself.
    `total` defaults to len(iterable) where it has one."""
    if not _enabled:
        return iterable
    return _tqdm(iterable=iterable, total=total, desc=desc, unit=unit)


class _NullBar:
    """What `bar` gives when progress is off: update() and set_postfix_str() do nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@contextlib.contextmanager
def bar(total: int | None, desc: str = "", unit: str = "it") -> Iterator:
    """A bar for loops that are not one iterable: `with bar(total, desc, unit) as b: ... b.update(n)`.
    The bar is closed (and cleared) when the block ends, also on an error or Ctrl-C."""
    if not _enabled:
        yield _NullBar()
        return
    handle = _tqdm(total=total, desc=desc, unit=unit)
    try:
        yield handle
    finally:
        handle.close()


def _tqdm(**kwargs):
    from tqdm import tqdm

    # sys.stderr looked up now, not at import: the CLI (and its tests) may have replaced it
    return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.2, **kwargs)
