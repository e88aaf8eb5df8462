"""The global order in which samples are read: per-epoch shard shuffle, then a seeded shuffle buffer.

Everything here is a pure function of (shard sample counts, seed, epoch) -- not of the parallel
layout -- so every rank, every loader worker and every resumed process computes the same order
without talking to anyone and without reading data. Orders are computed on *references*
``(shard, index)``.

The data-parallel split happens downstream of this one global order, on the unit each family
batches (``loader.py``): ViT deals *samples* round-robin, text deals packed *windows* round-robin.
Either way the items of global step ``k`` are the same for every ``dp_size`` x ``micro_batch_size``
factorisation of the global batch. Workers inside a rank split *batches* (see ``loader.py``), which
keeps the batch sequence independent of ``num_workers``.
"""

from __future__ import annotations

import numpy as np

_SALT_SHARDS, _SALT_BUFFER = 101, 202


def global_refs(counts: list[int], seed: int, epoch: int, shuffle: bool, buffer: int) -> np.ndarray:
    """All references of one epoch as an ``[N, 2]`` int64 array of ``(shard, index)``.

    With ``shuffle``, shard order is a permutation seeded by (seed, epoch) and samples then pass a
    WebDataset-style shuffle buffer of ``buffer`` slots (also seeded by (seed, epoch)).
    """
    order = np.arange(len(counts))
    if shuffle:
        order = np.random.default_rng([seed, epoch, _SALT_SHARDS]).permutation(len(counts))
    parts = [np.stack([np.full(counts[s], s), np.arange(counts[s])], axis=1) for s in order if counts[s] > 0]
    refs = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), dtype=np.int64)
    if shuffle and buffer > 1:
        refs = refs[shuffle_buffer_order(len(refs), buffer, np.random.default_rng([seed, epoch, _SALT_BUFFER]))]
    return refs


def shuffle_buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The permutation a shuffle buffer of ``size`` slots applies to a stream of ``n`` items.

    Fill the buffer; then for each new item emit a random slot and put the item there; at the end
    emit what is left in random order. Items move at most about ``size`` places early, so reads
    stay local to a few consecutive shards.
    """
    size = min(size, n)
    out = np.empty(n, dtype=np.int64)
    buf = list(range(size))
    picks = rng.integers(0, size, max(0, n - size)) if n > size else []
    for k, item in enumerate(range(size, n)):
        slot = int(picks[k])
        out[k] = buf[slot]
        buf[slot] = item
    tail = np.asarray(buf, dtype=np.int64)
    out[n - size:] = tail[rng.permutation(size)]
    return out


class EpochOrder:
    """The global references of each epoch, with a two-epoch cache (streams walk epochs in order and a
    batch may straddle one epoch boundary)."""

    def __init__(self, counts: list[int], seed: int, shuffle: bool, buffer: int):
        self.counts, self.seed, self.shuffle, self.buffer = counts, seed, shuffle, buffer
        self.total = sum(counts)
        self._cache: dict[int, np.ndarray] = {}

    def refs(self, epoch: int) -> np.ndarray:
        key = epoch if self.shuffle else 0
        if key not in self._cache:
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]
            self._cache[key] = global_refs(self.counts, self.seed, key, self.shuffle, self.buffer)
        return self._cache[key]
