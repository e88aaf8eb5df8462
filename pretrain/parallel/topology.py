"""Process topology: world = data-parallel x tensor-parallel, and the Megatron-style ``mpu``.

Ranks ``[d * tp, (d + 1) * tp)`` form tensor group ``d`` (neighbouring ranks, so on one node
tensor traffic stays local); ranks ``t, t + tp, t + 2 tp, ...`` form data group ``t``. Ranks of
one tensor group see the same micro-batch; data groups see disjoint data.

``Topology`` is the object DeepSpeed takes as ``deepspeed.initialize(..., mpu=topology)``: it
answers ``get_{model,data}_parallel_{rank,group,world_size}`` as Megatron's ``mpu`` does
("model parallel" = tensor parallel here; there is no pipeline parallelism).
"""

from __future__ import annotations

import torch.distributed as dist


class Topology:
    """Builds the tensor and data groups; every rank must construct it (``new_group`` is collective)."""

    def __init__(self, tensor_size: int = 1):
        if not dist.is_initialized():
            raise RuntimeError("init_topology needs torch.distributed initialised first (init_process_group)")
        world, rank = dist.get_world_size(), dist.get_rank()
        if tensor_size < 1 or world % tensor_size:
            raise ValueError(f"parallel.tensor_size={tensor_size} must divide the world size {world}")
        self.world_size, self.rank, self.tensor_size = world, rank, tensor_size
        self.data_size = world // tensor_size
        for d in range(self.data_size):
            ranks = list(range(d * tensor_size, (d + 1) * tensor_size))
            group = dist.new_group(ranks)
            if rank in ranks:
                self._tp_group, self._tp_ranks = group, ranks
        for t in range(tensor_size):
            ranks = list(range(t, world, tensor_size))
            group = dist.new_group(ranks)
            if rank in ranks:
                self._dp_group, self._dp_ranks = group, ranks

    # tensor ("model") parallel
    def get_model_parallel_rank(self) -> int:
        return self.rank % self.tensor_size

    def get_model_parallel_world_size(self) -> int:
        return self.tensor_size

    def get_model_parallel_group(self):
        return self._tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of this tensor group's first member (broadcast source)."""
        return self._tp_ranks[0]

    # data parallel
    def get_data_parallel_rank(self) -> int:
        return self.rank // self.tensor_size

    def get_data_parallel_world_size(self) -> int:
        return self.data_size

    def get_data_parallel_group(self):
        return self._dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._dp_ranks)

    def __repr__(self) -> str:
        return (f"Topology(rank={self.rank}, world={self.world_size}, tp={self.get_model_parallel_rank()}/"
                f"{self.tensor_size}, dp={self.get_data_parallel_rank()}/{self.data_size})")


_TOPOLOGY: Topology | None = None


def init_topology(tensor_size: int = 1) -> Topology:
    """Build (collectively) and remember the process topology; returns the ``mpu``."""
    global _TOPOLOGY
    _TOPOLOGY = Topology(tensor_size)
    return _TOPOLOGY


def get_topology() -> Topology:
    if _TOPOLOGY is None:
        raise RuntimeError("call pretrain.parallel.init_topology(tensor_size) first")
    return _TOPOLOGY
