"""Per-file and per-stage counts for the manifest. Invariant, per file and in total:
``documents == kept + sum(dropped)``; records that are not documents are counted under
``skipped``; a file that could not be read to its end has ``error`` set."""

from __future__ import annotations

from collections import Counter

from data_pipeline.text.config import STAGES


def summarise(files: list[dict], dedup: dict[str, dict[str, int]], split_documents: dict[str, int]) -> dict:
    """``files``: stage-1 counts per input file; ``dedup``: {file key: {reason: documents dropped}}."""
    per_file, records, skipped, dropped = [], Counter(), Counter(), Counter()
    for f in files:
        file_drops = Counter(f["dropped"])
        for reason, n in dedup.get(f["key"], {}).items():
            if n:
                file_drops[f"dedup/{reason}"] += n
        kept = f["documents"] - sum(file_drops.values())
        per_file.append({"source": f["source"], "records": f["records"], "skipped": f["skipped"], "error": f["error"],
                         "error_kind": f.get("error_kind"), "documents": f["documents"], "kept": kept,
                         "dropped": dict(sorted(file_drops.items()))})
        records.update(f["records"])
        skipped.update(f["skipped"])
        dropped.update(file_drops)
    by_stage: dict[str, dict[str, int]] = {}
    for key, n in sorted(dropped.items()):
        stage, reason = key.split("/", 1)
        by_stage.setdefault(stage, {})[reason] = n
    documents = sum(f["documents"] for f in per_file)
    funnel, alive = [], documents
    for stage in STAGES:
        n = sum(by_stage.get(stage, {}).values())
        funnel.append({"stage": stage, "in": alive, "dropped": n, "out": alive - n})
        alive -= n
    return {
        "files": per_file,
        "total": {"files": len(files), "files_with_errors": sum(1 for f in files if f["error"]),
                  "records": dict(sorted(records.items())), "skipped": dict(sorted(skipped.items())),
                  "documents": documents, "kept": sum(f["kept"] for f in per_file),
                  "kept_by_split": split_documents, "dropped": by_stage},
        "stages": funnel,
    }


def summary_table(manifest: dict) -> str:
    """Plain-text table of the stage funnel and the output, for the end of a run and for inspect."""
    c = manifest["counts"]
    lines = [f"{'stage':<20}{'in':>10}{'dropped':>10}{'out':>10}"]
    for row in c["stages"]:
        lines.append(f"{row['stage']:<20}{row['in']:>10}{row['dropped']:>10}{row['out']:>10}")
        for reason, n in sorted(c["total"]["dropped"].get(row["stage"], {}).items()):
            lines.append(f"  {reason:<38}{n:>10}")
    t = c["total"]
    lines.append(f"files {t['files']} ({t['files_with_errors']} with errors), records {sum(t['records'].values())}, "
                 f"skipped {sum(t['skipped'].values())}, documents {t['documents']}, kept {t['kept']}")
    for split, s in manifest.get("splits", {}).items():
        lines.append(f"{split}: {len(s['shards'])} shards, {s['samples']} samples, {s['documents']} documents, "
                     f"{s['tokens']} tokens, {s['bytes']} bytes")
    if "tar_overhead" in manifest:
        lines.append(f"tar overhead: {manifest['tar_overhead']['ratio']:.2%} of token bytes")
    return "\n".join(lines)


def failed_inputs(files: list[dict]) -> list[dict]:
    """The input files that could not be read to their end, with the kind of failure."""
    return [{"source": f["source"], "kind": f.get("error_kind") or "corrupt", "error": f["error"]}
            for f in files if f.get("error")]


def failure_summary(failed: list[dict], total: int, limit: int = 20) -> str:
    """Plain text: how many inputs failed, by kind, then the first ``limit`` of them."""
    kinds = Counter(f["kind"] for f in failed)
    head = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    lines = [f"{len(failed)} of {total} input files failed ({head}):"]
    lines += [f"  {f['source']}: {f['kind']}: {f['error']}" for f in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (all in manifest.json counts.files when written)")
    return "\n".join(lines)
