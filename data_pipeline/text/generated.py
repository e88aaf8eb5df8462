"""Generated WET input of any size with a known share of exact and near duplicates (benchmarks, tests).

Documents are short English texts: four lines of two sentences each, drawn from the prose of the
standard library's docstrings (``sample_corpus.paragraphs``), with about one word in ten replaced
by another word of that prose, so that no two originals share many word 5-grams. Each document
is a pure function of (seed, index), so copies are regenerated rather than kept in memory:

- an *exact* duplicate repeats an earlier original with other spacing (equal after normalising);
- a *near* duplicate repeats an earlier original with a share ``q`` of its words replaced, ``q``
  drawn from ``near_edit`` (so its true Jaccard similarity to the original spans both sides of
  the LSH threshold).

Every document passes the default quality filters. ``truth`` (returned) lists each copy with its
original; documents are written as WET ``conversion`` records, one gzip member each.
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[list[str], list[str]]:
    from data_pipeline.text.sample_corpus import paragraphs

    sentences = sorted({s for p in paragraphs() for s in re.split(r"(?<=[.!?])\s+", p)
                        if len(s.split()) >= 6 and s.endswith(".")})
    words = sorted({w for s in sentences for w in re.findall(r"[a-z]{3,}", s)})
    return sentences, words


def _edit(words: list[str], rng: np.random.Generator, share: float, vocab: list[str]) -> list[str]:
    hit = np.flatnonzero(rng.random(len(words)) < share)
    for j, w in zip(hit, rng.integers(0, len(vocab), len(hit))):
        words[j] = vocab[w]
    return words


def original(seed: int, index: int) -> str:
    """The original text of document ``index``: 4 lines of 2 sentences, 10% of words replaced."""
    sentences, vocab = _pool()
    rng = np.random.default_rng([seed, index])
    picks = rng.integers(0, len(sentences), 8)
    lines = []
    for k in range(4):
        words = " ".join(sentences[i] for i in picks[2 * k:2 * k + 2]).split()
        lines.append(" ".join(_edit(words[:-1], rng, 0.1, vocab) + words[-1:]))
    return "\n".join(lines)


def near_copy(seed: int, index: int, share: float) -> str:
    """Document ``index`` with a share ``share`` of its words replaced (the last word of a line kept)."""
    _, vocab = _pool()
    rng = np.random.default_rng([seed, index, 1])
    out = []
    for line in original(seed, index).split("\n"):
        words = line.split()
        out.append(" ".join(_edit(words[:-1], rng, share, vocab) + words[-1:]))
    return "\n".join(out)


def _record(url: str, text: str, n: int) -> bytes:
    body = text.encode("utf-8")
    head = (f"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(head + body + b"\r\n\r\n") + c.flush()


def generate_wet(folder: str | Path, documents: int, files: int, exact_share: float = 0.05,
                 near_share: float = 0.05, near_edit: tuple[float, float] = (0.0, 0.08), seed: int = 0) -> dict:
    """Write ``files`` gzip WET files holding ``documents`` documents in all; returns
    ``{"files": [paths], "exact": [(copy, original)], "near": [(copy, original, share)]}`` with
    documents named by their global index (URL ``https://gen.example.org/<index>``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 99])
    kind = rng.random(documents)
    copies = exact_share + near_share

    def source(i: int) -> int:  # an earlier document that holds its original text
        while True:
            src = int(rng.integers(0, i))
            if src == 0 or kind[src] >= copies:
                return src

    truth: dict = {"files": [], "exact": [], "near": []}
    per_file = -(-documents // files)
    for f in range(files):
        path = folder / f"gen-{f:05d}.warc.wet.gz"
        with open(path, "wb") as out:
            for i in range(f * per_file, min(documents, (f + 1) * per_file)):
                if i > 0 and kind[i] < exact_share:
                    src = source(i)
                    text = "  ".join(original(seed, src).split(" "))  # other spacing, same normalised text
                    truth["exact"].append((i, src))
                elif i > 0 and kind[i] < copies:
                    src, share = source(i), float(rng.uniform(*near_edit))
                    text = near_copy(seed, src, share)
                    truth["near"].append((i, src, share))
                else:
                    text = original(seed, i)
                out.write(_record(f"https://gen.example.org/{i}", text, i))
        truth["files"].append(str(path))
    return truth


def shingles(text: str, n: int = 5) -> set:
    """Word n-grams of the normalised text: what the MinHash estimates Jaccard similarity over."""
    from data_pipeline.text.dedup import normalise

    words = normalise(text).split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y) if x or y else 1.0
