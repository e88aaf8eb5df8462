"""Tokenizing the kept documents of one input file, packing documents into samples, writing shards.

Tokenize (one Ray task per input file) writes ``<key>.npy`` (all kept documents' token ids,
concatenated) and ``<key>.json`` (per document: length, split, lineage); the JSON is written last
and marks the file done. Packing then walks the documents in id order per split and closes a
sample once it holds ``sample_tokens`` tokens (whole documents only; a short last sample is merged
into the one before it so it does not pay a tar header for little data), and cuts shards every
``samples_per_shard`` samples. Shard writing (one Ray task per shard) reads only those two files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data_pipeline.shards import ShardInfo, write_bytes_atomic, write_json_atomic, write_shard

SPLITS = ("train", "val")


def split_of(text_hash: int, val_fraction: float) -> str:
    """Stable split by the normalised-text hash, so equal texts always land in the same split."""
    return "val" if (text_hash % 1_000_000) < round(val_fraction * 1_000_000) else "train"


def tokenize_file(kept_path: str, rows: list[int], model: bytes, dtype: str, val_fraction: float,
                  out_prefix: str) -> dict:
    """Tokenize the surviving ``rows`` of one stage-1 result; write ``<prefix>.npy`` and ``.json``."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    table = pq.read_table(kept_path).take(rows) if rows else None
    docs, arrays = [], []
    if table is not None:
        cols = table.to_pydict()
        ids = sp.encode(cols["text"], num_threads=1)
        for i, toks in enumerate(ids):
            lineage = {"id": cols["id"][i], "url": cols["url"][i], "source": cols["source"][i],
                       "offset": cols["offset"][i], "lang": cols["lang"][i], "lang_score": cols["lang_score"][i],
                       **json.loads(cols["scores"][i])}
            docs.append({"length": len(toks), "split": split_of(cols["hash"][i], val_fraction), "doc": lineage})
            arrays.append(np.asarray(toks, dtype=dtype))
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    buf = io.BytesIO()
    np.save(buf, tokens, allow_pickle=False)
    write_bytes_atomic(out_prefix + ".npy", buf.getvalue())
    write_json_atomic(out_prefix + ".json", {"documents": docs})
    return {"documents": len(docs), "tokens": int(tokens.size)}


def plan_samples(metas: list[tuple[str, list[dict]]], sample_tokens: int) -> dict[str, list[list[tuple[str, int]]]]:
    """Per split, the samples as lists of (file key, document index in that file's token file)."""
    plan: dict[str, list[list[tuple[str, int]]]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        samples, current, size = plan[split], [], 0
        for key, docs in metas:
            for j, d in enumerate(docs):
                if d["split"] != split or d["length"] == 0:
                    continue
                current.append((key, j))
                size += d["length"]
                if size >= sample_tokens:
                    samples.append(current)
                    current, size = [], 0
        if current:
            if samples and size < sample_tokens // 2:
                samples[-1].extend(current)
            else:
                samples.append(current)
    return plan


def write_text_shard(out_dir: str, rel_path: str, split: str, shard_index: int, samples: list[list[tuple[str, int]]],
                     token_prefix: str, dtype: str) -> dict:
    """Write one shard of packed samples; returns its manifest entry (plus payload bytes)."""
    cache: dict[str, tuple[np.ndarray, list[dict], np.ndarray]] = {}

    def load(key: str):
        if key not in cache:
            tokens = np.load(f"{token_prefix}/{key}.npy", mmap_mode="r")
            docs = json.loads(Path(f"{token_prefix}/{key}.json").read_text())["documents"]
            starts = np.concatenate([[0], np.cumsum([d["length"] for d in docs])]).astype(np.int64)
            cache[key] = (tokens, docs, starts)
        return cache[key]

    documents = tokens_total = 0

    def encoded():
        nonlocal documents, tokens_total
        for i, sample in enumerate(samples):
            parts, lengths, lineage = [], [], []
            for key, j in sample:
                tokens, docs, starts = load(key)
                parts.append(np.asarray(tokens[starts[j]:starts[j + 1]], dtype=dtype))
                lengths.append(docs[j]["length"])
                lineage.append(docs[j]["doc"])
            arr = np.concatenate(parts)
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            meta = json.dumps({"doc_lengths": lengths, "documents": lineage}, sort_keys=True, ensure_ascii=False,
                              separators=(",", ":")).encode()
            documents += len(sample)
            tokens_total += int(arr.size)
            yield f"{split}-{shard_index:06d}-{i:05d}", {"tokens.npy": buf.getvalue(), "json": meta}

    info: ShardInfo = write_shard(out_dir, rel_path, encoded())
    return {**info.to_dict(), "documents": documents, "tokens": tokens_total}


def existing_shard_info(out_dir: str, rel_path: str, samples: list[list[tuple[str, int]]],
                        token_prefix: str) -> dict:
    """The manifest entry of a shard a previous run finished (it is complete: writes are atomic)."""
    import tarfile

    from data_pipeline.shards import sha256_file

    path = Path(out_dir) / rel_path
    with tarfile.open(path) as tar:
        payload = sum(m.size for m in tar.getmembers())
    lengths: dict[str, list[int]] = {}
    tokens = 0
    for sample in samples:
        for key, j in sample:
            if key not in lengths:
                docs = json.loads(Path(f"{token_prefix}/{key}.json").read_text())["documents"]
                lengths[key] = [d["length"] for d in docs]
            tokens += lengths[key][j]
    return {"path": rel_path, "samples": len(samples), "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "payload_bytes": payload, "documents": sum(map(len, samples)), "tokens": tokens}
