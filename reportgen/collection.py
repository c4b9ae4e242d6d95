"""Every image of a build, without keeping their pixels: the first, forward-only pass and what comes of it.

`collect` reads the images batch by batch (`inputs.batch_size`), runs the model's forward on each batch and
keeps the logits, then chooses the detail images (`detail.choose`, `report.detail`). The pixels are dropped
as each batch is done (`batches` reads them again for the stages), unless there are no more images than the
detail budget: then they are all kept, read once. Under torchrun each rank reads its contiguous shard of the
entries and the ranks exchange logits and ground truth, so every rank knows every image and chooses the same
detail images.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import datasets, dist
from .context import ImageInput, ModelInfo
from .detail import Detail, choose
from .errors import ReportgenError
from .inputs import read_ahead, unique_names
from .progress import track


@dataclass
class Collection:
    config: object
    info: ModelInfo
    device: torch.device
    entries: list[datasets.Entry]  # every image read, in order (all ranks)
    names: list[str]  # their unique names (the `<image>` of arrays.npz keys)
    logits: torch.Tensor  # (N, K) float32 on the CPU
    truth: np.ndarray  # (N,) int64, -1 where unknown
    detail: Detail
    shard: range  # this process's images (all of them without torchrun)
    notes: list[str] = field(default_factory=list)  # images skipped, annotations lost, detail asked beyond what exists
    cached: dict[int, tuple[ImageInput, torch.Tensor]] = field(default_factory=dict)  # index -> pixels kept
    image_entries: dict[int, dict] = field(default_factory=dict)  # index -> {stage: its entry} (`Stage.records`)

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> tuple[ImageInput, torch.Tensor]:
        """Image `index`'s ImageInput (named) and prepared tensor: kept from the first pass, or read again."""
        if index in self.cached:
            return self.cached[index]
        entry = self.entries[index]
        try:
            image, tensor, _ = datasets.read_entry(entry, self.config, self.info.preprocess, self.names[index])
        except ReportgenError as exc:
            raise ReportgenError(f"{self.config.shown_path(entry.path)} was read in the first pass but not in the "
                                 f"second ({exc}): did it change during the build?") from None
        return image, tensor

    def batches(self, size: int) -> Iterator[tuple[int, list[ImageInput], torch.Tensor]]:
        """This process's images in batches of `size`: (index of the first, ImageInputs, (n, C, H, W) tensor on
        the model's device)."""
        reads = read_ahead(self.read, self.shard, ahead=size)  # the next batch read while the stages run on this
        for lo in range(self.shard.start, self.shard.stop, size):
            read = [next(reads)[1].result() for _ in range(lo, min(lo + size, self.shard.stop))]
            yield lo, [image for image, _ in read], torch.stack([t for _, t in read]).to(self.device)

    def records(self, top_k: int, label) -> list[dict]:
        """One record per image (images.jsonl): name, source, truth, top-k predictions, why it is detailed, and
        what the streamed stages that ran say of it (`Stage.records`, under the stage's name)."""
        probs = torch.softmax(self.logits, dim=1)
        top = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [{"name": name, "source": self.config.shown_path(entry.path),
                 "truth": None if t < 0 else {"index": int(t), "label": label(int(t))},
                 "top_k": [{"index": int(i), "label": label(int(i)), "probability": float(p)}
                           for p, i in zip(ps, idx)],
                 "detail": self.detail.reasons.get(n), **self.image_entries.get(n, {})}
                for n, (name, entry, t, ps, idx) in enumerate(zip(self.names, self.entries, self.truth.tolist(),
                                                                  top.values.tolist(), top.indices.tolist()))]


