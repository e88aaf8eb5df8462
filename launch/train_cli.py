"""``pretrain train CONFIG [key.path=value ...] [--nproc N] [--out RUN_DIR]``.

The config is validated before anything starts (exit 2 on a bad one). Under a launcher
(deepspeed, torchrun, Ray Train: RANK/WORLD_SIZE set; srun: SLURM_PROCID/SLURM_NTASKS) every rank
runs the trainer, after checking that all nodes share ``train.run_dir``; with ``--nproc N`` this
process starts and supervises N local ranks (``launch.local``): a failing rank takes the whole
job down, SIGTERM/SIGUSR1 reach every rank, and each rank's output also goes to
``<run_dir>/logs/rank_NNNNN.log``.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_CONFIG = 2
EXIT_NONFINITE = 3
EXIT_CHECKPOINT = 1  # a checkpoint that cannot be read or written (named); see also watchdog.EXIT_HANG


def add_arguments(p) -> None:
    p.add_argument("config", help="YAML config, or 'default' for the built-in debug GPT")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides, YAML-typed")
    p.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="run directory: checkpoints, metrics.jsonl (the same as train.run_dir=RUN_DIR)")
    p.add_argument("--nproc", type=int, default=None,
                   help="start and supervise this many local ranks (default: 1, or the launcher's world)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed


def _spawn(nproc: int, args, run_dir: str) -> int:
    from launch.local import free_port, run_ranks

    return run_ranks(nproc, "launch.train_cli", [args.config, *args.overrides], free_port(),
                     log_dir=os.path.join(run_dir, "logs"))


def load_checked(config: str, overrides: list[str], world: int, run_dir: bool = False):
    """The resolved config, checked for a job of ``world`` ranks; ``ConfigError`` names what is wrong.
    ``pretrain launch`` runs the same checks for every world its launcher may start; ``run_dir``:
    also check (and create) ``train.run_dir`` here -- the ranks' host, not the submitting one."""
    from pretrain.config import ConfigError, dp_size, load_config

    cfg = load_config(None if config == "default" else config, overrides)
    if cfg.parallel.world_size is not None and cfg.parallel.world_size != world:
        raise ConfigError([("parallel.world_size", cfg.parallel.world_size,
                            f"this job has {world} ranks; set --nproc or the launcher to match")])
    dp_size(cfg, world)
    from pretrain.preflight import check_job

    check_job(cfg, world, run_dir=run_dir)  # data, (run dir,) checkpoint: fails here, not in N ranks
    return cfg


def _check_shared_run_dir(cfg) -> None:
    """Every node of a multi-node job must see the same run dir (collective; all ranks raise together)."""
    from pretrain import distributed as D
    from pretrain.config import ConfigError

    D.init_distributed()
    try:
        D.check_shared_dir(cfg.train.run_dir, "train.run_dir")
    except D.SharedStorageError as e:
        D.shutdown()  # every rank got the same verdict: leave together, not with live gloo groups
        raise ConfigError([("train.run_dir", cfg.train.run_dir, str(e))]) from None


def run(args) -> int:
    from pretrain import signals

    if args.out:  # before the overrides reach the config and the spawned ranks
        args.overrides = [*args.overrides, f"train.run_dir={args.out}"]

    signals.install()  # before the heavy imports: a SIGTERM while a rank starts is honoured, not fatal
    from pretrain.config import ConfigError
    from pretrain.distributed import launcher_world

    launcher = launcher_world()
    if launcher and launcher.world_size == 1 and args.nproc:
        launcher = None  # `pretrain train --nproc N` in a one-task SLURM step (srun --pty bash): start N ranks
    world = launcher.world_size if launcher else (args.nproc or 1)
    try:
        if args.nproc is not None and args.nproc < 1:
            raise ConfigError([("--nproc", args.nproc, "must be at least 1")])
        cfg = load_checked(args.config, args.overrides, world, run_dir=True)
        if launcher and world > 1:
            _check_shared_run_dir(cfg)
    except ConfigError as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if signals.requested() is not None:
        print("pretrain: stop signal received before any rank started; exiting", file=sys.stderr)
        return 0
    if not launcher and world > 1:
        return _spawn(world, args, cfg.train.run_dir)
    from pretrain.checkpoint import CheckpointError
    from pretrain.trainer import NonFiniteStop, train

    try:
        train(cfg)
    except NonFiniteStop as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except CheckpointError as e:  # the message names the file; a traceback would only bury it
        print(f"pretrain: rank {os.environ.get('RANK', '0')} failed: CheckpointError: {e}", file=sys.stderr, flush=True)
        return EXIT_CHECKPOINT
    except Exception as e:
        rank = os.environ.get("RANK", "0")
        print(f"pretrain: rank {rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    from pretrain.distributed import shutdown

    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pretrain train")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
