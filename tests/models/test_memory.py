"""The per-rank memory estimate (``pretrain.models.memory``) against the tensors autograd really
keeps, for every family and activation checkpointing mode; shipped configs follow the estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch.cli import main
from pretrain.config import load_config
from pretrain.models import build_model
from pretrain.models.memory import GiB, activation_bytes, estimate, suggest_checkpointing

REPO = Path(__file__).resolve().parents[2]
DEBUG = ["configs/gpt/debug.yaml", "configs/gpt/debug-llama.yaml", "configs/bert/debug.yaml", "configs/vit/debug.yaml"]


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct non-parameter floating storages autograd keeps for backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.is_floating_point():
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(batch)
    return sum(kept.values())


@pytest.mark.parametrize("path", DEBUG, ids=lambda p: p.split("/", 1)[1].removesuffix(".yaml"))
def test_activation_estimate_equals_what_autograd_keeps(path):
    """Pre-norm (GPT-2, Llama: RoPE, RMSNorm, SwiGLU, GQA), post-norm (BERT, half the tokens
    predicted) and ViT; no checkpointing, every block, every 2nd block, attention only. Exact to
    the byte except ViT's 10-class log-softmax (84 bytes)."""
    for mode in ("none", "full", 2, "attention"):
        cfg = load_config(REPO / path, ["train.micro_batch_size=2", "data.seq_len=32", "model.num_layers=3",
                                        "data.mlm_probability=0.5", f"parallel.activation_checkpointing={mode}"])
        model = build_model(cfg.model)
        model.set_activation_checkpointing(mode)
        g = torch.Generator().manual_seed(0)
        if cfg.model.family == "vit":
            batch = {"pixel_values": torch.randn(2, 3, 32, 32, generator=g), "labels": torch.tensor([1, 2])}
        else:
            ids = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=g)
            labels = ids.clone()
            labels[:, 1::2] = -100  # BERT: half predicted (mlm_probability 0.5); GPT ignores half
            batch = {"input_ids": ids, "labels": labels if cfg.model.family == "bert" else ids}
        got, want = saved_bytes(model, batch), activation_bytes(cfg)
        assert abs(got - want) <= 84, (mode, got, want)


def test_estimate_parts_follow_zero_precision_and_offload():
    cfg = load_config(REPO / "configs/gpt/gpt2-124m.yaml", ["data.source=synthetic", "parallel.zero_stage=1"])
    n = 124_475_904  # parameters at the padded vocabulary
    z1 = estimate(cfg, 8)
    assert z1.weights == 2 * n and z1.optimizer == 12 * n / 8  # bf16 weights; fp32 master + 2 moments, sharded
    assert z1.gradients == 4 * n + 4 * 40_000_000  # fp32 accumulation (32 micro-batches), one bucket
    z3 = estimate(load_config(REPO / "configs/gpt/gpt2-124m.yaml", ["data.source=synthetic", "parallel.zero_stage=3",
                                                                    "parallel.offload_optimizer=true"]), 8)
    assert z3.weights == 2 * n / 8 and z3.optimizer == 0 and z3.host == 12 * n / 8
    assert estimate(cfg, 8, "full").activations < 0.2 * z1.activations


def test_shipped_gpu_configs_use_the_least_recompute_that_fits():
    """Every shipped GPU config's activation checkpointing is what its estimate picks for 80 GiB
    devices at 8 data-parallel ranks (``pretrain config show --memory``)."""
    for path in sorted((REPO / "configs").glob("*/*.yaml")):
        if path.parent.name not in ("gpt", "bert", "vit") or path.stem.startswith("debug"):
            continue
        cfg = load_config(path, ["data.source=synthetic"])
        world = 8 * cfg.parallel.tensor_size
        assert cfg.parallel.activation_checkpointing == suggest_checkpointing(cfg, world, 80 * GiB), path.name


def test_config_show_memory_prints_the_estimate_and_a_choice(capsys):
    args = ["config", "show", str(REPO / "configs/gpt/llama-1.3b.yaml"), "--memory", "--world-size", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "memory: weights 2.35 | gradients" in out and "activations" in out and "total" in out
    assert "fits 80 GiB with the least recompute: parallel.activation_checkpointing=none" in out
    assert main([*args, "--device-memory", "16"]) == 0
    assert "parallel.activation_checkpointing=none" not in capsys.readouterr().out
