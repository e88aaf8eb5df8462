"""FLOPs formulas against torch's FlopCounterMode on real forward+backward passes."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pretrain.models import build_model, preset
from pretrain.models.flops import flops_per_image, flops_per_sample, flops_per_token

T = 16


def counted_training_flops(model, batch) -> int:
    """FLOPs torch executes for loss + backward; the math SDPA backend exposes attention as bmm."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.loss(batch).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["gpt2-debug", "llama-debug", "bert-debug", "vit-debug"])
def test_formula_equals_counted_flops(name):
    cfg = preset(name)
    model = build_model(cfg)
    if cfg.family == "vit":
        batch = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 2])}
        expected = 2 * flops_per_image(cfg)
    else:
        ids = torch.randint(0, cfg.vocab_size, (2, T))
        labels = ids.clone()
        if cfg.family == "bert":
            labels[:, ::4] = -100  # the MLM head runs on the predicted 3/4 only
        batch = {"input_ids": ids, "labels": labels}
        frac = (labels != -100).float().mean().item()
        # the math kernel computes the whole causal score matrix, so count all T keys here
        expected = 2 * T * flops_per_token(cfg, T, head_fraction=frac, causal_exact=False)
    assert counted_training_flops(model, batch) == expected


@pytest.mark.parametrize("mode", [True, "attention", 2])  # every block, attention halves, every 2nd block
@pytest.mark.parametrize("name", ["gpt2-debug", "bert-debug", "vit-debug"])  # pre- and post-norm
def test_recompute_counts_what_checkpointing_repeats(name, mode):
    cfg = preset(name, num_layers=3)
    model = build_model(cfg)
    model.set_activation_checkpointing(mode)
    if cfg.family == "vit":
        batch = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 2])}
        expected = 2 * flops_per_image(cfg, recompute=mode)
        assert expected > 2 * flops_per_image(cfg)
    else:
        ids = torch.randint(0, cfg.vocab_size, (2, T))
        batch = {"input_ids": ids, "labels": ids}
        expected = 2 * T * flops_per_token(cfg, T, recompute=mode, causal_exact=False)
    assert counted_training_flops(model, batch) == expected


def test_gpt2_124m_closed_form_and_causal_discount():
    cfg, L, h, V, S = preset("gpt2-124m"), 12, 768, 50257, 1024
    dense = 6 * (L * 12 * h * h + h * V) + 12 * L * h * S  # 6N + 12 L h T (Kaplan / PaLM)
    assert flops_per_token(cfg, S, causal_exact=False) == dense
    exact = flops_per_token(cfg, S)
    assert exact == dense - 12 * L * h * S + 12 * L * h * (S + 1) / 2
    assert flops_per_sample(cfg, seq_len=S) == S * exact


def test_vit_b16_per_image():
    cfg = preset("vit-b16")
    tokens, h = 197, 768
    layers = tokens * 12 * (24 * h * h + 4 * h * tokens)
    fwd_patch = 196 * 2 * 3 * 256 * h
    assert flops_per_image(cfg) == 2 * fwd_patch + 3 * (layers + 2 * h * 1000)
    assert flops_per_image(cfg, image_size=384) > 2.9 * flops_per_image(cfg)  # 577 tokens vs 197
