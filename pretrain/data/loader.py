"""Deterministic, resumable batch streams for GPT, BERT and ViT over shards or synthetic data.

Each data-parallel rank has one infinite (train) or finite (eval) sequence of batches ``0, 1, 2, ...``
that depends only on the config, the seed, ``dp_rank`` and ``dp_size`` -- not on ``num_workers``.

The data-parallel split is Megatron-style: one global stream of items per split (text: packed
windows, ``text.py``; ViT: samples), independent of the layout, with item ``g`` going to rank
``g % dp_size`` and each rank batching its items in order. So the items of optimizer step ``k``
(``A`` micro-batches of ``B`` on each of ``D`` ranks) are global items ``[k*B*A*D, (k+1)*B*A*D)``
for every factorisation with the same ``B*A*D``: changing the data/tensor split or the micro-batch
size at a fixed global batch changes the arithmetic, never the data.
With ``num_workers = W > 0`` a torch ``DataLoader`` runs W copies of the stream; worker ``w`` builds
only batches ``start + w + k*W`` (skipping the others without decoding them) and the DataLoader's
in-order round-robin hands them back as ``start, start+1, ...``.

State is ``{"batches": n, "pos": ..., "offset": o}``: how many batches this rank consumed, (text)
where to restart the scan, and the global items consumed before this batch geometry began.
``load_state_dict`` then rebuilds the stream from batch ``n``, so a resumed loader yields exactly
the batches the uninterrupted one would have yielded next. A resume with another global batch
(``pretrain.checkpoint.resume.loader_state``) sets ``offset`` to every item read so far and ``n = 0``:
the new geometry deals the stream from there, nothing skipped, nothing read twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pretrain.data import image as image_tf
from pretrain.data import text as text_mod
from pretrain.data.order import EpochOrder
from pretrain.data.sources import SPECIAL_KEYS, ShardSource, SyntheticImage, SyntheticText

STATE_VERSION = 1


@dataclass
class StreamSpec:
    """Everything a worker needs to rebuild the stream (picklable; sources open lazily)."""

    family: str  # gpt | bert | vit
    split: str
    source: str  # shards | synthetic
    path: str | None
    seed: int
    dp_rank: int
    dp_size: int
    batch_size: int
    train: bool
    seq_len: int = 128
    shuffle_buffer: int = 1000
    mlm_probability: float = 0.15
    image_size: int = 224
    crop_scale_min: float = 0.08
    hflip: bool = True
    synthetic_samples: int = 4096
    vocab_size: int = 512
    num_classes: int = 1000
    tokenizer: dict = field(default_factory=dict)
    offset: int = 0  # global items (text windows, images) consumed before this batch geometry began
    verify: str = "open"  # data.verify: shard checks against the manifest
    cache_dir: str | None = None  # data.cache_dir: local copies of remote shards
    cache_gb: float = 20.0

    def open_source(self):
        if self.source == "shards":
            return ShardSource(self.path, self.split, verify=self.verify, cache_dir=self.cache_dir,
                               cache_gb=self.cache_gb)
        if self.family == "vit":
            return SyntheticImage(self.seed, self.split, self.synthetic_samples, self.num_classes, self.image_size)
        return SyntheticText(self.seed, self.split, self.synthetic_samples, self.vocab_size, self.seq_len)


def text_specials(tokenizer: dict) -> text_mod.TextSpecials:
    """Special ids from a manifest ``tokenizer`` record (absent or negative ids are ignored)."""
    def get(key):
        v = tokenizer.get(key)
        return int(v) if v is not None and int(v) >= 0 else None

    if get("eos_id") is None:
        raise ValueError("the manifest tokenizer has no eos_id; text packing needs one")
    specials = tuple(sorted({get(k) for k in SPECIAL_KEYS if get(k) is not None}))
    return text_mod.TextSpecials(eos_id=get("eos_id"), vocab_size=int(tokenizer["vocab_size"]),
                                 special_ids=specials, mask_id=get("mask_id"), cls_id=get("cls_id"),
                                 sep_id=get("sep_id"))


def _check_layout(spec: StreamSpec, order: EpochOrder) -> None:
    if not 0 <= spec.dp_rank < spec.dp_size:
        raise ValueError(f"dp_rank {spec.dp_rank} is not in [0, dp_size={spec.dp_size})")
    if order.total < spec.dp_size:
        raise ValueError(f"the split has {order.total} samples, fewer than the {spec.dp_size} data-parallel ranks")


def _text_batches(spec: StreamSpec, source, start: dict, owns) -> Iterator[dict]:
    specials = text_specials(spec.tokenizer)
    order = EpochOrder(source.counts(), spec.seed, spec.train, spec.shuffle_buffer)
    _check_layout(spec, order)
    if spec.family == "gpt":
        window = spec.seq_len + 1
    else:
        window = text_mod.bert_window(spec.seq_len, specials)
        if specials.mask_id is None:
            raise ValueError("BERT masking needs a mask_id in the manifest tokenizer")
    layout = text_mod.Layout(window, spec.batch_size, spec.dp_rank, spec.dp_size, spec.offset)
    pos = tuple(start.get("pos") or (0, 0, 0))
    for b, windows, bpos, ids in text_mod.packed_batches(source, order, specials, layout, pos, owns,
                                                         finite=not spec.train):
        if spec.family == "gpt":
            batch = text_mod.gpt_batch(windows)
        else:  # one generator per global window: masks do not depend on the layout (eval's are fixed too)
            rngs = [np.random.default_rng([spec.seed, 303, int(spec.train), w]) for w in ids]
            batch = text_mod.bert_batch(windows, specials, spec.mlm_probability, rngs)
        batch["_batch"], batch["_pos"] = b, list(bpos)
        yield batch


def _image_batches(spec: StreamSpec, source, start: dict, owns) -> Iterator[dict]:
    """Rank ``r``'s ``q``-th sample is global sample ``G = offset + q*D + r`` of the stream that runs on across
    epochs (epoch ``G // N``, place ``G % N``), so train batches are layout-invariant like text's and no
    sample is dropped at epoch ends; a finite pass takes epoch 0 cut to ``N // D`` samples per rank."""
    order = EpochOrder(source.counts(), spec.seed, spec.train, spec.shuffle_buffer)
    _check_layout(spec, order)
    n, d, r, bs = order.total, spec.dp_size, spec.dp_rank, spec.batch_size
    b = start["batches"]
    while True:
        lo, hi = b * bs, (b + 1) * bs
        if not spec.train:
            if lo >= n // d:
                return
            hi = min(hi, n // d)
        if owns(b):
            arrays, labels = [], []
            for q in range(lo, hi):
                epoch, i = divmod(spec.offset + q * d + r, n)
                shard, index = (int(x) for x in order.refs(epoch)[i])
                img, label = source.image(shard, index)
                if spec.train:
                    rng = np.random.default_rng([spec.seed, 404, epoch, i])
                    arrays.append(image_tf.train_transform(img, spec.image_size, rng, spec.crop_scale_min, spec.hflip))
                else:
                    arrays.append(image_tf.eval_transform(img, spec.image_size))
                labels.append(label)
            yield {"pixel_values": image_tf.to_normalized(arrays), "labels": torch.tensor(labels, dtype=torch.int64),
                   "_batch": b, "_pos": [b]}
        b += 1


def batch_stream(spec: StreamSpec, start: dict, worker: int = 0, workers: int = 1) -> Iterator[dict]:
    """Batches ``n, n+1, ...`` (``n = start["batches"]``) that this worker owns, in order."""
    first = start["batches"]

    def owns(b: int) -> bool:
        return b >= first and (b - first) % workers == worker

    source = spec.open_source()
    gen = _image_batches if spec.family == "vit" else _text_batches
    yield from gen(spec, source, start, owns)


class _WorkerStream(IterableDataset):
    def __init__(self, spec: StreamSpec, start: dict):
        super().__init__()
        self.spec, self.start = spec, start

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return batch_stream(self.spec, self.start, w, n)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # numpy/PIL work per worker; do not oversubscribe the cores


class Loader:
    """An iterator of batch dicts with ``state_dict``/``load_state_dict``.

    Train loaders are infinite and continue where they are (``iter(loader) is loader``); eval
    loaders are finite and start from their first batch on every ``iter()``.
    """

    def __init__(self, spec: StreamSpec, num_workers: int = 0, prefetch_factor: int = 2):
        self.spec, self.num_workers, self.prefetch_factor = spec, num_workers, prefetch_factor
        self._state = {"batches": 0, "pos": None}
        self._it: Iterator[dict] | None = None

    # iteration -----------------------------------------------------------------------------------
    def _open(self, state: dict) -> Iterator[dict]:
        if self.num_workers == 0:
            return batch_stream(self.spec, state)
        # page-locked batches on GPU machines: the trainer's non_blocking host-to-device copies overlap.
        # Its own generator: without one, every DataLoader iterator draws its workers' base seed from
        # torch's global RNG, so a resumed run (or an eval pass) would shift the dropout masks of
        # every later step; the streams take no randomness from it (they seed from the spec).
        dl = DataLoader(_WorkerStream(self.spec, dict(state)), batch_size=None, num_workers=self.num_workers,
                        worker_init_fn=_worker_init, prefetch_factor=self.prefetch_factor,
                        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.spec.seed))
        return iter(dl)

    def __iter__(self):
        if not self.spec.train:
            return self._eval_iter()
        return self

    def _eval_iter(self) -> Iterator[dict]:
        for batch in self._open({"batches": 0, "pos": None}):
            batch.pop("_pos"), batch.pop("_batch")
            yield batch

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._open(self._state)
        batch = next(self._it)
        b, pos = batch.pop("_batch"), batch.pop("_pos")
        expected = self._state["batches"]
        if int(b) != expected:  # the ordering contract is what exact resume rests on
            raise RuntimeError(f"data loader produced batch {int(b)} where {expected} was due")
        self._state = {"batches": expected + 1, "pos": [int(x) for x in pos]}
        return batch

    def close(self) -> None:
        self._it = None  # drops the DataLoader iterator, which shuts its workers down

    # state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = self.spec
        return {"version": STATE_VERSION, "batches": self._state["batches"], "pos": self._state["pos"],
                "family": s.family, "split": s.split, "seed": s.seed, "dp_rank": s.dp_rank, "dp_size": s.dp_size,
                "batch_size": s.batch_size, "seq_len": s.seq_len, "offset": s.offset}

    def load_state_dict(self, state: dict) -> None:
        s = self.spec
        for key, mine in (("family", s.family), ("seed", s.seed), ("dp_size", s.dp_size), ("dp_rank", s.dp_rank),
                          ("batch_size", s.batch_size), ("seq_len", s.seq_len)):
            if key in state and state[key] != mine:
                raise ValueError(f"data loader state has {key}={state[key]!r} but this loader has {mine!r}; "
                                 f"resume with the same data settings and parallel layout")
        self.close()
        self.spec.offset = int(state.get("offset", 0))
        self._state = {"batches": int(state["batches"]), "pos": state.get("pos")}
