"""``pretrain train CONFIG [key.path=value ...] [--nproc N] [--out RUN_DIR]``.

The config is validated before anything starts (exit 2 on a bad one). Under a launcher
(deepspeed, torchrun, srun: RANK/WORLD_SIZE set) every rank runs the trainer; with ``--nproc N``
this process starts and supervises N local ranks (``launch.local``): a failing rank takes the
whole job down, and SIGTERM/SIGUSR1 reach every rank.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_CONFIG = 2
EXIT_NONFINITE = 3


def add_arguments(p) -> None:
    p.add_argument("config", help="YAML config, or 'default' for the built-in debug GPT")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides, YAML-typed")
    p.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="run directory: checkpoints, metrics.jsonl (the same as train.run_dir=RUN_DIR)")
    p.add_argument("--nproc", type=int, default=None,
                   help="start and supervise this many local ranks (default: 1, or the launcher's world)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed


def _under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _spawn(nproc: int, args) -> int:
    from launch.local import free_port, run_ranks

    return run_ranks(nproc, "launch.train_cli", [args.config, *args.overrides], free_port())


def run(args) -> int:
    from pretrain.config import ConfigError, dp_size, load_config

    if args.out:  # before the overrides reach the config and the spawned ranks
        args.overrides = [*args.overrides, f"train.run_dir={args.out}"]

    try:
        cfg = load_config(None if args.config == "default" else args.config, args.overrides)
        world = int(os.environ["WORLD_SIZE"]) if _under_launcher() else (args.nproc or 1)
        if cfg.parallel.world_size is not None and cfg.parallel.world_size != world:
            raise ConfigError([("parallel.world_size", cfg.parallel.world_size,
                                f"this job has {world} ranks; set --nproc or the launcher to match")])
        dp_size(cfg, world)
        if cfg.data.source == "shards" and not os.path.isfile(os.path.join(cfg.data.path, "manifest.json")):
            raise ConfigError([("data.path", cfg.data.path, "no manifest.json there; run `pretrain data ...` first")])
        if cfg.checkpoint.resume:  # a missing, half-written or incompatible checkpoint fails here, not in N ranks
            from pretrain.checkpoint import CheckpointError
            from pretrain.reshard import preflight

            try:
                preflight(cfg, world)
            except CheckpointError as e:
                raise ConfigError([("checkpoint.resume", cfg.checkpoint.resume, str(e))]) from None
    except ConfigError as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if not _under_launcher() and world > 1:
        return _spawn(world, args)
    from pretrain.trainer import NonFiniteStop, train

    try:
        train(cfg)
    except NonFiniteStop as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return EXIT_NONFINITE
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
