"""Megatron-style tensor parallelism: all communication lives in the autograd Functions here.

Notation: ``p`` = tensor-parallel size, ``r`` = this rank, ``X`` the input replicated on all ranks.

- ``copy_to_tp_region``: forward identity, backward all-reduce (the input fans out to p shards).
- ``reduce_from_tp_region``: forward all-reduce (sum of partial products), backward identity.
- ``gather_from_tp_region``: forward all-gather along the last dim, backward keep own slice.
- ``scatter_to_tp_region``: forward keep own slice of the last dim, backward all-gather.

Layers (weights hold ``tp_shard`` specs, see ``sharding.py``):

- ``ColumnParallelLinear``: ``W = [W_0; ...; W_{p-1}]`` split by output rows,
  ``Y_r = copy(X) W_r^T + b_r`` of shape ``[..., out/p]`` (optionally gathered to ``[..., out]``).
- ``RowParallelLinear``: ``W = [W_0, ..., W_{p-1}]`` split by input columns, input already split,
  ``Y = reduce(sum_r X_r W_r^T) + b`` with the bias replicated and added once after the reduce.
- ``VocabParallelEmbedding``: rows ``[r V/p, (r+1) V/p)`` live on rank r; out-of-range ids give
  zeros locally and the all-reduce fills them in.
- ``vocab_parallel_cross_entropy``: cross-entropy over logits split by vocabulary without ever
  gathering them: global max and sum-exp by all-reduce, the target logit from its owner rank.
- ``linear_cross_entropy``: the output projection and that cross-entropy fused, a chunk of tokens
  at a time, so the full ``[tokens, V/p]`` fp32 logits never exist (TP=1 is the same with p = 1).

The four region functions are opaque to ``torch.compile`` (``torch.compiler.disable``): a compiled
block breaks its graph around each collective and runs the collective eagerly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.parallel.sharding import ShardSpec, shard_tensor


def _size(group) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def _all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if _size(group) > 1:
        dist.all_reduce(x, op=op, group=group)
    return x


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    size = _size(group)
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def _split_last(x: torch.Tensor, group) -> torch.Tensor:
    size = _size(group)
    if size == 1:
        return x
    return x.chunk(size, dim=-1)[dist.get_rank(group)].contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad, ctx.group), None


@torch.compiler.disable
def copy_to_tp_region(x, group):
    return _CopyToTP.apply(x, group)


@torch.compiler.disable
def reduce_from_tp_region(x, group):
    return _ReduceFromTP.apply(x, group)


@torch.compiler.disable
def gather_from_tp_region(x, group):
    return _GatherFromTP.apply(x, group)


@torch.compiler.disable
def scatter_to_tp_region(x, group):
    return _ScatterToTP.apply(x, group)


class _VocabParallelCE(torch.autograd.Function):
    """Per-token loss ``log(sum_v exp(z_v)) - z_target`` for logits ``z`` [N, V/p] split by vocab.
    Backward: ``softmax(z) - onehot(target)`` restricted to the local vocabulary slice."""

    @staticmethod
    def forward(ctx, logits, target, group):
        rank, vocab_local = (dist.get_rank(group) if _size(group) > 1 else 0), logits.shape[-1]
        logits = logits - _all_reduce(logits.max(dim=-1).values, group, dist.ReduceOp.MAX)[:, None]
        start = rank * vocab_local
        not_here = (target < start) | (target >= start + vocab_local)
        local_target = (target - start).masked_fill(not_here, 0)
        target_logit = logits.gather(-1, local_target[:, None]).squeeze(-1).masked_fill(not_here, 0.0)
        _all_reduce(target_logit, group)
        exp = logits.exp()
        sum_exp = _all_reduce(exp.sum(dim=-1), group)
        ctx.save_for_backward(exp.div_(sum_exp[:, None]), local_target, not_here)
        return sum_exp.log() - target_logit

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_target, not_here = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local_target] -= (~not_here).to(grad.dtype)
        return grad * grad_loss[:, None], None, None


def vocab_parallel_cross_entropy(logits, labels, group, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over labels != ignore_index; ``logits`` [..., V/p] is this rank's slice."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    per_token = _VocabParallelCE.apply(logits, labels.masked_fill(~keep, 0), group)
    return (per_token * keep).sum() / keep.sum()


# fp32 logits of one chunk of ``linear_cross_entropy``: a few chunks per micro-batch at GPT-2/Llama
# vocabularies, so the per-chunk weight-gradient update (a full [V/p, H] read and write) stays
# small next to the matmuls, while the logits held at once shrink from the micro-batch's to this
LOSS_CHUNK_BYTES = 512 * 2**20


def loss_chunk_rows(rows: int, vocab_local: int) -> int:
    """Tokens per chunk of ``linear_cross_entropy`` (``LOSS_CHUNK_BYTES`` of fp32 logits)."""
    return max(1, min(rows, LOSS_CHUNK_BYTES // (4 * vocab_local)))


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean over kept tokens of ``log(sum_v exp(z_v)) - z_target`` with ``z = h W^T + b`` split by
    vocabulary over ``group`` (``W`` [V/p, H] is this rank's slice), ``chunk`` rows at a time.

    While a chunk's logits exist, its gradients are formed too: ``G = softmax(z) - onehot`` on the
    local slice, ``dh = G W`` (partial over the vocabulary: the caller's ``copy_to_tp_region`` sums
    it over ranks in backward), ``dW += G^T h``, ``db += sum G``. Backward only scales them by
    ``grad / kept tokens``; the 1/count is applied there, not in forward, so a 16-bit ``dh`` keeps
    its range under fp16 loss scaling. Stored: ``dh`` (as ``h``), ``dW``/``db`` in fp32."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, group, chunk, grads):
        rank = dist.get_rank(group) if _size(group) > 1 else 0
        vocab_local, start = weight.shape[0], rank * weight.shape[0]
        keep = labels != -100
        need_h, need_w, need_b = (grads and t is not None and t.requires_grad for t in (h, weight, bias))
        dh = torch.empty_like(h) if need_h else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        db = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, kc = h[s:s + chunk], keep[s:s + chunk]
            z = F.linear(hc, weight, bias).float()
            z -= _all_reduce(z.max(dim=-1).values, group, dist.ReduceOp.MAX)[:, None]
            local = labels[s:s + chunk] - start
            here = kc & (local >= 0) & (local < vocab_local)
            local = local.masked_fill(~here, 0)
            target = _all_reduce(z.gather(-1, local[:, None]).squeeze(-1).masked_fill(~here, 0.0), group)
            exp = z.exp_()
            sum_exp = _all_reduce(exp.sum(dim=-1), group)
            loss_sum += torch.where(kc, sum_exp.log() - target, 0.0).sum()
            if not (need_h or need_w or need_b):
                continue
            g = exp.div_(sum_exp[:, None])
            g[torch.arange(g.shape[0], device=g.device), local] -= here.to(g.dtype)
            g.mul_(kc.to(g.dtype)[:, None])
            if need_b:
                db += g.sum(dim=0)
            g = g.to(weight.dtype)
            if need_h:
                dh[s:s + chunk] = g @ weight
            if need_w:  # in place when the weight is fp32; 16-bit products are summed in fp32
                torch.addmm(dw, g.t(), hc, out=dw) if hc.dtype == torch.float32 else dw.add_((g.t() @ hc).float())
        count = keep.sum()
        ctx.save_for_backward(dh, dw, db, count)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad):
        dh, dw, db, count = ctx.saved_tensors
        scale = grad.float() / count
        w_dtype, b_dtype = ctx.dtypes
        return (None if dh is None else (dh.float() * scale).to(dh.dtype),
                None if dw is None else (dw * scale).to(w_dtype),
                None if db is None else (db * scale).to(b_dtype), None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                         group=None, chunk_rows: int | None = None) -> torch.Tensor:
    """``cross_entropy(h W^T + b, labels)`` (mean over labels != -100) without the full logits.

    ``h`` [..., H], ``labels`` [...] global vocabulary ids; ``weight`` [V/p, H] and ``bias`` [V/p] this
    rank's vocabulary slice (``group`` of size p; None for the whole vocabulary). Under tensor
    parallelism ``h`` must come through ``copy_to_tp_region``. Equals the unfused
    ``CrossEntropy``/``vocab_parallel_cross_entropy`` of the projected logits to rounding."""
    h = h.reshape(-1, h.shape[-1])
    labels = labels.reshape(-1)
    chunk = chunk_rows or loss_chunk_rows(h.shape[0], weight.shape[0])
    grads = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(h, weight, bias, labels, group, chunk, grads)


class VocabParallelCrossEntropy(nn.Module):
    """Drop-in for ``pretrain.models.core.CrossEntropy`` under tensor parallelism."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, logits, labels):
        return vocab_parallel_cross_entropy(logits, labels, self.group)


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------
def _sharded_param(full: torch.Tensor, spec: ShardSpec) -> nn.Parameter:
    """A parameter holding ``spec``'s slice of ``full`` (meta stays meta: shapes only)."""
    if full.is_meta:
        shape = list(full.shape)
        shape[spec.dim] //= spec.size
        data = torch.empty(shape, dtype=full.dtype, device="meta")
    else:
        data = shard_tensor(full.detach(), spec.dim, spec.parts, spec.rank, spec.size).clone()
    p = nn.Parameter(data, requires_grad=full.requires_grad)
    p.tp_shard = spec
    # Megatron's attributes: DeepSpeed's gradient-norm/clipping counts a parameter on every tensor
    # rank only when ``tensor_model_parallel`` is set (replicated ones are counted on rank 0 only).
    p.tensor_model_parallel, p.partition_dim, p.partition_stride = True, spec.dim, 1
    return p


