"""The plug-in stage's section: a table, no pixels."""
from __future__ import annotations


def plot(result, ctx=None) -> dict:
    d = result.config.digits
    return {"rows": [{"image": name, "mean": [f"{v:.{d}f}" for v in result.mean[i]],
                      "std": [f"{v:.{d}f}" for v in result.std[i]]} for i, name in enumerate(result.images)]}
