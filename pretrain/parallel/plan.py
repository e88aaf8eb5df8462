"""Per-family tensor-parallel plans, applied to a plain model from outside (torchtitan style).

One table per config says which module becomes which parallel layer and how its weight splits:

| module (regex)              | becomes                 | split of the weight (bias)                  |
|-----------------------------|-------------------------|---------------------------------------------|
| ``layers.N.attn.qkv``       | ColumnParallelLinear    | dim 0, blocks ``[H*D, KV*D, KV*D]`` (same)  |
| ``layers.N.attn.out``       | RowParallelLinear       | dim 1 (bias replicated)                     |
| ``layers.N.mlp.fc_in``      | ColumnParallelLinear    | dim 0, blocks ``[ffn]`` or ``[ffn, ffn]``   |
| ``layers.N.mlp.fc_out``     | RowParallelLinear       | dim 1 (bias replicated)                     |
| ``tok_embed`` (GPT, BERT)   | VocabParallelEmbedding  | dim 0 (padded vocabulary)                   |
| ``lm_head`` / ``mlm.decoder``| ColumnParallelLinear   | dim 0 (bias dim 0); tied to ``tok_embed``   |

Everything else (norms, position/type embeddings, the MLM transform, the ViT patch embedding and
classifier, biases of row-parallel layers) is replicated. The loss of GPT and BERT becomes the
vocab-parallel cross-entropy. ``shard_state_dict`` / ``merge_tp_state_dicts`` use the same table,
so checkpoints split and merge along exactly the dimensions the plan split.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pretrain.config import ModelConfig
from pretrain.models.core import Attention
from pretrain.parallel.sharding import merge_shards, shard_tensor
from pretrain.parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelCrossEntropy,
    VocabParallelEmbedding,
)

_LAYER = r"layers\.\d+\."


def tensor_parallel_plan(cfg: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{module regex: (style, full block sizes along the split dim)}`` for this config."""
    q, kv, ffn = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_size
    plan = {
        _LAYER + r"attn\.qkv": ("column", (q, kv, kv)),
        _LAYER + r"attn\.out": ("row", (q,)),
        _LAYER + r"mlp\.fc_in": ("column", (ffn, ffn) if cfg.activation == "swiglu" else (ffn,)),
        _LAYER + r"mlp\.fc_out": ("row", (ffn,)),
    }
    vocab = (cfg.padded_vocab_size,)
    if cfg.family == "gpt":
        plan.update({r"tok_embed": ("vocab", vocab), r"lm_head": ("head", vocab)})
    elif cfg.family == "bert":
        plan.update({r"tok_embed": ("vocab", vocab), r"mlm\.decoder": ("head", vocab)})
    return plan


def param_split(name: str, cfg: ModelConfig) -> tuple[int, tuple[int, ...]] | None:
    """(dim, blocks) along which parameter/state-dict key ``name`` is split, or None if replicated."""
    module, _, leaf = name.rpartition(".")
    for pattern, (style, parts) in tensor_parallel_plan(cfg).items():
        if re.fullmatch(pattern, module):
            if style == "row":
                return (1, parts) if leaf == "weight" else None
            return 0, parts
    return None


def check_divisible(cfg: ModelConfig, size: int) -> None:
    """Raise ValueError naming the config field that does not split over ``size`` ranks."""
    checks = {"model.num_heads": cfg.num_heads, "model.num_kv_heads": cfg.kv_heads, "model.ffn_hidden_size": cfg.ffn_size}
    if cfg.family != "vit":
        checks["model.vocab_size (padded, see model.pad_vocab_multiple)"] = cfg.padded_vocab_size
    for field, value in checks.items():
        if value % size:
            raise ValueError(f"{field}={value} is not divisible by tensor-parallel size {size}")


def apply_tensor_parallel(model: nn.Module, mpu) -> nn.Module:
    """Swap the plan's layers for their parallel versions in place and return the model.

    Works on a materialised model (each rank keeps its slice of the existing weights) and on a
    meta model (shapes only; then ``pretrain.models.materialize`` allocates just the shards).
    """
    group, rank, size = mpu.get_model_parallel_group(), mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()
    cfg = model.config
    if size == 1:
        return model
    check_divisible(cfg, size)
    plan = tensor_parallel_plan(cfg)
    for name, module in list(model.named_modules()):
        for pattern, (style, parts) in plan.items():
            if re.fullmatch(pattern, name):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child,
                        _parallel_layer(module, style, parts, group, rank, size))
    for module in model.modules():
        if isinstance(module, Attention):
            module.num_heads //= size
            module.num_kv_heads //= size
    if cfg.family in ("gpt", "bert"):
        model.loss_fn = VocabParallelCrossEntropy(group)
    model.tie_weights()
    model.tp_group = group
    return model


def _parallel_layer(module, style, parts, group, rank, size) -> nn.Module:
    if style == "column":
        return ColumnParallelLinear.from_linear(module, group, rank, size, parts)
    if style == "head":
        return ColumnParallelLinear.from_linear(module, group, rank, size, parts, gather_output=True)
    if style == "row":
        return RowParallelLinear.from_linear(module, group, rank, size)
    return VocabParallelEmbedding.from_embedding(module, group, rank, size)


def build_parallel_model(cfg: ModelConfig, mpu, device: str | torch.device = "cpu", seed: int = 0, **kwargs) -> nn.Module:
    """Build on the meta device, apply the plan, then allocate and initialise only this rank's
    shards. The weights equal ``build_model(cfg, seed=seed)``'s sliced by ``shard_state_dict``."""
    from pretrain.models import build_model, materialize

    model = apply_tensor_parallel(build_model(cfg, device="meta", **kwargs), mpu)
    return materialize(model, device, seed)


def shard_param(name: str, value, model_config: ModelConfig, tp_rank: int, tp_size: int):
    """Rank ``tp_rank``'s slice of the full tensor ``name`` (a copy), or ``value`` itself if replicated."""
    split = param_split(name, model_config)
    return shard_tensor(value, split[0], split[1], tp_rank, tp_size).clone() if split and tp_size > 1 else value


def shard_state_dict(full_sd: dict, model_config: ModelConfig, tp_rank: int, tp_size: int) -> dict:
    """Rank ``tp_rank``'s slice of a full (TP=1) state dict; replicated entries are shared as is."""
    return {name: shard_param(name, value, model_config, tp_rank, tp_size) for name, value in full_sd.items()}


def merge_tp_state_dicts(state_dicts: list[dict], model_config: ModelConfig) -> dict:
    """Inverse of ``shard_state_dict``: one full state dict from all tensor ranks' (rank order).
    Replicated entries are taken from rank 0."""
    out = {}
    for name, value in state_dicts[0].items():
        split = param_split(name, model_config)
        out[name] = merge_shards([sd[name] for sd in state_dicts], *split) if split and len(state_dicts) > 1 else value
    return out
