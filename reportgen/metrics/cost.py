"""What recomputing a forward-only method's maps costs the evaluation, and which of them it leaves alone.

Max-sensitivity recomputes each map `SAMPLES` times per image, the sanity cascade once per randomised block. For a
gradient method that is a few backward passes; for a forward-only method (RISE, Occlusion, the superpixel methods)
each map is hundreds or thousands of forwards. With `analyses.evaluation.recompute: bounded` (the default) such a
method is recomputed only when `SAMPLES` maps cost no more forwards than its deletion curve (one forward per step),
so the evaluation of a perturbation method never costs more than its deletion curve; the page says what was left
out and what it would have cost. A method says what one map costs by its options' `forwards(size)`.
"""
from __future__ import annotations

from typing import Any

from ..methods import get, title
from .scoring import SAMPLES


def curve_forwards(size: tuple[int, int], step: int) -> int:
    """Forwards of one image's deletion curve: the image, then one per step of `step` pixels."""
    return -(-size[0] * size[1] // step) + 1


def costly_recomputes(grads: Any, recompute: str, metrics: tuple[str, ...], size: tuple[int, int],
                      step: int) -> dict[str, int]:
    """The methods of the gradients stage's result `grads` (None: none) whose `SAMPLES` recomputations cost more
    forwards than the deletion curve of an input of `size` (H, W), each with its forwards a map; none when
    `recompute` is "always" or `metrics` recompute no map."""
    if grads is None or recompute == "always" or not {"sensitivity", "sanity"} & set(metrics):
        return {}
    out = {}
    for method in grads.maps:
        options = get(method).options_from(grads.config)
        forwards = options.forwards(size) if hasattr(options, "forwards") else None
        if forwards is not None and forwards * SAMPLES > curve_forwards(size, step):
            out[method] = forwards
    return out


def costly_note(costly: dict[str, int], metrics: tuple[str, ...], size: tuple[int, int], step: int) -> list[str]:
    """The page's word on the methods `costly_recomputes` left out: what they would have cost."""
    which = [name for metric, name in (("sensitivity", "Max-sensitivity"), ("sanity", "the sanity cascade"))
             if metric in metrics]
    if not costly or not which:
        return []
    costs = ", ".join(f"{title(m)} ({n:,} forwards a map)" for m, n in costly.items())
    return [f"{' and '.join(which)} recompute maps ({SAMPLES} per image; one per randomised block): left out for "
            f"{costs}, against the {curve_forwards(size, step):,} forwards of an image's deletion curve. "
            "`analyses.evaluation.recompute: always` computes them too."]
