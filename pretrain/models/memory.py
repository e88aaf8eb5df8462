"""Per-rank device memory of a training config: weights, gradients, optimizer state, activations.

``estimate(cfg, world)`` counts bytes from the config alone (the model on the meta device, the
parallel layout, the precision, ZeRO's partitioning); ``pretrain config show --memory`` prints it
and ``suggest_checkpointing`` picks the least recompute that fits a device. Counts, per rank:

- weights: the module's parameters in the training dtype (ZeRO 3: a 1/data share; offloaded: 0);
- gradients: one gradient per parameter in the accumulation dtype (``grad_accum_dtype``; ZeRO 2/3:
  a 1/data share), plus one reduce bucket;
- optimizer: AdamW's two fp32 moments, plus fp32 master weights under bf16/fp16 (ZeRO 1-3: a
  1/data share; offloaded: host memory, reported apart);
- activations: what autograd stores for backward over one micro-batch. Per token and block, in the
  training dtype (``h`` hidden, ``H``/``KV`` heads of size ``D`` and ``f`` MLP width on this tensor
  rank)::

      4 h                 the inputs of the two norms, of qkv and of the MLP's first projection
      (H + 2 KV) D        the qkv output (SDPA keeps q, k, v; rotary adds rotated q and k: (H + KV) D)
      H D                 the attention output (also the input of the output projection)
      2 f  or  4 f        GELU: its input and output; SwiGLU: [gate | up], silu(gate), the product

  plus fp32 norm statistics and the attention's log-sum-exp (``H``). A checkpointed block keeps
  only its input (``h``); attention checkpointing drops the attention part but keeps its input.
  The head keeps the final norm's input, and the fused loss its gradient w.r.t. the hidden states
  (``h``) and an fp32 gradient of the output weight; the unfused loss keeps fp32 log-probabilities
  of every token over the whole (local) vocabulary. ``tests/models/test_memory.py`` checks these
  counts against the tensors autograd actually saves.

Not counted: the CUDA context and NCCL buffers (~1-3 GiB), allocator fragmentation, temporaries
inside one operation, and the parameters ZeRO 3 gathers for the block being computed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pretrain.config import Config, ModelConfig, dp_size
from pretrain.deepspeed_json import comm_bucket_elements, resolved_grad_accum_dtype
from pretrain.models.core import checkpointed_blocks

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GiB = 2**30


@dataclass
class MemoryEstimate:
    """Bytes per rank; ``host`` is offloaded optimizer state/parameters (CPU memory per rank)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    host: float
    checkpointing: object

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def line(self) -> str:
        g = lambda b: f"{b / GiB:.2f}"  # noqa: E731
        host = f" | host (offload) {g(self.host)} GiB" if self.host else ""
        return (f"weights {g(self.weights)} | gradients {g(self.gradients)} | optimizer {g(self.optimizer)} | "
                f"activations {g(self.activations)} (checkpointing {self.checkpointing}) | "
                f"total {g(self.total)} GiB{host}")


