"""``--launcher ray``: Ray Train's ``TorchTrainer`` runs the job on a Ray cluster.

One Ray Train worker per rank (``--nnodes`` x ``--nproc-per-node``), each holding
``--cpus-per-worker`` CPUs and, with ``--gpus-per-node``, its share of a node's GPUs (Ray sets
``CUDA_VISIBLE_DEVICES``). Each worker runs its rank as ``launch.train_cli`` -- the same process
every other launcher starts, with its signal handling and checks -- told its rank by Ray Train's
context; rank 0's node is the head. Ray Train restarts a failed group up to ``--max-restarts``
times, and each restart resumes from the latest checkpoint. The pipelines use the same cluster
(``pretrain data ... --ray-address``).
"""

from __future__ import annotations

import os
import subprocess
import sys

from launch.launchers.common import Job, LaunchError, Plan, with_resume


def worlds(args) -> list[int]:
    if ":" in str(args.nnodes):
        raise LaunchError(f"--nnodes {args.nnodes}: Ray Train starts a fixed number of workers")
    return [int(args.nnodes) * args.nproc_per_node]


def overrides(args, given: list[str]) -> list[str]:
    return with_resume(given) if args.max_restarts > 0 else list(given)


def _gpus_per_worker(args) -> float:
    return args.gpus_per_node / args.nproc_per_node if args.gpus_per_node else 0.0


def settings(job: Job, args) -> dict:
    """Everything the driver hands to Ray Train (and what --dry-run prints)."""
    workers = worlds(args)[0]
    resources = {"CPU": args.cpus_per_worker}
    if args.gpus_per_node:
        resources["GPU"] = _gpus_per_worker(args)
    return {
        "address": args.ray_address or os.environ.get("RAY_ADDRESS") or "(embedded local Ray)",
        "num_workers": workers,
        "resources_per_worker": resources,
        "use_gpu": bool(args.gpus_per_node),
        "max_failures": args.max_restarts,
        "name": args.job_name or job.job_id(),
        "storage_path": os.path.join(os.path.abspath(job.run_dir), "ray_train"),
        "cwd": os.getcwd(),
        "rank_command": ["python", "-m", "launch.train_cli", *job.train_args()],
    }


def plan(job: Job, args) -> Plan:
    s = settings(job, args)
    lines = [job.summary("ray"), f"# Ray cluster: {s['address']}",
             f"TorchTrainer(num_workers={s['num_workers']}, resources_per_worker={s['resources_per_worker']}, "
             f"use_gpu={s['use_gpu']}, max_failures={s['max_failures']}, name={s['name']!r}, "
             f"storage_path={s['storage_path']!r})",
             f"# each worker, in {s['cwd']}, with RANK/WORLD_SIZE/LOCAL_RANK from Ray Train's context:",
             " ".join(s["rank_command"])]
    return Plan(text="\n".join(lines) + "\n", execute=lambda: fit(job, args))


def fit(job: Job, args) -> int:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from data_pipeline.ray_runtime import ray_session

    s = settings(job, args)
    loop_config = {"args": job.train_args(), "cwd": s["cwd"], "log_dir": os.path.join(job.run_dir, "logs")}
    with ray_session(args.ray_address):
        trainer = TorchTrainer(
            run_rank, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=s["num_workers"], use_gpu=s["use_gpu"],
                                         resources_per_worker=s["resources_per_worker"]),
            run_config=RunConfig(name=s["name"], storage_path=s["storage_path"],
                                 failure_config=FailureConfig(max_failures=s["max_failures"])))
        try:
            trainer.fit()
        except Exception as e:  # Ray Train's error names the failed worker; its own log has the rest
            print(f"pretrain launch: the Ray Train job failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    return 0


def run_rank(config: dict) -> None:
    """One Ray Train worker: run this worker's rank as a child process and wait for it.

    Ray Train's own process group (MASTER_ADDR/MASTER_PORT in this worker) is left alone; rank 0
    picks a free port on its node for the ranks' group and every worker learns it."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    from launch.local import Tee, die_with_parent, free_port, rank_log

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    port = broadcast_from_rank_zero(free_port() if rank == 0 else None)
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(ctx.get_world_size()), LOCAL_RANK=str(ctx.get_local_rank()),
               LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()), MASTER_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "launch.train_cli", *config["args"]], cwd=config["cwd"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent())
    tee = Tee(proc, rank_log(os.path.join(config["cwd"], config["log_dir"]), rank))
    code = proc.wait()
    tee.close()
    if code != 0:
        raise RuntimeError(f"rank {rank} exited with code {code} (log: {config['log_dir']}/rank_{rank:05d}.log)")
