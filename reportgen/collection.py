"""Every image of a build, without keeping their pixels: the first, forward-only pass and what comes of it.

`collect` reads the images batch by batch (`inputs.batch_size`), runs the model's forward on each batch and
keeps the logits, then chooses the detail images (`detail.choose`, `report.detail`). The pixels are dropped
as each batch is done (`batches` reads them again for the stages), unless there are no more images than the
detail budget: then they are all kept, read once. Under torchrun each rank reads its contiguous shard of the
entries and the ranks exchange logits and ground truth, so every rank knows every image and chooses the same
detail images.

What is kept per image is bounded (a data set of 200 000 manifest rows costs about what 2 rows cost): its entry
(`datasets.Entry`, a path as text), its name, its top-1 class and confidence (what the detail choice reads); the
logits go to `Logits`, in memory while they are small and to an unnamed temporary file beyond, read back a batch
at a time; the records of images.jsonl are made one at a time (`records`) as they are written.
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import datasets, dist
from .context import ImageInput, ModelInfo
from .detail import MISSED, Detail, choose, lowest_scores
from .errors import ReportgenError
from .inputs import free_readers, read_ahead, unique_names
from .ops import release_memory
from .progress import track

# what the first pass keeps of a batch that is not a classifier's: (its output, its images) -> ((B, K) per class,
# one score per image: the detail images are the lowest); a segmenter's is the pipeline's `segmenter_summary`
Summarize = Callable[[torch.Tensor, list[ImageInput]], tuple[torch.Tensor, list[float]]]


class Logits:
    """The (N, K) float32 logits of every image, appended batch by batch: in memory up to `MEMORY` bytes, beyond
    that in an unnamed temporary file (gone with the process, however it ends), read back by rows:
    `logits[lo:hi]` or `logits[[i, j, ...]]` is a tensor."""

    MEMORY = 16 * 2**20

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._parts: list[torch.Tensor] = []
        self._file = None
        self._rows = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self._rows, self.num_classes)

    def __len__(self) -> int:
        return self._rows

    def append(self, batch: torch.Tensor) -> None:
        batch = batch.detach().float().cpu().contiguous()
        self.num_classes = batch.shape[1]
        self._rows += batch.shape[0]
        if self._file is None and self._rows * self.num_classes * 4 > self.MEMORY:
            self._file = tempfile.TemporaryFile(prefix="reportgen-logits-")
            for part in self._parts:
                self._file.write(part.numpy().tobytes())
            self._parts = []
        if self._file is None:
            self._parts.append(batch)
        else:
            self._file.seek(0, 2)
            self._file.write(batch.numpy().tobytes())

    def _read(self, lo: int, hi: int) -> torch.Tensor:
        if self._file is None:
            if len(self._parts) > 1:
                self._parts = [torch.cat(self._parts)]
            return self._parts[0][lo:hi] if self._parts else torch.zeros(0, self.num_classes)
        row = self.num_classes * 4
        self._file.seek(lo * row)
        data = self._file.read((hi - lo) * row)
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()).view(hi - lo, self.num_classes)

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, slice):
            lo, hi, step = rows.indices(self._rows)
            if step != 1:
                raise ValueError("Logits: slices take every row")
            return self._read(lo, max(lo, hi))
        rows = [int(r) for r in rows]
        if not rows:
            return torch.zeros(0, self.num_classes)
        return torch.stack([self._read(r, r + 1)[0] for r in rows])

    def chunks(self, size: int = 4096) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, logits) of consecutive chunks of at most `size` rows."""
        for lo in range(0, self._rows, size):
            yield lo, self._read(lo, min(lo + size, self._rows))


@dataclass
class Collection:
    config: object
    info: ModelInfo
    device: torch.device
    entries: list[datasets.Entry]  # every image read, in order (all ranks)
    names: list[str]  # their unique names (the `<image>` of arrays.npz keys)
    logits: Logits  # (N, K) float32: `logits[lo:hi]` is a tensor on the CPU
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
        # the next batch read while the stages run on this, where a core is free for it
        reads = read_ahead(self.read, self.shard, ahead=size, readers=free_readers(device=self.device))
        for lo in range(self.shard.start, self.shard.stop, size):
            read = [next(reads)[1].result() for _ in range(lo, min(lo + size, self.shard.stop))]
            yield lo, [image for image, _ in read], torch.stack([t for _, t in read]).to(self.device)

    def record(self, n: int, top_k: int, label, logits: torch.Tensor | None = None) -> dict:
        """Image `n`'s record in images.jsonl: name, source, truth, top-k predictions, why it is detailed, and
        what the streamed stages that ran say of it (`Stage.records`, under the stage's name). `logits`: its row,
        when the caller has read it already."""
        row = self.logits[n:n + 1][0] if logits is None else logits
        # a segmenter's row: each class's share of the predicted pixels; a detector's: each class's best box score
        segmenter = self.info.task in ("segmentation", "detection")
        top = (row if segmenter else torch.softmax(row, dim=0)).topk(min(top_k, row.shape[0]))
        key = {"segmentation": "share", "detection": "score"}.get(self.info.task, "probability")
        t = int(self.truth[n])
        return {"name": self.names[n], "source": self.config.shown_path(self.entries[n].file),
                "truth": None if t < 0 else {"index": t, "label": label(t)},
                "top_k": [{"index": int(i), "label": label(int(i)), key: float(p)}
                          for p, i in zip(top.values.tolist(), top.indices.tolist()) if not segmenter or p > 0],
                "detail": self.detail.reasons.get(n), **self.image_entries.get(n, {})}

    def records(self, top_k: int, label) -> Iterable[dict]:
        """Every image's `record`, in order, made as they are read (see `Records`)."""
        return Records(self, top_k, label)


