"""Micro-batches of the next step, read while the accelerator still computes the current one.

``Prefetcher`` wraps the training ``Loader``: ``prefetch(n)`` reads the next ``n`` batches now
(page-locked on GPUs, so the trainer's ``non_blocking`` copies overlap compute) and ``next()``
hands them out in order. Its ``state_dict`` is the loader's state *before* the batches it still
holds, so a checkpoint taken between steps resumes exactly at the first batch not trained on.
"""

from __future__ import annotations

from collections import deque

import torch


class Prefetcher:
    def __init__(self, loader, pin: bool = False):
        self.loader, self.pin = loader, pin
        self._held: deque[tuple[dict, dict]] = deque()  # (loader state before the batch, batch)

    def prefetch(self, n: int) -> None:
        """Read batches until ``n`` are held."""
        while len(self._held) < n:
            state = self.loader.state_dict()
            self._held.append((state, self._pinned(next(self.loader))))

    def _pinned(self, batch: dict) -> dict:
        if not self.pin:
            return batch
        return {k: v.pin_memory() if torch.is_tensor(v) and not v.is_pinned() else v for k, v in batch.items()}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._held:
            return self._held.popleft()[1]
        return self._pinned(next(self.loader))

    def state_dict(self) -> dict:
        return self._held[0][0] if self._held else self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._held.clear()
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self._held.clear()
        self.loader.close()
