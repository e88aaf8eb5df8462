"""GPT: a decoder-only causal language model on the shared core.

GPT-2 (learned positions, LayerNorm, tanh-GELU, biases, tied head) and Llama (RoPE, RMSNorm,
SwiGLU, no biases, GQA, untied head) are the same class with different ``ModelConfig`` values
(see ``presets.py``).

Labels are *already shifted* (Megatron/nanoGPT convention): ``labels[:, t]`` is the target for
the logits at position ``t``, i.e. ``input_ids[:, t + 1]`` of the packed window; -100 is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.config import ModelConfig
from pretrain.models.core import CrossEntropy, LMHead, Transformer, embedding, make_norm, padding_mask


class GPT(Transformer):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, causal=True)
        h = cfg.hidden_size
        self.tok_embed = embedding(cfg.padded_vocab_size, h)
        self.pos_embed = embedding(cfg.max_seq_len, h) if cfg.position == "learned" else None
        self.embed_norm = make_norm(cfg) if cfg.norm_position == "post" else None  # as BERT's
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = LMHead(h, cfg.padded_vocab_size, bias=False)
        self.loss_fn = CrossEntropy()
        self.fused_loss = True  # head + cross-entropy fused, chunked (False: logits, then loss_fn)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.tok_embed.weight

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):  # noqa: ARG002 - shared signature
        """[B, T] token ids -> final hidden states [B, T, H] (after the final norm)."""
        T = input_ids.shape[1]
        x = self.tok_embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(T, device=input_ids.device))
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.run_layers(self.drop(x), padding_mask(attention_mask, True, T))

    def forward(self, input_ids, attention_mask=None):
        """[B, T] -> logits [B, T, vocab_size] (gathered over tensor ranks, vocab padding cut off)."""
        logits = self.lm_head(self.encode(input_ids, attention_mask), gather_output=True)
        return logits[..., : self.config.vocab_size]

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean next-token cross-entropy; vocab-parallel (no gathered logits) under tensor parallel.
        Fused with the head (``fused_loss``): no [tokens, vocabulary] fp32 logits are stored."""
        h = self.encode(batch["input_ids"], batch.get("attention_mask"))
        if self.fused_loss:
            return self.lm_head(h, gather_output=False, labels=batch["labels"])
        return self.loss_fn(self.lm_head(h, gather_output=False), batch["labels"])
