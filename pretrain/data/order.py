"""The order in which samples are read: per-epoch shard shuffle, a seeded shuffle buffer, DP split.

Everything here is a pure function of (shard sample counts, seed, epoch, dp_rank, dp_size), so every
rank, every loader worker and every resumed process computes the same order without talking to
anyone and without reading data. Orders are computed on *references* ``(shard, index)``.

Splitting is per sample: the epoch's global order is dealt round-robin to the data-parallel ranks
(reference ``j`` goes to rank ``j % dp_size``) and cut to ``N // dp_size`` so every rank has the
same number of samples per epoch (at most ``dp_size - 1`` samples per epoch are left out). Ranks
of one tensor-parallel group share a ``dp_rank`` and therefore an order. Workers inside a rank split
*batches*, not samples (see ``loader.py``), which keeps the batch sequence independent of
``num_workers``.
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


def rank_refs(refs: np.ndarray, dp_rank: int, dp_size: int) -> np.ndarray:
    """This rank's share: every ``dp_size``-th reference, cut to an equal length on every rank."""
    per_rank = len(refs) // dp_size
    return refs[dp_rank::dp_size][:per_rank]


class EpochOrder:
    """This rank's references per epoch, with a one-epoch cache (workers walk epochs in order)."""

    def __init__(self, counts: list[int], seed: int, dp_rank: int, dp_size: int, shuffle: bool, buffer: int):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
        total = sum(counts)
        if total < dp_size:
            raise ValueError(f"the split has {total} samples, fewer than the {dp_size} data-parallel ranks")
        self.counts, self.seed, self.dp_rank, self.dp_size = counts, seed, dp_rank, dp_size
        self.shuffle, self.buffer = shuffle, buffer
        self.per_rank = total // dp_size
        self._cached: tuple[int, np.ndarray] | None = None

    def refs(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            g = global_refs(self.counts, self.seed, epoch if self.shuffle else 0, self.shuffle, self.buffer)
            self._cached = (epoch, rank_refs(g, self.dp_rank, self.dp_size))
        return self._cached[1]
