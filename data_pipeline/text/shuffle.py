"""Global deduplication as a shuffle over partitions, so no process holds every document.

A document's ``uid`` is ``(input file index << 32) | record index``: uid order is document id
order (``000003-0000042`` is file 3, record 42), so "keep the smallest uid" keeps the same copy
as "keep the smallest id", whatever the partitioning or the scheduling.

1. ``scatter`` (one task per input file) reads the file's stage-1 hashes and MinHash signatures
   and writes two Arrow IPC files with one record batch per partition: exact records
   ``(hash, uid)`` partitioned by hash, band records ``(band, value, uid)`` partitioned by a hash
   of (band, value). A band's value is its ``rows`` signature words, compared whole.
2. ``find_pairs`` (one task per partition) reads its batch from every scatter file. Exact: per text
   hash, every uid but the smallest is a drop with that smallest as keeper. Near: per equal
   (band, value), a star of edges from the group's smallest uid to each other member.
3. ``resolve`` (one task) joins the near edges into clusters (connected components; the smallest
   uid of a cluster is its root) and writes every drop, ``(uid, keeper, reason)``, into one parquet
   per range of input files, for the per-file tasks that follow. Its memory grows with the
   duplicate edges, not with the documents.

This gives what the single-process reference (exact first, then union-find over the survivors'
bands) gives: an exact copy shares every band with its keeper, so adding it to the band graph
joins no clusters and never changes a cluster's smallest member; exact drops keep their reason.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import xxhash

from data_pipeline import storage
from data_pipeline.text.process import read_table, write_table

UID_SHIFT = 32
EXACT, NEAR = 0, 1
REASONS = ("exact", "near")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads (band, value) over partitions


def uid_of(file_index: int, record_index: np.ndarray) -> np.ndarray:
    return (np.uint64(file_index) << np.uint64(UID_SHIFT)) | record_index.astype(np.uint64)


def id_of(uid: int) -> str:
    """The document id string of a uid (``docs/FORMATS.md``)."""
    return f"{uid >> UID_SHIFT:06d}-{uid & 0xFFFFFFFF:07d}"


def record_indices(ids: list[str]) -> np.ndarray:
    return np.fromiter((int(i.rsplit("-", 1)[1]) for i in ids), dtype=np.uint64, count=len(ids))


def _ipc_bytes(batches: list[pa.RecordBatch], schema: pa.Schema) -> bytes:
    sink = io.BytesIO()
    with ipc.new_file(sink, schema) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue()


def _split(table: pa.Table, part: np.ndarray, partitions: int) -> list[pa.RecordBatch]:
    """One record batch per partition (possibly empty), rows in their original order."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    taken = table.take(pa.array(order))
    whole = pa.RecordBatch.from_arrays([taken.column(i).combine_chunks() for i in range(taken.num_columns)],
                                       schema=table.schema)
    return [whole.slice(int(bounds[p]), int(bounds[p + 1] - bounds[p])) for p in range(partitions)]


def band_keys(words: np.ndarray, band_index: int) -> np.ndarray:
    """A 64-bit key of each (band, value) row: sorts and partitions band records; equal keys are
    then checked word by word, so a collision can never join two different values."""
    with np.errstate(over="ignore"):
        h = np.full(len(words), np.uint64(band_index + 1) * _MIX, dtype=np.uint64)
        for j in range(words.shape[1]):
            h = (h ^ words[:, j].astype(np.uint64)) * _MIX
            h ^= h >> np.uint64(29)
    return h


EXACT_SCHEMA = pa.schema([("hash", pa.uint64()), ("uid", pa.uint64())])


def band_schema(rows: int) -> pa.Schema:
    return pa.schema([("band", pa.uint8()), ("value", pa.binary(4 * rows)), ("uid", pa.uint64())])


