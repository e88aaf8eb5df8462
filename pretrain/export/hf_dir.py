"""The files of a Hugging Face export besides the tokenizer: weights (streamed), config.json,
generation_config.json / preprocessor_config.json, and the model card.

Weights go through ``pretrain.models.hf_maps``: for every rule of the architecture, our full
tensor is read from the checkpoint (``CheckpointReader.tensor``), reshaped to the HF tensor(s)
with the same transform ``pretrain.models.hf.state_dict_to_hf`` uses, cast, and appended to the
safetensors writer, so only one tensor (and its HF pieces) is in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from pretrain.export.writer import ShardedSafetensorsWriter

GPT_GENERATION = {"do_sample": False, "max_new_tokens": 64}


def hf_architecture(model_config):
    from pretrain.models.hf_maps import ARCHS, hf_model_type

    return ARCHS[hf_model_type(model_config)](model_config)


def write_hf_weights(reader, out: Path, dtype: torch.dtype, max_shard_bytes: int, progress=None) -> list[str]:
    """Stream the checkpoint's tensors into HF-named safetensors shards; returns the file names."""
    from pretrain.models.hf import _to_theirs  # the per-rule transform of state_dict_to_hf

    cfg = reader.model_config
    arch = hf_architecture(cfg)
    keys = set(reader.keys())
    writer = ShardedSafetensorsWriter(out, max_shard_bytes)
    for rule in arch.rules:
        if not rule.export:
            continue
        if rule.ours not in keys:
            if rule.optional:
                continue
            raise KeyError(f"checkpoint has no {rule.ours!r} (needed for {arch.hf_class})")
        for key, t in _to_theirs(rule, reader.tensor(rule.ours), cfg).items():
            writer.add(key, t.to(dtype))
        if progress is not None:
            progress(rule.ours)
    return writer.close()


def write_state_dict(reader, out: Path, dtype: torch.dtype, max_shard_bytes: int, progress=None) -> list[str]:
    """``--format safetensors``: our own key names, tied copies written once."""
    from pretrain.checkpoint import tied_source

    writer = ShardedSafetensorsWriter(out, max_shard_bytes)
    for key in reader.keys():
        if tied_source(key, reader.model_config) != key:
            continue
        writer.add(key, reader.tensor(key).to(dtype))
        if progress is not None:
            progress(key)
    return writer.close()


def write_hf_config(reader, out: Path, dtype: torch.dtype) -> list[str]:
    """config.json (+ generation_config.json for GPT, preprocessor_config.json for ViT)."""
    import transformers

    from pretrain.models.hf_maps import to_hf_config

    cfg = reader.model_config
    arch = hf_architecture(cfg)
    data = reader.state("data.json")
    overrides: dict = {}
    tok = data.get("tokenizer") or {}
    for ours, theirs in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "pad_token_id")):
        if tok.get(ours, -1) is not None and tok.get(ours, -1) >= 0:
            overrides[theirs] = tok[ours]
    classes = data.get("classes")
    if cfg.family == "vit" and classes:
        overrides["id2label"] = {int(c["index"]): c.get("name") or c.get("wnid") for c in classes}
        overrides["label2id"] = {v: k for k, v in overrides["id2label"].items()}
    config_cls = transformers.AutoConfig.for_model(arch.model_type).__class__
    hf_config = config_cls(**{**to_hf_config(cfg, arch.model_type), **overrides})
    hf_config.architectures = [arch.hf_class]
    hf_config.dtype = str(dtype).removeprefix("torch.")
    hf_config.save_pretrained(out)
    files = ["config.json"]
    if cfg.family == "gpt":
        gen = {**GPT_GENERATION, **{k: v for k, v in overrides.items() if k.endswith("_token_id")}}
        transformers.GenerationConfig(**gen).save_pretrained(out)
        files.append("generation_config.json")
    if cfg.family == "vit":
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(data, cfg), indent=2) + "\n")
        files.append("preprocessor_config.json")
    return files


