"""The demo's last step: its three exports used the way users use them, through ``transformers.pipeline``."""

from __future__ import annotations

import json
from pathlib import Path

CLASSIFY_IMAGES = 8


def generate(hf_dir: Path, prompt: str, new_tokens: int = 24) -> dict:
    """Greedy continuation of ``prompt``. The text is decoded from the pipeline's token ids in one
    piece: transformers 5's text-generation pipeline decodes the new tokens on their own and glues
    them to the prompt, and a sentencepiece decoder drops the word-start space of the first one
    ("providesthe")."""
    from transformers import pipeline

    gen = pipeline("text-generation", model=str(hf_dir))
    ids = gen(prompt, max_new_tokens=new_tokens, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    return {"prompt": prompt, "text": gen.tokenizer.decode(ids, skip_special_tokens=True)}


def fill_mask(hf_dir: Path, text: str, top_k: int = 3) -> dict:
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(hf_dir), top_k=top_k)
    text = text.replace("<mask>", fill.tokenizer.mask_token)
    top = [{"token": p["token_str"], "score": round(float(p["score"]), 4), "sequence": p["sequence"]}
           for p in fill(text)]
    return {"text": text, "top": top}


def classify_images(hf_dir: Path, shards: Path, folder: Path, n: int = CLASSIFY_IMAGES) -> dict:
    """The first ``n`` JPEGs of the val split's first shard, saved to ``folder`` and classified by
    the export; each with the class the shard labels it with."""
    from transformers import pipeline

    from data_pipeline.inspect_cli import first_sample

    manifest = json.loads((shards / "manifest.json").read_text())
    names = {c["index"]: c["name"] for c in manifest["classes"]}
    shard = shards / manifest["splits"]["val"]["shards"][0]["path"]
    classify = pipeline("image-classification", model=str(hf_dir), top_k=1)
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(min(n, manifest["splits"]["val"]["shards"][0]["samples"])):
        key, fields = first_sample(shard, i)
        path = folder / f"val-{key}.jpg"
        path.write_bytes(fields["jpg"])
        best = classify(str(path))[0]
        images.append({"path": str(path), "predicted": best["label"], "score": round(float(best["score"]), 4),
                       "true": names[int(fields["cls"].decode())]})
    return {"images": images, "correct": sum(img["predicted"] == img["true"] for img in images)}
