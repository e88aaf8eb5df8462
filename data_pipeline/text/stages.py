"""The per-file Ray tasks that follow global dedup: each reads only its own file's stage-1
result and its range of the drop list (``shuffle.file_drops``).

- ``finish_file`` writes ``rejected/<key>.parquet`` (stage-1 drops, then dedup drops) and returns
  the file's dedup counts and a histogram of its survivors' characters by sample key, from which
  the driver finds the tokenizer sample's bound without seeing a document;
- ``sample_file`` writes the file's survivors below that bound, with their text, for the tokenizer;
- ``tokenize_survivors`` tokenizes the file's survivors and plans its samples (``packing.py``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from data_pipeline import storage
from data_pipeline.text import packing, shuffle
from data_pipeline.text.process import REJECTED_SCHEMA, read_table, write_table


def _survivors(stage1: str, key: str, index: int, files: int, drops: tuple[str, int], columns: list[str]):
    """(table of the file's kept documents, their drops by row, boolean survivor mask)."""
    table = read_table(storage.join(stage1, f"{key}.kept.parquet"), columns)
    dropped = shuffle.file_drops(drops[0], index, files, drops[1])
    records = shuffle.record_indices(table.column("id").to_pylist())
    by_row = {r: dropped[int(x)] for r, x in enumerate(records) if int(x) in dropped}
    alive = np.ones(table.num_rows, dtype=bool)
    alive[list(by_row)] = False
    return table, by_row, alive


def finish_file(stage1: str, out: str, key: str, index: int, files: int, drops: tuple[str, int], seed: int,
                hist_bits: int) -> dict:
    table, by_row, alive = _survivors(stage1, key, index, files, drops, ["id", "url", "source", "offset", "chars"])
    rejected = read_table(storage.join(stage1, f"{key}.rejected.parquet"))
    if by_row:
        rows = sorted(by_row)
        extra = table.select(["id", "url", "source", "offset"]).take(rows)
        extra = extra.append_column("stage", pa.array(["dedup"] * len(rows), pa.string()))
        extra = extra.append_column("reason", pa.array([by_row[r][0] for r in rows], pa.string()))
        extra = extra.append_column("detail", pa.array([f"duplicate of {shuffle.id_of(by_row[r][1])}" for r in rows],
                                                       pa.string()))
        rejected = pa.concat_tables([rejected, extra.cast(REJECTED_SCHEMA)])
    write_table(storage.join(out, "rejected", f"{key}.parquet"), rejected)
    ids = table.column("id").to_pylist()
    chars = table.column("chars").to_numpy()
    keys = np.fromiter((shuffle.sample_key(ids[r], seed) for r in np.flatnonzero(alive)), dtype=np.uint64,
                       count=int(alive.sum()))
    bins, at = np.unique((keys >> np.uint64(64 - hist_bits)).astype(np.int64), return_inverse=True)
    sums = np.bincount(at.ravel(), weights=chars[alive], minlength=len(bins)).astype(np.int64) if len(bins) else bins
    return {"key": key, "dedup": dict(Counter(reason for reason, _ in by_row.values())),
            "survivors": int(alive.sum()), "hist": [bins.tolist(), sums.tolist()]}


def sample_file(stage1: str, key: str, index: int, files: int, drops: tuple[str, int], seed: int, limit: int | None,
                out_prefix: str) -> dict:
    """The file's survivors with a sample key below ``limit`` (all when None), with their text."""
    table, _, alive = _survivors(stage1, key, index, files, drops, ["id"])
    ids = table.column("id").to_pylist()
    rows = np.flatnonzero(alive)
    keys = np.fromiter((shuffle.sample_key(ids[r], seed) for r in rows), dtype=np.uint64, count=len(rows))
    if limit is not None:
        chosen = keys < np.uint64(limit)
        rows, keys = rows[chosen], keys[chosen]
    if len(rows):
        text = read_table(storage.join(stage1, f"{key}.kept.parquet"), ["text"]).column("text").take(rows)
        uids = shuffle.uid_of(index, shuffle.record_indices([ids[r] for r in rows]))
        write_table(out_prefix + ".parquet", pa.table({"sort_key": keys, "uid": uids, "text": text}))
    return {"documents": int(len(rows))}


def tokenize_survivors(stage1: str, key: str, index: int, files: int, drops: tuple[str, int], model: bytes,
                       dtype: str, val_fraction: float, sample_tokens: int, out_prefix: str) -> dict:
    _, _, alive = _survivors(stage1, key, index, files, drops, ["id"])
    return packing.tokenize_file(storage.join(stage1, f"{key}.kept.parquet"), np.flatnonzero(alive).tolist(), model,
                                 dtype, val_fraction, sample_tokens, out_prefix)