def preprocessor_config(data: dict, model_config) -> dict:
    """The image processor of the training-time eval transform (``pretrain.data.image``): shorter
    side resized to ``int(size / crop_pct)``, centre crop of ``size``, rescale, mean/std. ViT's own
    processor only resizes to a square, so this is ``CLIPImageProcessor``'s resize-and-crop, which
    ``AutoImageProcessor`` and ``pipeline("image-classification")`` load as they load any other.
    One difference is left: HF floors the crop offset where torchvision/timm round it, so when the
    resized margin is odd the crop sits one pixel off."""
    norm = data.get("normalization") or {}
    size = int(norm.get("image_size", model_config.image_size))
    shorter = int(norm.get("resize_shorter", int(size / norm.get("crop_pct", 0.875))))
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": shorter},
            "do_center_crop": True, "crop_size": {"height": size, "width": size},
            "resample": 3 if norm.get("eval_interpolation", "bicubic") == "bicubic" else 2, "do_rescale": True,
            "rescale_factor": norm.get("rescale_factor", 1 / 255), "do_normalize": True,
            "image_mean": list(norm.get("mean", [0.5, 0.5, 0.5])), "image_std": list(norm.get("std", [0.5, 0.5, 0.5])),
            "do_convert_rgb": True}


def manifest_hash(data: dict) -> str:
    """The data manifest's sha256: recorded in data.json, else computed from the manifest if it is
    still there; synthetic data has none."""
    for key in ("manifest_sha256", "sha256"):
        if data.get(key):
            return data[key]
    path = data.get("path")
    if path and (Path(path) / "manifest.json").is_file():
        return hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()
    return f"n/a ({data.get('source', 'unknown')} data)"


def model_card(reader, files: list[str], dtype: torch.dtype, command: str) -> str:
    """README.md: what the model is, how it was trained, and how to load it."""
    cfg, st, data = reader.model_config, reader.state("trainer_state.json"), reader.state("data.json")
    arch = hf_architecture(cfg)
    auto = {"gpt": "AutoModelForCausalLM", "bert": "AutoModelForMaskedLM", "vit": "AutoModelForImageClassification"}
    rows = [("family", cfg.family), ("Hugging Face class", arch.hf_class),
            ("parameters", f"{reader.num_parameters():,}"), ("layers x hidden x heads",
                                                            f"{cfg.num_layers} x {cfg.hidden_size} x {cfg.num_heads}"),
            ("training steps", st.get("step", "n/a")), ("tokens/images seen", f"{st.get('tokens_seen', 'n/a'):,}"
                                                        if isinstance(st.get("tokens_seen"), int) else "n/a"),
            ("final training loss", st.get("last_loss", "n/a")), ("skipped steps", st.get("skipped_steps", "n/a")),
            ("layout", f"world {st.get('world_size', 'n/a')}, tensor {st.get('tensor_parallel_size', 'n/a')}, "
                       f"ZeRO {st.get('zero_stage', 'n/a')}"),
            ("data", f"{data.get('source', 'n/a')} {data.get('path') or ''}".strip()),
            ("data manifest sha256", manifest_hash(data)), ("MLflow run", st.get("mlflow_run_id") or "n/a"),
            ("export dtype", str(dtype).removeprefix("torch.")), ("source checkpoint", str(reader.dir))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    usage = "AutoImageProcessor" if cfg.family == "vit" else "AutoTokenizer"
    return (f"---\nlibrary_name: transformers\ntags: [pretrain, {cfg.family}]\n---\n\n"
            f"# {cfg.family.upper()} exported from a pretrain checkpoint\n\n| | |\n|---|---|\n{table}\n\n"
            f"Training command: `{st.get('command', 'n/a')}`\n\nExport command: `{command}`\n\n"
            f"```python\nfrom transformers import {auto[cfg.family]}, {usage}\n"
            f"model = {auto[cfg.family]}.from_pretrained(\"<this dir>\")\n```\n\n"
            f"Files: {', '.join(sorted(files))}\n")
