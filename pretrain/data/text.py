"""Text batches: documents + EOS packed into fixed windows across document boundaries; GPT and BERT.

The token stream of one data-parallel rank is the concatenation, over epochs, of its samples'
documents, each followed by ``eos_id``. The stream is cut into consecutive windows of ``L`` tokens
(``L = seq_len + 1`` for GPT: inputs are ``w[:-1]``, labels ``w[1:]``; ``L = seq_len - 2`` for BERT,
framed as ``[CLS] w [SEP]``); batch ``b`` is windows ``b*B .. b*B+B-1``. Nothing is dropped at
epoch ends; a partial window only ever occurs at the end of a finite (eval) pass, where it is dropped.

Resume and worker sharding need no decoding of skipped samples: a sample's token count comes from
its json ``doc_lengths`` alone, so a reader that does not own any batch a sample overlaps advances
its cursor without reading ``tokens.npy``. Each emitted batch carries ``_pos = (epoch, i, offset)``,
the sample holding the batch's first token and that sample's stream offset, which is a valid place
to restart the scan from (``loader.py`` stores it in the state of the last consumed batch).

BERT masking is dynamic (new per batch) yet deterministic: the generator is seeded by
(seed, dp_rank, batch index), so a resumed run masks exactly as the uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pretrain.data.order import EpochOrder

Pos = tuple[int, int, int]  # (epoch, index into the rank's refs, stream offset of that sample)


@dataclass
class TextSpecials:
    eos_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    mask_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None


def with_eos(tokens: np.ndarray, doc_lengths: list[int], eos_id: int) -> np.ndarray:
    """Tokens with ``eos_id`` inserted after every document (int64)."""
    if sum(doc_lengths) != len(tokens):
        raise ValueError(f"doc_lengths sum to {sum(doc_lengths)} but the sample has {len(tokens)} tokens")
    return np.insert(tokens.astype(np.int64), np.cumsum(doc_lengths), eos_id)


def packed_batches(source, order: EpochOrder, specials: TextSpecials, window: int, batch: int,
                   start: Pos, owns: Callable[[int], bool], finite: bool) -> Iterator[tuple[int, np.ndarray, Pos]]:
    """Yield ``(b, windows[B, window], pos)`` for every batch ``b`` with ``owns(b)``, in order.

    Starts scanning at ``start`` (a ``_pos`` of an earlier batch, or (0, 0, 0)). ``finite`` stops
    after epoch 0 and yields the last partial batch (whole windows only) if it has any rows.
    """
    epoch, i, cursor = start
    buf, buf_start = np.zeros(0, dtype=np.int64), cursor
    segs: list[Pos] = []  # samples contributing to buf, to name the start of each batch
    rows: list[np.ndarray] = []
    rows_batch, rows_pos = -1, start
    while True:
        refs = order.refs(epoch)
        while i < len(refs):
            shard, index = int(refs[i, 0]), int(refs[i, 1])
            lengths = source.doc_lengths(shard, index)
            n = sum(lengths) + len(lengths)
            s, e = cursor, cursor + n
            cursor = e
            pos = (epoch, i, s)
            i += 1
            if n == 0 or not any(owns(b) for b in range(s // window // batch, (e - 1) // window // batch + 1)):
                continue
            toks = with_eos(source.tokens(shard, index), lengths, specials.eos_id)
            if buf_start + len(buf) != s:  # skipped samples in between: restart the buffer here
                buf, buf_start, segs = toks, s, []
            else:
                buf = np.concatenate([buf, toks])
            segs.append(pos)
            w = -(-buf_start // window)  # first whole window inside the buffer
            while (w + 1) * window <= buf_start + len(buf):
                b = w // batch
                if owns(b):
                    if b != rows_batch:
                        rows, rows_batch = [], b
                        rows_pos = max((p for p in segs if p[2] <= w * window), key=lambda p: p[2])
                    lo = w * window - buf_start
                    rows.append(buf[lo:lo + window])
                    if len(rows) == batch:
                        yield b, np.stack(rows), rows_pos
                        rows = []
                w += 1
            keep_from = w * window - buf_start
            buf, buf_start = buf[keep_from:], w * window
            segs = _trim_segments(segs, buf_start)
        if finite:
            if rows and rows_batch >= 0 and owns(rows_batch):
                yield rows_batch, np.stack(rows), rows_pos
            return
        epoch, i = epoch + 1, 0


def _trim_segments(segs: list[Pos], buf_start: int) -> list[Pos]:
    """Drop samples that end before the buffer start, keeping the one that holds ``buf_start``."""
    keep = [p for p in segs if p[2] > buf_start]
    before = [p for p in segs if p[2] <= buf_start]
    return ([before[-1]] if before else []) + keep


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


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, specials: TextSpecials,
                probability: float) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: choose ``probability`` of the non-special tokens; of those 80% -> ``mask_id``,
    10% -> a random non-special token, 10% unchanged. Labels hold the original id there, else -100."""
    ids = ids.astype(np.int64, copy=True)
    eligible = ~np.isin(ids, np.asarray(specials.special_ids))
    chosen = (rng.random(ids.shape) < probability) & eligible
    labels = np.where(chosen, ids, -100)
    r = rng.random(ids.shape)
    ids[chosen & (r < 0.8)] = specials.mask_id
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    pool = np.setdiff1d(np.arange(specials.vocab_size), np.asarray(specials.special_ids))
    ids[to_random] = pool[rng.integers(0, len(pool), int(to_random.sum()))]
    return ids, labels


def bert_batch(windows: np.ndarray, specials: TextSpecials, probability: float,
               rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Framed, masked ``[B, T]`` batch; packed windows have no padding, so attention_mask is all 1."""
    framed = bert_frame(windows, specials)
    ids, labels = mask_tokens(framed, rng, specials, probability)
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
