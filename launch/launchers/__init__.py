"""``pretrain launch CONFIG [key.path=value ...] --launcher local|torchrun|deepspeed|slurm|ray|k8s [--dry-run]``.

Each launcher hands the job to an existing engine -- pretrain's local supervisor, torch elastic,
DeepSpeed's runner, SLURM, Ray Train, KubeRay -- and supervises nothing remote itself. Before
anything starts, the config is checked for every world the launcher may start (``pretrain
train``'s checks and exit-2 messages). ``--dry-run`` prints exactly what would run: the
commands and rendered files, and starts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

EXIT_USAGE = 2
LAUNCHERS = {"local": "local", "torchrun": "torchrun", "deepspeed": "hostfile", "slurm": "slurm", "ray": "ray_train",
             "k8s": "k8s"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config, or 'default' for the built-in debug GPT")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides, YAML-typed")
    p.add_argument("--launcher", required=True, choices=sorted(LAUNCHERS), help="the engine that runs the job")
    p.add_argument("--dry-run", action="store_true", help="print what would run (commands, files); start nothing")
    w = p.add_argument_group("world")
    w.add_argument("--nnodes", default="1", help="nodes (torchrun: MIN:MAX for an elastic job)")
    w.add_argument("--nproc-per-node", type=int, default=None, help="ranks per node (default: --gpus-per-node, or 1)")
    w.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (0: CPU ranks)")
    w.add_argument("--max-restarts", type=int, default=0,
                   help="torchrun, ray, k8s: restarts of the whole group after a failure (resume from the latest checkpoint)")
    w.add_argument("--job-name", default=None, help="SLURM job / Ray Train run / RayJob name (default: from train.run_dir)")
    t = p.add_argument_group("torchrun")
    t.add_argument("--node-rank", type=int, default=None, help="this node's rank; 0 hosts the rendezvous")
    t.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the c10d rendezvous (needed for >1 node)")
    t.add_argument("--rdzv-id", default=None, help="rendezvous id, the same on every node (default: from train.run_dir)")
    d = p.add_argument_group("deepspeed (hostfile)")
    d.add_argument("--hostfile", default=None, help="lines of `host slots=N` (cluster/hostfile.example)")
    d.add_argument("--include", default=None, help="DeepSpeed's host/slot filter, e.g. host1:0,1@host2")
    d.add_argument("--exclude", default=None, help="DeepSpeed's host/slot filter to leave out")
    d.add_argument("--ssh-port", type=int, default=None, help="ssh port of the hosts")
    d.add_argument("--master-addr", default=None, help="address of rank 0 (default: the runner asks the first host)")
    d.add_argument("--master-port", type=int, default=None, help="port of rank 0's process group")
    s = p.add_argument_group("slurm")
    s.add_argument("--partition", default=None)
    s.add_argument("--account", default=None)
    s.add_argument("--time", default="24:00:00", help="time limit (USR1 120 s before it: save and requeue)")
    s.add_argument("--cpus-per-task", type=int, default=8)
    s.add_argument("--env", action="append", metavar="NAME=VALUE", help="export in the job script (repeatable)")
    s.add_argument("--sbatch-arg", action="append", metavar="OPTION", help="one more #SBATCH line, e.g. --qos=high")
    s.add_argument("--template", default=None, help="an edited copy of cluster/slurm/train.sbatch or cluster/k8s/rayjob.yaml")
    r = p.add_argument_group("ray and k8s")
    r.add_argument("--ray-address", default=None,
                   help="Ray cluster to run on (host:port or auto; default: $RAY_ADDRESS, else an embedded local Ray)")
    r.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs each Ray Train worker (rank) holds")
    r.add_argument("--image", default=None, help="k8s: container image with this project installed")
    r.add_argument("--namespace", default="default", help="k8s namespace")
    r.add_argument("--pvc", default=None, help="k8s: ReadWriteMany volume claim with config, data and run dir")
    r.add_argument("--mount-path", default="/shared", help="k8s: where the claim is mounted (the pods' working dir)")
    r.add_argument("--memory-per-node", default="64Gi", help="k8s: memory per worker pod")
    r.add_argument("--manifest", default=None, help="k8s: where to write the RayJob (default: NAME-rayjob.yaml)")


def _fail(message: str) -> int:
    print(f"pretrain launch: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args) -> int:
    from launch.launchers.common import LaunchError, check_job
    from pretrain.config import ConfigError

    launcher = importlib.import_module(f"launch.launchers.{LAUNCHERS[args.launcher]}")
    if args.nproc_per_node is None:
        args.nproc_per_node = args.gpus_per_node or 1
    try:
        if args.nproc_per_node < 1 or args.gpus_per_node < 0 or args.max_restarts < 0:
            raise LaunchError("--nproc-per-node must be >= 1, --gpus-per-node and --max-restarts >= 0")
        worlds = launcher.worlds(args)
        job = check_job(args.config, launcher.overrides(args, args.overrides), worlds)
        plan = launcher.plan(job, args)
    except ConfigError as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return EXIT_USAGE
    except LaunchError as e:
        return _fail(str(e))
    if args.dry_run:
        print(plan.text, end="")
        return 0
    try:
        return plan.execute()
    except LaunchError as e:
        return _fail(str(e))
