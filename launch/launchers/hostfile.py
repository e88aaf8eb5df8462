"""``--launcher deepspeed``: DeepSpeed's runner over a hostfile (``host slots=N`` per line).

The runner reaches every host with ssh (pdsh), starts ``deepspeed.launcher.launch`` there with the
host's node rank, and that starts one rank per slot. ``--include``/``--exclude`` pick hosts and
slots as DeepSpeed spells them (``host1:0,1@host2``). The world is read from the hostfile with
DeepSpeed's own parser, so it is the world the runner will start.

``--force_multi`` is always passed: with one host in the hostfile DeepSpeed would otherwise run
the job on the launching machine, not on the host the file names.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from launch.launchers.common import Job, LaunchError, Plan, exec_command, quote


def resources(args) -> dict[str, list[int]]:
    """host -> slot indices after --include/--exclude, as DeepSpeed's runner computes them."""
    if not args.hostfile:
        raise LaunchError("--hostfile FILE is needed (lines of `host slots=N`; see cluster/hostfile.example)")
    if not os.path.isfile(args.hostfile):
        raise LaunchError(f"--hostfile {args.hostfile}: no such file")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        # importing the runner detects the accelerator and logs about it: not part of a dry run's output
        from deepspeed.launcher.runner import fetch_hostfile, parse_inclusion_exclusion

    try:
        pool = fetch_hostfile(args.hostfile)
        if not pool:
            raise ValueError("no hosts in it")
        return parse_inclusion_exclusion(pool, args.include or "", args.exclude or "")
    except (ValueError, AssertionError) as e:
        raise LaunchError(f"--hostfile {args.hostfile}: {e}") from None


def worlds(args) -> list[int]:
    return [sum(len(slots) for slots in resources(args).values())]


def command(job: Job, args) -> list[str]:
    runner = Path(sys.executable).with_name("deepspeed")
    cmd = [str(runner) if runner.exists() else "deepspeed", f"--hostfile={args.hostfile}", "--force_multi"]
    if args.include:
        cmd.append(f"--include={args.include}")
    if args.exclude:
        cmd.append(f"--exclude={args.exclude}")
    if args.ssh_port:
        cmd.append(f"--ssh_port={args.ssh_port}")
    if args.master_addr:
        cmd.append(f"--master_addr={args.master_addr}")
    if args.master_port:
        cmd.append(f"--master_port={args.master_port}")
    return [*cmd, "--module", "launch.train_cli", *job.train_args()]


def plan(job: Job, args) -> Plan:
    cmd = command(job, args)
    hosts = resources(args)
    lines = [job.summary("deepspeed"),
             "# hosts: " + ", ".join(f"{h} ({len(s)} rank{'s' if len(s) != 1 else ''})" for h, s in hosts.items()),
             quote(cmd)]
    return Plan(text="\n".join(lines) + "\n", execute=lambda: exec_command(cmd))


def overrides(args, given: list[str]) -> list[str]:
    return list(given)
