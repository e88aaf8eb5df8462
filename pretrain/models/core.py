"""The transformer core that GPT, BERT and ViT share: norms, rotary positions, attention, MLP, block.

Everything here is plain PyTorch and reads one ``pretrain.config.ModelConfig``. Tensor parallelism
is *not* in here: ``pretrain.parallel.apply_tensor_parallel`` swaps ``Attention.qkv/out`` and
``MLP.fc_in/fc_out`` for column-/row-parallel layers from outside and divides the head counts, so
the forward code below is the same for TP=1 and TP=n.

Fused layouts (the parallel plan and the Hugging Face maps rely on them):

- ``Attention.qkv.weight`` is ``[(H + 2*KV) * D, hidden]``: rows ``[q heads | k heads | v heads]``,
  each head ``D`` contiguous rows. Query head ``j`` uses key/value head ``j // (H / KV)`` (GQA).
- ``MLP.fc_in.weight`` is ``[ffn, hidden]`` for GELU and ``[gate | up] = [2 * ffn, hidden]`` for SwiGLU.
- RoPE rotates the two *halves* of each head (HF Llama's ``rotate_half``), not interleaved pairs.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.config import ModelConfig


def embedding(num: int, dim: int) -> nn.Embedding:
    """``nn.Embedding`` without torch's own init (``materialize`` initialises every weight). On the
    meta device torch's ``normal_`` goes through its reference kernels, whose import of
    ``torch._dynamo`` costs ~2 s per process."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """LayerNorm (weight + bias) or RMSNorm (weight only), as the config says."""
    dim = dim or cfg.hidden_size
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def activation_fn(name: str):
    """The elementwise activation for a GELU-family MLP (SwiGLU is handled in ``MLP``)."""
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


class Rotary(nn.Module):
    """Rotary position embedding (RoPE). cos/sin are computed in fp32 from positions and cached per
    (length, device, dtype) in a plain dict: no state to shard, materialise or checkpoint."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._cache: dict = {}

    def forward(self, seq_len: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, str(device), dtype)
        if key not in self._cache:
            d = self.head_dim
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
            freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
            self._cache = {key: (emb.cos().to(dtype), emb.sin().to(dtype))}  # keep only the latest
        return self._cache[key]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, D]; rotate the pair (x[..., i], x[..., i + D/2]) by position angle i."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention through ``F.scaled_dot_product_attention``.

    ``num_heads``/``num_kv_heads`` are the heads *this rank* computes; the TP plan divides them.
    ``mask`` is None (full, or causal when ``causal``) or a bool ``[B, 1, T or 1, T]`` (True = attend).
    """

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.causal, self.dropout_p = causal, cfg.attention_dropout
        q, kv = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, q + 2 * kv, bias=cfg.bias)
        self.out = nn.Linear(q, cfg.hidden_size, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask=None, rope=None):
        B, T, _ = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * D, KV * D, KV * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, KV, D).transpose(1, 2)
        v = v.view(B, T, KV, D).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # enable_gqa groups like HF's repeat_kv: query head j reads key/value head j // (H / KV)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=self.causal and mask is None, enable_gqa=KV != H)
        return self.resid_dropout(self.out(y.transpose(1, 2).reshape(B, T, H * D)))


class MLP(nn.Module):
    """``fc_out(act(fc_in(x)))``; SwiGLU: ``fc_out(silu(gate) * up)`` with ``fc_in = [gate | up]``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        ffn = cfg.ffn_size
        self.fc_in = nn.Linear(cfg.hidden_size, 2 * ffn if self.swiglu else ffn, bias=cfg.bias)
        self.fc_out = nn.Linear(ffn, cfg.hidden_size, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        a = self.fc_in(x)
        if self.swiglu:
            gate, up = a.chunk(2, dim=-1)
            a = F.silu(gate) * up
        else:
            a = self.act(a)
        return self.dropout(self.fc_out(a))


class Block(nn.Module):
    """One transformer layer. Pre-norm: ``x + f(norm(x))``; post-norm (BERT): ``norm(x + f(x))``.
    ``checkpoint`` (set by ``set_activation_checkpointing``): "block" recomputes the whole block in
    backward (``Transformer.run_layers`` wraps it), "attention" only its attention half (the
    pre-norm's ``norm1`` included), "none" stores every activation."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1, self.attn = make_norm(cfg), Attention(cfg, causal)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)
        self.checkpoint = "none"

    def _attend(self, x, mask, rope):
        return self.attn(self.norm1(x) if self.pre_norm else x, mask, rope)

    def forward(self, x, mask=None, rope=None):
        if self.checkpoint == "attention" and self.training and torch.is_grad_enabled():
            a = checkpoint(self._attend, x, mask, rope, use_reentrant=False)
        else:
            a = self._attend(x, mask, rope)
        if self.pre_norm:
            x = x + a
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + a)
        return self.norm2(x + self.mlp(x))


def checkpointed_blocks(mode, num_layers: int) -> dict[int, str]:
    """``parallel.activation_checkpointing`` -> {block index: "block" | "attention"} for the blocks
    that recompute. ``mode``: "none"/False, "full"/True/1, "attention", or N (every N-th block)."""
    if mode is True or mode == 1:
        mode = "full"
    if mode is False or mode == "none":
        return {}
    if mode in ("full", "attention"):
        return {i: "block" if mode == "full" else "attention" for i in range(num_layers)}
    if isinstance(mode, int) and mode >= 2:
        return {i: "block" for i in range(0, num_layers, mode)}
    raise ValueError(f"activation checkpointing {mode!r}: allowed none, full, attention or N >= 1")


class CrossEntropy(nn.Module):
    """Mean token cross-entropy over labels != -100. The TP plan swaps it for the vocab-parallel one."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


class LMHead(nn.Linear):
    """hidden -> vocabulary logits, or with ``labels`` the mean cross-entropy of those logits,
    computed a chunk of tokens at a time without storing them (``linear_cross_entropy``; logits for
    evaluation come from the call without labels). ``gather_output`` only matters for the
    column-parallel swap, which keeps this signature."""

    def forward(self, x, gather_output: bool = True, labels: torch.Tensor | None = None):  # noqa: ARG002
        if labels is not None:
            from pretrain.parallel.tensor_parallel import linear_cross_entropy  # parallel imports this module

            return linear_cross_entropy(x, self.weight, self.bias, labels)
        return super().forward(x)


class Transformer(nn.Module):
    """The shared trunk: ``layers`` (Blocks), optional RoPE, final norm for pre-norm models.

    Families subclass it and add embeddings and heads. Parameter names stay flat
    (``layers.{i}.attn.qkv.weight``) so the TP plan and the HF maps address them directly.
    """

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.rope = Rotary(cfg.head_dim, cfg.rope_theta) if cfg.position == "rope" else None

    def run_layers(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        rope = self.rope(x.shape[1], x.device, x.dtype) if self.rope is not None else None
        for layer in self.layers:
            if layer.checkpoint == "block" and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, mask, rope, use_reentrant=False)
            else:
                x = layer(x, mask, rope)
        return self.norm(x)

    def set_activation_checkpointing(self, mode: bool | str | int = True) -> None:
        """Recompute activations in backward instead of storing them: True/"full" every block,
        "attention" the attention half of every block, N every N-th block, False/"none" nothing."""
        chosen = checkpointed_blocks(mode, len(self.layers))
        for i, layer in enumerate(self.layers):
            layer.checkpoint = chosen.get(i, "none")

    def compile_blocks(self, backend: str | None = None) -> None:
        """``torch.compile`` each transformer block's ``forward`` (one graph, shared by all blocks).

        The block's own ``__call__`` -- and the hooks DeepSpeed hangs on it (ZeRO 3 gathers a
        block's parameters there when the block is a ZeRO-3 leaf module, see ``train_setup``) --
        stays eager, as do embeddings, head, loss and optimizer; full-block checkpointing wraps the
        compiled block, attention checkpointing is traced inside it. Tensor-parallel collectives
        break the graph (``pretrain.parallel.tensor_parallel``). ``backend``: default
        ``$PRETRAIN_COMPILE_BACKEND`` or inductor."""
        backend = backend or os.environ.get("PRETRAIN_COMPILE_BACKEND") or "inductor"
        for layer in self.layers:
            layer.forward = torch.compile(layer.forward, backend=backend, dynamic=False)

    def tie_weights(self) -> None:
        """Re-point tied parameters after materialisation or a layer swap; families override."""

    def residual_projections(self) -> tuple[str, ...]:
        """Name suffixes of the projections that write into the residual stream (GPT-2 scaled init)."""
        return ("attn.out.weight", "mlp.fc_out.weight")


def padding_mask(attention_mask: torch.Tensor | None, causal: bool, seq_len: int) -> torch.Tensor | None:
    """[B, T] 1/0 padding mask -> SDPA bool mask [B, 1, T or 1, T] (True = may attend), or None.

    A mask without padding becomes None, as in HF: SDPA then takes its fused (flash) kernels,
    which do not accept an explicit mask."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keys = attention_mask.bool()[:, None, None, :]
    if not causal:
        return keys
    tri = torch.ones(seq_len, seq_len, dtype=torch.bool, device=attention_mask.device).tril()
    return keys & tri


def scaled_std(cfg: ModelConfig) -> float:
    """GPT-2: residual projections get std / sqrt(2 * layers) so the residual stream stays O(1)."""
    return cfg.init_std / math.sqrt(2 * cfg.num_layers)