class Records:
    """Every image's record, made one at a time each time they are iterated over (images.jsonl and the page's
    table of every image read them in turn): a data set's records are never all in memory."""

    def __init__(self, collection: Collection, top_k: int, label):
        self.collection, self.top_k, self.label = collection, top_k, label

    def __len__(self) -> int:
        return len(self.collection)

    def __getitem__(self, n: int) -> dict:
        return self.collection.record(n, self.top_k, self.label)

    def __iter__(self) -> Iterator[dict]:
        for lo, rows in self.collection.logits.chunks():
            for i, row in enumerate(rows):
                yield self.collection.record(lo + i, self.top_k, self.label, row)


def collect(config, info: ModelInfo, device: torch.device, group: dist.Group = dist.SINGLE,
            first: Callable[[torch.Tensor], torch.Tensor] | None = None,
            entries: list[datasets.Entry] | None = None, summarize: Summarize | None = None) -> Collection:
    """The first pass over `config.inputs` (or over `entries`, images given in Python): see the module
    docstring. `first` (batch -> logits), when given, is the forward of a first pass that reads one batch only
    (no more images than `inputs.batch_size` and the detail budget): the pipeline's, which keeps that forward's
    graph for the stages. `summarize`: what is kept of each batch's output when it is not a classifier's logits."""
    if entries is None:
        entries = datasets.select(config, info.labels, info.num_classes)
    if group.size > 1:  # `inputs.limit` counts entries here (the ranks cannot know what the others fail to read)
        if config.inputs.limit is not None:
            entries = entries[:config.inputs.limit]
        entries = [entries[i] for i in dist.shard(group, len(entries))]
    kept: dict = {}
    try:
        if entries:
            *scanned, kept = _scan(config, info, device, entries, first, summarize)
        else:
            scanned = [[], Logits(info.num_classes), [], np.zeros(0)]
        if group.size > 1:  # the logits travel as a tensor
            scanned[1] = scanned[1][:]
    except ReportgenError as exc:  # every rank learns of it (none is left waiting for the others)
        if group.size == 1:
            raise
        scanned = str(exc)
    parts = dist.gather(group, scanned)  # (entries read, their logits, notes) of every rank: no pixels travel
    failed = [p for p in parts if isinstance(p, str)]
    if failed:
        raise ReportgenError(failed[0])
    if group.size == 1:
        all_entries, logits = parts[0][0], parts[0][1]
    else:
        all_entries = [e for part in parts for e in part[0]]
        logits = Logits(info.num_classes)
        for part in parts:
            logits.append(part[1])
    start = sum(len(part[0]) for part in parts[:group.rank])
    names = unique_names([e.file for e in all_entries])
    truth = np.array([-1 if e.label is None else int(e.label) for e in all_entries], dtype=np.int64)
    confidence = np.zeros(len(logits), dtype=np.float32)  # what the detail choice reads: no (N, K) array
    pred = np.zeros(len(logits), dtype=np.int64)
    for lo, rows in logits.chunks():
        top = torch.softmax(rows, dim=1).max(dim=1)
        confidence[lo:lo + len(rows)], pred[lo:lo + len(rows)] = top.values.numpy(), top.indices.numpy()
    cfg = config.report.detail
    if info.task == "segmentation":  # the images it segments worst first
        detail = lowest_scores(np.concatenate([part[3] for part in parts]), cfg.budget)
    elif info.task == "detection":  # the images with the most missed objects first (their scores: -misses)
        detail = lowest_scores(np.concatenate([part[3] for part in parts]), cfg.budget, MISSED)
    else:
        detail = choose(truth, pred, confidence, budget=cfg.budget, mistakes=cfg.mistakes,
                        uncertain=cfg.uncertain, per_class=cfg.per_class,
                        seed=cfg.seed if cfg.seed is not None else config.seed)
    notes = [note for part in parts for note in part[2]] + list(detail.notes)
    collection = Collection(config=config, info=info, device=device, entries=all_entries, names=names,
                            logits=logits, truth=truth, detail=detail,
                            shard=range(start, start + len(parts[group.rank][0])), notes=notes)
    collection.cached = {start + i: (dataclasses.replace(image, name=names[start + i]), tensor)
                         for i, (image, tensor) in kept.items()}
    return collection


def _scan(config, info: ModelInfo, device: torch.device, entries: list[datasets.Entry], first=None,
          summarize: Summarize | None = None):
    """Read `entries` and run the forward on each batch (`first` when they make one batch of at most the detail
    budget) -> (entries read, their `Logits` (n, K), notes, the pixels of every image by position when there are
    no more than the detail budget, else {})."""
    budget = config.report.detail.budget
    if len(entries) > min(budget, config.inputs.batch_size):
        first = None
    found = datasets.Scan()
    logits = Logits(info.num_classes)
    scores: list[float] = []  # a segmenter's per-image mean IoU (NaN without a truth mask)
    kept: dict[int, tuple[ImageInput, torch.Tensor]] | None = {}
    shape = None
    for batch in datasets.scan(config, info.preprocess, entries, found, track, readers=free_readers(device=device)):
        release_memory()  # the last batch's decoded pixels leave holes the next do not fill exactly
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
                out = info.forward(x)
            if summarize is not None:  # a segmenter's: each class's share of the pixels, and the image's mean IoU
                shares, image_scores = summarize(out, [image for _, image, _ in batch])
                logits.append(shares)
                scores.extend(image_scores)
            else:
                logits.append(out.float().cpu())
        if kept is not None:
            for _, image, tensor in batch:
                kept[len(kept)] = (image, tensor)
            if len(kept) > budget:
                kept = None  # too many to keep: the stages read them again
    return found.entries, logits, found.notes, np.array(scores, dtype=np.float64), kept or {}