def _local(cfg: ModelConfig, tp: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, MLP width) on one tensor rank."""
    return cfg.num_heads // tp, cfg.kv_heads // tp, cfg.ffn_size // tp


def norm_bytes(cfg: ModelConfig, dtype_bytes: int) -> float:
    """What one norm keeps per token: LayerNorm its input and fp32 mean/rstd; RMSNorm (torch's
    composite kernel) its input, the normalised input and an fp32 rstd."""
    h = cfg.hidden_size
    return h * dtype_bytes + 8 if cfg.norm == "layernorm" else 2 * h * dtype_bytes + 4


def block_activation_bytes(cfg: ModelConfig, tp: int, dtype_bytes: int, mode: str) -> float:
    """Bytes one block stores per token: ``mode`` "none", "block" (checkpointed) or "attention"."""
    h, D = cfg.hidden_size, cfg.head_dim
    H, KV, f = _local(cfg, tp)
    if mode == "block":
        return h * dtype_bytes
    norm = norm_bytes(cfg, dtype_bytes)
    mlp = (h + (4 if cfg.activation == "swiglu" else 2) * f) * dtype_bytes  # fc_in input, activations
    if mode == "attention":  # the region's input; norm2 (and post-norm's norm1, outside the region)
        return h * dtype_bytes + norm * (1 if cfg.norm_position == "pre" else 2) + mlp
    attention = (h + (H + 2 * KV) * D + H * D + (H + KV) * D * (cfg.position == "rope")) * dtype_bytes + 4 * H
    return 2 * norm + attention + mlp


def head_activation_bytes(cfg: ModelConfig, tokens: float, predicted: float, tp: int, dtype_bytes: int,
                          fused: bool = True) -> float:
    """Bytes the embedding norm, final norm, the head and the loss store for one micro-batch
    (``predicted`` tokens go through the head: all for GPT, the masked ones for BERT)."""
    h, vocab = cfg.hidden_size, cfg.padded_vocab_size // tp
    norm = norm_bytes(cfg, dtype_bytes)
    final = tokens * norm if cfg.norm_position == "pre" else 0.0
    if cfg.family == "vit":  # + the final norm's output, which the [CLS] head keeps a view of
        return final + tokens * h * dtype_bytes
    embed_norm = tokens * norm if cfg.norm_position == "post" else 0.0
    mlm = predicted * (2 * h * dtype_bytes + norm) if cfg.family == "bert" else 0.0  # dense, act, norm
    if fused:
        loss = predicted * h * dtype_bytes + 4 * vocab * h + (4 * vocab if cfg.family == "bert" else 0)
    else:
        loss = predicted * (h * dtype_bytes + 4 * vocab)  # head input, fp32 log-probabilities
    return embed_norm + final + mlm + loss


def activation_bytes(cfg: Config, mode=None, micro_batch: int | None = None, fused_loss: bool = True) -> float:
    """Bytes stored for backward over one micro-batch on one rank (``mode`` defaults to
    ``parallel.activation_checkpointing``)."""
    m, tp = cfg.model, cfg.parallel.tensor_size
    mode = cfg.parallel.activation_checkpointing if mode is None else mode
    b = micro_batch or cfg.train.micro_batch_size
    dtype_bytes = DTYPE_BYTES[cfg.parallel.precision]
    if m.family == "vit":
        size = cfg.data.image_size or m.image_size
        seq = (size // m.patch_size) ** 2 + 1
        extra = m.num_channels * size * size * dtype_bytes  # the pixels the patch convolution keeps
    else:
        seq, extra = cfg.data.seq_len, 0
    tokens = b * seq
    chosen = checkpointed_blocks(mode, m.num_layers)
    per_token = sum(block_activation_bytes(m, tp, dtype_bytes, chosen.get(i, "none")) for i in range(m.num_layers))
    predicted = tokens * (cfg.data.mlm_probability if m.family == "bert" else 1.0)
    # the rotary cos/sin tables, kept while any block stores its attention inputs
    rope = 2 * seq * m.head_dim * dtype_bytes if m.position == "rope" and len(chosen) < m.num_layers else 0
    return (tokens * per_token + head_activation_bytes(m, tokens, predicted, tp, dtype_bytes, fused_loss)
            + b * extra + rope)


def local_parameters(m: ModelConfig, tp: int) -> int:
    """Parameters held by one tensor rank (sharded ones divided, replicated ones whole)."""
    return _local_parameters(m.model_dump_json(), tp)


@functools.lru_cache(maxsize=64)
def _local_parameters(model_json: str, tp: int) -> int:
    from pretrain.models import build_model
    from pretrain.parallel.plan import param_split

    m = ModelConfig.model_validate_json(model_json)
    model = build_model(m, device="meta")
    return sum(p.numel() // (tp if param_split(n, m) else 1) for n, p in model.named_parameters())


def estimate(cfg: Config, world: int, mode=None, fused_loss: bool = True) -> MemoryEstimate:
    """Per-rank memory of ``cfg`` on ``world`` ranks (``mode``: another activation checkpointing)."""
    p = cfg.parallel
    dp = dp_size(cfg, world)
    n = local_parameters(cfg.model, p.tensor_size)
    low = DTYPE_BYTES[p.precision]
    accum = resolved_grad_accum_dtype(cfg, world)
    weights = n * low / (dp if p.zero_stage == 3 else 1)
    # one gradient per parameter, in the accumulation dtype (DeepSpeed frees each 16-bit gradient
    # once it is added into an fp32 accumulation buffer)
    gradients = n * DTYPE_BYTES[accum] / (dp if p.zero_stage >= 2 else 1)
    if p.zero_stage >= 1:
        gradients += min(comm_bucket_elements(dp), n) * DTYPE_BYTES[accum]
    optimizer = n * (8 + (4 if p.precision != "fp32" else 0)) / (dp if p.zero_stage >= 1 else 1)
    host = 0.0
    if p.offload_optimizer:
        host, optimizer = optimizer, 0.0
    if p.offload_params:
        host, weights = host + weights, 0.0
    mode = p.activation_checkpointing if mode is None else mode
    return MemoryEstimate(weights, gradients, optimizer, activation_bytes(cfg, mode, fused_loss=fused_loss), host,
                          mode)


def recompute_fraction(cfg: ModelConfig, mode) -> float:
    """Extra forward FLOPs of ``mode``'s recomputation, as a fraction of a training step's FLOPs."""
    from pretrain.models import flops

    seq = (cfg.image_size // cfg.patch_size) ** 2 + 1 if cfg.family == "vit" else cfg.max_seq_len
    keys = float(seq)
    step = 3 * cfg.num_layers * sum(flops.layer_flops_per_token(cfg, keys).values())
    return flops.recompute_flops_per_token(cfg, keys, mode) / step


def checkpointing_choices(num_layers: int) -> list:
    """Every mode, from none to full: every N-th block for N = layers .. 2, and attention."""
    return ["none", *range(num_layers, 1, -1), "attention", "full"]


def suggest_checkpointing(cfg: Config, world: int, device_bytes: float, usable: float = 0.9):
    """The checkpointing that fits ``usable`` of ``device_bytes`` per rank with the least recompute,
    or None when even full checkpointing does not fit."""
    fitting = [mode for mode in checkpointing_choices(cfg.model.num_layers)
               if estimate(cfg, world, mode).total <= usable * device_bytes]
    if not fitting:
        return None
    return min(fitting, key=lambda mode: (recompute_fraction(cfg.model, mode), str(mode)))
