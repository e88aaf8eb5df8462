"""Global deduplication: exact (hash of normalised text) and MinHash LSH near-duplicates.

MinHash follows FineWeb/datatrove: word 5-grams of the normalised text, 32-bit shingle hashes,
``bands * rows`` (14 x 8 = 112) universal hashes ``(a*x + b) mod (2^61 - 1)`` truncated to 32
bits. Two documents are candidates when any band of 8 rows matches exactly; candidates are
joined transitively (union-find) and each cluster keeps its smallest document id, so which copy
survives depends only on the input order, never on scheduling.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

MERSENNE = np.uint64((1 << 61) - 1)
MAX32 = np.uint64((1 << 32) - 1)
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lowercase, NFKC, punctuation removed, whitespace collapsed: what 'the same text' means."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def exact_hash(norm: str) -> int:
    return xxhash.xxh64_intdigest(norm.encode("utf-8"))


class MinHasher:
    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1):
        self.ngram, self.bands, self.rows = ngram, bands, rows
        rng = np.random.RandomState(seed)
        n = bands * rows
        self.a = rng.randint(1, 1 << 31, size=n, dtype=np.int64).astype(np.uint64)[None, :]
        self.b = rng.randint(0, 1 << 31, size=n, dtype=np.int64).astype(np.uint64)[None, :]

    def shingles(self, norm: str) -> np.ndarray:
        """32-bit hashes of the word n-grams (one shingle for texts shorter than n words)."""
        words = norm.split()
        if not words:
            return np.zeros(1, dtype=np.uint64)
        h = np.fromiter((xxhash.xxh32_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        n = min(self.ngram, len(words))
        acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
        for k in range(n):  # polynomial combination of n consecutive word hashes, mod 2^64
            acc = acc * np.uint64(1_000_003) + h[k:len(words) - n + 1 + k]
        return np.unique((acc ^ (acc >> np.uint64(32))) & MAX32)

    def signature(self, norm: str) -> np.ndarray:
        x = self.shingles(norm)[:, None]
        with np.errstate(over="ignore"):
            phv = ((x * self.a + self.b) % MERSENNE) & MAX32
        return phv.min(axis=0).astype(np.uint32)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:  # the smaller index (= smaller document id) becomes the root
            self.parent[max(rx, ry)] = min(rx, ry)


def find_duplicates(ids: list[str], hashes: np.ndarray, signatures: np.ndarray | None, bands: int, rows: int,
                    exact: bool = True, near: bool = True) -> dict[int, tuple[str, int]]:
    """Documents to drop: {index: (reason, index of the kept copy)}. ``ids`` must be sorted, so
    index order is id order and the smallest id of every group is kept."""
    assert all(ids[i] < ids[i + 1] for i in range(len(ids) - 1)), "ids must be sorted and unique"
    drop: dict[int, tuple[str, int]] = {}
    alive = np.arange(len(ids))
    if exact and len(ids):
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        keeper = first[inverse.ravel()]
        for i in np.nonzero(keeper != alive)[0]:
            drop[int(i)] = ("exact", int(keeper[i]))
        alive = np.nonzero(keeper == alive)[0]
    if near and signatures is not None and len(alive) > 1:
        uf = _UnionFind(len(ids))
        sig = np.ascontiguousarray(signatures[alive])
        for band in range(bands):
            chunk = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows]).view(np.dtype((np.void, rows * 4)))
            _, first, inverse = np.unique(chunk.ravel(), return_index=True, return_inverse=True)
            rep = first[inverse.ravel()]
            for j in np.nonzero(rep != np.arange(len(alive)))[0]:
                uf.union(int(alive[rep[j]]), int(alive[j]))
        for i in alive:
            root = uf.find(int(i))
            if root != i:
                drop[int(i)] = ("near", root)
    return drop
