"""Declarative key maps between our state dicts and Hugging Face ``transformers`` checkpoints.

A ``Rule`` says which HF tensor(s) one of our tensors comes from and the explicit reshape:

- ``copy``: same tensor.
- ``t``: transposed (GPT-2's ``Conv1D`` stores ``[in, out]``; ``nn.Linear`` stores ``[out, in]``).
- ``cat``: ours is the dim-0 concatenation of the HF tensors, in order (``qkv = [q; k; v]``,
  SwiGLU ``fc_in = [gate; up]``); ``split`` holds the sizes for the way back.
- ``vocab``: same tensor, but ours has ``padded_vocab_size`` rows and HF ``vocab_size``
  (export cuts the padding rows, import pads with zeros).

No RoPE permutation is needed for Llama: our rotary embedding rotates half-split pairs exactly as
HF's ``rotate_half`` does (the permutation in HF's conversion script maps Meta's *interleaved*
checkpoints to that layout). Keys are the on-disk names ``save_pretrained`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]
    op: str = "copy"
    split: tuple[int, ...] = ()
    optional: bool = False  # absent from some checkpoints (pooler, the MLM head of a bare BertModel)
    export: bool = True  # False: read on import, not written (BertForMaskedLM has no pooler)


@dataclass(frozen=True)
class Arch:
    """One HF architecture: its class, the base-model prefix, rules, and keys to ignore on import."""

    model_type: str
    hf_class: str
    prefix: str
    rules: tuple[Rule, ...]
    ignore_suffixes: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()  # HF keys that are tied copies (not written, tolerated on import)


def _layer(prefix: str, cfg: ModelConfig, pairs: list[tuple]) -> list[Rule]:
    """Expand ``(ours, theirs, op[, split])`` templates with ``{i}`` for every layer."""
    rules = []
    for i in range(cfg.num_layers):
        for ours, theirs, op, *split in pairs:
            theirs = (theirs,) if isinstance(theirs, str) else theirs
            rules.append(Rule(f"layers.{i}.{ours}", tuple(prefix.format(i=i) + t for t in theirs), op,
                              tuple(split[0]) if split else ()))
    return rules


def _linear(ours: str, theirs: str | tuple[str, ...], bias: bool, op: str = "copy", split=()) -> list[tuple]:
    """Weight (+ bias) pairs for one linear layer; biases of a ``cat`` are concatenated too."""
    out = [(f"{ours}.weight", _suffix(theirs, ".weight"), op, split)]
    if bias:
        out.append((f"{ours}.bias", _suffix(theirs, ".bias"), "copy" if op == "t" else op, split))
    return out


def _suffix(names, suffix):
    return names + suffix if isinstance(names, str) else tuple(n + suffix for n in names)


def _norm(ours: str, theirs: str, cfg: ModelConfig) -> list[tuple]:
    out = [(f"{ours}.weight", theirs + ".weight", "copy")]
    if cfg.norm == "layernorm":
        out.append((f"{ours}.bias", theirs + ".bias", "copy"))
    return out


def _qkv_split(cfg: ModelConfig) -> tuple[int, int, int]:
    q, kv = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return q, kv, kv


def _top(pairs: list[tuple], optional: bool = False, export: bool = True) -> list[Rule]:
    return [Rule(o, (t,), op, (), optional, export) for o, t, op, *_ in pairs]


def gpt2_arch(cfg: ModelConfig) -> Arch:
    p = "transformer."
    rules = _top([("tok_embed.weight", p + "wte.weight", "vocab"), ("pos_embed.weight", p + "wpe.weight", "copy")])
    rules += _layer(p + "h.{i}.", cfg, [
        *_norm("norm1", "ln_1", cfg), *_linear("attn.qkv", "attn.c_attn", True, "t"),
        *_linear("attn.out", "attn.c_proj", True, "t"), *_norm("norm2", "ln_2", cfg),
        *_linear("mlp.fc_in", "mlp.c_fc", True, "t"), *_linear("mlp.fc_out", "mlp.c_proj", True, "t")])
    rules += _top(_norm("norm", p + "ln_f", cfg))
    tied = ("lm_head.weight",) if cfg.tie_embeddings else ()
    if not cfg.tie_embeddings:
        rules += _top([("lm_head.weight", "lm_head.weight", "vocab")])
    return Arch("gpt2", "GPT2LMHeadModel", p, tuple(rules), (".attn.bias", ".attn.masked_bias"), tied)


def llama_arch(cfg: ModelConfig) -> Arch:
    p, b = "model.", cfg.bias
    attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    rules = _top([("tok_embed.weight", p + "embed_tokens.weight", "vocab")])
    rules += _layer(p + "layers.{i}.", cfg, [
        *_norm("norm1", "input_layernorm", cfg), *_linear("attn.qkv", attn, b, "cat", _qkv_split(cfg)),
        *_linear("attn.out", "self_attn.o_proj", b), *_norm("norm2", "post_attention_layernorm", cfg),
        *_linear("mlp.fc_in", ("mlp.gate_proj", "mlp.up_proj"), b, "cat", (cfg.ffn_size, cfg.ffn_size)),
        *_linear("mlp.fc_out", "mlp.down_proj", b)])
    rules += _top(_norm("norm", p + "norm", cfg))
    tied = ("lm_head.weight",) if cfg.tie_embeddings else ()
    if not cfg.tie_embeddings:
        rules += _top([("lm_head.weight", "lm_head.weight", "vocab")])
    return Arch("llama", "LlamaForCausalLM", p, tuple(rules), (".rotary_emb.inv_freq",), tied)


def bert_arch(cfg: ModelConfig) -> Arch:
    p = "bert."
    e = p + "embeddings."
    rules = _top([("tok_embed.weight", e + "word_embeddings.weight", "vocab"),
                  ("pos_embed.weight", e + "position_embeddings.weight", "copy"),
                  ("type_embed.weight", e + "token_type_embeddings.weight", "copy"),
                  *_norm("embed_norm", e + "LayerNorm", cfg)])
    qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
    rules += _layer(p + "encoder.layer.{i}.", cfg, [
        *_linear("attn.qkv", qkv, True, "cat", _qkv_split(cfg)), *_linear("attn.out", "attention.output.dense", True),
        *_norm("norm1", "attention.output.LayerNorm", cfg), *_linear("mlp.fc_in", "intermediate.dense", True),
        *_linear("mlp.fc_out", "output.dense", True), *_norm("norm2", "output.LayerNorm", cfg)])
    rules += _top(_linear("pooler.dense", p + "pooler.dense", True), optional=True, export=False)
    c = "cls.predictions."
    rules += _top([*_linear("mlm.dense", c + "transform.dense", True), *_norm("mlm.norm", c + "transform.LayerNorm", cfg),
                   ("mlm.decoder.bias", c + "bias", "vocab")], optional=True)
    tied = (c + "decoder.bias",)
    if cfg.tie_embeddings:
        tied += (c + "decoder.weight",)
    else:
        rules += _top([("mlm.decoder.weight", c + "decoder.weight", "vocab")], optional=True)
    return Arch("bert", "BertForMaskedLM", p, tuple(rules), (".position_ids",), tied)


def vit_arch(cfg: ModelConfig) -> Arch:
    p = "vit."
    e = p + "embeddings."
    rules = _top([("cls_token", e + "cls_token", "copy"), ("pos_embed", e + "position_embeddings", "copy"),
                  ("patch_embed.weight", e + "patch_embeddings.projection.weight", "copy"),
                  ("patch_embed.bias", e + "patch_embeddings.projection.bias", "copy")])
    qkv = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
    rules += _layer(p + "encoder.layer.{i}.", cfg, [
        *_norm("norm1", "layernorm_before", cfg), *_linear("attn.qkv", qkv, True, "cat", _qkv_split(cfg)),
        *_linear("attn.out", "attention.output.dense", True), *_norm("norm2", "layernorm_after", cfg),
        *_linear("mlp.fc_in", "intermediate.dense", True), *_linear("mlp.fc_out", "output.dense", True)])
    rules += _top(_norm("norm", p + "layernorm", cfg))
    rules += _top(_linear("head", "classifier", True), optional=True)  # a bare ViTModel has none
    return Arch("vit", "ViTForImageClassification", p, tuple(rules), (".pooler.dense.weight", ".pooler.dense.bias"))


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "swiglu": "silu"}
_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def hf_model_type(cfg: ModelConfig) -> str:
    """Which HF architecture can hold this config exactly; ValueError naming the field if none."""
    if cfg.family == "bert":
        _require(cfg, norm_position="post", position="learned", norm="layernorm", bias=True)
        _require_act(cfg, ("gelu", "gelu_tanh"))
        return "bert"
    if cfg.family == "vit":
        _require(cfg, norm_position="pre", position="learned", norm="layernorm", bias=True)
        _require_act(cfg, ("gelu", "gelu_tanh"))
        return "vit"
    if cfg.position == "rope":
        _require(cfg, norm_position="pre", norm="rmsnorm", activation="swiglu")
        return "llama"
    _require(cfg, norm_position="pre", position="learned", norm="layernorm", bias=True)
    _require_act(cfg, ("gelu", "gelu_tanh"))
    return "gpt2"


def _require(cfg: ModelConfig, **expected) -> None:
    for field, want in expected.items():
        if getattr(cfg, field) != want:
            raise ValueError(f"model.{field}={getattr(cfg, field)!r} has no Hugging Face equivalent for this "
                             f"family (needs {want!r})")


def _require_act(cfg: ModelConfig, allowed) -> None:
    if cfg.activation not in allowed:
        raise ValueError(f"model.activation={cfg.activation!r} has no Hugging Face equivalent here (allowed {allowed})")


def to_hf_config(cfg: ModelConfig, model_type: str) -> dict:
    """Keyword arguments for the transformers config class of ``model_type``."""
    common = dict(initializer_range=cfg.init_std)
    if model_type == "gpt2":
        return dict(common, vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.hidden_size,
                    n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.ffn_hidden_size,
                    activation_function=_ACT_TO_HF[cfg.activation], resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                    attn_pdrop=cfg.attention_dropout, layer_norm_epsilon=cfg.norm_eps,
                    tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None)
    if model_type == "llama":
        return dict(common, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size,
                    num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                    num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len,
                    rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                    attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.attention_dropout,
                    hidden_act="silu", tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None)
    body = dict(common, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_size,
                hidden_act=_ACT_TO_HF[cfg.activation], hidden_dropout_prob=cfg.dropout,
                attention_probs_dropout_prob=cfg.attention_dropout, layer_norm_eps=cfg.norm_eps)
    if model_type == "bert":
        return dict(body, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_seq_len,
                    type_vocab_size=cfg.type_vocab_size, tie_word_embeddings=cfg.tie_embeddings)
    return dict(body, image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
                qkv_bias=True, num_labels=cfg.num_classes)


def from_hf_config(hf: dict) -> ModelConfig:
    """ModelConfig from a HF ``config.json`` dict (gpt2, llama, bert, vit); ValueError if unsupported."""
    from pretrain.models.presets import BERT, GPT2, LLAMA, VIT

    kind = hf.get("model_type")
    std = {"init_std": hf.get("initializer_range", 0.02)}
    if kind == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise ValueError("GPT-2 configs with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported")
        return ModelConfig(**{**GPT2, **std, "tie_embeddings": hf.get("tie_word_embeddings", True),
                              "vocab_size": hf["vocab_size"], "max_seq_len": hf["n_positions"],
                              "hidden_size": hf["n_embd"], "num_layers": hf["n_layer"], "num_heads": hf["n_head"],
                              "ffn_hidden_size": _ffn(hf.get("n_inner"), hf["n_embd"]),
                              "activation": _act(hf["activation_function"]),
                              "dropout": hf.get("resid_pdrop", 0.0), "attention_dropout": hf.get("attn_pdrop", 0.0),
                              "norm_eps": hf["layer_norm_epsilon"]})
    if kind == "llama":
        return _llama_config(hf, LLAMA, std)
    if kind in ("bert", "vit"):
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported")
        body = dict(hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                    num_heads=hf["num_attention_heads"], ffn_hidden_size=_ffn(hf["intermediate_size"], hf["hidden_size"]),
                    activation=_act(hf["hidden_act"]), norm_eps=hf["layer_norm_eps"],
                    dropout=hf.get("hidden_dropout_prob", 0.0),
                    attention_dropout=hf.get("attention_probs_dropout_prob", 0.0), **std)
        if kind == "bert":
            return ModelConfig(**{**BERT, **body, "tie_embeddings": hf.get("tie_word_embeddings", True),
                                  "vocab_size": hf["vocab_size"], "max_seq_len": hf["max_position_embeddings"],
                                  "type_vocab_size": hf.get("type_vocab_size", 2)})
        if not hf.get("qkv_bias", True):
            raise ValueError("ViT configs with qkv_bias=false are not supported")
        return ModelConfig(**{**VIT, **body, "image_size": hf["image_size"], "patch_size": hf["patch_size"],
                              "num_channels": hf.get("num_channels", 3),
                              "num_classes": len(hf.get("id2label") or {0: 0, 1: 1})})
    raise ValueError(f"config.json model_type={kind!r} is not supported (gpt2, llama, bert, vit)")


def _llama_config(hf: dict, base: dict, std: dict) -> ModelConfig:
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        raise ValueError(f"Llama rope scaling {rope!r} is not supported (only the default RoPE)")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise ValueError("Llama configs with attention_bias != mlp_bias are not supported")
    heads, hidden, ffn = hf["num_attention_heads"], hf["hidden_size"], hf["intermediate_size"]
    ffn = None if ffn == ((int(8 * hidden / 3) + 255) // 256) * 256 else ffn  # ModelConfig's SwiGLU default
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        raise ValueError(f"Llama head_dim={hf['head_dim']} != hidden_size / num_attention_heads is not supported")
    return ModelConfig(**{**base, **std, "tie_embeddings": hf.get("tie_word_embeddings", False),
                          "bias": hf.get("attention_bias", False), "vocab_size": hf["vocab_size"],
                          "hidden_size": hf["hidden_size"], "num_layers": hf["num_hidden_layers"], "num_heads": heads,
                          "num_kv_heads": hf.get("num_key_value_heads") or heads,
                          "ffn_hidden_size": ffn, "max_seq_len": hf["max_position_embeddings"],
                          "norm_eps": hf["rms_norm_eps"], "rope_theta": rope.get("rope_theta", 10000.0),
                          "attention_dropout": hf.get("attention_dropout", 0.0)})


def _ffn(size: int | None, hidden: int) -> int | None:
    """None when the MLP width is the GELU default 4 x hidden, so configs round-trip unchanged."""
    return None if size in (None, 4 * hidden) else size


def _act(name: str) -> str:
    if name not in _ACT_FROM_HF:
        raise ValueError(f"activation {name!r} is not supported (known: {', '.join(_ACT_FROM_HF)})")
    return _ACT_FROM_HF[name]


ARCHS = {"gpt2": gpt2_arch, "llama": llama_arch, "bert": bert_arch, "vit": vit_arch}
