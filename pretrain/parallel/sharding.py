"""How one full tensor maps to tensor-parallel shards, and back.

A tensor may be a *fused* stack of blocks along the split dimension (``parts``), e.g. the
attention ``qkv`` weight is ``[q | k | v]`` along dim 0. Each block is split into ``size``
contiguous slices and rank ``r`` holds slice ``r`` of every block, concatenated in block order:

    full  = [q0 q1 | k0 k1 | v0 v1]   (dim 0, parts = (|q|, |k|, |v|))
    rank0 = [q0 | k0 | v0]            rank1 = [q1 | k1 | v1]

so each rank's local ``qkv`` output is again ``[q | k | v]`` for its own heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShardSpec:
    """Attached to a parameter as ``param.tp_shard``: split along ``dim``, ``parts`` are the full
    sizes of the fused blocks along it, and this parameter is shard ``rank`` of ``size``."""

    dim: int
    parts: tuple[int, ...]
    rank: int
    size: int


def _check(full_dim: int, parts: Sequence[int], size: int) -> None:
    if sum(parts) != full_dim:
        raise ValueError(f"blocks {tuple(parts)} do not add up to the split dimension {full_dim}")
    for p in parts:
        if p % size:
            raise ValueError(f"block of size {p} cannot be split into {size} equal tensor-parallel shards")


def shard_tensor(full: torch.Tensor, dim: int, parts: Sequence[int], rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s slice of ``full`` (a copy when it is not the whole tensor)."""
    if size == 1:
        return full
    _check(full.shape[dim], parts, size)
    blocks = full.split(list(parts), dim=dim)
    return torch.cat([b.narrow(dim, rank * (b.shape[dim] // size), b.shape[dim] // size) for b in blocks], dim=dim)


def merge_shards(shards: Sequence[torch.Tensor], dim: int, parts: Sequence[int]) -> torch.Tensor:
    """Inverse of ``shard_tensor`` over all ranks' slices (in rank order)."""
    size = len(shards)
    if size == 1:
        return shards[0]
    local_parts = [p // size for p in parts]
    per_rank = [s.split(local_parts, dim=dim) for s in shards]
    return torch.cat([torch.cat([blocks[j] for blocks in per_rank], dim=dim) for j in range(len(parts))], dim=dim)
