"""Named architectures as ``ModelConfig`` values (a preset is data, not a class).

``gpt2-124m``, ``bert-base`` and ``vit-b16`` are the published sizes (their parameter counts are
tested); ``*-debug`` sizes train on two CPU cores. ``llama-*`` is the GPT class with RoPE,
RMSNorm, SwiGLU, no biases, grouped-query attention and an untied head.
"""

from __future__ import annotations

from pretrain.config import ModelConfig

GPT2 = dict(family="gpt", position="learned", norm="layernorm", norm_eps=1e-5, norm_position="pre",
            activation="gelu_tanh", bias=True, tie_embeddings=True, scaled_residual_init=True)
LLAMA = dict(family="gpt", position="rope", norm="rmsnorm", norm_eps=1e-5, norm_position="pre",
             activation="swiglu", bias=False, tie_embeddings=False, scaled_residual_init=False)
BERT = dict(family="bert", position="learned", norm="layernorm", norm_eps=1e-12, norm_position="post",
            activation="gelu", bias=True, tie_embeddings=True, scaled_residual_init=False, type_vocab_size=2)
VIT = dict(family="vit", position="learned", norm="layernorm", norm_eps=1e-12, norm_position="pre",
           activation="gelu", bias=True, tie_embeddings=False, scaled_residual_init=False)

PRESETS: dict[str, dict] = {
    "gpt2-debug": {**GPT2, "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_seq_len": 128},
    "gpt2-small": {**GPT2, "vocab_size": 8000, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "max_seq_len": 256},
    "gpt2-124m": {**GPT2, "vocab_size": 50257, "hidden_size": 768, "num_layers": 12, "num_heads": 12, "max_seq_len": 1024},
    "llama-debug": {**LLAMA, "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                    "ffn_hidden_size": 160, "max_seq_len": 128},
    "llama-small": {**LLAMA, "vocab_size": 8000, "hidden_size": 256, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4,
                    "max_seq_len": 256},
    "bert-debug": {**BERT, "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_seq_len": 128},
    "bert-small": {**BERT, "vocab_size": 8000, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "max_seq_len": 256},
    "bert-base": {**BERT, "vocab_size": 30522, "hidden_size": 768, "num_layers": 12, "num_heads": 12, "max_seq_len": 512},
    "vit-debug": {**VIT, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "image_size": 32, "patch_size": 8,
                  "num_classes": 10},
    "vit-small": {**VIT, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "image_size": 64, "patch_size": 8,
                  "num_classes": 100},
    "vit-b16": {**VIT, "hidden_size": 768, "num_layers": 12, "num_heads": 12, "image_size": 224, "patch_size": 16,
                "num_classes": 1000},
}


def preset(name: str, **overrides) -> ModelConfig:
    """``preset("gpt2-124m", max_seq_len=2048)`` -> a validated ModelConfig."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return ModelConfig(**{**PRESETS[name], **overrides})
