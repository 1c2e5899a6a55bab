"""Deterministic, resumable data order and augmentation.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e); the
random augmentation of sample i in epoch e runs under a torch RNG seeded with
(seed, e, i). Both are independent of worker count and of where a run was resumed.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15


def mix_seed(*values: int) -> int:
    """Combine integers into one 63-bit seed (splitmix-style, stable across runs)."""
    h = 0
    for v in values:
        h = (h ^ (int(v) + _MIX + ((h << 6) & (2**64 - 1)) + (h >> 2))) & (2**64 - 1)
        h = (h * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        h ^= h >> 31
    return h & (2**63 - 1)


class ResumableSampler(Sampler[int]):
    """Shuffled (or sequential) indices per epoch, split over ranks, that can start mid-epoch."""

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0  # number of this rank's samples to skip (resume mid-epoch)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            if self.pad:  # every rank gets the same number of samples (DistributedSampler's rule)
                total = -(-self.n // self.world_size) * self.world_size
                order = order + order[: total - self.n]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return len(self._indices()) - self.start


class SeededDataset(Dataset):
    """Wrap a dataset so that sample i of epoch e is augmented under RNG seed (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        seed = mix_seed(self.seed, self.epoch, index)
        # the CPU generator is driven directly: torch.manual_seed costs ~100x more per call
        gen = torch.default_generator
        torch_state, py_state = gen.get_state(), random.getstate()
        gen.manual_seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            gen.set_state(torch_state)
            random.setstate(py_state)

    def __getattr__(self, name: str):
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def worker_init(worker_id: int) -> None:
    """Keep numpy/random in workers deterministic too (torch is seeded per sample).

    Workers ignore SIGINT and SIGTERM: Ctrl-C (or a scheduler's SIGTERM) reaches the whole
    process group, and the main process alone decides to stop (after the current step, with a
    resumable checkpoint). Started by spawn/forkserver, a worker would die of it (the run then ends
    with "DataLoader worker exited unexpectedly"); forked, it would run the trainer's inherited
    handler. Workers still end when the main process ends (torch's watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
