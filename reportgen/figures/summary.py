"""The summary section needs no pixels: rows for the nested table and the totals."""
from __future__ import annotations

from dataclasses import asdict


def mult_adds_text(value: int) -> str:
    """torchinfo's unit choice (M below 1e9, G below 1e12, else T), printed with the letter, not the enum."""
    for unit, scale in (("T", 1e12), ("G", 1e9)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value / 1e6:.2f} M"


def plot(result, ctx=None) -> dict:
    rows = [asdict(row) for row in result.rows]
    for i, row in enumerate(rows):
        row["has_children"] = i + 1 < len(rows) and rows[i + 1]["depth"] > row["depth"]
    return {
        "rows": rows,
        "totals": asdict(result.totals),
        "mult_adds_text": mult_adds_text(result.totals.total_mult_adds),
        "flops_text": None if getattr(result, "flops", None) is None else mult_adds_text(result.flops) + "FLOPs",
        "flops_note": getattr(result, "flops_note", ""),
        "input_shape": result.input_shape,
        "depth": max((r["depth"] for r in rows), default=0),
    }