def scatter(kept_path: str, file_index: int, partitions: int, bands: int, rows: int, out_prefix: str) -> dict:
    """Write ``<prefix>.exact.arrow`` and ``<prefix>.bands.arrow`` for one input file."""
    t = read_table(kept_path, ["id", "hash", "minhash"])
    uids = uid_of(file_index, record_indices(t.column("id").to_pylist()))
    hashes = t.column("hash").to_numpy().astype(np.uint64)
    exact = pa.table({"hash": hashes, "uid": uids}, schema=EXACT_SCHEMA)
    parts = (hashes % np.uint64(partitions)).astype(np.int64)
    storage.write_bytes(out_prefix + ".exact.arrow", _ipc_bytes(_split(exact, parts, partitions), EXACT_SCHEMA))
    n, width = len(uids), bands * rows
    sig = (np.frombuffer(b"".join(t.column("minhash").to_pylist()), dtype=np.uint32).reshape(n, width) if n
           else np.zeros((0, width), np.uint32))
    schema = band_schema(rows)
    tables, part_list = [], []
    for b in range(bands):
        words = np.ascontiguousarray(sig[:, b * rows:(b + 1) * rows])
        values = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * rows), n, [None, pa.py_buffer(words.tobytes())])
        tables.append(pa.table([pa.array(np.full(n, b, np.uint8)), values, pa.array(uids)], schema=schema))
        part_list.append(((band_keys(words, b) >> np.uint64(33)) % np.uint64(partitions)).astype(np.int64))
    all_bands = pa.concat_tables(tables) if tables else schema.empty_table()
    part = np.concatenate(part_list) if part_list else np.zeros(0, np.int64)
    storage.write_bytes(out_prefix + ".bands.arrow", _ipc_bytes(_split(all_bands, part, partitions), schema))
    return {"documents": int(n)}


def _batch(path: str, p: int) -> pa.RecordBatch:
    with storage.open_random(path) as f, storage.errors_named(path):
        return ipc.open_file(f).get_batch(p)


def _group_starts(change: np.ndarray) -> np.ndarray:
    """Index of the first row of every group, given ``change[i]``: row i starts a new group."""
    if len(change):
        change[0] = True
    return np.flatnonzero(change)


