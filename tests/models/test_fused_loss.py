"""The fused, chunked head + cross-entropy (``linear_cross_entropy``) against today's unfused loss:
the same loss and gradients, no [tokens, vocabulary] logits kept, logits still there for evaluation."""

from __future__ import annotations

import pytest
import torch

from pretrain.models import build_model, preset
from pretrain.parallel.tensor_parallel import linear_cross_entropy


def _batch(cfg, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (3, 24), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (3, 24), generator=g)
    labels[0, :5] = -100
    if cfg.family == "bert":
        labels[torch.rand(3, 24, generator=g) > 0.3] = -100
    return {"input_ids": ids, "labels": labels}


def _loss_and_grads(cfg, batch, fused: bool):
    model = build_model(cfg, seed=3)
    model.fused_loss = fused
    loss = model.loss(batch)
    loss.backward()
    return model, loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["gpt2-debug", "llama-debug", "bert-debug"])  # tied, untied + GQA, MLM + bias
def test_fused_loss_equals_unfused_loss_and_gradients(name):
    cfg = preset(name)
    batch = _batch(cfg)
    model, fused, fused_grads = _loss_and_grads(cfg, batch, True)
    _, plain, plain_grads = _loss_and_grads(cfg, batch, False)
    assert torch.allclose(fused, plain, rtol=1e-6, atol=0)
    for n, g in plain_grads.items():
        assert torch.allclose(fused_grads[n], g, rtol=1e-5, atol=1e-7), n
    with torch.no_grad():  # evaluation: the no-grad path gives the same loss, and logits stay available
        assert torch.allclose(model.loss(batch), plain, rtol=1e-6, atol=0)
        assert model(batch["input_ids"]).shape == (3, 24, cfg.vocab_size)


def test_chunks_and_loss_scale_do_not_change_the_result():
    """Any chunking gives the same loss and gradients; the incoming gradient (a loss scale, an
    accumulation weight) scales all of them, as autograd would."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (37,), generator=g)
    labels[::5] = -100
    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), labels, ignore_index=-100)
    ref_grads = torch.autograd.grad(ref * 1024.0, (h, w, b))
    for chunk in (1, 7, 37, 100):
        loss = linear_cross_entropy(h, w, b, labels, chunk_rows=chunk)
        grads = torch.autograd.grad(loss * 1024.0, (h, w, b))
        assert torch.allclose(loss, ref, rtol=1e-6), chunk
        for got, want in zip(grads, ref_grads):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), chunk


def test_fused_loss_keeps_no_logits():
    """What autograd keeps for the loss: O(tokens x hidden) plus an fp32 weight gradient, against the
    unfused loss's fp32 log-probabilities of every token over the vocabulary."""
    cfg = preset("gpt2-debug", vocab_size=4096)
    h = torch.randn(2, 64, cfg.hidden_size, requires_grad=True)
    labels = torch.randint(0, cfg.vocab_size, (2, 64))
    sizes = {}
    for fused in (True, False):
        model = build_model(cfg)
        model.fused_loss = fused
        kept = {}

        def pack(t, kept=kept):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if fused:
                model.lm_head(h, labels=labels)
            else:
                model.loss_fn(model.lm_head(h), labels)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        sizes[fused] = sum(n for ptr, n in kept.items() if ptr not in params)
    tokens, logits_fp32 = 128, 128 * cfg.vocab_size * 4
    assert sizes[False] >= logits_fp32
    assert sizes[True] <= tokens * cfg.hidden_size * 4 + cfg.vocab_size * cfg.hidden_size * 4 + 64


@pytest.mark.parametrize("name", ["gpt2-debug", "llama-debug", "bert-debug"])
def test_models_train_with_the_fused_loss_by_default(name):
    """``model.loss`` as the trainer calls it (default settings) keeps no [tokens, vocabulary]
    logits: against ``fused_loss=False`` it saves at least half of the fp32 logits' bytes less
    (512 tokens x 4096 vocabulary: 8 MiB of logits against a 1 MiB fp32 weight gradient)."""
    cfg = preset(name, vocab_size=4096, num_layers=1)
    ids = torch.randint(0, cfg.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}  # every token predicted (BERT too)
    kept = {}
    for default in (True, False):
        model = build_model(cfg)
        if not default:
            model.fused_loss = False
        storages = {}

        def pack(t, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(batch)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        kept[default] = sum(n for ptr, n in storages.items() if ptr not in params)
    assert kept[True] < kept[False] - ids.numel() * cfg.padded_vocab_size * 4 / 2, kept
