"""The unit of parallel work: turn one planned shard (a fixed list of input files) into a tar.

A shard's content is a pure function of its planned entries and the image options, so any worker
on any machine writes the same bytes, and a shard finished before a kill need not be redone.
After the tar is renamed into place, a small state file ``_state/<split>/shard-NNNNNN.json``
records its summary (counts, rejections, sha256) under a fingerprint of the plan; a rerun with the
same fingerprint and a tar of the recorded size skips the shard -- unless some of its inputs could
not be read (permission, I/O): that shard is done again, so a fixed input is not lost for good.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from data_pipeline.imagenet.process import ImageOptions, Rejected, process_image
from data_pipeline.imagenet.sources import FAILED_REASONS, Item, failure_reason, read_item
from data_pipeline.shards import shard_name, write_json_atomic, write_shard

STATE_DIR = "_state"


def sample_key(position: int) -> str:
    """Key of the sample at ``position`` in the split's shuffled order (unique, no '.' or '/')."""
    return f"{position:08d}"


def shard_rel_path(split: str, index: int) -> str:
    return f"{split}/{shard_name(index)}"


def state_path(out_dir: str | Path, split: str, index: int) -> Path:
    return Path(out_dir) / STATE_DIR / split / f"{shard_name(index)[:-4]}.json"


def plan_fingerprint(split: str, index: int, entries: list[tuple[int, Item]], class_index: dict[str, int],
                     options: ImageOptions) -> str:
    """Hash of everything that decides the shard's bytes: entries, their labels and the options."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": 1, "split": split, "index": index, "options": asdict(options)}, sort_keys=True).encode())
    for pos, item in entries:
        h.update(f"\n{pos}\t{item.source}\t{item.wnid}\t{class_index[item.wnid]}".encode())
    return h.hexdigest()


def _sample_fields(item: Item, cls: int, processed) -> dict[str, bytes]:
    meta = {"wnid": item.wnid, "source": item.source, "width": processed.width, "height": processed.height,
            "orig_width": processed.orig_width, "orig_height": processed.orig_height}
    return {"jpg": processed.jpeg, "cls": str(cls).encode(),
            "json": json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()}


def _reject_row(item: Item, reason: str, detail: str) -> dict:
    return {"source": item.source, "wnid": item.wnid, "reason": reason, "detail": detail[:500]}


def process_shard(out_dir: str, split: str, index: int, entries: list[tuple[int, Item]], class_index: dict[str, int],
                  options: ImageOptions, fingerprint: str, delay_s: float = 0.0) -> dict:
    """Write ``<split>/shard-<index>.tar`` from ``entries`` ((position, item) pairs, in shuffled order)
    and its state file; return the summary that the manifest is built from."""
    rejected: list[dict] = []
    class_counts: Counter = Counter()
    counts: Counter = Counter()

    def samples():
        for pos, item in entries:
            counts["read"] += 1
            try:
                data = read_item(item)
            except OSError as e:  # not a bad image: an input we could not read (counted as failed)
                rejected.append(_reject_row(item, failure_reason(e), f"{type(e).__name__}: {e}"))
                continue
            try:
                processed = process_image(data, options)
            except Rejected as e:
                rejected.append(_reject_row(item, e.reason, e.detail))
                continue
            except Exception as e:  # a malformed file must cost one sample, never the shard
                rejected.append(_reject_row(item, "corrupt", f"{type(e).__name__}: {e}"))
                continue
            counts["kept"] += 1
            counts["reencoded" if processed.reencoded else "kept_original"] += 1
            counts["resized"] += int(processed.resized)
            class_counts[item.wnid] += 1
            yield sample_key(pos), _sample_fields(item, class_index[item.wnid], processed)

    if delay_s:
        time.sleep(delay_s)  # test hook: keeps a run alive long enough to be killed mid-way
    path = Path(out_dir) / shard_rel_path(split, index)
    try:
        info = write_shard(out_dir, shard_rel_path(split, index), samples())
    except OSError as e:
        raise _named(e, path) from e
    summary = {
        "fingerprint": fingerprint,
        "shard": {"path": info.path, "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256},
        "class_counts": dict(sorted(class_counts.items())),
        "counts": dict(sorted(counts.items())),
        "rejected": rejected,
        "failed_inputs": sum(r["reason"] in FAILED_REASONS for r in rejected),
    }
    try:
        write_json_atomic(state_path(out_dir, split, index), summary)
    except OSError as e:
        raise _named(e, state_path(out_dir, split, index)) from e
    return summary


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path``: a full disk's write() errors name no file."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def finished_summary(out_dir: str | Path, split: str, index: int, fingerprint: str) -> dict | None:
    """The recorded summary when this exact shard is already complete on disk, else None."""
    path = state_path(out_dir, split, index)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if summary.get("fingerprint") != fingerprint or summary.get("failed_inputs"):
        return None
    tar = Path(out_dir) / summary["shard"]["path"]
    if not tar.is_file() or tar.stat().st_size != summary["shard"]["bytes"]:
        return None
    return summary
