"""A Hugging Face model directory -> a directory to train from (``pretrain import-hf``, ``launch/import_cli.py``).

``checkpoint.init_from=DIR`` starts a run from its weights (continued pretraining, fine-tuning),
and ``pretrain export DIR`` exports it again unchanged. Every family ``pretrain.models.from_hf``
converts is accepted (GPT-2, Llama, BERT, ViT). ``DIR`` holds::

    config.yaml          a full config whose model section comes from config.json
    model.safetensors    our state dict (plain keys, TP=1, tied copies written once), fp32
    data.json            tokenizer ids (text) or image normalisation and classes (ViT)
    trainer_state.json   step 0, source directory, the command
    tokenizer.model      the sentencepiece model, when HF_DIR has one
    hf_tokenizer/        HF_DIR's own tokenizer files (tokenizer.json, vocab files, ...), if any
    complete.json        every file above with its size and sha256 (as training checkpoints)

Writes go to a temporary sibling renamed into place at the end. Bad input raises ValueError,
KeyError or FileNotFoundError (the command exits 2 on them).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _data_info(hf_dir: Path, hf_config: dict, family: str) -> dict:
    """What training would have recorded in data.json: token ids, or normalisation and classes."""
    info: dict = {"source": "import-hf", "path": str(hf_dir)}
    if family == "vit":
        pre = hf_dir / "preprocessor_config.json"
        p = json.loads(pre.read_text()) if pre.is_file() else {}
        size = (p.get("crop_size") or p.get("size") or {}).get("height", hf_config.get("image_size"))
        info["normalization"] = {"image_size": size, "mean": p.get("image_mean", [0.5] * 3),
                                 "std": p.get("image_std", [0.5] * 3),
                                 "rescale_factor": p.get("rescale_factor", 1 / 255),
                                 "eval_interpolation": "bicubic" if p.get("resample", 2) == 3 else "bilinear"}
        id2label = hf_config.get("id2label") or {}
        info["classes"] = [{"index": int(k), "name": v} for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))]
    else:
        ids = {ours: hf_config.get(theirs) for ours, theirs in
               (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "pad_token_id"))}
        info["tokenizer"] = {k: v for k, v in ids.items() if isinstance(v, int)}
    return info


def import_hf(hf_dir: str | Path, out: str | Path, overwrite: bool = False, command: str | None = None) -> Path:
    """Convert ``hf_dir``; returns ``out``. ValueError/KeyError/FileNotFoundError on bad input."""
    from pretrain.checkpoint import tied_source, write_complete
    from pretrain.config import Config, to_yaml
    from pretrain.export import refuse_nonempty, staged_dir
    from pretrain.export.writer import ShardedSafetensorsWriter
    from pretrain.models import from_hf

    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    refuse_nonempty(out, overwrite)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    model = from_hf(hf_dir)
    cfg = model.config
    with staged_dir(out) as tmp:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes=1 << 62)
        for key, t in model.state_dict().items():
            if tied_source(key, cfg) == key:
                writer.add(key, t.float())
        writer.close()
        del model
        (tmp / "config.yaml").write_text(to_yaml(Config(model=cfg)))
        _json(tmp / "data.json", _data_info(hf_dir, hf_config, cfg.family))
        _json(tmp / "trainer_state.json", {"step": 0, "tokens_seen": 0, "family": cfg.family, "source": str(hf_dir),
                                           "command": command or " ".join(["pretrain", *sys.argv[1:]])})
        _copy_tokenizer(hf_dir, tmp)
        write_complete(tmp, "import-hf", 0)
    return out


def _copy_tokenizer(hf_dir: Path, tmp: Path) -> None:
    files = [hf_dir / n for n in TOKENIZER_FILES if (hf_dir / n).is_file()]
    if (hf_dir / "tokenizer.model").is_file():
        shutil.copyfile(hf_dir / "tokenizer.model", tmp / "tokenizer.model")
    if files:
        (tmp / "hf_tokenizer").mkdir()
        for f in files:
            shutil.copyfile(f, tmp / "hf_tokenizer" / f.name)


def _json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
