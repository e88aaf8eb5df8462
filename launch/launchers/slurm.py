"""``--launcher slurm``: an sbatch script rendered from ``cluster/slurm/train.sbatch``, submitted.

The script runs one ``srun`` task per rank (``launch.train_cli``, which reads its world from
SLURM's variables), exports the head address and a port derived from the job id, and is
preemption-safe: ``--signal=USR1@120`` and ``--requeue``; a job stopped by a signal saved a
checkpoint, so the script requeues it and the requeued job resumes (``checkpoint.resume=auto``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from launch.launchers.common import CLUSTER, Job, LaunchError, Plan, quote, render_template, with_resume, write_file

TEMPLATE = CLUSTER / "slurm" / "train.sbatch"


def worlds(args) -> list[int]:
    if ":" in str(args.nnodes):
        raise LaunchError(f"--nnodes {args.nnodes}: SLURM allocates a fixed number of nodes")
    return [int(args.nnodes) * args.nproc_per_node]


def overrides(args, given: list[str]) -> list[str]:
    return with_resume(given)


def render(job: Job, args) -> str:
    from pretrain.checkpoint import checkpoints_root, tag_for

    options = []
    if args.gpus_per_node:
        options.append(f"--gpus-per-node={args.gpus_per_node}")
    if args.partition:
        options.append(f"--partition={args.partition}")
    if args.account:
        options.append(f"--account={args.account}")
    options += args.sbatch_arg or []
    env = []
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise LaunchError(f"--env {item}: expected NAME=VALUE")
        env.append(f"export {key}={shlex.quote(value)}")
    workdir = os.getcwd()
    values = {
        "job_name": args.job_name or job.job_id(),
        "nodes": int(args.nnodes),
        "tasks_per_node": args.nproc_per_node,
        "cpus_per_task": args.cpus_per_task,
        "time": args.time,
        "workdir": workdir,
        "log_dir": os.path.join(job.run_dir, "logs"),
        "sbatch_options": "\n".join(f"#SBATCH {o}" for o in options),
        "env_exports": "\n".join(env),
        "command": quote(job.train_command()),
        "checkpoints": shlex.quote(str(checkpoints_root(job.run_dir))),
        "final_tag": tag_for(job.cfg.train.steps),
    }
    return render_template(args.template or TEMPLATE, values)


def plan(job: Job, args) -> Plan:
    script = render(job, args)
    path = Path(job.run_dir) / "launch" / "train.sbatch"
    text = f"{job.summary('slurm')}\n# sbatch {path}\n{script}"

    def execute() -> int:
        write_file(path, script, 0o755)
        (Path(job.run_dir) / "logs").mkdir(parents=True, exist_ok=True)  # sbatch does not create --output dirs
        try:
            out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
        except FileNotFoundError:
            raise LaunchError(f"sbatch not found; the script is at {path}") from None
        if out.returncode != 0:
            raise LaunchError(f"sbatch {path} failed: {out.stderr.strip()}")
        job_id = out.stdout.strip().split(";")[0]
        print(f"submitted SLURM job {job_id}: {path}; output {job.run_dir}/logs/slurm-{job_id}.out", flush=True)
        return 0

    return Plan(text=text, execute=execute)
