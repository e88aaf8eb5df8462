"""world = data x tensor: four gloo ranks, tensor size 2, and the mpu answers DeepSpeed asks for."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.parallel.test_tensor_parallel import free_port


def _run(rank: int, port: int, world: int) -> None:
    torch.set_num_threads(1)
    os.environ.pop("OMP_NUM_THREADS", None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from pretrain.parallel import init_topology

        mpu = init_topology(2)
        assert mpu.get_model_parallel_world_size() == mpu.get_tensor_model_parallel_world_size() == 2
        assert mpu.get_data_parallel_world_size() == 2
        assert mpu.get_model_parallel_rank() == rank % 2 and mpu.get_data_parallel_rank() == rank // 2
        assert mpu.get_tensor_model_parallel_src_rank() == rank - rank % 2
        assert mpu.get_data_parallel_group_ranks() == [rank % 2, rank % 2 + 2]
        # a sum over each group proves who is in it: tensor groups {0,1},{2,3}; data groups {0,2},{1,3}
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=mpu.get_model_parallel_group())
        assert t.item() == (1.0 if rank < 2 else 5.0)
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=mpu.get_data_parallel_group())
        assert t.item() == (2.0 if rank % 2 == 0 else 4.0)
        with pytest.raises(ValueError, match="tensor_size=3"):
            init_topology(3)
        # both ranks reach here before either tears gloo down: destroying while the peer still
        # reads from the pair aborts the process ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_four_ranks_tensor_two_data_two():
    mp.spawn(_run, args=(free_port(), 4), nprocs=4, join=True)
