"""Real-text shards in a second: the built-in English prose (``sample_corpus``), a sentencepiece
tokenizer trained on it by the pipeline's own ``train_tokenizer``, documents packed into samples
and written with ``write_shard`` in the docs/FORMATS.md layout (as ``tests/data/fixtures`` does for
random tokens). The full pipeline (``pretrain data commoncrawl``) starts a Ray; the sweep tests
need only its output format, many times cheaper."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from data_pipeline.shards import sha256_file, write_shard
from data_pipeline.text.sample_corpus import articles
from data_pipeline.text.tokenizer import tokenizer_info, train_tokenizer


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_text_shards(root: Path, n_articles: int = 60, vocab_size: int = 512, sample_tokens: int = 256,
                      val_every: int = 10) -> Path:
    """Shards of ``n_articles`` articles (every ``val_every``-th one in val) under ``root``."""
    import sentencepiece as spm

    docs = ["\n".join(paras) for paras in articles(n_articles, per_article=6)]
    model = train_tokenizer(docs, vocab_size, threads=1)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    info = tokenizer_info(model)
    encoded = [np.array([*ids, info["eos_id"]], dtype=np.uint16) for ids in sp.encode(docs)]
    splits = {}
    for split in ("train", "val"):
        mine = [(i, d) for i, d in enumerate(encoded) if (i % val_every == val_every - 1) == (split == "val")]
        samples, current = [], []
        for i, doc in mine:  # whole documents per sample, a new sample once it holds sample_tokens
            current.append((i, doc))
            if sum(len(d) for _, d in current) >= sample_tokens:
                samples.append(current)
                current = []
        samples += [current] if current else []
        records = [(f"{split}{k:05d}", {"tokens.npy": _npy(np.concatenate([d for _, d in s])), "json": json.dumps(
            {"doc_lengths": [len(d) for _, d in s], "documents": [{"id": f"doc-{i}", "url": "u"} for i, _ in s]}
        ).encode()}) for k, s in enumerate(samples)]
        shard = write_shard(root, f"{split}/shard-000000.tar", records)
        splits[split] = {"samples": len(samples), "shards": [{
            "path": shard.path, "samples": shard.samples, "bytes": shard.bytes, "sha256": shard.sha256,
            "documents": len(mine), "tokens": int(sum(len(d) for _, d in mine))}]}
    manifest = {"format": "pretrain-text-shards", "version": 1, "kind": "text", "token_dtype": "uint16",
                "tokenizer": {"path": "tokenizer.model", "sha256": sha256_file(root / "tokenizer.model"), **info},
                "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
