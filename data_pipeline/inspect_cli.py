"""``pretrain data inspect DIR``: what a shard directory holds, without loading it all.

Prints the manifest summary (format, splits, shards, tokenizer or classes), the per-stage counts
and one decoded sample: for text shards the documents of the sample with their lineage and the
first characters of the first document's text (decoded with the directory's tokenizer.model); for
image shards the image's size and mode, its class and its metadata. ``--json`` prints the same as
one JSON object for scripts. DIR may be a local directory or ``s3://``, ``gs://``, ``https://``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile

from data_pipeline import storage

EXIT_USAGE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a shard directory written by `pretrain data ...` (has manifest.json)")
    p.add_argument("--split", default=None, help="split to take the sample from (default: the first with shards)")
    p.add_argument("--index", type=int, default=0, help="which sample of the split's first shard to decode")
    p.add_argument("--chars", type=int, default=600, help="characters of decoded text to show")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def first_sample(shard: str, index: int) -> tuple[str, dict[str, bytes]]:
    """The ``index``-th sample (key, {field: bytes}) of a WebDataset tar, read with tarfile only."""
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with storage.open_random(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, field = base.partition(".")
            if key not in samples:
                if len(order) > index:
                    break
                order.append(key)
                samples[key] = {}
            samples[key][field] = tar.extractfile(member).read()
    if len(order) <= index:
        raise IndexError(f"{shard}: has {len(order)} samples, no sample {index}")
    return order[index], samples[order[index]]


def decode_text_sample(out_dir: str, manifest: dict, fields: dict[str, bytes], chars: int) -> dict:
    import numpy as np
    import sentencepiece as spm

    tokens = np.load(io.BytesIO(fields["tokens.npy"]))
    meta = json.loads(fields["json"])
    sp = spm.SentencePieceProcessor(model_proto=storage.read_bytes(storage.join(out_dir,
                                                                                manifest["tokenizer"]["path"])))
    first = int(meta["doc_lengths"][0]) if meta["doc_lengths"] else 0
    text = sp.decode(tokens[:first].tolist())
    return {"tokens": int(tokens.size), "dtype": str(tokens.dtype), "documents": len(meta["documents"]),
            "doc_lengths": meta["doc_lengths"], "first_document": meta["documents"][0] if meta["documents"] else None,
            "text": text[:chars]}


def decode_image_sample(manifest: dict, fields: dict[str, bytes]) -> dict:
    from PIL import Image

    img = Image.open(io.BytesIO(fields["jpg"]))
    cls = int(fields["cls"].decode()) if "cls" in fields else None
    names = {c["index"]: c for c in manifest.get("classes", [])}
    return {"width": img.width, "height": img.height, "mode": img.mode, "format": img.format, "cls": cls,
            "class": names.get(cls), "json": json.loads(fields["json"]) if "json" in fields else None}


def read_manifest(out_dir: str) -> dict:
    path = storage.join(out_dir, "manifest.json")
    try:
        return json.loads(storage.read_bytes(path))
    except storage.StorageError as e:
        if e.kind == "not_found":
            raise FileNotFoundError(f"{path}: no manifest.json; is {out_dir} a shard directory written by "
                                    f"`pretrain data`?") from None
        raise


def summarise(out_dir: str, split: str | None, index: int, chars: int) -> dict:
    manifest = read_manifest(out_dir)
    splits = manifest.get("splits", {})
    names = [split] if split else [s for s in splits if splits[s].get("shards")]
    if split and split not in splits:
        raise ValueError(f"--split {split}: not in the manifest (has {', '.join(splits) or 'none'})")
    report = {"dir": str(out_dir), "format": manifest.get("format"), "version": manifest.get("version"),
              "kind": manifest.get("kind"), "splits": {s: {k: v for k, v in e.items() if k not in ("shards", "counts",
                                                                                             "class_counts")}
                                                       | {"shards": len(e.get("shards", []))} for s, e in splits.items()},
              "counts": manifest.get("counts"), "sample": None}
    if manifest.get("kind") == "text":
        report["tokenizer"] = manifest.get("tokenizer")
        report["tar_overhead"] = manifest.get("tar_overhead")
    elif manifest.get("kind") == "image":
        report["classes"] = len(manifest.get("classes", []))
    if names and splits[names[0]].get("shards"):
        rel = splits[names[0]]["shards"][0]["path"]
        key, fields = first_sample(storage.join(out_dir, rel), index)
        decoded = (decode_text_sample(out_dir, manifest, fields, chars) if manifest.get("kind") == "text"
                   else decode_image_sample(manifest, fields))
        report["sample"] = {"split": names[0], "shard": rel, "key": key, **decoded}
    return report


def _print_report(r: dict, manifest_counts_table: str | None) -> None:
    print(f"{r['dir']}: {r['format']} v{r['version']} ({r['kind']})")
    for split, e in r["splits"].items():
        extra = ", ".join(f"{k} {v}" for k, v in e.items() if k != "shards" and not isinstance(v, (dict, list)))
        print(f"  {split}: {e['shards']} shards, {extra}")
    if "tokenizer" in r:
        t = r["tokenizer"]
        print(f"  tokenizer: {t.get('model_type')} vocab {t.get('vocab_size')}, "
              + ", ".join(f"{k} {t[k]}" for k in ("pad_id", "bos_id", "eos_id", "unk_id", "mask_id", "cls_id", "sep_id")
                          if k in t))
        if r.get("tar_overhead"):
            print(f"  tar overhead: {r['tar_overhead']['ratio']:.2%} of token bytes")
    if "classes" in r:
        print(f"  classes: {r['classes']}")
    print("counts:")
    print(manifest_counts_table or json.dumps(r["counts"], indent=2, sort_keys=True))
    s = r["sample"]
    if s is None:
        print("no samples")
        return
    print(f"sample {s['key']} of {s['shard']}:")
    for k, v in s.items():
        if k not in ("split", "shard", "key", "text"):
            print(f"  {k}: {json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v}")
    if "text" in s:
        print("  text of the first document:")
        print("    " + s["text"].replace("\n", "\n    "))


def run(args) -> int:
    out_dir = args.dir if storage.is_remote(args.dir) else str(args.dir)
    try:
        report = summarise(out_dir, args.split, args.index, args.chars)
    except (OSError, ValueError, IndexError, KeyError, tarfile.TarError) as e:
        print(f"pretrain data inspect: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    table = None
    if report["kind"] == "text" and report.get("counts", {}).get("stages"):
        from data_pipeline.text.counts import summary_table

        table = summary_table({"counts": report["counts"]})
    _print_report(report, table)
    return 0
