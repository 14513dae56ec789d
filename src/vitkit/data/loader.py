"""Batches from a dataset, in an order fixed by (seed, epoch) and sharded across ranks.

The order depends on nothing else, so a run resumed at epoch e replays exactly the batches
it would have seen. In-memory datasets are batched by indexing their tensors (no per-item
Python, no worker processes): for small images that is hundreds of times faster than a
DataLoader. Folder datasets decoded lazily go through a DataLoader with worker processes.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import VitkitError
from .dataset import ImageDataset, InMemoryDataset


class ShardSampler(Sampler[int]):
    """DistributedSampler's semantics without needing a process group: shuffle with
    ``seed + epoch``, then give rank r every world_size-th index starting at r. Shards have
    equal length: the tail is dropped with ``drop_last``, else padded by repeating the start
    (so up to world_size - 1 samples are seen twice per epoch, as with DistributedSampler).

    ``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020; DeiT's RASampler): the epoch
    keeps its length but is made of ceil(n / repeats) distinct images, each ``repeats`` times in
    a row, so the copies land on consecutive ranks (or in one batch) and get different random
    augmentations in the same step.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, repeats: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.n, self.shuffle, self.seed, self.epoch, self.repeats = n, shuffle, seed, epoch, repeats
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.num_samples = n // world_size if drop_last else math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        if self.repeats > 1:
            idx = idx[:math.ceil(self.n / self.repeats)].repeat_interleave(self.repeats)[:self.n]
        total = self.num_samples * self.world_size
        if total > self.n:
            idx = torch.cat([idx, idx.repeat(math.ceil(total / self.n))[: total - self.n]])
        return idx[:total][self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class TensorBatches:
    """Batches of an in-memory dataset by direct tensor indexing; re-iterable, same order each time."""

    def __init__(self, dataset: InMemoryDataset, batch_size: int, sampler: ShardSampler, drop_last: bool,
                 pin_memory: bool = False):
        self.dataset, self.batch_size, self.sampler, self.drop_last = dataset, batch_size, sampler, drop_last
        self.pin_memory = pin_memory  # page-locked batches: their copy to a GPU does not block the host

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # numpy's gather: torch's index_select goes through the intra-op thread pool, which is
        # ~100x slower for batch-sized copies when the CPU cores are busy with other work
        idx = self.sampler.indices().numpy()
        images, targets = self.dataset.images.numpy(), self.dataset.targets.numpy()
        for b in range(len(self)):
            i = idx[b * self.batch_size:(b + 1) * self.batch_size]
            batch = torch.from_numpy(images.take(i, axis=0)), torch.from_numpy(targets.take(i))
            yield tuple(t.pin_memory() for t in batch) if self.pin_memory else batch


class WorkerLoader(DataLoader):
    """A DataLoader whose worker errors stay one line: DataLoader re-raises a worker's
    ``VitkitError`` with the worker's whole traceback in the message, which the CLI would
    print verbatim; this keeps only the original message (naming the bad file)."""

    def __iter__(self) -> Iterator:
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except VitkitError as e:
                lines = str(e).strip().splitlines()
                prefix = f"{VitkitError.__module__}.{VitkitError.__name__}: "
                raise VitkitError(lines[-1].removeprefix(prefix) if lines else str(e)) from e
            yield batch


def make_loader(ds: ImageDataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, rank: int = 0, world_size: int = 1, repeats: int = 1,
                num_workers: int | None = None, pin_memory: bool = False) -> TensorBatches | WorkerLoader:
    """Iterable of ``(uint8 [B,C,H,W], int64 [B])``; ``len()`` is the number of batches.

    ``drop_last`` drops both the incomplete last batch and, with several ranks, the tail
    that does not divide evenly. ``loader.sampler.set_epoch(e)`` reorders it for epoch e.
    ``repeats`` > 1: repeated augmentation (see ``ShardSampler``).
    ``num_workers`` (DataLoader only) defaults to the CPU count, at most 8. ``pin_memory``: batches in
    page-locked memory, for a non-blocking copy to a GPU (``vitkit.device.pin_memory`` says when).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sampler = ShardSampler(len(ds), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                           world_size=world_size, drop_last=drop_last, repeats=repeats)
    if isinstance(ds, InMemoryDataset):
        return TensorBatches(ds, batch_size, sampler, drop_last, pin_memory)
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    # its own generator: a DataLoader otherwise draws its workers' seed from the global RNG, which would shift
    # every augmentation draw after it (a streamed dataset would then train differently from the same data in memory)
    return WorkerLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed + epoch))
