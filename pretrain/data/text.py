"""Text batches: one global stream of packed windows per split, dealt round-robin to DP ranks.

The *global* token stream is the concatenation, over epochs, of the documents of the globally
ordered samples (``order.py``; independent of the parallel layout), each followed by ``eos_id``. It
is cut into consecutive windows of ``L`` tokens (``L = seq_len + 1`` for GPT: inputs ``w[:-1]``,
labels ``w[1:]``; ``L = seq_len - 2`` for BERT, framed as ``[CLS] w [SEP]``). Nothing is dropped at
epoch ends: a window may hold the end of one epoch and the start of the next.

Global window ``w`` goes to data-parallel rank ``w % D``; a rank's ``q``-th window is global window
``q*D + r`` and its batch ``b`` holds its windows ``b*B .. b*B+B-1`` (all shifted by ``offset``
after a resume with another global batch, see ``Layout``). So an optimizer step of ``A``
micro-batches on every rank covers global windows ``[k*B*A*D, (k+1)*B*A*D)`` -- the same set for any
``D`` x ``B`` with the same product, which is what makes tensor 2 x data 2 equal tensor 1 x data 4.
A finite (eval) pass uses epoch 0 only, cut to a multiple of ``D`` whole windows, so every rank gets
the same number of batches (the last may be partial).

Each rank reads only the tokens of its own windows: a sample's token count comes from its json
``doc_lengths`` alone, which places every window on the stream without decoding; the tokens of a
sample's owned windows are then read as byte ranges of its ``tokens.npy``. The same skipping serves
resume and worker sharding. Each emitted batch carries ``_pos = (epoch, i, offset)``, the sample
holding the batch's first token and that sample's stream offset, a valid place to restart the scan
(``loader.py`` stores it in the state of the last consumed batch), and the global ids of its windows.

BERT masking is dynamic (new per window) yet deterministic: each window's generator is seeded by
(seed, global window index); the index runs on across epochs, so it also names the epoch. Masks
are therefore the same under any parallel layout and after a resume.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pretrain.data.order import EpochOrder

Pos = tuple[int, int, int]  # (epoch, index into the epoch's global refs, stream offset of that sample)


@dataclass
class TextSpecials:
    eos_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    mask_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None


@dataclass
class Layout:
    """How the global window stream is cut and dealt: window length, micro-batch size, DP place,
    and ``offset``, the windows consumed before this batch geometry began (a resume with another
    global batch): dealing starts at window ``offset``, which becomes batch 0's first."""

    window: int
    batch: int
    dp_rank: int = 0
    dp_size: int = 1
    offset: int = 0

    def owned(self, s: int, e: int, owns: Callable[[int], bool], limit: int | None) -> list[int]:
        """Global windows overlapping stream range ``[s, e)`` that this rank owns, in batches ``owns``
        accepts, below ``limit`` (finite passes)."""
        lo, hi = max(s // self.window, self.offset), (e - 1) // self.window
        if limit is not None:
            hi = min(hi, limit - 1)
        d, r = self.dp_size, self.dp_rank
        first = lo + (self.offset + r - lo) % d  # the first w >= lo with (w - offset) % d == r
        return [w for w in range(first, hi + 1, d) if owns(self.batch_of(w))]

    def batch_of(self, w: int) -> int:
        return ((w - self.offset) // self.dp_size) // self.batch


def stream_len(doc_lengths: list[int]) -> int:
    """Tokens a sample adds to the stream: its documents plus one EOS each."""
    return sum(doc_lengths) + len(doc_lengths)


def stream_slice(source, shard: int, index: int, doc_lengths: list[int], a: int, b: int,
                 eos_id: int) -> np.ndarray:
    """Positions ``[a, b)`` of a sample's stream (documents + EOS after each) as int64, reading
    only the tokens that fall inside."""
    eos_at = np.cumsum(np.asarray(doc_lengths, dtype=np.int64) + 1) - 1  # stream positions of the EOS
    before_a, before_b = int(np.searchsorted(eos_at, a)), int(np.searchsorted(eos_at, b))
    toks = source.tokens_range(shard, index, a - before_a, b - before_b, sum(doc_lengths))
    out = np.full(b - a, eos_id, dtype=np.int64)
    is_tok = np.ones(b - a, dtype=bool)
    is_tok[eos_at[before_a:before_b] - a] = False
    out[is_tok] = toks
    return out


def _runs(pieces: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Merge touching ``(lo, hi, w)`` pieces into contiguous read ranges."""
    runs: list[tuple[int, int]] = []
    for lo, hi, _ in pieces:
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs


def finite_limit(source, order: EpochOrder, layout: Layout) -> int:
    """Global windows a finite pass uses: the whole windows of epoch 0, cut to a multiple of D."""
    total = sum(stream_len(source.doc_lengths(int(s), int(i))) for s, i in order.refs(0))
    n = total // layout.window
    return n - n % layout.dp_size


def packed_batches(source, order: EpochOrder, specials: TextSpecials, layout: Layout, start: Pos,
                   owns: Callable[[int], bool], finite: bool) -> Iterator[tuple[int, np.ndarray, Pos, list[int]]]:
    """Yield ``(b, windows[B, L], pos, global window ids)`` for every batch ``b`` with ``owns(b)``, in order.

    Starts scanning at ``start`` (a ``_pos`` of an earlier batch, or (0, 0, 0)). ``finite`` reads
    epoch 0 only and yields the last partial batch if it has rows.
    """
    epoch, i, cursor = start
    L = layout.window
    limit = finite_limit(source, order, layout) if finite else None
    pending: dict[int, tuple[np.ndarray, Pos]] = {}  # owned windows still being filled, with their start
    rows: list[np.ndarray] = []
    ids: list[int] = []
    rows_batch, rows_pos = -1, start
    while True:
        refs = order.refs(epoch)
        while i < len(refs) and (limit is None or cursor < limit * L):
            shard, index = int(refs[i, 0]), int(refs[i, 1])
            lengths = source.doc_lengths(shard, index)
            s = cursor
            e = cursor = s + stream_len(lengths)
            pos = (epoch, i, s)
            i += 1
            mine = layout.owned(s, e, owns, limit) if e > s else []
            if not mine:
                continue
            pieces = [(max(s, w * L), min(e, (w + 1) * L), w) for w in mine]
            got = {lo: stream_slice(source, shard, index, lengths, lo - s, hi - s, specials.eos_id)
                   for lo, hi in _runs(pieces)}
            for lo, hi, w in pieces:
                run = max(k for k in got if k <= lo)
                buf, wpos = pending.pop(w, None) or (np.empty(L, dtype=np.int64), pos)
                buf[lo - w * L:hi - w * L] = got[run][lo - run:hi - run]
                if hi < (w + 1) * L:
                    pending[w] = (buf, wpos)
                    continue
                b = layout.batch_of(w)
                if b != rows_batch:
                    rows, ids, rows_batch, rows_pos = [], [], b, wpos
                rows.append(buf)
                ids.append(w)
                if len(rows) == layout.batch:
                    yield b, np.stack(rows), rows_pos, ids
                    rows, ids = [], []
        if finite:
            if rows:
                yield rows_batch, np.stack(rows), rows_pos, ids
            return
        epoch, i = epoch + 1, 0


def gpt_batch(windows: np.ndarray) -> dict[str, torch.Tensor]:
    """``[B, T+1]`` windows -> next-token inputs and labels ``[B, T]`` (int64)."""
    w = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))
    return {"input_ids": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous()}


def bert_frame(windows: np.ndarray, specials: TextSpecials) -> np.ndarray:
    """Put ``[CLS]`` before and ``[SEP]`` after each window when the tokenizer has them."""
    if specials.cls_id is None or specials.sep_id is None:
        return windows
    b = windows.shape[0]
    return np.concatenate([np.full((b, 1), specials.cls_id), windows, np.full((b, 1), specials.sep_id)], axis=1)


def replacement_pool(specials: TextSpecials) -> np.ndarray:
    """The ids BERT's random replacement draws from: every non-special id (read-only, cached: at a
    32k vocabulary building it took two thirds of a batch's masking time)."""
    return _pool(specials.vocab_size, tuple(sorted(set(specials.special_ids))))


@functools.lru_cache(maxsize=8)
def _pool(vocab_size: int, special_ids: tuple[int, ...]) -> np.ndarray:
    pool = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids, dtype=np.int64))
    pool.setflags(write=False)
    return pool


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, specials: TextSpecials,
                probability: float) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: choose ``probability`` of the non-special tokens; of those 80% -> ``mask_id``,
    10% -> a random non-special token (``replacement_pool``), 10% unchanged. Labels hold the
    original id there, else -100."""
    ids = ids.astype(np.int64, copy=True)
    eligible = ~np.isin(ids, np.asarray(specials.special_ids))
    chosen = (rng.random(ids.shape) < probability) & eligible
    labels = np.where(chosen, ids, -100)
    r = rng.random(ids.shape)
    ids[chosen & (r < 0.8)] = specials.mask_id
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    pool = replacement_pool(specials)
    ids[to_random] = pool[rng.integers(0, len(pool), int(to_random.sum()))]
    return ids, labels


def bert_batch(windows: np.ndarray, specials: TextSpecials, probability: float,
               rngs: list[np.random.Generator]) -> dict[str, torch.Tensor]:
    """Framed, masked ``[B, T]`` batch, row ``j`` masked with ``rngs[j]`` (one generator per window, so
    a window's mask does not depend on which batch it lands in); packed windows have no padding, so
    attention_mask is all 1."""
    framed = bert_frame(windows, specials)
    masked = [mask_tokens(row, rng, specials, probability) for row, rng in zip(framed, rngs)]
    ids = np.stack([m[0] for m in masked])
    labels = np.stack([m[1] for m in masked])
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.ones(ids.shape, dtype=torch.int64),
        "token_type_ids": torch.zeros(ids.shape, dtype=torch.int64),
        "labels": torch.from_numpy(labels.astype(np.int64)),
    }


def bert_window(seq_len: int, specials: TextSpecials) -> int:
    """Stream tokens per BERT row: ``seq_len`` minus the CLS/SEP frame when present."""
    framed = specials.cls_id is not None and specials.sep_id is not None
    if framed and seq_len < 3:
        raise ValueError(f"data.seq_len={seq_len} leaves no room between [CLS] and [SEP]")
    return seq_len - 2 if framed else seq_len
