"""Builds across processes: `torchrun --nproc-per-node=N -m reportgen build CONFIG`.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `start()` then joins the process group (NCCL when the model
runs on CUDA, each rank on GPU `LOCAL_RANK`; gloo on the CPU). The images are split into contiguous shards,
one per rank; each rank reads, analyses and reduces its shard; what travels over the group is small: every
image's logits and ground truth (all ranks choose the same detail images from them), each rank's reduced
results (the detail images' maps and the sums over its images), its per-image records, and the name of its
arrays.npz shard. Rank 0 merges and writes the report. A shared file system is assumed: every rank reads the
same images and writes its arrays shard into the same output folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

from .errors import EveryRank, ReportgenError


@dataclass(frozen=True)
class Group:
    rank: int
    size: int
    local_rank: int

    @property
    def root(self) -> bool:
        return self.rank == 0


SINGLE = Group(rank=0, size=1, local_rank=0)


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> Group:
    """Join torchrun's process group (once); SINGLE when not launched by torchrun with several processes."""
    if not launched():
        return SINGLE
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        found = torch.cuda.device_count() if cuda else 0
        if cuda and not found:
            raise EveryRank(f"`model.device` is {device} under torchrun, but this machine has no CUDA device: use "
                            "`device: cpu` (or `auto`).")
        if cuda and local_rank >= found:
            raise ReportgenError(f"`model.device` is {device} under torchrun, but this machine has {found} CUDA "
                                 f"device(s) for local rank {local_rank}: start one process per GPU "
                                 "(`--nproc_per_node`).")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Group(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)


def gather(group: Group, obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if group.size == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * group.size
    dist.all_gather_object(out, obj)
    return out


def check_same_config(group: Group, config) -> None:
    """Refuse (on every rank, before any work) a launch whose ranks read different configs."""
    if group.size == 1:
        return
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()
    digests = gather(group, digest)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ReportgenError(f"torchrun: rank{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))} read a "
                             "different config than rank 0 (another file, `--set` or output folder): give every "
                             "rank the same command line and files.")


def shard(group: Group, count: int) -> range:
    """This rank's contiguous share of `count` items (the first ranks take one more when it does not divide)."""
    size, extra = divmod(count, group.size)
    lo = group.rank * size + min(group.rank, extra)
    return range(lo, lo + size + (group.rank < extra))



def stop(group: Group) -> None:
    """Leave the process group (the end of a build under torchrun)."""
    if group.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
