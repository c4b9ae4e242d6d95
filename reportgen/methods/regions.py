"""A segmenter's targets: class c inside a region, as pytorch-grad-cam 1.5.7's `SemanticSegmentationTarget(c, mask)`
scores it (`(out[c] * mask).sum()`), the region being the class's predicted one unless given.

Every CAM and gradient method scores one class per image from (N, K) logits. `RegionScores` makes such scores of a
segmenter's output (N, K, H, W): score[b, c] = Σ_p out[b, c, p] · M[owner(b), c, p], where M (N, K, H, W) holds the
regions of the batch's images, fixed before any method runs (`predicted_regions`: the one-hot of the unperturbed
batch's argmax over classes), and owner(b) is the batch image that row b derives from. The methods then run
unchanged, the class index as target.

Rows that are not the batch's images in order (the engine's chunks, Score-CAM's masked and Ablation-CAM's ablated
copies, SmoothGrad's noisy copies, integrated gradients' steps) each derive from one image: whoever makes them says
which through `engine.for_rows(forward, owner)`, which a classifier's forward does not need. A forward of other rows
without an owner is refused, never scored against the wrong image's regions.

A target class with an empty region in an image (not predicted there, nor given a region) scores a constant 0: its
maps are all zero, for every method (`dispatch.explain` zeroes them: Eigen-CAM would otherwise show the same map as
for any class, Score-CAM a uniform mix of channels and Ablation-CAM 0/0).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def predicted_regions(out: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) a segmenter's output -> (N, K, H, W) bool: pixel p is in class c's region of image n when c is
    the argmax over classes there (ties: the first class, as `argmax`)."""
    if out.ndim != 4:
        raise ValueError(f"predicted_regions: need a segmenter's output (N, K, H, W), got shape {tuple(out.shape)}")
    labels = out.detach().argmax(dim=1, keepdim=True)  # (N, 1, H, W)
    classes = torch.arange(out.shape[1], device=out.device).view(1, -1, 1, 1)
    return labels == classes


class RegionScores:
    """A segmenter's forward (x -> (B, K, H, W)) as class-in-region scores (B, K): `f(x, owner=None)`.

    `masks` (N, K, H, W), bool or float: the regions of the batch's N images. `owner` (B,) long: the image each
    row of `x` derives from; None: the rows are the batch's images in order. `for_rows(owner)` is the same forward
    bound to such rows (what `engine.for_rows` asks for). Scores are summed in float32 (a half-precision
    segmenter's logits over 512² pixels would overflow float16)."""

    score_kind = "a segmenter's class-in-region score"  # what the scores are (CAM says it does not apply to them)

    def __init__(self, forward: Forward, masks: torch.Tensor, *, owner: torch.Tensor | None = None,
                 predicted: bool = False):
        if masks.ndim != 4:
            raise ValueError(f"RegionScores: masks must be (N, K, H, W), got shape {tuple(masks.shape)}")
        self.forward = forward
        self.masks = masks
        self.owner = owner  # bound rows: row b of every call derives from image owner[b]
        self.predicted = predicted  # the masks are the predicted regions (`for_batch` can make them anew)

    @classmethod
    def of_predictions(cls, forward: Forward, batch: torch.Tensor) -> RegionScores:
        """Scores of each class inside its region predicted on `batch` (one forward without autograd)."""
        with torch.no_grad():
            out = forward(batch)
        return cls(forward, predicted_regions(out), predicted=True)

    def __call__(self, x: torch.Tensor, owner: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        owner = self._owner(owner)
        out = self.forward(x)
        if out.ndim != 4 or tuple(out.shape[1:]) != tuple(self.masks.shape[1:]):
            raise ValueError(f"RegionScores: the segmenter returned shape {tuple(out.shape)}; its regions are "
                             f"(N, K, H, W) = {tuple(self.masks.shape)}")
        rows = self.masks.shape[0] if owner is None else len(owner)
        if out.shape[0] != rows:
            said = (f"{rows} rows were said to derive from images {owner.tolist()[:8]}" if owner is not None else
                    f"its regions are of {rows} images and no owner says which image each row derives from "
                    "(`engine.for_rows`)")
            raise ValueError(f"RegionScores: the segmenter returned {out.shape[0]} rows but {said}")
        masks = self.masks if owner is None else self.masks[owner.to(self.masks.device)]
        return (out.float() * masks.to(out.device)).sum(dim=(2, 3))

    def for_rows(self, owner: torch.Tensor | Sequence[int]) -> RegionScores:
        """This forward for rows derived from images `owner` (of the rows this one is bound to, if any)."""
        return RegionScores(self.forward, self.masks, owner=self._owner(owner), predicted=self.predicted)

    def for_batch(self, batch: torch.Tensor) -> RegionScores:
        """The same scores on another batch (a streamed build's next one): its own predicted regions."""
        if not self.predicted:
            raise ValueError("RegionScores: regions given for one batch cannot serve another; make the next "
                             "batch's RegionScores with its own masks")
        return RegionScores.of_predictions(self.forward, batch)

    def empty(self, class_sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """(R, N) bool: class_sets[r][i] has an empty region in image i."""
        if self.owner is not None:
            raise ValueError("RegionScores.empty: ask the batch's forward, not one bound to derived rows")
        filled = self.masks.flatten(2).any(dim=2).cpu()  # (N, K)
        index = torch.as_tensor([list(classes) for classes in class_sets], dtype=torch.long)  # (R, N)
        return ~filled.gather(1, index.T).T

    def _owner(self, owner: torch.Tensor | Sequence[int] | None) -> torch.Tensor | None:
        """`owner` (rows of this forward's rows) as images of the batch; None when neither is bound."""
        if owner is None:
            return self.owner
        owner = torch.as_tensor(owner, dtype=torch.long).view(-1)
        return owner if self.owner is None else self.owner[owner.to(self.owner.device)]
