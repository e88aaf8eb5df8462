"""Conversion to and from Hugging Face ``transformers`` directories (safetensors only, no pickle).

    to_hf(model, "out")        # config.json + model.safetensors, loadable by AutoModel*.from_pretrained
    model = from_hf("dir")     # GPT2LMHeadModel, LlamaForCausalLM, BertForMaskedLM / BertModel,
                               # ViTForImageClassification (bare base models too)

The key maps and config translations are in ``hf_maps.py``. Import reads ``config.json`` as
plain JSON and the weights with ``safetensors`` (``model.safetensors`` or a sharded index), so it
needs no ``transformers``; export uses ``transformers`` only to write a valid ``config.json``.
Tied copies (GPT-2/Llama ``lm_head.weight``, BERT's decoder) are not written: HF re-ties them.
A BERT pooler is not part of ``BertForMaskedLM`` and is dropped on export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain.config import ModelConfig
from pretrain.models.hf_maps import ARCHS, Arch, from_hf_config, hf_model_type, to_hf_config


def _to_theirs(rule, t: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if rule.op == "t":
        return {rule.theirs[0]: t.t()}
    if rule.op == "cat":
        return dict(zip(rule.theirs, t.split(list(rule.split), dim=0)))
    if rule.op == "vocab":
        return {rule.theirs[0]: t[: cfg.vocab_size]}
    return {rule.theirs[0]: t}


def _to_ours(rule, hf_sd: dict, cfg: ModelConfig) -> torch.Tensor:
    if rule.op == "t":
        return hf_sd[rule.theirs[0]].t()
    if rule.op == "cat":
        return torch.cat([hf_sd[k] for k in rule.theirs], dim=0)
    t = hf_sd[rule.theirs[0]]
    if rule.op == "vocab" and cfg.padded_vocab_size > t.shape[0]:
        pad = torch.zeros((cfg.padded_vocab_size - t.shape[0], *t.shape[1:]), dtype=t.dtype)
        t = torch.cat([t, pad], dim=0)
    return t


def state_dict_to_hf(state_dict: dict, cfg: ModelConfig) -> tuple[Arch, dict[str, torch.Tensor]]:
    """Our (full, TP=1) state dict -> (HF architecture, HF state dict); each tensor a contiguous copy."""
    model_type = hf_model_type(cfg)
    arch = ARCHS[model_type](cfg)
    out: dict[str, torch.Tensor] = {}
    for rule in arch.rules:
        if not rule.export:
            continue
        if rule.ours not in state_dict:
            if rule.optional:
                continue
            raise KeyError(f"state dict has no {rule.ours!r} (needed for {arch.hf_class})")
        for key, t in _to_theirs(rule, state_dict[rule.ours], cfg).items():
            out[key] = t.detach().to("cpu").contiguous().clone()
    return arch, out


def save_hf(state_dict: dict, cfg: ModelConfig, out_dir, dtype: torch.dtype | None = None, **config_overrides) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for a full state dict (e.g. merged from TP
    shards). ``config_overrides`` go into the HF config (token ids, ``id2label``, ...)."""
    import transformers

    arch, tensors = state_dict_to_hf(state_dict, cfg)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_cls = transformers.AutoConfig.for_model(arch.model_type).__class__
    hf_config = config_cls(**{**to_hf_config(cfg, arch.model_type), **config_overrides})
    hf_config.architectures = [arch.hf_class]
    hf_config.save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def to_hf(model: nn.Module, out_dir, dtype: torch.dtype | None = None, **config_overrides) -> Path:
    """Export a plain (TP=1) model; merge tensor-parallel shards first (``merge_tp_state_dicts``)."""
    if getattr(model, "tp_group", None) is not None:
        raise ValueError("to_hf needs the full model: merge the tensor-parallel shards with "
                         "pretrain.parallel.merge_tp_state_dicts and call save_hf(state_dict, cfg, out_dir)")
    return save_hf(model.state_dict(), model.config, out_dir, dtype, **config_overrides)


def load_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for name in files:
            out.update(load_file(str(path / name)))
        return out
    raise FileNotFoundError(f"{path} has no model.safetensors (pickled pytorch_model.bin is not read)")


def from_hf(path, device: str | torch.device = "cpu") -> nn.Module:
    """Import a HF directory. Family and sizes come from ``config.json``; parts a checkpoint lacks
    (the MLM head of a bare ``BertModel``) keep their fresh initialisation."""
    from pretrain.models import build_model

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    hf_config = json.loads((path / "config.json").read_text())
    cfg = from_hf_config(hf_config)
    arch = ARCHS[hf_config["model_type"]](cfg)
    hf_sd = _with_prefix(load_safetensors_dir(path), arch.prefix)
    kwargs = {"pooler": f"{arch.prefix}pooler.dense.weight" in hf_sd} if cfg.family == "bert" else {}
    model = build_model(cfg, **kwargs)
    ours, used = {}, set()
    for rule in arch.rules:
        if not all(k in hf_sd for k in rule.theirs):
            if rule.optional:
                continue
            missing = [k for k in rule.theirs if k not in hf_sd]
            raise KeyError(f"{path}: checkpoint lacks {missing} (for our {rule.ours})")
        ours[rule.ours] = _to_ours(rule, hf_sd, cfg)
        used.update(rule.theirs)
    left = [k for k in hf_sd if k not in used and k not in arch.tied and not k.endswith(arch.ignore_suffixes)]
    if left:
        raise KeyError(f"{path}: tensors not understood by the {arch.hf_class} map: {left[:8]}")
    result = model.load_state_dict(ours, strict=False)
    allowed = {r.ours for r in arch.rules if r.optional}
    if cfg.tie_embeddings:
        allowed |= {"lm_head.weight", "mlm.decoder.weight"}
    unfilled = [k for k in result.missing_keys if k not in allowed]
    if unfilled or result.unexpected_keys:
        raise KeyError(f"{path}: import left {unfilled} unset and {result.unexpected_keys} unused")
    return model.to(device)


def _with_prefix(sd: dict, prefix: str) -> dict:
    """Base-model checkpoints (``BertModel``, ``GPT2Model``...) store keys without the head model's
    prefix; add it so one map serves both."""
    if any(k.startswith(prefix) for k in sd):
        return sd
    return {prefix + k: v for k, v in sd.items()}
