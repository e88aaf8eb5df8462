"""Shard layouts (single process): fused blocks, plan dimensions, divisibility errors."""

from __future__ import annotations

import pytest
import torch

from pretrain.models import build_model, preset
from pretrain.parallel import merge_shards, merge_tp_state_dicts, param_split, shard_state_dict, shard_tensor
from pretrain.parallel.plan import check_divisible


def test_fused_blocks_are_split_block_by_block():
    q, k, v = torch.arange(8.0), torch.arange(100.0, 104.0), torch.arange(200.0, 204.0)
    full = torch.cat([q, k, v])
    r0, r1 = (shard_tensor(full, 0, (8, 4, 4), r, 2) for r in (0, 1))
    assert torch.equal(r0, torch.cat([q[:4], k[:2], v[:2]]))
    assert torch.equal(r1, torch.cat([q[4:], k[2:], v[2:]]))
    assert torch.equal(merge_shards([r0, r1], 0, (8, 4, 4)), full)


def test_plan_dimensions():
    cfg = preset("llama-debug")  # H=4, KV=2, D=16, ffn=160, untied head
    assert param_split("layers.1.attn.qkv.weight", cfg) == (0, (64, 32, 32))
    assert param_split("layers.1.attn.out.weight", cfg) == (1, (64,))
    assert param_split("layers.1.mlp.fc_in.weight", cfg) == (0, (160, 160))
    assert param_split("layers.1.mlp.fc_out.weight", cfg) == (1, (160,))
    assert param_split("tok_embed.weight", cfg) == param_split("lm_head.weight", cfg) == (0, (512,))
    assert param_split("layers.1.norm1.weight", cfg) is None
    bert = preset("bert-debug")
    assert param_split("layers.0.attn.out.bias", bert) is None  # row-parallel bias is replicated
    assert param_split("mlm.decoder.bias", bert) == (0, (512,))
    assert param_split("pos_embed.weight", bert) is None and param_split("mlm.dense.weight", bert) is None
    assert param_split("head.weight", preset("vit-debug")) is None


@pytest.mark.parametrize("name", ["gpt2-debug", "llama-debug", "bert-debug", "vit-debug"])
def test_shard_then_merge_is_identity(name):
    cfg = preset(name)
    sd = build_model(cfg).state_dict()
    shards = [shard_state_dict(sd, cfg, r, 4) for r in range(4)]
    assert shards[1]["layers.0.mlp.fc_out.weight"].shape[1] == cfg.ffn_size // 4
    merged = merge_tp_state_dicts(shards, cfg)
    assert merged.keys() == sd.keys()
    for k in sd:
        assert torch.equal(merged[k], sd[k]), k


def test_indivisible_sizes_name_the_field():
    with pytest.raises(ValueError, match="model.num_kv_heads=2"):
        check_divisible(preset("llama-debug", num_heads=4, num_kv_heads=2), 4)
    with pytest.raises(ValueError, match="vocab_size"):
        check_divisible(preset("gpt2-debug", vocab_size=501), 2)
