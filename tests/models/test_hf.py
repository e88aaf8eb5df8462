"""Hugging Face conversion both ways: same logits (and BERT hidden states) within 1e-4, fp32 CPU."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from pretrain.models import build_model, from_hf, preset, to_hf

TOL = 1e-4
CASES = {  # preset -> (HF class, extra ModelConfig overrides)
    "gpt2-debug": (T.GPT2LMHeadModel, {}),
    "gpt2-untied-padded": (T.GPT2LMHeadModel, {"tie_embeddings": False, "vocab_size": 500, "pad_vocab_multiple": 64}),
    "llama-debug": (T.LlamaForCausalLM, {"rope_theta": 5000.0}),
    "llama-tied-bias": (T.LlamaForCausalLM, {"tie_embeddings": True, "bias": True, "num_kv_heads": 1}),
    "bert-debug": (T.BertForMaskedLM, {}),
    "vit-debug": (T.ViTForImageClassification, {}),
}


def case_config(name):
    base = {"gpt2-untied-padded": "gpt2-debug", "llama-tied-bias": "llama-debug"}.get(name, name)
    return preset(base, **CASES[name][1])


def inputs_for(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    if cfg.family == "vit":
        return {"pixel_values": torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=g)}
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=g)
    if cfg.family == "gpt":
        return {"input_ids": ids}
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    types = torch.zeros_like(ids)
    types[:, 9:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (norms and biases too), so every mapped tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
def test_ours_to_hf_gives_the_same_logits(name, tmp_path):
    cfg = case_config(name)
    ours = build_model(cfg, seed=3)
    perturb(ours)
    ours.eval()
    to_hf(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf, info = CASES[name][0].from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    x = inputs_for(cfg)
    with torch.no_grad():
        diff = max_diff(hf(**x).logits, ours(*x.values()))
    assert diff <= TOL, f"{name}: max |logits diff| {diff:.3g}"
    back = from_hf(tmp_path)
    if cfg.pad_vocab_multiple == 1:  # HF has no vocabulary padding; the rest must round-trip exactly
        assert back.config == cfg
    with torch.no_grad():
        assert max_diff(back.eval()(*x.values()), ours(*x.values())) <= TOL


def hf_from_config(name):
    """A transformers model of the case's shape, built from a config with random weights."""
    cls, _ = CASES[name]
    cfg = case_config(name)
    from pretrain.models.hf_maps import hf_model_type, to_hf_config

    hf_type = hf_model_type(cfg)
    hf_cfg = T.AutoConfig.for_model(hf_type, **to_hf_config(cfg, hf_type))
    torch.manual_seed(0)
    model = cls(hf_cfg)
    perturb(model, seed=1)
    return cfg, model.eval()


@pytest.mark.parametrize("name", list(CASES))
def test_hf_from_config_imports_with_the_same_logits(name, tmp_path):
    cfg, hf = hf_from_config(name)
    hf.save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    assert ours.config.vocab_size == cfg.vocab_size and ours.config.num_layers == cfg.num_layers
    x = inputs_for(cfg, seed=1)
    with torch.no_grad():
        out = hf(**x, output_hidden_states=True)
        assert max_diff(out.logits, ours(*x.values())) <= TOL
        if cfg.family == "bert":
            hidden = ours.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"])
            assert max_diff(out.hidden_states[-1], hidden) <= TOL


def test_vit_position_interpolation_matches_hf(tmp_path):
    cfg = preset("vit-debug")
    ours = build_model(cfg, seed=4).eval()
    perturb(ours)
    to_hf(ours, tmp_path)
    hf = T.ViTForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 48, 40)  # a 6 x 5 patch grid instead of the trained 4 x 4
    with torch.no_grad():
        assert max_diff(hf(x, interpolate_pos_encoding=True).logits, ours(x)) <= TOL


def test_bare_bert_model_imports_hidden_states_and_pooler(tmp_path):
    cfg = preset("bert-debug")
    from pretrain.models.hf_maps import to_hf_config

    hf = T.BertModel(T.BertConfig(**to_hf_config(cfg, "bert")))
    perturb(hf, seed=2)
    hf.eval().save_pretrained(tmp_path)
    ours = from_hf(tmp_path).eval()
    assert ours.pooler is not None
    x = inputs_for(cfg, seed=2)
    with torch.no_grad():
        out = hf(**x)
        hidden = ours.encode(**x)
        assert max_diff(out.last_hidden_state, hidden) <= TOL
        assert max_diff(out.pooler_output, ours.pool(hidden)) <= TOL


def test_bert_pooler_is_dropped_on_masked_lm_export(tmp_path):
    model = build_model(preset("bert-debug"), pooler=True)
    to_hf(model, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any("pooler" in k for k in keys)
    assert "cls.predictions.decoder.weight" not in keys  # tied: HF re-ties it
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]


def test_export_refuses_configs_without_a_hf_equivalent(tmp_path):
    model = build_model(preset("gpt2-debug", norm="rmsnorm"))
    with pytest.raises(ValueError, match="model.norm"):
        to_hf(model, tmp_path)


def test_import_refuses_pickle_only_and_unknown_tensors(tmp_path):
    to_hf(build_model(preset("gpt2-debug")), tmp_path)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    save_file({**sd, "transformer.extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="transformer.extra.weight"):
        from_hf(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_hf(tmp_path)
