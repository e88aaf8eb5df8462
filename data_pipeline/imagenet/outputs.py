"""The files written once all shards of a run are done: ``rejected/<split>.parquet``, ``_info.json``
(timm's WebDataset reader format) and, last, ``manifest.json`` (see docs/FORMATS.md).

All are written atomically with sorted keys, so the same shards give the same bytes. Splits from an
earlier run into the same ``--out`` are kept when their class index is the same.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from data_pipeline.imagenet.sources import FAILED_REASONS, InputError
from data_pipeline.shards import write_bytes_atomic, write_json_atomic

FORMAT = "pretrain-image-shards"
VERSION = 1
REJECT_COLUMNS = ("split", "source", "wnid", "reason", "detail")


def existing_classes(out_dir: str | Path) -> list[dict] | None:
    """The class index of image shards already in ``out_dir`` (so a later ``--split val`` run labels
    with the index the train split was written with), or None."""
    try:
        old = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return old.get("classes") if old.get("format") == FORMAT else None


def previous_splits(out_dir: str | Path, classes: list[dict], splits: list[str]) -> dict:
    """Split entries of an existing manifest in ``out_dir`` that this run does not rewrite."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"--out {out_dir}: manifest.json is not valid JSON; use an empty --out") from None
    if old.get("format") != FORMAT:
        raise InputError(f"--out {out_dir}: holds a manifest of format {old.get('format')!r}, not image shards")
    kept = {k: v for k, v in old.get("splits", {}).items() if k not in splits}
    if kept and old.get("classes") != classes:
        raise InputError(f"--out {out_dir}: its split(s) {sorted(kept)} were written with a different class "
                         f"index; pass the same --classes or --split for all splits, or use a fresh --out")
    return kept


def _write_rejected(out_dir: str | Path, split: str, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: (r["source"], r["reason"]))
    table = pa.table({c: pa.array([split if c == "split" else r[c] for r in rows], pa.string()) for c in REJECT_COLUMNS})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rel = f"rejected/{split}.parquet"
    write_bytes_atomic(Path(out_dir) / rel, buf.getvalue())
    return rel


def _split_entry(out_dir, split: str, classes: list[dict], summaries: list[dict], unplaced: list[dict]) -> dict:
    """``unplaced``: rejection rows of inputs that never reached a shard (no label, not readable)."""
    rejected = list(unplaced) + [r for s in summaries for r in s["rejected"]]
    counts: Counter = Counter()
    class_counts = {c["wnid"]: 0 for c in classes}
    for s in summaries:
        counts.update(s["counts"])
        for wnid, n in s["class_counts"].items():
            class_counts[wnid] += n
    counts["read"] += len(unplaced)
    shards = [s["shard"] for s in summaries]
    return {
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "class_counts": dict(sorted(class_counts.items())),
        "shards": shards,
        "counts": {**{k: counts.get(k, 0) for k in ("read", "kept", "kept_original", "reencoded", "resized")},
                   "failed_inputs": sum(r["reason"] in FAILED_REASONS for r in rejected),
                   "rejected": dict(sorted(Counter(r["reason"] for r in rejected).items()))},
        "rejected": _write_rejected(out_dir, split, rejected),
    }


def _total_counts(splits: dict) -> dict:
    total: Counter = Counter()
    rejected: Counter = Counter()
    for entry in splits.values():
        c = entry.get("counts", {})
        total.update({k: v for k, v in c.items() if k != "rejected"})
        rejected.update(c.get("rejected", {}))
    return {**dict(sorted(total.items())), "rejected": dict(sorted(rejected.items()))}


def timm_info(splits: dict, name: str = "imagenet") -> dict:
    """timm ``_info.json``: per split the shard file names (relative to the out dir) and lengths."""
    return {"name": name, "splits": {
        split: {"name": split, "num_samples": e["samples"], "filenames": [s["path"] for s in e["shards"]],
                "shard_lengths": [s["samples"] for s in e["shards"]]}
        for split, e in sorted(splits.items())}}


def write_outputs(out_dir, classes: list[dict], split_results: dict, pipeline: dict, previous: dict) -> dict:
    """Write rejected/*.parquet, _info.json and manifest.json (last); return the manifest."""
    splits = dict(previous)
    for split, (summaries, unplaced) in split_results.items():
        splits[split] = _split_entry(out_dir, split, classes, summaries, unplaced)
    splits = dict(sorted(splits.items()))
    manifest = {"format": FORMAT, "version": VERSION, "kind": "image", "classes": classes, "splits": splits,
                "pipeline": pipeline, "counts": _total_counts(splits)}
    write_json_atomic(Path(out_dir) / "_info.json", timm_info(splits))
    write_json_atomic(Path(out_dir) / "manifest.json", manifest)
    return manifest
