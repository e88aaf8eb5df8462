"""The plain models: published parameter counts, shapes, masks, init rules, checkpointing."""

from __future__ import annotations

import pytest
import torch

from pretrain.models import build_model, count_parameters, parameter_kind, preset

TEXT = ["gpt2-debug", "llama-debug", "bert-debug"]


def test_published_parameter_counts_on_meta():
    gpt2 = build_model(preset("gpt2-124m"), device="meta")
    assert count_parameters(gpt2) == 124_439_808  # tied head counted once
    assert all(p.is_meta for p in gpt2.parameters())
    bert = build_model(preset("bert-base"), device="meta", pooler=True)
    encoder = sum(p.numel() for n, p in bert.named_parameters() if not n.startswith("mlm."))
    assert encoder == 109_482_240  # HF BertModel: embeddings + 12 layers + pooler
    assert count_parameters(build_model(preset("vit-b16"), device="meta")) == 86_567_656


def test_non_embedding_count_drops_token_and_position_tables():
    cfg = preset("gpt2-124m")
    m = build_model(cfg, device="meta")
    assert count_parameters(m, non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768
    llama = build_model(preset("llama-debug"), device="meta")  # untied head stays
    assert count_parameters(llama) - count_parameters(llama, non_embedding=True) == 512 * 64


@pytest.mark.parametrize("name", TEXT)
def test_text_shapes_and_loss(name):
    cfg = preset(name)
    m = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    assert m(ids).shape == (2, 10, cfg.vocab_size)
    assert m.encode(ids).shape == (2, 10, cfg.hidden_size)
    labels = torch.randint(0, cfg.vocab_size, (2, 10))
    loss = m.loss({"input_ids": ids, "labels": labels})
    ref = torch.nn.functional.cross_entropy(m(ids).reshape(-1, cfg.vocab_size), labels.reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_gpt_is_causal_and_padded_vocab_is_cut():
    cfg = preset("gpt2-debug", vocab_size=500, pad_vocab_multiple=64)
    m = build_model(cfg).eval()
    assert m.tok_embed.weight.shape[0] == 512
    ids = torch.randint(0, 500, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 500
    a, b = m(ids), m(changed)
    assert a.shape[-1] == 500
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_bert_padding_mask_hides_padded_tokens():
    cfg = preset("bert-debug")
    m = build_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, 9:] = 0
    other = ids.clone()
    other[0, 9:] = (other[0, 9:] + 3) % cfg.vocab_size
    a, b = m.encode(ids, mask), m.encode(other, mask)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(m.encode(ids)[:, :9], m.encode(other)[:, :9])  # unmasked: they do see it


def test_bert_token_types_change_the_output():
    m = build_model(preset("bert-debug")).eval()
    ids = torch.randint(0, 512, (1, 8))
    assert not torch.allclose(m.encode(ids), m.encode(ids, token_type_ids=torch.ones_like(ids)))


def test_vit_shapes_and_position_interpolation():
    cfg = preset("vit-debug")
    m = build_model(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 10)
    assert m.encode(x).shape == (2, 1 + 16, 64)
    assert m.encode(torch.randn(2, 3, 48, 64)).shape == (2, 1 + 6 * 8, 64)
    assert m.positions(4, 4) is m.pos_embed  # the trained grid is used as is
    pos = m.positions(8, 8)
    torch.testing.assert_close(pos[:, 0], m.pos_embed[:, 0])  # [CLS] position untouched


def test_init_is_deterministic_and_follows_the_rules():
    cfg = preset("gpt2-small")
    a, b, c = build_model(cfg, seed=1), build_model(cfg, seed=1), build_model(cfg, seed=2)
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
        if n.endswith(".weight") and "norm" not in n:
            assert not torch.equal(pa, pc), n
    sd = a.state_dict()
    assert torch.equal(sd["layers.0.norm1.weight"], torch.ones(256))
    assert torch.equal(sd["layers.0.attn.qkv.bias"], torch.zeros(768))
    std_plain, std_resid = sd["layers.0.mlp.fc_in.weight"].std().item(), sd["layers.0.mlp.fc_out.weight"].std().item()
    assert abs(std_plain - 0.02) < 0.001
    assert abs(std_resid - 0.02 / (2 * cfg.num_layers) ** 0.5) < 0.001


@pytest.mark.parametrize("mode", [True, "attention", 2])  # every block, attention halves, every 2nd block
@pytest.mark.parametrize("name", ["llama-debug", "bert-debug", "vit-debug"])
def test_activation_checkpointing_gives_the_same_gradients(name, mode):
    cfg = preset(name)
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    b.set_activation_checkpointing(mode)
    assert [layer.checkpoint for layer in b.layers] == {True: ["block"] * 2, "attention": ["attention"] * 2,
                                                        2: ["block", "none"]}[mode]
    if cfg.family == "vit":
        batch = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 2])}
    else:
        ids = torch.randint(0, cfg.vocab_size, (2, 10))
        batch = {"input_ids": ids, "labels": ids}
    a.loss(batch).backward()
    b.loss(batch).backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_dropout_is_active_only_in_training():
    m = build_model(preset("gpt2-debug", dropout=0.5))
    ids = torch.randint(0, 512, (1, 8))
    m.eval()
    torch.testing.assert_close(m(ids), m(ids))
    m.train()
    assert not torch.allclose(m(ids), m(ids))


def test_parameter_kinds_for_weight_decay_groups():
    m = build_model(preset("bert-debug"), device="meta")
    kinds = {n: parameter_kind(m, n) for n, _ in m.named_parameters()}
    assert kinds["tok_embed.weight"] == kinds["pos_embed.weight"] == kinds["type_embed.weight"] == "embedding"
    assert kinds["embed_norm.weight"] == kinds["layers.0.norm1.bias"] == kinds["mlm.norm.weight"] == "norm"
    assert kinds["layers.0.attn.qkv.bias"] == kinds["mlm.decoder.bias"] == "bias"
    assert kinds["layers.0.mlp.fc_in.weight"] == "weight"
    vit = build_model(preset("vit-debug"), device="meta")
    assert parameter_kind(vit, "cls_token") == parameter_kind(vit, "pos_embed") == "embedding"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="gpt2-124m"):
        preset("gpt3")
