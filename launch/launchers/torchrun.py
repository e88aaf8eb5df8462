"""``--launcher torchrun``: torch elastic's agent on each node, c10d rendezvous.

Run the printed command on every node (same ``--rdzv-endpoint`` and ``--rdzv-id``); the agents
meet, number the ranks and watch them. ``--nnodes MIN:MAX`` lets the job start with MIN nodes and
take up to MAX; ``--max-restarts K`` restarts the whole group after a failure (a rank died, a
node left or joined). Elastic jobs get ``checkpoint.resume=auto``: every restart continues from
the latest checkpoint, on whatever world it restarted with.

torchrun runs with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with the store shared between the
agents and the ranks, a group restarted by one agent after a failure and by the other after a
membership change reads the previous group's keys and cannot connect (pytorch/pytorch#135712);
with it, each group's rank 0 hosts a fresh store.
"""

from __future__ import annotations

import os
import sys

from launch.launchers.common import Job, LaunchError, Plan, exec_command, parse_range, quote, with_resume


def worlds(args) -> list[int]:
    lo, hi = parse_range(args.nnodes, "--nnodes")
    return [n * args.nproc_per_node for n in range(lo, hi + 1)]


def elastic(args) -> bool:
    lo, hi = parse_range(args.nnodes, "--nnodes")
    return hi > lo or args.max_restarts > 0


def overrides(args, given: list[str]) -> list[str]:
    return with_resume(given) if elastic(args) else list(given)


def command(job: Job, args) -> list[str]:
    lo, hi = parse_range(args.nnodes, "--nnodes")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={lo}:{hi}" if hi > lo else f"--nnodes={lo}",
           f"--nproc-per-node={args.nproc_per_node}"]
    if hi == 1 and not args.rdzv_endpoint:
        cmd.append("--standalone")  # one node: torchrun picks a free local port itself
    else:
        if not args.rdzv_endpoint:
            raise LaunchError("--rdzv-endpoint HOST:PORT is needed for more than one node (a host all nodes reach, "
                              "e.g. the first node, and a free port)")
        node_rank = args.node_rank if args.node_rank is not None else 0
        # the node with --node-rank 0 hosts the rendezvous store; the others join it
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}",
                f"--rdzv-id={args.rdzv_id or job.job_id()}", f"--rdzv-conf=is_host={int(node_rank == 0)}"]
        if args.node_rank is not None:
            cmd.append(f"--node-rank={args.node_rank}")
    cmd += [f"--max-restarts={args.max_restarts}", "-m", "launch.train_cli", *job.train_args()]
    return cmd


FRESH_STORE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def plan(job: Job, args) -> Plan:
    cmd = command(job, args)
    lo, hi = parse_range(args.nnodes, "--nnodes")
    lines = [job.summary("torchrun")]
    if elastic(args):
        lines.append(f"# elastic: {lo}..{hi} node(s), up to {args.max_restarts} restart(s); every restart resumes "
                     "from the latest checkpoint")
    if hi > 1:
        lines.append("# run on every node (--node-rank 0 on the node that hosts the rendezvous):")
    lines.append(" ".join(f"{k}={v}" for k, v in FRESH_STORE.items()) + " " + quote(cmd))
    return Plan(text="\n".join(lines) + "\n", execute=lambda: exec_command(cmd, dict(os.environ, **FRESH_STORE)))
