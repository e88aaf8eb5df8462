"""Global deduplication: exact (hash of normalised text) and MinHash LSH near-duplicates.

MinHash follows FineWeb/datatrove: word 5-grams of the normalised text, 32-bit shingle hashes,
``bands * rows`` (14 x 8 = 112) universal hashes ``(a*x + b) mod (2^61 - 1)`` truncated to 32
bits. Two documents are candidates when any band of 8 rows matches exactly; candidates are
joined transitively and each cluster keeps its smallest document id, so which copy survives
depends only on the input order, never on scheduling. The global step runs as a shuffle over
partitions: ``shuffle.py``.
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
