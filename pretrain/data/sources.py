"""Where samples come from: shard directories (manifest.json + WebDataset tars) or a synthetic pool.

A *source* is a list of shard sample counts plus random access to sample ``(shard, index)``. The
loaders decide the order (``order.py``) from the counts alone, so skipping ahead for a resume never
decodes anything: a shard is opened, its tar headers are read once into an index (``TarIndex``,
members ``<key>.<field>`` grouped by key in file order) and only the members a rank needs are read;
of ``tokens.npy`` only the byte ranges of the rank's own windows (``tokens_range``).
Shards are consumed in order, so reads stay sequential within a shard apart from the shuffle
buffer's local reordering; a small LRU keeps the indices of recently used shards. Every shard is
checked against the manifest before use and remote shard directories are read through a bounded
local cache (``shard_store.py``, ``data.verify``, ``data.cache_dir``, ``data.cache_gb``).

Synthetic sources (``data.source=synthetic``) generate the same kinds of samples from the seed:
text follows a fixed random successor permutation with 20% noise (so a model can learn it), images
are a per-class colour pattern plus noise. Both are deterministic functions of (seed, split, index).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline import storage
from pretrain.data.shard_store import ShardStore

SYNTHETIC_SPECIALS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "mask_id": 4, "cls_id": 5, "sep_id": 6}
SPECIAL_KEYS = ("pad_id", "bos_id", "eos_id", "cls_id", "sep_id", "mask_id")  # never masked by BERT


def read_manifest(root: str | Path) -> dict:
    """``<root>/manifest.json``; ``root`` is a local directory or a URI (s3://, gs://, https://)."""
    path = storage.join(str(root), "manifest.json")
    try:
        return json.loads(storage.read_bytes(path))
    except storage.StorageError as e:
        if e.kind == "not_found":
            raise FileNotFoundError(f"{path}: no manifest.json; data.path must be a shard directory written by "
                                    f"`pretrain data ...`") from None
        raise


class TarIndex:
    """Offsets of every member of one tar, grouped into samples by key (WebDataset convention)."""

    def __init__(self, path: Path):
        self.path = path
        self.samples: list[dict[str, tuple[int, int]]] = []
        keys: dict[str, int] = {}
        with tarfile.open(path, mode="r:") as tf:  # reads headers only, seeking over the data
            for m in tf:
                if not m.isfile():
                    continue
                name = m.name.rsplit("/", 1)[-1]
                key, _, field = name.partition(".")
                if key not in keys:
                    keys[key] = len(self.samples)
                    self.samples.append({})
                self.samples[keys[key]][field] = (m.offset_data, m.size)
        self._file = open(path, "rb")  # kept open while the index is cached

    def read(self, index: int, field: str) -> bytes:
        try:
            offset, size = self.samples[index][field]
        except (IndexError, KeyError):
            raise KeyError(f"{self.path}: sample {index} has no member .{field}") from None
        self._file.seek(offset)
        return self._file.read(size)

    def npy_range(self, index: int, field: str, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Elements ``[lo, hi)`` of the 1-D ``.npy`` member ``field`` and its full length, reading
        only the array header and those elements' bytes (a rank reads just its windows' tokens)."""
        try:
            offset, size = self.samples[index][field]
        except (IndexError, KeyError):
            raise KeyError(f"{self.path}: sample {index} has no member .{field}") from None
        self._file.seek(offset)
        version = np.lib.format.read_magic(self._file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(self._file)
        if len(shape) != 1 or dtype.hasobject or not 0 <= lo <= hi <= shape[0]:
            raise ValueError(f"{self.path}: sample {index} .{field} has shape {shape} (dtype {dtype}); "
                             f"cannot read elements [{lo}, {hi})")
        self._file.seek(self._file.tell() + lo * dtype.itemsize)
        data = self._file.read((hi - lo) * dtype.itemsize)
        return np.frombuffer(data, dtype=dtype).astype(np.int64), int(shape[0])

    def close(self) -> None:
        self._file.close()


class ShardSource:
    """Random access to the samples of one split of a shard directory."""

    def __init__(self, root: str | Path, split: str, cache_shards: int = 8, verify: str = "open",
                 cache_dir: str | None = None, cache_gb: float = 20.0):
        self.root = str(root)
        self.manifest = read_manifest(self.root)
        splits = self.manifest.get("splits", {})
        if split not in splits:
            raise KeyError(f"{self.root}/manifest.json has no split {split!r} (has: {', '.join(splits)})")
        self.store = ShardStore(self.root, splits[split]["shards"], verify, cache_dir, cache_gb)
        self.store.open_check()
        self.shards = [self.store.location(i) for i in range(len(self.store.entries))]
        self._counts = [s.get("samples") for s in splits[split]["shards"]]
        self._cache: OrderedDict[int, TarIndex] = OrderedDict()
        self._cache_size = cache_shards

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "text")

    def counts(self) -> list[int]:
        """Samples per shard, from the manifest (or a header scan when the manifest lacks them)."""
        return [c if c is not None else len(self._index(i).samples) for i, c in enumerate(self._counts)]

    def _index(self, shard: int) -> TarIndex:
        idx = self._cache.get(shard)
        if idx is None:
            idx = TarIndex(self.store.local(shard))
            self._cache[shard] = idx
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)[1].close()
        else:
            self._cache.move_to_end(shard)
        return idx

    def read(self, shard: int, index: int, field: str) -> bytes:
        return self._index(shard).read(index, field)

    # text ---------------------------------------------------------------------------------------
    def doc_lengths(self, shard: int, index: int) -> list[int]:
        return json.loads(self.read(shard, index, "json"))["doc_lengths"]

    def tokens(self, shard: int, index: int) -> np.ndarray:
        return np.load(io.BytesIO(self.read(shard, index, "tokens.npy")), allow_pickle=False)

    def tokens_range(self, shard: int, index: int, lo: int, hi: int, total: int) -> np.ndarray:
        """Tokens ``[lo, hi)`` of a sample (int64), read without the rest; ``total`` is the length
        its ``doc_lengths`` promise, checked against the array."""
        toks, n = self._index(shard).npy_range(index, "tokens.npy", lo, hi)
        if n != total:
            raise ValueError(f"{self.shards[shard]}: sample {index} has {n} tokens but its doc_lengths sum to {total}")
        return toks

    # image --------------------------------------------------------------------------------------
    def image(self, shard: int, index: int) -> tuple[Image.Image, int]:
        img = Image.open(io.BytesIO(self.read(shard, index, "jpg")))
        label = int(self.read(shard, index, "cls").decode().strip())
        return img.convert("RGB"), label


class SyntheticText:
    """A pool of ``samples`` synthetic text samples, 1-3 documents each, learnable by a small model."""

    kind = "text"

    def __init__(self, seed: int, split: str, samples: int, vocab_size: int, seq_len: int):
        if vocab_size <= len(SYNTHETIC_SPECIALS) + 1:
            raise ValueError(f"synthetic text needs model.vocab_size > {len(SYNTHETIC_SPECIALS) + 1}")
        self.seed, self.salt = seed, 1 if split == "train" else 2
        self.samples, self.vocab_size, self.seq_len = samples, vocab_size, seq_len
        first = len(SYNTHETIC_SPECIALS)
        perm_rng = np.random.default_rng([seed, 7])  # same successor rule for train and val
        self.successor = np.arange(vocab_size)
        self.successor[first:] = first + perm_rng.permutation(vocab_size - first)
        # fresh tokens follow a Zipf law over a random ranking, as words do: unigram statistics are
        # learnable at once (by BERT too, whose context rule needs attention and takes longer)
        zipf = 1.0 / (1.0 + perm_rng.permutation(vocab_size - first))
        self.fresh_p = zipf / zipf.sum()
        self.first = first

    def counts(self) -> list[int]:
        return [self.samples]

    def doc_lengths(self, shard: int, index: int) -> list[int]:
        rng = np.random.default_rng([self.seed, self.salt, index, 0])
        n = int(rng.integers(1, 4))
        return [int(x) for x in rng.integers(max(1, self.seq_len // 4), self.seq_len + 1, n)]

    def tokens(self, shard: int, index: int) -> np.ndarray:
        total = sum(self.doc_lengths(shard, index))
        rng = np.random.default_rng([self.seed, self.salt, index, 1])
        noise = rng.random(total) < 0.2
        rand = self.first + rng.choice(self.vocab_size - self.first, total, p=self.fresh_p)
        out = np.empty(total, dtype=np.int64)
        prev = int(rand[0])
        for i in range(total):
            prev = int(rand[i]) if (i == 0 or noise[i]) else int(self.successor[prev])
            out[i] = prev
        return out

    def tokens_range(self, shard: int, index: int, lo: int, hi: int, total: int) -> np.ndarray:
        """Tokens ``[lo, hi)`` of a sample (generated whole: a synthetic sample is one seeded draw)."""
        return self.tokens(shard, index)[lo:hi]


class SyntheticImage:
    """A pool of synthetic RGB images: a fixed 4x4 colour pattern per class plus Gaussian noise."""

    kind = "image"

    def __init__(self, seed: int, split: str, samples: int, num_classes: int, image_size: int):
        self.seed, self.salt = seed, 1 if split == "train" else 2
        self.samples, self.num_classes, self.image_size = samples, num_classes, image_size
        self._patterns: dict[int, Image.Image] = {}

    def counts(self) -> list[int]:
        return [self.samples]

    def _pattern(self, label: int) -> Image.Image:
        if label not in self._patterns:
            cells = np.random.default_rng([self.seed, 11, label]).integers(0, 256, (4, 4, 3), dtype=np.uint8)
            size = (self.image_size, self.image_size)
            self._patterns[label] = Image.fromarray(cells).resize(size, Image.NEAREST)
        return self._patterns[label]

    def image(self, shard: int, index: int) -> tuple[Image.Image, int]:
        rng = np.random.default_rng([self.seed, self.salt, index])
        label = int(rng.integers(self.num_classes))
        base = np.asarray(self._pattern(label), dtype=np.float32)
        noisy = base + rng.normal(0.0, 20.0, base.shape).astype(np.float32)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), label
