"""BERT: a bidirectional encoder with token-type embeddings and the masked-LM head.

BERT-base layout: word + position + token-type embeddings -> LayerNorm -> dropout, post-norm
blocks, then the MLM head ``decoder(norm(act(dense(h))))`` whose decoder weight is the word
embedding (tied) plus its own bias. The optional ``pooler`` (dense + tanh on [CLS]) exists so that
a bare HF ``BertModel`` round-trips; MLM pre-training does not build it (an unused parameter).
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.config import ModelConfig
from pretrain.models.core import CrossEntropy, LMHead, Transformer, activation_fn, embedding, make_norm, padding_mask


class MLMHead(nn.Module):
    """hidden -> vocabulary logits: dense, activation, norm, tied decoder with bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.dense = nn.Linear(h, h)
        self.act = activation_fn("gelu" if cfg.activation == "swiglu" else cfg.activation)
        self.norm = make_norm(cfg)
        self.decoder = LMHead(h, cfg.padded_vocab_size, bias=True)

    def forward(self, h, gather_output: bool = True, labels: torch.Tensor | None = None):
        """Logits, or with ``labels`` the fused cross-entropy of the decoder (see ``LMHead``)."""
        return self.decoder(self.norm(self.act(self.dense(h))), gather_output=gather_output, labels=labels)


class Pooler(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class Bert(Transformer):
    def __init__(self, cfg: ModelConfig, pooler: bool = False):
        super().__init__(cfg, causal=False)
        h = cfg.hidden_size
        self.tok_embed = embedding(cfg.padded_vocab_size, h)
        self.pos_embed = embedding(cfg.max_seq_len, h) if cfg.position == "learned" else None
        self.type_embed = embedding(cfg.type_vocab_size, h) if cfg.type_vocab_size else None
        self.embed_norm = make_norm(cfg) if cfg.norm_position == "post" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.pooler = Pooler(cfg) if pooler else None
        self.mlm = MLMHead(cfg)
        self.loss_fn = CrossEntropy()
        self.fused_loss = True  # decoder + cross-entropy fused, chunked (False: logits, then loss_fn)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.mlm.decoder.weight = self.tok_embed.weight

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """[B, T] ids (+ 1/0 padding mask, + segment ids) -> final hidden states [B, T, H]."""
        T = input_ids.shape[1]
        x = self.tok_embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(T, device=input_ids.device))
        if self.type_embed is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.type_embed(types)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.run_layers(self.drop(x), padding_mask(attention_mask, False, T))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """[CLS] pooling of ``encode``'s output (needs the model built with ``pooler=True``)."""
        if self.pooler is None:
            raise RuntimeError("this BERT has no pooler; build it with build_model(cfg, pooler=True)")
        return self.pooler(h)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """[B, T] -> MLM logits [B, T, vocab_size] at every position."""
        logits = self.mlm(self.encode(input_ids, attention_mask, token_type_ids), gather_output=True)
        return logits[..., : self.config.vocab_size]

    def loss(self, batch: dict) -> torch.Tensor:
        """Masked-LM cross-entropy over labels != -100. The head runs on the masked positions only
        (about 15% of tokens), which gives the same loss as the full head at a fraction of its cost."""
        h = self.encode(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        labels = batch["labels"]
        picked = labels != -100
        if self.fused_loss:
            return self.mlm(h[picked], gather_output=False, labels=labels[picked])
        return self.loss_fn(self.mlm(h[picked], gather_output=False), labels[picked])
