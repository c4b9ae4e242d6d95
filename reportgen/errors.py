"""Errors a user can fix. The CLI prints their message and exits with code 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReportgenError(Exception):
    """Bad config, bad input or bad usage: one clear message, no traceback."""


class ConfigError(ReportgenError):
    """A problem in the YAML config, ideally naming the key path and its line."""


class ConfigWarning(UserWarning):
    """A config key that changes nothing (another model source's, an option of a method not configured): the CLI
    prints `warning: <message>`."""


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
