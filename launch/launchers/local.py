"""``--launcher local``: ``pretrain train --nproc N`` on this machine (``launch.local`` supervises)."""

from __future__ import annotations

import sys

from launch.launchers.common import Job, LaunchError, Plan, quote


def worlds(args) -> list[int]:
    if str(args.nnodes) != "1":
        raise LaunchError(f"--nnodes {args.nnodes}: the local launcher runs on this one machine")
    return [args.nproc_per_node]


def overrides(args, given: list[str]) -> list[str]:
    return list(given)


def plan(job: Job, args) -> Plan:
    nproc = args.nproc_per_node
    cmd = [sys.executable, "-m", "launch.cli", "train", *job.train_args(), f"--nproc={nproc}"]
    text = (f"{job.summary('local')}\n"
            f"# {nproc} rank(s) on this machine, output also in {job.run_dir}/logs/rank_NNNNN.log\n{quote(cmd)}\n")

    def execute() -> int:
        from argparse import Namespace

        from launch import train_cli

        return train_cli.run(Namespace(config=job.config, overrides=job.overrides, nproc=nproc, local_rank=None))

    return Plan(text=text, execute=execute)
