"""Process-group bootstrap: one process alone, or N ranks under deepspeed/torchrun/SLURM launchers.

Device and backend come from DeepSpeed's accelerator (gloo on CPU, NCCL on CUDA); nothing here
names ``cuda``.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import warnings

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fill_single_process_env() -> None:
    """A plain ``python`` / ``pretrain train`` run is a world of one."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _slurm_env() -> None:
    """srun without torchrun: map SLURM's variables to the torch ones."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_distributed(timeout_s: int = 1800) -> None:
    """Initialise the default process group once (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        return
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # DeepSpeed's ZeRO calls torch's all_gather_into_tensor, which torch now marks deprecated: one
    # FutureWarning per rank per run that the user can do nothing about
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)
    _slurm_env()
    _fill_single_process_env()
    acc = get_accelerator()
    if acc.device_name() != "cpu":
        acc.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(
        dist_backend=acc.communication_backend_name(),
        timeout=_dt.timedelta(seconds=timeout_s),
        verbose=False,
    )


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(acc.device_name(int(os.environ.get("LOCAL_RANK", "0"))))


def all_reduce_scalar(value: float, op=None, group=None) -> float:
    """Sum (or ``op``) of a Python number over ``group``, as float64 on the compute device."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device())
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return float(t.item())


def shutdown() -> None:
    """End of a successful job: all ranks meet, then tear the process groups down.

    Exiting with live gloo groups, or destroying them while a peer still reads from its pair,
    can abort the process (SIGABRT, "terminate called without an active exception") after the
    work is done. Call only when every rank got here; a failed rank must not wait on its peers.
    """
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print on global rank 0 only, flushed (launchers interleave ranks' output)."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)
