"""The end of a run: the manifest, and the check that a finished output is still what its
manifest says before a rerun returns it.

A rerun of a finished job verifies every shard (size and sha256, in Ray tasks) before it trusts
the directory. Shards that fail are deleted with the manifest, the verified ones are recorded as
finished work (they are kept, not rewritten), and the job runs again to write the damaged ones:
a torn or edited shard is never adopted.
"""

from __future__ import annotations

import hashlib

import numpy as np

from data_pipeline import storage
from data_pipeline.text import counts as counting
from data_pipeline.text.config import fingerprint
from data_pipeline.text.process import read_json, write_json

FORMAT = "pretrain-text-shards"
VERSION = 1
CHECK_BATCH = 64  # shards verified per task


def check_shards(out: str, entries: list[dict]) -> list[str | int]:
    """Per listed shard: why it is not what the manifest says (missing, size, sha256), or, when
    it is, its payload bytes (read from its tar headers)."""
    import tarfile

    results: list[str | int] = []
    for e in entries:
        path = storage.join(out, e["path"])
        try:
            size = storage.size(path)
        except storage.StorageError as err:
            if err.kind != "not_found":
                raise
            results.append(f"{path}: missing")
            continue
        if size != e["bytes"]:
            results.append(f"{path}: {size} bytes, the manifest says {e['bytes']}")
        elif storage.sha256(path) != e["sha256"]:
            results.append(f"{path}: sha256 differs from the manifest's")
        else:
            with storage.open_random(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                results.append(sum(m.size for m in tar.getmembers()))
    return results


def finished_manifest(runner) -> dict | None:
    """The manifest of a finished run with the same options whose shards all check out, or None
    (after preparing the rerun when some shard is damaged)."""
    path = storage.join(runner.out, "manifest.json")
    if not storage.exists(path):
        return None
    old = read_json(path)
    if old.get("pipeline", {}).get("fingerprint") != runner.fp_all:
        return None
    entries = [dict(s, split=split) for split, v in old.get("splits", {}).items() for s in v.get("shards", [])]
    task = runner.ray.remote(num_cpus=1)(check_shards)
    refs = [task.remote(runner.out, entries[i:i + CHECK_BATCH]) for i in range(0, len(entries), CHECK_BATCH)]
    checked = [r for rs in runner.ray.get(refs) for r in rs]
    problems = [r for r in checked if isinstance(r, str)]
    if not problems:
        return old
    runner._log("the finished output does not match its manifest; writing these shards again:\n  "
                + "\n  ".join(problems))
    bad = {p.split(": ", 1)[0] for p in problems}
    prefix = storage.join(runner.work_root,
                          f"tokens-{fingerprint(runner.fp_all, old['tokenizer']['sha256'])}", "shards")
    for e, result in zip(entries, checked):
        shard = storage.join(runner.out, e["path"])
        if shard in bad:
            storage.remove(shard)
        else:  # verified against a manifest of the same options: finished work, reused without rewriting
            n = int(e["path"].rsplit("-", 1)[1].split(".")[0])
            keys = ("path", "samples", "documents", "tokens", "bytes", "sha256")
            write_json(storage.join(prefix, f"{e['split']}-{n:06d}.json"),
                       {**{k: e[k] for k in keys}, "payload_bytes": result, "plan": None})
    write_json(storage.join(runner.out, "_work", "run.json"), {"fingerprint": runner.fp_all})
    storage.remove(path)
    return None


def manifest(runner, files: list[dict], finished: list[dict], info: dict, dtype: str, shards: dict) -> dict:
    splits, tar_bytes, payload, tokens = {}, 0, 0, 0
    for split, entries in shards.items():
        splits[split] = {k: sum(e[k] for e in entries) for k in ("samples", "documents", "tokens", "bytes")}
        splits[split]["shards"] = [{k: e[k] for k in ("path", "samples", "documents", "tokens", "bytes", "sha256")}
                                   for e in entries]
        tar_bytes += splits[split]["bytes"]
        payload += sum(e["payload_bytes"] for e in entries)
        tokens += splits[split]["tokens"]
    token_bytes = tokens * np.dtype(dtype).itemsize
    overhead = tar_bytes - payload
    model = storage.read_bytes(storage.join(runner.out, "tokenizer.model"))
    dedup = {f["key"]: f["dedup"] for f in finished}
    return {
        "format": FORMAT, "version": VERSION, "kind": "text",
        "tokenizer": {"path": "tokenizer.model", "sha256": hashlib.sha256(model).hexdigest(), **info},
        "token_dtype": dtype,
        "splits": splits,
        "tar_overhead": {"tar_bytes": tar_bytes, "token_bytes": token_bytes, "payload_bytes": payload,
                         "header_and_padding_bytes": overhead,
                         "ratio": round(overhead / token_bytes, 6) if token_bytes else 0.0},
        "pipeline": {**runner.opts.to_dict(), "inputs": [i.source for i in runner.inputs],
                     "fingerprint": runner.fp_all},
        "counts": counting.summarise(files, dedup, {s: splits[s]["documents"] for s in splits}),
    }