class ColumnParallelLinear(nn.Module):
    """``Y_r = X W_r^T + b_r``: output features split across ranks (blocks ``parts`` split each)."""

    def __init__(self, weight, bias, group, rank: int, size: int, parts=None, gather_output: bool = False):
        super().__init__()
        parts = tuple(parts or (weight.shape[0],))
        spec = ShardSpec(0, parts, rank, size)
        self.weight = _sharded_param(weight, spec)
        self.bias = _sharded_param(bias, spec) if bias is not None else None
        self.group, self.gather_output, self.fused = group, gather_output, len(parts) > 1

    @classmethod
    def from_linear(cls, linear: nn.Linear, group, rank, size, parts=None, gather_output=False):
        return cls(linear.weight, linear.bias, group, rank, size, parts, gather_output)

    def forward(self, x, gather_output: bool | None = None, labels: torch.Tensor | None = None):
        """``labels`` given (the vocabulary head): the fused vocab-parallel cross-entropy instead
        of logits (``linear_cross_entropy``)."""
        if labels is not None:
            return linear_cross_entropy(copy_to_tp_region(x, self.group), self.weight, self.bias, labels, self.group)
        y = F.linear(copy_to_tp_region(x, self.group), self.weight, self.bias)
        if self.gather_output if gather_output is None else gather_output:
            if self.fused:
                raise RuntimeError("gathering a fused column-parallel output would interleave its blocks")
            y = gather_from_tp_region(y, self.group)
        return y


