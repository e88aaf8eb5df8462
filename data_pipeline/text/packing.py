"""Tokenizing the kept documents of one input file, packing them into samples, writing shards.

Tokenize (one Ray task per input file) writes ``<key>.npy`` (the surviving documents' token ids,
concatenated), ``<key>.json`` (per document: length, split, lineage; per split the file's
samples) and ``<key>.summary.json`` (samples per split), the summary last: it marks the file done.

Packing is per input file, so a file's samples depend on that file alone and are planned in its
task: per split, the documents in id order fill a sample until it holds ``sample_tokens`` tokens
(whole documents only); a short last sample is merged into the one before it (so it does not pay
a tar header for little data). Samples are numbered across files in file order and shard ``n`` of
a split holds its samples ``[n*S, (n+1)*S)``: the driver plans shards from per-file sample counts
alone. Shard writing (one Ray task per shard) reads the token files its samples come from.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np

from data_pipeline import storage
from data_pipeline.shards import write_samples
from data_pipeline.text.process import read_json, read_table, write_json

SPLITS = ("train", "val")


def split_of(text_hash: int, val_fraction: float) -> str:
    """Stable split by the normalised-text hash, so equal texts always land in the same split."""
    return "val" if (text_hash % 1_000_000) < round(val_fraction * 1_000_000) else "train"


def pack(docs: list[dict], sample_tokens: int) -> dict[str, list[list[int]]]:
    """Per split, the samples of one file as lists of document indices (empty documents skipped)."""
    plan: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        samples, current, size = plan[split], [], 0
        for j, d in enumerate(docs):
            if d["split"] != split or d["length"] == 0:
                continue
            current.append(j)
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


def tokenize_file(kept_path: str, rows: list[int], model: bytes, dtype: str, val_fraction: float, sample_tokens: int,
                  out_prefix: str) -> dict:
    """Tokenize the surviving ``rows`` of one stage-1 result and plan its samples."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    table = read_table(kept_path).take(rows) if rows else None
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
    storage.write_bytes(out_prefix + ".npy", buf.getvalue())
    plan = pack(docs, sample_tokens)
    write_json(out_prefix + ".json", {"documents": docs, "samples": plan})
    summary = {"documents": len(docs), "tokens": int(tokens.size), "samples": {s: len(plan[s]) for s in SPLITS}}
    write_json(out_prefix + ".summary.json", summary)
    return summary


def plan_shards(sample_counts: list[tuple[str, int]], per_shard: int) -> Iterator[list[tuple[str, int, int]]]:
    """Shards of one split from ``(file key, samples of that file)`` in file order: each shard as
    ``(key, first, end)`` ranges of file-local sample numbers, ``per_shard`` samples a shard."""
    shard: list[tuple[str, int, int]] = []
    room = per_shard
    for key, count in sample_counts:
        start = 0
        while start < count:
            take = min(room, count - start)
            shard.append((key, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                yield shard
                shard, room = [], per_shard
    if shard:
        yield shard


def _load(token_prefix: str, key: str):
    path = f"{token_prefix}/{key}.npy"
    if storage.is_remote(path):
        tokens = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    else:
        tokens = np.load(path, mmap_mode="r")
    meta = read_json(f"{token_prefix}/{key}.json")
    starts = np.concatenate([[0], np.cumsum([d["length"] for d in meta["documents"]])]).astype(np.int64)
    return tokens, meta, starts


def _encoded(split: str, shard_index: int, pieces, token_prefix: str, dtype: str, totals: dict):
    i = 0
    for key, first, end in pieces:
        tokens, meta, starts = _load(token_prefix, key)
        docs = meta["documents"]
        for sample in meta["samples"][split][first:end]:
            arr = np.concatenate([np.asarray(tokens[starts[j]:starts[j + 1]], dtype=dtype) for j in sample])
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            blob = json.dumps({"doc_lengths": [docs[j]["length"] for j in sample],
                               "documents": [docs[j]["doc"] for j in sample]},
                              sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
            totals["documents"] += len(sample)
            totals["tokens"] += int(arr.size)
            yield f"{split}-{shard_index:06d}-{i:05d}", {"tokens.npy": buf.getvalue(), "json": blob}
            i += 1


def shard_record_ok(out_dir: str, rel_path: str, record: dict | None, plan: str) -> bool:
    """A shard a previous run finished is reused only when its record matches this plan and the
    file's bytes still hash to the recorded sha256 (a torn or edited shard is written again)."""
    if not record or record.get("plan") not in (None, plan):
        return False
    path = storage.join(out_dir, rel_path)
    try:
        if storage.size(path) != record["bytes"]:
            return False
        return storage.sha256(path) == record["sha256"]
    except storage.StorageError as e:
        if e.kind == "not_found":
            return False
        raise


def write_text_shard(out_dir: str, rel_path: str, split: str, shard_index: int, pieces: list[tuple[str, int, int]],
                     token_prefix: str, dtype: str, record_path: str, plan: str) -> dict:
    """Write one shard of packed samples (or reuse a verified one); returns its manifest entry
    (plus payload bytes) and records it at ``record_path``."""
    record = read_json(record_path) if storage.exists(record_path) else None
    if shard_record_ok(out_dir, rel_path, record, plan):
        return {k: v for k, v in record.items() if k != "plan"} | {"reused": True}
    totals = {"documents": 0, "tokens": 0}
    target = storage.join(out_dir, rel_path)
    with storage.atomic_output(target) as f, storage.errors_named(target):
        info = write_samples(f, rel_path, _encoded(split, shard_index, pieces, token_prefix, dtype, totals))
        entry = {**info.to_dict(), **totals}
        # recorded before the shard appears: a shard in the output always has its record (a task
        # stopped in between leaves a record whose file is missing, which shard_record_ok rejects)
        write_json(record_path, {**entry, "plan": plan})
    return entry
