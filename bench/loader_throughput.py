"""Can the training loaders feed a GPU? Tokens (images) per second of ``pretrain.data.build_loader``.

Writes shards in the pipelines' layout (``docs/FORMATS.md``) to a temporary directory -- text:
web-page-sized documents (lengths drawn log-normally around ~600 tokens, a 32k vocabulary, several
documents per sample as the Common Crawl pipeline packs them); images: JPEGs of ImageNet's typical
size (500x375, textured so they do not compress to nothing) -- then times the training stream of
one data-parallel rank, as the trainer sees it (packing, labels, BERT masking, ViT decode +
RandomResizedCrop + flip + normalise), with 0 and N loader workers.

The figure to compare is what one GPU consumes: e.g. GPT-2 124M at 45% MFU on an H100 trains about
0.99e15 x 0.45 / (6 x 124e6 + attention) ~ 500k tokens/s; a ViT-B/16 ~ 3k images/s.

    python bench/loader_throughput.py --workers 0,2 --out out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.shards import write_shard  # noqa: E402

VOCAB = 32000
TOKENIZER = {"path": "tokenizer.model", "sha256": "0" * 64, "vocab_size": VOCAB, "model_type": "unigram",
             "bos_id": 1, "eos_id": 2, "pad_id": 0, "unk_id": 3, "mask_id": 4, "cls_id": 5, "sep_id": 6}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_text(root: Path, shards: int, samples_per_shard: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    infos, tokens_total = [], 0
    for si in range(shards):
        samples = []
        for k in range(samples_per_shard):
            lengths = np.clip(rng.lognormal(6.2, 0.9, size=int(rng.integers(4, 12))), 20, 20000).astype(int)
            toks = rng.integers(7, VOCAB, int(lengths.sum())).astype(np.uint16)
            meta = {"doc_lengths": lengths.tolist(),
                    "documents": [{"id": f"{si}-{k}-{j}", "url": "u"} for j in range(len(lengths))]}
            samples.append((f"s{si:04d}{k:05d}", {"tokens.npy": _npy(toks), "json": json.dumps(meta).encode()}))
            tokens_total += len(toks)
        info = write_shard(root, f"train/shard-{si:06d}.tar", samples)
        infos.append({"path": info.path, "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256})
    manifest = {"format": "pretrain-text-shards", "version": 1, "kind": "text", "tokenizer": TOKENIZER,
                "token_dtype": "uint16", "splits": {"train": {"samples": shards * samples_per_shard, "shards": infos}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return tokens_total


def write_images(root: Path, shards: int, samples_per_shard: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    infos, i = [], 0
    for si in range(shards):
        samples = []
        for _ in range(samples_per_shard):
            base = rng.integers(0, 255, (94, 125, 3), dtype=np.uint8)  # coarse noise, upsampled: photo-like size
            img = Image.fromarray(base).resize((500, 375), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            meta = {"wnid": f"n{i % classes:08d}", "source": "x", "width": 500, "height": 375}
            samples.append((f"i{i:07d}", {"jpg": buf.getvalue(), "cls": str(i % classes).encode(),
                                          "json": json.dumps(meta).encode()}))
            i += 1
        info = write_shard(root, f"train/shard-{si:06d}.tar", samples)
        infos.append({"path": info.path, "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256})
    manifest = {"format": "pretrain-image-shards", "version": 1, "kind": "image",
                "classes": [{"index": c, "wnid": f"n{c:08d}", "name": f"class {c}"} for c in range(classes)],
                "splits": {"train": {"samples": i, "shards": infos}}}
    (root / "manifest.json").write_text(json.dumps(manifest))


def time_loader(config: str, overrides: list[str], batches: int, unit_of) -> dict:
    from pretrain.config import load_config
    from pretrain.data import build_loader

    cfg = load_config(REPO / config, overrides)
    loader = build_loader(cfg, "train", 0, 1, train=True)
    it = iter(loader)
    first = next(it)  # worker start-up and the first shard open are not steady state
    t0 = time.perf_counter()
    units = 0
    for _ in range(batches):
        units += unit_of(next(it))
    seconds = time.perf_counter() - t0
    loader.close()
    return {"units": units, "seconds": seconds, "per_s": units / seconds, "batch_keys": sorted(first)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--only", default="gpt,bert,vit")
    p.add_argument("--out", "--json", dest="out", default=None, help="also write the JSON here")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        text, images = Path(tmp) / "text", Path(tmp) / "images"
        kinds = a.only.split(",")
        if {"gpt", "bert"} & set(kinds):
            write_text(text, shards=4, samples_per_shard=64)
        if "vit" in kinds:
            write_images(images, shards=4, samples_per_shard=64)
        cases = {
            "gpt": ("configs/gpt/debug.yaml", [f"data.path={text}", f"model.vocab_size={VOCAB}", "data.seq_len=1024",
                                               "model.max_seq_len=1024", "train.micro_batch_size=8"],
                    lambda b: int(b["input_ids"].numel()), "tokens"),
            "bert": ("configs/bert/debug.yaml", [f"data.path={text}", f"model.vocab_size={VOCAB}", "data.seq_len=512",
                                                 "model.max_seq_len=512", "train.micro_batch_size=16"],
                     lambda b: int(b["input_ids"].numel()), "tokens"),
            "vit": ("configs/vit/debug.yaml", [f"data.path={images}", "model.num_classes=10", "data.image_size=224",
                                               "model.image_size=224", "train.micro_batch_size=32"],
                    lambda b: int(b["labels"].numel()), "images"),
        }
        for kind in kinds:
            config, overrides, unit_of, unit = cases[kind]
            for w in [int(x) for x in a.workers.split(",")]:
                ov = ["data.source=shards", f"data.num_workers={w}", "tracking.enabled=false", *overrides]
                r = time_loader(config, ov, a.batches if kind != "vit" else max(4, a.batches // 4), unit_of)
                r.update({"case": kind, "workers": w, "unit": unit})
                results.append(r)
                print(f"{kind:>5s} workers={w}: {r['per_s']:>12,.0f} {unit}/s  ({r['units']:,} {unit} in "
                      f"{r['seconds']:.2f} s)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"bench": "loader_throughput", "cpus": os.cpu_count(), "results": results},
                                           indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