class RowParallelLinear(nn.Module):
    """``Y = all_reduce(X_r W_r^T) + b``: input features split across ranks, bias replicated."""

    def __init__(self, weight, bias, group, rank: int, size: int):
        super().__init__()
        self.weight = _sharded_param(weight, ShardSpec(1, (weight.shape[1],), rank, size))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad) if bias is not None else None
        self.group = group

    @classmethod
    def from_linear(cls, linear: nn.Linear, group, rank, size):
        return cls(linear.weight, linear.bias, group, rank, size)

    def forward(self, x):
        y = reduce_from_tp_region(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding table split by rows (vocabulary); the lookup is summed over ranks."""

    def __init__(self, weight, group, rank: int, size: int):
        super().__init__()
        self.weight = _sharded_param(weight, ShardSpec(0, (weight.shape[0],), rank, size))
        self.group, self.start = group, rank * (weight.shape[0] // size)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group, rank, size):
        return cls(emb.weight, group, rank, size)

    def forward(self, ids):
        rows = self.weight.shape[0]
        not_here = (ids < self.start) | (ids >= self.start + rows)
        out = F.embedding((ids - self.start).masked_fill(not_here, 0), self.weight)
        return reduce_from_tp_region(out.masked_fill(not_here[..., None], 0.0), self.group)