def _spread(starts: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``values[g]`` repeated over the rows of group ``g``."""
    return values[np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))]


def _exact_drops(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(dropped uid, keeper uid): per text hash, every uid but the smallest."""
    h, u = t.column("hash").to_numpy(), t.column("uid").to_numpy()
    order = np.lexsort((u, h))
    h, u = h[order], u[order]
    change = np.ones(len(h), dtype=bool)
    change[1:] = h[1:] != h[:-1]
    starts = _group_starts(change)
    keeper = _spread(starts, u[starts], len(u))
    dup = u != keeper
    return u[dup], keeper[dup]


def _near_edges(t: pa.Table, rows: int) -> np.ndarray:
    """Unique (smallest uid of a group, other member) pairs over groups of equal (band, value)."""
    u = t.column("uid").to_numpy()
    if not len(u):
        return np.zeros((0, 2), np.uint64)
    values = t.column("value").combine_chunks()
    words = np.frombuffer(values.buffers()[1], dtype=np.uint32, count=len(u) * rows,
                          offset=values.offset * 4 * rows).reshape(len(u), rows)
    band = t.column("band").to_numpy().astype(np.int64)
    keys = np.zeros(len(u), np.uint64)
    for b in np.unique(band):
        sel = band == b
        keys[sel] = band_keys(words[sel], int(b))
    order = np.lexsort((u, band, keys))  # by key, then band, then uid
    keys, band, u, words = keys[order], band[order], u[order], words[order]
    change = np.ones(len(u), dtype=bool)
    change[1:] = (keys[1:] != keys[:-1]) | (band[1:] != band[:-1])
    starts = _group_starts(change)
    first = _spread(starts, starts, len(u))
    collided = np.any(words != words[first], axis=1)
    if collided.any():  # two values with one 64-bit key: regroup by the words themselves
        lexed = np.lexsort((u, *words.T[::-1], band, keys))
        return _near_edges_sorted(u[lexed], band[lexed], keys[lexed], words[lexed])
    root = u[first]
    other = u != root
    return np.unique(np.stack([root[other], u[other]], axis=1), axis=0) if other.any() else np.zeros((0, 2), np.uint64)


def _near_edges_sorted(u, band, keys, words) -> np.ndarray:
    change = np.ones(len(u), dtype=bool)
    change[1:] = (keys[1:] != keys[:-1]) | (band[1:] != band[:-1]) | np.any(words[1:] != words[:-1], axis=1)
    starts = _group_starts(change)
    root = _spread(starts, u[starts], len(u))
    other = u != root
    return np.unique(np.stack([root[other], u[other]], axis=1), axis=0) if other.any() else np.zeros((0, 2), np.uint64)


def find_pairs(prefixes: list[str], p: int, rows: int, exact: bool, near: bool, out_path: str) -> dict:
    """Exact drops and near edges of partition ``p`` over every input file's scatter output."""
    drops_u = drops_k = np.zeros(0, np.uint64)
    edges = np.zeros((0, 2), np.uint64)
    if exact:
        drops_u, drops_k = _exact_drops(pa.Table.from_batches([_batch(x + ".exact.arrow", p) for x in prefixes],
                                                              schema=EXACT_SCHEMA))
    if near:
        edges = _near_edges(pa.Table.from_batches([_batch(x + ".bands.arrow", p) for x in prefixes],
                                                  schema=band_schema(rows)), rows)
    kind = np.concatenate([np.full(len(drops_u), EXACT, np.uint8), np.full(len(edges), NEAR, np.uint8)])
    table = pa.table({"kind": kind, "a": np.concatenate([drops_k, edges[:, 0]]).astype(np.uint64),
                      "b": np.concatenate([drops_u, edges[:, 1]]).astype(np.uint64)})
    write_table(out_path, table)
    return {"exact_drops": int(len(drops_u)), "near_edges": int(len(edges))}


def _near_roots(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, root of each node): connected components of the edge list, root = smallest uid."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([a, b]))
    if not len(nodes):
        return nodes, nodes
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(ia), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    n, label = connected_components(graph, directed=False)
    first = np.full(n, len(nodes), dtype=np.int64)
    np.minimum.at(first, label, np.arange(len(nodes)))  # nodes are sorted: the first index is the smallest uid
    return nodes, nodes[first[label]]


def resolve(pair_paths: list[str], files: int, ranges: int, out_prefix: str) -> dict:
    """Every drop, ``(uid, keeper, reason)``, into ``<prefix>-<r>.parquet`` per range of input files."""
    t = pa.concat_tables([read_table(x) for x in pair_paths]) if pair_paths else None
    kind = t.column("kind").to_numpy() if t is not None else np.zeros(0, np.uint8)
    a = t.column("a").to_numpy() if t is not None else np.zeros(0, np.uint64)
    b = t.column("b").to_numpy() if t is not None else np.zeros(0, np.uint64)
    ex_u, ex_k = b[kind == EXACT], a[kind == EXACT]
    nodes, roots = _near_roots(a[kind == NEAR], b[kind == NEAR])
    near = (roots != nodes) & ~np.isin(nodes, ex_u)
    uid = np.concatenate([ex_u, nodes[near]])
    keeper = np.concatenate([ex_k, roots[near]])
    reason = np.concatenate([np.full(len(ex_u), EXACT, np.uint8), np.full(int(near.sum()), NEAR, np.uint8)])
    order = np.argsort(uid, kind="stable")
    uid, keeper, reason = uid[order], keeper[order], reason[order]
    file_range = (uid >> np.uint64(UID_SHIFT)).astype(np.int64) * ranges // max(files, 1)
    bounds = np.searchsorted(file_range, np.arange(ranges + 1))
    for r in range(ranges):
        s = slice(int(bounds[r]), int(bounds[r + 1]))
        write_table(f"{out_prefix}-{r:05d}.parquet", pa.table({"uid": uid[s], "keeper": keeper[s], "reason": reason[s]}))
    return {"exact": int(len(ex_u)), "near": int(near.sum()), "near_edges": int((kind == NEAR).sum())}


def file_drops(drops_prefix: str, file_index: int, files: int, ranges: int) -> dict[int, tuple[str, int]]:
    """This file's drops: {record index: (reason, keeper uid)}."""
    r = file_index * ranges // max(files, 1)
    t = read_table(f"{drops_prefix}-{r:05d}.parquet")
    uid = t.column("uid").to_numpy()
    lo = np.uint64(file_index) << np.uint64(UID_SHIFT)
    hi = np.uint64(file_index + 1) << np.uint64(UID_SHIFT)
    s = slice(int(np.searchsorted(uid, lo)), int(np.searchsorted(uid, hi)))
    keeper, reason = t.column("keeper").to_numpy()[s], t.column("reason").to_numpy()[s]
    return {int(x) & 0xFFFFFFFF: (REASONS[int(c)], int(k)) for x, k, c in zip(uid[s], keeper, reason)}


def sample_key(doc_id: str, seed: int) -> int:
    """Where a document falls in the tokenizer sample's order (a seeded hash of its id)."""
    return xxhash.xxh64_intdigest(doc_id.encode(), seed)
