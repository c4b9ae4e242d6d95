"""Errors a user can fix. The CLI prints their message and exits with code 2. Also the warnings about images that
a build gives once per kind (`ImageWarning`, `merge_warnings`)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class ReportgenError(Exception):
    """Bad config, bad input or bad usage: one clear message, no traceback."""


class ConfigError(ReportgenError):
    """A problem in the YAML config, ideally naming the key path and its line."""


class ConfigWarning(UserWarning):
    """A config key that changes nothing (another model source's, an option of a method not configured): the CLI
    prints `warning: <message>`."""


class WriteError(ReportgenError):
    """The disk would not take a file of the report (full, read-only, gone) while the build ran: the build stops
    there, as on bad input; nothing is written and the previous report stays."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, a CI timeout), which the CLI turns into this: every path that cleans up
    after Ctrl-C cleans up after it too; the CLI exits 143."""


class StageSkipped(ReportgenError):
    """A stage found nothing to show (no training logs match): the report says why; not a failure."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> str:
    """" Did you mean `x`?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


EXAMPLES = 3  # images a merged warning names


@dataclass(frozen=True)
class ImageWarning:
    """A warning about one image, among a stage's `warnings` (or `notes`) strings. The build gives those of one
    `kind` once (`merge_warnings`): how many images, EXAMPLES of them and the fix, so that a warning that holds for
    many images is one line, not one per image."""

    kind: str  # what is wrong, in the same words for every image: "Integrated gradients: ... by over 5%"
    image: str  # the image's name, with what about it, if anything: "cat: class 3 12.4%"
    fix: str  # what to do: "raise `steps` (now 8)."

    def __str__(self) -> str:
        return merge_warnings([self])[0]


def merge_warnings(warnings: Iterable[str | ImageWarning]) -> tuple[str, ...]:
    """`warnings` as a user reads them, in the order each first appears: every text once, and the ImageWarnings
    of one kind and fix merged into one text with their count and the first EXAMPLES images."""
    merged: dict[str | tuple[str, str], list[str]] = {}  # a text, or (kind, fix) -> its images
    for warning in warnings:
        if isinstance(warning, ImageWarning):
            merged.setdefault((warning.kind, warning.fix), []).append(warning.image)
        else:
            merged.setdefault(str(warning), [])
    return tuple(key if isinstance(key, str) else _counted(*key, images) for key, images in merged.items())


def _counted(kind: str, fix: str, images: list[str]) -> str:
    shown = "; ".join(images[:EXAMPLES])
    many = len(images) > EXAMPLES
    return (f"{kind} for {len(images)} image{'s' if len(images) > 1 else ''} ({'e.g. ' if many else ''}{shown}): "
            f"{fix}")
