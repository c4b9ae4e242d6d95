"""A segmenter's score for the perturbation metrics: class c's mean softmax probability over its region.

A classifier's perturbation metrics watch p(target | perturbed x), the softmax probability of the target class.
A segmenter gives one per pixel, so its score of class c on a perturbed input is the MEAN over c's predicted region
R_c(i) of softmax(out)[c], the region fixed from the unperturbed image i (`methods.regions.predicted_regions`):
in [0, 1] as a classifier's probability is, so its deletion and insertion curves and AUCs read the same way.

`RegionProbabilities(forward, masks)` is that score as a forward x -> (B, K) probabilities (`probabilities = True`:
`perturbation.target_probabilities` takes no softmax of it). Perturbed rows of several images share a forward, so
each row says the image it derives from (`for_rows(owner)`, as `methods.regions.RegionScores`, whose row checks it
shares: rows of other images without an owner are refused, never scored against the wrong image's region).

Which evaluation metrics carry over to a segmenter, and why the others do not (`REFUSED`): docs/evaluation.md.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..methods.regions import RegionScores

Forward = Callable[[torch.Tensor], torch.Tensor]

# the evaluation metrics that do not apply to a segmenter, and why (the stage's check names them)
REFUSED = {
    "localisation": "the pointing game, energy in box and the top-15 % IoU score one object's box or mask per image; "
                    "a segmenter's maps each explain a class inside its predicted region, and its class masks are "
                    "scored by the data-set metrics (`analyses.dataset`)",
    "infidelity": "Captum's infidelity perturbs copies of one image and reads one score per row; a segmenter's score "
                  "is the class's logits summed over that image's region, which Captum's copies do not carry",
    "sensitivity": "max-sensitivity recomputes the attributions on Captum's noisy copies of one image, which do not "
                   "carry the image's region the attributions are of",
}


class RegionProbabilities:
    """A segmenter's forward (x -> (B, K, H, W) logits) as class-in-region probabilities (B, K): row b, class c:
    the mean of softmax(out[b])[c] over the pixels of c's region in image owner(b) (`masks` (N, K, H, W) of the
    unperturbed images; owner None: the rows are those images in order). NaN where the region is empty."""

    probabilities = True  # what it returns are probabilities already (`perturbation.target_probabilities`)

    def __init__(self, forward: Forward, masks: torch.Tensor, *, owner: torch.Tensor | None = None):
        self.forward = forward
        self.masks = masks
        # the mean over the region: the sum `RegionScores` takes of the probabilities, divided by the region's area
        self.scores = RegionScores(lambda x: torch.softmax(forward(x).float(), dim=1), masks, owner=owner)
        self.area = masks.flatten(2).sum(dim=2).float()  # (N, K) pixels in each class's region

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sums = self.scores(x)  # (B, K); refuses rows that match no owner
        owner = self.scores.owner
        area = (self.area if owner is None else self.area[owner.to(self.area.device)]).to(sums.device)
        return torch.where(area > 0, sums / area.clamp(min=1), torch.full_like(sums, float("nan")))

    def for_rows(self, owner: torch.Tensor | Sequence[int]) -> RegionProbabilities:
        """This score for rows derived from images `owner` (of the rows this one is bound to, if any)."""
        bound = RegionProbabilities.__new__(RegionProbabilities)
        bound.forward, bound.masks, bound.area = self.forward, self.masks, self.area
        bound.scores = self.scores.for_rows(owner)
        return bound


def for_image(forward: Forward, i: int) -> Forward:
    """`forward` for rows that all derive from image i of its batch (ROAD scores one image at a time): a segmenter's
    score bound to that image's region; a classifier's forward as it is."""
    bind = getattr(forward, "for_rows", None)
    return forward if bind is None else bind([i])
