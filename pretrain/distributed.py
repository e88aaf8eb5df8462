"""Process-group bootstrap: one process alone, or N ranks under deepspeed/torchrun/SLURM launchers.

Device and backend come from DeepSpeed's accelerator (gloo on CPU, NCCL on CUDA); nothing here
names ``cuda``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import socket
import time as _time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LauncherWorld:
    """Where a launcher put this process: its global rank, the world size, its rank on the node."""

    rank: int
    world_size: int
    local_rank: int
    source: str  # "env" (torchrun, deepspeed, Ray Train, pretrain's local launcher) or "slurm" (srun)


def launcher_world(env=None) -> LauncherWorld | None:
    """The world the launcher that started this process set up, or None for a plain process.

    torch's variables (``RANK``/``WORLD_SIZE``) win; else an ``srun`` task (``SLURM_STEP_ID`` is set
    in job steps, not in the batch script itself) takes ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LauncherWorld(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")), "env")
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        ntasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
        if ntasks:
            return LauncherWorld(int(env["SLURM_PROCID"]), int(ntasks), int(env.get("SLURM_LOCALID", "0")), "slurm")
    return None


def expand_hostlist(hostlist: str) -> list[str]:
    """A SLURM host list as ``scontrol show hostnames`` expands it: ``gpu[01-03,7],login`` ->
    gpu01, gpu02, gpu03, gpu7, login (zero padding kept; several bracket groups multiply)."""
    hosts: list[str] = []
    for item in _split_top_level(hostlist):
        expanded = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            options = [literal]
            if ranges:
                options = [literal + n for n in _expand_ranges(ranges)]
            expanded = [e + o for e in expanded for o in options]
        hosts += [h for h in expanded if h]
    return hosts


def _split_top_level(hostlist: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in hostlist.strip():
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [x for x in [*items, cur] if x]


def _expand_ranges(ranges: str) -> list[str]:
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not hi:
            out.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0
        out += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    return out


def slurm_master_port(job_id: str) -> int:
    """Every task of a job derives the same port from the job id (a requeued job keeps its id)."""
    return 20000 + int(job_id) % 20000


def _slurm_env() -> None:
    """srun without torchrun: map SLURM's variables to torch's; the head is the first host of the
    step's (else the job's) node list, the port comes from the job id. Explicit ``MASTER_*`` win."""
    world = launcher_world()
    if world is None or world.source != "slurm":
        return
    os.environ["RANK"] = str(world.rank)
    os.environ["WORLD_SIZE"] = str(world.world_size)
    os.environ["LOCAL_RANK"] = str(world.local_rank)
    tasks_on_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE", os.environ.get("SLURM_TASKS_PER_NODE", ""))
    os.environ.setdefault("LOCAL_WORLD_SIZE", re.split(r"[(,]", tasks_on_node)[0] or "1")
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    if "MASTER_ADDR" not in os.environ and nodelist:
        os.environ["MASTER_ADDR"] = expand_hostlist(nodelist)[0]
    if "MASTER_PORT" not in os.environ and os.environ.get("SLURM_JOB_ID"):
        os.environ["MASTER_PORT"] = str(slurm_master_port(os.environ["SLURM_JOB_ID"]))


def _fill_single_process_env() -> None:
    """A plain ``python`` / ``pretrain train`` run is a world of one; only it may pick a random port.
    Ranks of a larger world that were not told where to meet would each wait alone until the timeout."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    if os.environ["WORLD_SIZE"] == "1":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: {' and '.join(missing)} not set; "
                           "start the job with a launcher that sets them (pretrain launch, torchrun, srun, deepspeed)")


def device_index(local_rank: int, device_count: int) -> int:
    """The accelerator this rank drives. With one visible device per task (``srun
    --gpus-per-task=1``, one GPU per pod) every rank sees index 0, whatever its local rank."""
    return local_rank % max(device_count, 1)


def _local_device_index() -> int:
    from deepspeed.accelerator import get_accelerator

    return device_index(int(os.environ.get("LOCAL_RANK", "0")), get_accelerator().device_count())


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
        acc.set_device(_local_device_index())
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
    return torch.device(acc.device_name(_local_device_index()))


def all_reduce_scalar(value: float, op=None, group=None) -> float:
    """Sum (or ``op``) of a Python number over ``group``, as float64 on the compute device."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device())
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return float(t.item())


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled; small things only)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def node_leaders() -> list[int]:
    """Global ranks that are local rank 0: one per node (per launcher agent), in rank order."""
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [0]
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, first)
    return [r for r, f in enumerate(flags) if f]


class SharedStorageError(RuntimeError):
    """Nodes of one job see different directories at the same path."""


SHARED_CHECK_TIMEOUT_S = float(os.environ.get("PRETRAIN_SHARED_FS_TIMEOUT", "30"))


def check_shared_dir(path: str | os.PathLike, what: str = "train.run_dir", timeout_s: float | None = None) -> None:
    """Refuse to go on when the nodes of this job do not share ``path``.

    The first rank of each node writes a marker into ``path``; each of them must then see every
    node's marker (polled up to ``timeout_s``: network filesystems may show new files late). All
    ranks agree on the verdict, so all raise ``SharedStorageError`` together instead of some
    training on while others wait forever. One node, or one rank: nothing to check."""
    from pathlib import Path

    leaders = node_leaders()
    if len(leaders) < 2:
        return
    me = rank()
    token = broadcast_object(os.urandom(6).hex() if me == 0 else None)
    marks = Path(path) / f".shared-check-{token}"
    missing: list[int] = []
    if me in leaders:
        marks.mkdir(parents=True, exist_ok=True)
        (marks / str(me)).write_text(socket.gethostname())
    barrier()
    if me in leaders:
        deadline = _time.monotonic() + (SHARED_CHECK_TIMEOUT_S if timeout_s is None else timeout_s)
        while True:
            missing = [r for r in leaders if not (marks / str(r)).exists()]
            if not missing or _time.monotonic() >= deadline:
                break
            _time.sleep(0.2)
    views = [None] * world_size()
    dist.all_gather_object(views, (socket.gethostname(), str(Path(path).resolve()), missing))
    if me in leaders:
        (marks / str(me)).unlink(missing_ok=True)
    barrier()
    if me in leaders:  # where nodes see different directories, each removes its own
        with contextlib.suppress(OSError):
            marks.rmdir()
    blind = {r: v for r, v in enumerate(views) if r in leaders and v[2]}
    if blind:
        detail = "; ".join(f"the node of rank {r} ({host}, at {where}) does not see the nodes of ranks {miss}"
                           for r, (host, where, miss) in blind.items())
        raise SharedStorageError(f"{what} {path} is not one directory shared by all {len(leaders)} nodes: {detail}. "
                                 "Put it on a filesystem every node mounts at the same path (NFS, Lustre, GPFS, ...)")


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
