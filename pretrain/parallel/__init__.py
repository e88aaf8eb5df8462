"""Tensor x data parallelism: process topology (the ``mpu``), Megatron-style parallel layers in one
module of autograd functions, and per-family plans applied to plain models from outside.

    import torch.distributed as dist
    from pretrain.parallel import init_topology, build_parallel_model
    dist.init_process_group("gloo")            # or nccl
    mpu = init_topology(tensor_size=2)          # world = data x tensor
    model = build_parallel_model(cfg, mpu)      # only this rank's shards are allocated
    loss = model.loss(batch)                    # vocab-parallel cross-entropy for GPT/BERT
    engine, *_ = deepspeed.initialize(model=model, mpu=mpu, ...)
"""

from pretrain.parallel.plan import (
    apply_tensor_parallel,
    build_parallel_model,
    merge_tp_state_dicts,
    param_split,
    shard_param,
    shard_state_dict,
    tensor_parallel_plan,
)
from pretrain.parallel.sharding import ShardSpec, merge_shards, shard_tensor
from pretrain.parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelCrossEntropy,
    VocabParallelEmbedding,
    copy_to_tp_region,
    gather_from_tp_region,
    reduce_from_tp_region,
    scatter_to_tp_region,
    vocab_parallel_cross_entropy,
)
from pretrain.parallel.topology import Topology, get_topology, init_topology

__all__ = [
    "ColumnParallelLinear", "RowParallelLinear", "ShardSpec", "Topology", "VocabParallelCrossEntropy",
    "VocabParallelEmbedding", "apply_tensor_parallel", "build_parallel_model", "copy_to_tp_region",
    "gather_from_tp_region", "get_topology", "init_topology", "merge_shards", "merge_tp_state_dicts",
    "param_split", "reduce_from_tp_region", "scatter_to_tp_region", "shard_param", "shard_state_dict", "shard_tensor",
    "tensor_parallel_plan", "vocab_parallel_cross_entropy",
]
