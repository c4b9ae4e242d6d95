"""Which images a report shows in detail: a few chosen from the predictions over all of them.

`choose` takes, per image, the true class (-1 where unknown), the predicted class and the confidence (the
largest softmax probability) and fills `budget` places in this order:

  1. the `mistakes` most confident wrong predictions (confidence high to low);
  2. the `uncertain` least confident correct predictions (confidence low to high); where no image has a true
     class, the least confident predictions instead;
  3. a seeded sample per class: the classes (true class where known, else the predicted one) in a seeded
     order, one image of each per round, `per_class` rounds, while places are left.

Ties keep the lower index; an image is chosen once (for its first reason). A build over at most `budget`
images shows them all. The result is in image order, so the detail figures follow the inputs' order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

MISTAKE, UNCERTAIN, LEAST_CONFIDENT, SAMPLE, ALL = ("confident mistake", "least confident correct",
                                                    "least confident", "class sample", "all images")


@dataclass(frozen=True)
class Detail:
    indices: tuple[int, ...]  # chosen images, ascending
    reasons: dict[int, str]  # index -> why it was chosen
    notes: tuple[str, ...] = field(default=())  # what was asked for but does not exist


def choose(truth: np.ndarray, pred: np.ndarray, confidence: np.ndarray, *, budget: int, mistakes: int,
           uncertain: int, per_class: int, seed: int) -> Detail:
    n = len(pred)
    if n <= budget:
        return Detail(tuple(range(n)), dict.fromkeys(range(n), ALL))
    truth, pred = np.asarray(truth, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    confidence = np.asarray(confidence, dtype=np.float64)
    known = truth >= 0
    reasons: dict[int, str] = {}
    notes: list[str] = []

    def take(candidates: np.ndarray, want: int, reason: str, what: str) -> None:
        room = budget - len(reasons)
        fresh = [int(i) for i in candidates if int(i) not in reasons]
        for i in fresh[:min(want, room)]:
            reasons[i] = reason
        if want > len(fresh) and want <= room:
            notes.append(f"`report.detail` asks for {want} {what}; there {'is' if len(fresh) == 1 else 'are'} "
                         f"{len(fresh) or 'none'}: {'all' if fresh else 'none'} shown.")

    order = np.argsort(-confidence, kind="stable")  # most confident first
    if known.any():
        wrong = order[(known & (pred != truth))[order]]
        take(wrong, mistakes, MISTAKE, "confident mistakes")
        right = np.argsort(confidence, kind="stable")
        right = right[(known & (pred == truth))[right]]
        take(right, uncertain, UNCERTAIN, "least confident correct predictions")
    else:
        take(np.argsort(confidence, kind="stable"), uncertain, LEAST_CONFIDENT, "least confident predictions")
    rng = random.Random(seed)
    group = np.where(known, truth, pred)
    members = {int(c): [int(i) for i in np.flatnonzero(group == c)] for c in np.unique(group)}
    for rows in members.values():
        rng.shuffle(rows)
    classes = sorted(members)
    rng.shuffle(classes)
    for _ in range(per_class):
        for c in classes:
            if len(reasons) >= budget:
                break
            pick = next((i for i in members[c] if i not in reasons), None)
            if pick is not None:
                reasons[pick] = SAMPLE
                members[c].remove(pick)
    return Detail(tuple(sorted(reasons)), reasons, tuple(notes))


LOWEST, UNSCORED, MISSED = "lowest IoU", "no truth mask", "most missed objects"


def lowest_scores(scores: np.ndarray, budget: int, reason: str = LOWEST) -> Detail:
    """A segmenter's detail images: the `budget` lowest per-image scores (its mean IoU; ties keep the lower index),
    then, while places are left, images without a score (no truth mask) in image order. A detector's: its scores
    are minus the objects it missed (`reason` MISSED)."""
    n = len(scores)
    if n <= budget:
        return Detail(tuple(range(n)), dict.fromkeys(range(n), ALL))
    scores = np.asarray(scores, dtype=np.float64)
    scored = np.flatnonzero(np.isfinite(scores))
    order = scored[np.argsort(scores[scored], kind="stable")][:budget]
    reasons = dict.fromkeys((int(i) for i in order), reason)
    for i in np.flatnonzero(~np.isfinite(scores))[:budget - len(reasons)]:
        reasons[int(i)] = UNSCORED
    return Detail(tuple(sorted(reasons)), reasons)
