"""The WebDataset input pipeline: shards (a directory or s3://) -> task items -> batches.

::

    manifest.json --split--> shards --assign to this consumer--> tar samples (meta.json parsed)
      -> [shuffle a few samples] -> [group K samples: hiding] -> task windows (decode, crop)
      -> [shuffle buffer of data.shuffle_buffer items] -> DataLoader batches
         images uint8 (B, K, C, H, W), reference float32 (B, C_e, H/f, W/f)

Who reads what. A *consumer* is one DataLoader worker of one rank: consumer
``rank * workers + worker`` of ``world_size * workers``. In an epoch the split's samples are
laid end to end (in manifest order; in training, shards in an order shuffled per epoch with
the same seed on every rank) and consumer c reads samples ``[N*c/C, N*(c+1)/C)``. Every
sample is read by exactly one consumer, whatever the number of shards: splitting is by
samples, not only by shards, and consumers' sample counts differ by at most one. A consumer
whose range starts inside a shard reads that shard from its start and drops the samples
before its range (at most one shard's worth of extra reading). Items per consumer are not
equal when samples yield different numbers of windows (clips of different lengths), so a
DDP loop over an epoch must stop all ranks together (or use resampled mode, where each
consumer draws shards at random, weighted by their sample counts, forever).

Decoding happens in the DataLoader workers (``data.loader_workers``; 0 decodes in the main
process). A shard that cannot be opened or read, or that ends early, is reported as a
warning on the ``iicnet.data`` logger naming the URL and skipped; so is a sample that does
not decode. In resampled mode, a run of failures as long as twice the number of shards
raises instead of spinning forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from iicnet.formats.shards import Sample, Shard, read_shard, shard_list
from iicnet.model.config import Config
from iicnet.tasks import Task, check_shards, get_task

SAMPLE_BUFFER = 8
"""Samples (whole clips, before windowing) shuffled in training; the item buffer does the rest."""


def assign_samples(shards: list[Shard], consumer: int, consumers: int
                   ) -> list[tuple[str, int, int]]:
    """(url, start, stop) sample ranges of the shards, in order, that ``consumer`` reads."""
    total = sum(s.samples for s in shards)
    lo, hi = total * consumer // consumers, total * (consumer + 1) // consumers
    plan, offset = [], 0
    for shard in shards:
        start, stop = max(lo, offset), min(hi, offset + shard.samples)
        if start < stop:
            plan.append((shard.url, start - offset, stop - offset))
        offset += shard.samples
    return plan


def _shuffled(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: keep ``size`` items, emit a random one as each new one arrives."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class TaskStream(IterableDataset):
    """Items of one split for one rank, split across the DataLoader workers reading it.

    Yields ``(images, reference)``, or ``(images, reference, "key#window")`` with
    ``with_keys``. Set ``epoch`` before iterating to reshuffle (``Loader`` does it).
    """

    def __init__(self, shards: list[Shard], task: Task, *, train: bool, rank: int = 0,
                 world_size: int = 1, resampled: bool = False, seed: int = 0,
                 shuffle_buffer: int = 256, with_keys: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        if resampled and not any(s.samples for s in shards):
            raise ValueError("resampled mode needs at least one non-empty shard")
        self.shards, self.task, self.train = shards, task, train
        self.rank, self.world_size, self.resampled, self.seed = rank, world_size, resampled, seed
        self.shuffle_buffer, self.with_keys = shuffle_buffer, with_keys
        self.epoch = 0

    def consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _epoch_samples(self, consumer: int, consumers: int) -> Iterator[Sample]:
        shards = list(self.shards)
        if self.train:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        for url, start, stop in assign_samples(shards, consumer, consumers):
            yield from read_shard(url, start, stop)

    def _resampled_samples(self, rng: np.random.Generator) -> Iterator[Sample]:
        weights = np.array([s.samples for s in self.shards], dtype=float)
        failures = 0
        while True:
            shard = self.shards[int(rng.choice(len(self.shards), p=weights / weights.sum()))]
            count = 0
            for sample in read_shard(shard.url):
                count += 1
                yield sample
            failures = 0 if count else failures + 1
            if failures >= 2 * len(self.shards):
                raise RuntimeError(f"resampled loading: {failures} shards in a row gave no "
                                   f"samples (see the warnings above); first: {self.shards[0].url}")

    def __iter__(self) -> Iterator[Any]:
        consumer, consumers = self.consumer()
        rng = np.random.default_rng([self.seed, self.epoch, consumer])
        if self.resampled:
            samples = self._resampled_samples(rng)
        else:
            samples = self._epoch_samples(consumer, consumers)
        if self.train:
            samples = _shuffled(samples, SAMPLE_BUFFER, rng)
        items = self.task.items(samples, rng, self.train, self.with_keys)
        if self.train:
            items = _shuffled(items, self.shuffle_buffer, rng)
        return iter(items)


class Loader:
    """Batches from a :class:`TaskStream`; each ``iter()`` is a new epoch (endless when
    resampled), reshuffled with the epoch number unless ``set_epoch`` says otherwise."""

    def __init__(self, dataset: TaskStream, batch_size: int, workers: int):
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.epoch = 0

    @property
    def task(self) -> Task:
        return self.dataset.task

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        self.dataset.epoch = self.epoch
        self.epoch += 1
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.workers else None,
        )
        return iter(loader)


def make_dataset(source: str, cfg: Config, *, split: str, train: bool, rank: int = 0,
                 world_size: int = 1, resampled: bool = False, seed: int = 0,
                 with_keys: bool = False) -> TaskStream:
    """The unbatched item stream behind :func:`make_loader` (same arguments)."""
    manifest = check_shards(source, cfg, split)
    return TaskStream(shard_list(source, manifest, split), get_task(cfg), train=train, rank=rank,
                      world_size=world_size, resampled=resampled, seed=seed,
                      shuffle_buffer=cfg.data.shuffle_buffer, with_keys=with_keys)


def make_loader(source: str, cfg: Config, *, split: str, train: bool, rank: int = 0,
                world_size: int = 1, resampled: bool = False, seed: int = 0) -> Loader:
    """Batches ``(images uint8 (B, K, C, H, W), reference float32 (B, C_e, h, w))``.

    ``source``: a shard directory or ``s3://bucket/prefix`` with its ``manifest.json``;
    ``split``: one of the manifest's splits. ``train``: random crops and shuffling (shard
    order per epoch, a few samples, then ``data.shuffle_buffer`` items); otherwise centre
    crops in manifest order. ``rank`` / ``world_size``: this process's share (see the module
    docstring). ``resampled``: endless, shards drawn at random. The final batch of an epoch
    may be smaller than ``data.batch_size``.
    """
    dataset = make_dataset(source, cfg, split=split, train=train, rank=rank,
                           world_size=world_size, resampled=resampled, seed=seed)
    return Loader(dataset, cfg.data.batch_size, cfg.data.loader_workers)