def collect(config, info: ModelInfo, device: torch.device, group: dist.Group = dist.SINGLE,
            first: Callable[[torch.Tensor], torch.Tensor] | None = None,
            entries: list[datasets.Entry] | None = None) -> Collection:
    """The first pass over `config.inputs` (or over `entries`, images given in Python): see the module
    docstring. `first` (batch -> logits), when given, is the forward of a first pass that reads one batch only
    (no more images than `inputs.batch_size` and the detail budget): the pipeline's, which keeps that forward's
    graph for the stages."""
    if entries is None:
        entries = datasets.select(config, info.labels, info.num_classes)
    if group.size > 1:  # `inputs.limit` counts entries here (the ranks cannot know what the others fail to read)
        if config.inputs.limit is not None:
            entries = entries[:config.inputs.limit]
        entries = [entries[i] for i in dist.shard(group, len(entries))]
    kept: dict = {}
    try:
        if entries:
            *scanned, kept = _scan(config, info, device, entries, first)
        else:
            scanned = [[], torch.zeros(0, info.num_classes), []]
    except ReportgenError as exc:  # every rank learns of it (none is left waiting for the others)
        if group.size == 1:
            raise
        scanned = str(exc)
    parts = dist.gather(group, scanned)  # (entries read, their logits, notes) of every rank: no pixels travel
    failed = [p for p in parts if isinstance(p, str)]
    if failed:
        raise ReportgenError(failed[0])
    all_entries = [e for part in parts for e in part[0]]
    start = sum(len(part[0]) for part in parts[:group.rank])
    names = unique_names([e.path for e in all_entries])
    all_logits = torch.cat([part[1] for part in parts])
    truth = np.array([-1 if e.label is None else int(e.label) for e in all_entries], dtype=np.int64)
    cfg = config.report.detail
    confidence, pred = torch.softmax(all_logits, dim=1).max(dim=1)
    detail = choose(truth, pred.numpy(), confidence.numpy(), budget=cfg.budget, mistakes=cfg.mistakes,
                    uncertain=cfg.uncertain, per_class=cfg.per_class,
                    seed=cfg.seed if cfg.seed is not None else config.seed)
    notes = [note for part in parts for note in part[2]] + list(detail.notes)
    collection = Collection(config=config, info=info, device=device, entries=all_entries, names=names,
                            logits=all_logits, truth=truth, detail=detail,
                            shard=range(start, start + len(parts[group.rank][0])), notes=notes)
    collection.cached = {start + i: (dataclasses.replace(image, name=names[start + i]), tensor)
                         for i, (image, tensor) in kept.items()}
    return collection


def _scan(config, info: ModelInfo, device: torch.device, entries: list[datasets.Entry], first=None):
    """Read `entries` and run the forward on each batch (`first` when they make one batch of at most the detail
    budget) -> (entries read, their logits (n, K), notes, the pixels of every image by position when there are
    no more than the detail budget, else {})."""
    budget = config.report.detail.budget
    if len(entries) > min(budget, config.inputs.batch_size):
        first = None
    found = datasets.Scan()
    logits: list[torch.Tensor] = []
    kept: dict[int, tuple[ImageInput, torch.Tensor]] | None = {}
    shape = None
    for batch in datasets.scan(config, info.preprocess, entries, found, track):
        for entry, _, tensor in batch:
            if shape is None:
                shape = tuple(tensor.shape)
            elif tuple(tensor.shape) != shape:
                raise ReportgenError(f"`inputs.preprocess`: the images come out in different sizes ({shape} and "
                                     f"{tuple(tensor.shape)} for {config.shown_path(entry.path)}); set `center_crop` "
                                     "(or `resize: [h, w]`) so they share one size.")
        x = torch.stack([tensor for _, _, tensor in batch]).to(device)
        if first is not None:
            logits.append(first(x).float().cpu())
        else:
            with torch.no_grad():
                logits.append(info.forward(x).float().cpu())
        if kept is not None:
            for _, image, tensor in batch:
                kept[len(kept)] = (image, tensor)
            if len(kept) > budget:
                kept = None  # too many to keep: the stages read them again
    return found.entries, torch.cat(logits), found.notes, kept or {}
