"""Exact training FLOPs of our models, for MFU: matmuls and attention, forward and backward.

Counting rules (a multiply-add is 2 FLOPs; norms, activations, softmax, embedding lookups,
residual adds and the loss are not counted; they are a few percent at real sizes):

Per token and layer, forward, with ``h`` hidden, ``H``/``KV`` query/key-value heads of size ``D``,
``f`` the MLP width and ``k`` the number of keys each query attends to::

    qkv projection      2 h (H + 2 KV) D
    scores  Q K^T       2 H D k
    values  P V         2 H D k
    output projection   2 H D h
    MLP                 2 h f (x2 for SwiGLU's gate) + 2 f h

``k = T`` for full attention (BERT, ViT) and ``k = (T + 1) / 2`` for causal attention (the mean
number of unmasked keys over positions; ``causal_exact=False`` counts the full ``T`` as
PaLM-style MFU and dense kernels do). Heads: GPT ``2 h V`` per token (padded vocabulary);
BERT's MLM head ``2 h h + 2 h V`` per *predicted* token (``head_fraction`` of the tokens: 1.0 for
``forward``, the masking rate for ``loss``); ViT ``2 (C p^2) h`` per patch for the patch embedding
and ``2 h classes`` per image for the classifier.

Backward is exactly twice the forward for every matmul (gradient w.r.t. the input and w.r.t. the
weight; both bmm operands of attention), except the ViT patch embedding, whose input is pixels
and needs no gradient (1x). ``recompute=True`` (or a ``parallel.activation_checkpointing`` mode)
adds the activation-checkpointing recompute of the transformer layers: hardware FLOPs, not model
FLOPs (use ``recompute=False`` for MFU). torch's non-reentrant checkpoint stops recomputing once
every saved tensor is back, so a pre-norm block skips its last matmul (``fc_out``, whose output
nothing saves); a post-norm block recomputes it (its norm saves the sum); attention checkpointing
repeats the qkv projection and attention itself, not the output projection.

Two counts for MFU: ``causal_exact=True`` (this module's, the mean number of keys a causal query
sees) and ``causal_exact=False``, which is exactly the count the published MFU figures use
(nanoGPT, PaLM, llm.c, Megatron): ``6 N + 12 L H T`` per token, ``N`` the matmul weights (head
included), full ``T x T`` attention (``anchor_flops_per_token``).
"""

from __future__ import annotations

from pretrain.config import ModelConfig
from pretrain.models.core import checkpointed_blocks


def layer_flops_per_token(cfg: ModelConfig, keys: float) -> dict[str, float]:
    """Forward FLOPs of one transformer layer for one token attending to ``keys`` keys."""
    h, H, KV, D, f = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.ffn_size
    mlp_in = 2 * h * f * (2 if cfg.activation == "swiglu" else 1)
    return {
        "qkv": 2 * h * (H + 2 * KV) * D,
        "attention": 2 * 2 * H * D * keys,
        "attn_out": 2 * H * D * h,
        "mlp": mlp_in + 2 * f * h,
    }


def recompute_flops_per_token(cfg: ModelConfig, keys: float, mode="full") -> float:
    """Forward FLOPs torch's non-reentrant checkpoint repeats per token under ``mode`` (True/"full",
    "attention", N = every N-th block; see the module docstring)."""
    parts = layer_flops_per_token(cfg, keys)
    skipped = 2 * cfg.ffn_size * cfg.hidden_size if cfg.norm_position == "pre" else 0
    per_block = {"block": sum(parts.values()) - skipped, "attention": parts["qkv"] + parts["attention"]}
    return sum(per_block[kind] for kind in checkpointed_blocks(mode, cfg.num_layers).values())


def _keys(seq_len: int, causal: bool, causal_exact: bool) -> float:
    return (seq_len + 1) / 2 if causal and causal_exact else float(seq_len)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, head_fraction: float = 1.0,
                            causal_exact: bool = True) -> dict[str, float]:
    """Forward FLOPs per token (GPT, BERT) by part: ``layers`` and ``head``."""
    if cfg.family == "vit":
        raise ValueError("ViT counts per image: use flops_per_image")
    keys = _keys(seq_len, cfg.family == "gpt", causal_exact)
    layers = cfg.num_layers * sum(layer_flops_per_token(cfg, keys).values())
    h, V = cfg.hidden_size, cfg.padded_vocab_size
    head = 2 * h * V if cfg.family == "gpt" else head_fraction * (2 * h * h + 2 * h * V)
    return {"layers": layers, "head": head}


def flops_per_token(cfg: ModelConfig, seq_len: int, head_fraction: float = 1.0, recompute=False,
                    causal_exact: bool = True) -> float:
    """Training FLOPs (forward + backward) per token for GPT/BERT at sequence length ``seq_len``."""
    fwd = forward_flops_per_token(cfg, seq_len, head_fraction, causal_exact)
    keys = _keys(seq_len, cfg.family == "gpt", causal_exact)
    extra = recompute_flops_per_token(cfg, keys, recompute) if recompute not in (False, "none") else 0.0
    return 3 * (fwd["layers"] + fwd["head"]) + extra


def anchor_flops_per_token(cfg: ModelConfig, seq_len: int, head_fraction: float = 1.0) -> float:
    """The published MFU count, ``6 N + 12 L H T`` per token (nanoGPT/PaLM/Megatron; attention as
    if every query saw all ``T`` keys): ``flops_per_token(causal_exact=False)``."""
    return flops_per_token(cfg, seq_len, head_fraction, causal_exact=False)


def forward_flops_per_image(cfg: ModelConfig, image_size: int | None = None) -> dict[str, float]:
    """Forward FLOPs per image (ViT) by part: ``patch_embed``, ``layers`` and ``head``."""
    size = image_size or cfg.image_size
    patches = (size // cfg.patch_size) ** 2
    tokens = patches + 1  # [CLS]
    h = cfg.hidden_size
    layer = sum(layer_flops_per_token(cfg, float(tokens)).values())
    return {
        "patch_embed": patches * 2 * cfg.num_channels * cfg.patch_size**2 * h,
        "layers": tokens * cfg.num_layers * layer,
        "head": 2 * h * cfg.num_classes,
    }


def flops_per_image(cfg: ModelConfig, image_size: int | None = None, recompute=False) -> float:
    """Training FLOPs (forward + backward) per image for ViT (no gradient w.r.t. the pixels)."""
    fwd = forward_flops_per_image(cfg, image_size)
    tokens = ((image_size or cfg.image_size) // cfg.patch_size) ** 2 + 1
    extra = tokens * recompute_flops_per_token(cfg, float(tokens), recompute) if recompute not in (False, "none") else 0.0
    return 2 * fwd["patch_embed"] + 3 * (fwd["layers"] + fwd["head"]) + extra


def flops_per_sample(cfg: ModelConfig, seq_len: int | None = None, image_size: int | None = None,
                     head_fraction: float = 1.0, recompute=False) -> float:
    """Training FLOPs for one sample: a sequence of ``seq_len`` tokens, or one image."""
    if cfg.family == "vit":
        return flops_per_image(cfg, image_size, recompute)
    return seq_len * flops_per_token(cfg, seq_len, head_fraction, recompute)


def mfu(flops_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak FLOP/s."""
    return flops_per_second / peak_flops if peak_flops > 0 else 0.0
