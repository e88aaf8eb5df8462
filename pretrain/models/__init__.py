"""GPT, BERT and ViT on one transformer core.

    from pretrain.models import build_model, from_hf, to_hf
    model = build_model(model_config)          # plain model, initialised on CPU
    model = build_model(cfg, device="meta")    # shapes only; see pretrain.parallel for sharded builds
    model = from_hf("hf_dir")                  # family and sizes read from config.json
    to_hf(model, "out_dir")                    # config.json + model.safetensors

Every model has ``.config`` (the ModelConfig), ``forward``, ``encode``, ``loss(batch)`` and
``set_activation_checkpointing(enabled)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.config import ModelConfig
from pretrain.models.bert import Bert
from pretrain.models.gpt import GPT
from pretrain.models.init import full_shape, init_weights, materialize
from pretrain.models.presets import PRESETS, preset
from pretrain.models.vit import ViT

FAMILIES = {"gpt": GPT, "bert": Bert, "vit": ViT}

__all__ = ["FAMILIES", "PRESETS", "Bert", "GPT", "ViT", "build_model", "count_parameters", "from_hf",
           "init_weights", "materialize", "parameter_kind", "preset", "to_hf"]


def build_model(model_config: ModelConfig, device: str | torch.device = "cpu", seed: int = 0, **kwargs) -> nn.Module:
    """Build the family's model. ``device="meta"`` returns it unallocated (for counting, or for
    ``pretrain.parallel.apply_tensor_parallel`` followed by ``materialize``); any other device gets
    the deterministic initialisation of ``pretrain.models.init``. ``kwargs`` go to the family class
    (``pooler=True`` for BERT)."""
    cls = FAMILIES[model_config.family]
    with torch.device("meta"):
        model = cls(model_config, **kwargs)
    if str(device) == "meta":
        return model
    return materialize(model, device, seed)


def _embedding_names(model: nn.Module) -> set[str]:
    names = {"tok_embed.weight", "pos_embed.weight", "type_embed.weight", "pos_embed"}
    return {n for n, _ in model.named_parameters() if n in names}


def count_parameters(model: nn.Module, non_embedding: bool = False, local: bool = False) -> int:
    """Number of parameters, tied ones counted once; works on the meta device.

    A tensor-parallel model counts its full (unsharded) size unless ``local``, which counts this
    rank's shards. ``non_embedding`` drops token, position and token-type embeddings (Kaplan et
    al.'s N); a tied output head is the token embedding and so is dropped too, an untied head is kept.
    """
    skip = _embedding_names(model) if non_embedding else set()
    total = 0
    for name, p in model.named_parameters():
        if name not in skip:
            total += p.numel() if local else math.prod(full_shape(p))
    return total


def parameter_kind(model: nn.Module, name: str) -> str:
    """``"norm"``, ``"bias"``, ``"embedding"`` or ``"weight"``: what optimizers group weight decay by."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if isinstance(owner, (nn.LayerNorm, nn.RMSNorm)):
        return "norm"
    if leaf == "bias":
        return "bias"
    if name in _embedding_names(model) or name == "cls_token":
        return "embedding"
    return "weight"


def from_hf(path, **kwargs) -> nn.Module:
    """Import a Hugging Face directory (see ``pretrain.models.hf.from_hf``)."""
    from pretrain.models.hf import from_hf as _from_hf

    return _from_hf(path, **kwargs)


def to_hf(model: nn.Module, out_dir, **kwargs):
    """Export to a Hugging Face directory (see ``pretrain.models.hf.to_hf``)."""
    from pretrain.models.hf import to_hf as _to_hf

    return _to_hf(model, out_dir, **kwargs)
