"""Tiny shard directories in the docs/FORMATS.md layout, written with data_pipeline.shards.write_shard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.shards import write_shard

TOKENIZER = {"path": "tokenizer.model", "sha256": "0" * 64, "vocab_size": 300, "model_type": "bpe",
             "bos_id": 1, "eos_id": 2, "pad_id": 0, "unk_id": 3, "mask_id": 4, "cls_id": 5, "sep_id": 6}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def make_text_shards(root: Path, shards: dict[str, list[int]], seed: int = 0, max_doc: int = 40) -> dict:
    """Write text shards; ``shards[split]`` lists samples per shard. Returns
    ``{split: [[docs of sample 0 of shard 0], ...] per shard}`` with docs as int arrays."""
    rng = np.random.default_rng(seed)
    splits, content = {}, {}
    for split, counts in shards.items():
        infos, content[split] = [], []
        for si, n in enumerate(counts):
            samples, docs_of = [], []
            for k in range(n):
                docs = [rng.integers(7, TOKENIZER["vocab_size"], int(rng.integers(1, max_doc))).astype(np.uint16)
                        for _ in range(int(rng.integers(1, 4)))]
                docs_of.append(docs)
                meta = {"doc_lengths": [len(d) for d in docs],
                        "documents": [{"id": f"{split}-{si}-{k}-{j}", "url": "u"} for j in range(len(docs))]}
                samples.append((f"s{si:03d}{k:05d}", {"tokens.npy": _npy(np.concatenate(docs)),
                                                        "json": json.dumps(meta).encode()}))
            info = write_shard(root, f"{split}/shard-{si:06d}.tar", samples)
            infos.append({"path": info.path, "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256,
                          "documents": sum(len(d) for d in docs_of),
                          "tokens": int(sum(len(x) for d in docs_of for x in d))})
            content[split].append(docs_of)
        splits[split] = {"samples": sum(counts), "shards": infos}
    manifest = {"format": "pretrain-text-shards", "version": 1, "kind": "text", "tokenizer": TOKENIZER,
                "token_dtype": "uint16", "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return content


def colour_of(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-stable solid colour per sample id."""
    return (20 + (i * 37) % 200, 20 + (i * 71) % 200, 20 + (i * 113) % 200)


def textured(i: int, size: tuple[int, int]) -> Image.Image:
    """Sample ``i``'s colour plus gradients, so that different crops and flips give different pixels."""
    w, h = size
    base = np.asarray(colour_of(i), dtype=np.int64)
    grid = np.add.outer(np.arange(h) * 5, np.arange(w) * 3)[:, :, None] * np.array([1, -1, 2])
    return Image.fromarray(np.clip(base + grid % 60, 0, 255).astype(np.uint8))


def make_image_shards(root: Path, shards: dict[str, list[int]], size: tuple[int, int] = (40, 30),
                      texture: bool = False) -> None:
    """Image shards where sample id ``i`` (global within its split) has class ``i`` and a solid colour
    (``texture``: plus gradients, see ``textured``)."""
    splits, n_classes = {}, max(sum(c) for c in shards.values())
    for split, counts in shards.items():
        infos, i = [], 0
        for si, n in enumerate(counts):
            samples = []
            for _ in range(n):
                buf = io.BytesIO()
                img = textured(i, size) if texture else Image.new("RGB", size, colour_of(i))
                img.save(buf, format="JPEG", quality=95)
                meta = {"wnid": f"n{i:08d}", "source": "x", "width": size[0], "height": size[1]}
                samples.append((f"i{i:07d}", {"jpg": buf.getvalue(), "cls": str(i).encode(),
                                              "json": json.dumps(meta).encode()}))
                i += 1
            info = write_shard(root, f"{split}/shard-{si:06d}.tar", samples)
            infos.append({"path": info.path, "samples": info.samples, "bytes": info.bytes, "sha256": info.sha256})
        splits[split] = {"samples": sum(counts), "shards": infos}
    manifest = {"format": "pretrain-image-shards", "version": 1, "kind": "image",
                "classes": [{"index": i, "wnid": f"n{i:08d}", "name": f"c{i}"} for i in range(n_classes)],
                "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
