"""``pretrain sweep CONFIG [key.path=value ...] [--ray-address ADDR | --launcher slurm] [--dry-run]``.

Runs a scaling sweep (``configs/scaling/*.yaml``: a training config plus a ``sweep:`` section) as
one MLflow parent run with one child run per trial. Trials are ordinary ``pretrain train`` runs in
``<sweep.out>/<trial>/``: one after another by default, as Ray tasks with ``--ray-address``
(``local`` for an embedded Ray), or as a SLURM job array with ``--launcher slurm``. Rerunning the
same command skips finished trials and resumes killed ones. A bad config exits 2 before anything
starts. ``--trial I`` runs trial I alone (what each SLURM array task does).

From Python (``make demo``)::

    from launch.sweep_cli import sweep
    result = sweep("configs/scaling/debug.yaml", ["data.path=out/shards"])   # progress lines on stdout
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USAGE = 2
# a trial is one `pretrain train` process: this module's sibling, started as users start it
TRAIN_COMMAND = [sys.executable, "-m", "launch.train_cli"]


def add_arguments(p) -> None:
    p.add_argument("config", help="sweep config (configs/scaling/*.yaml) or a sweep's <out>/sweep.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides; sweep.* ones go to the sweep")
    p.add_argument("--ray-address", default=None, help="run trials as Ray tasks on this cluster ('local': embedded)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: trials here (or on Ray); slurm: submit a job array (sbatch)")
    p.add_argument("--dry-run", action="store_true", help="print the trials (and SLURM scripts) and stop")
    p.add_argument("--trial", type=int, default=None, metavar="I", help=argparse.SUPPRESS)


def sweep(config: str, overrides: list[str] = (), *, ray_address: str | None = None, launcher: str = "local",
          dry_run: bool = False, trial: int | None = None, say: Callable[[str], None] | None = None):
    """Run the sweep of ``config`` with ``overrides``; returns ``pretrain.scaling.sweep.SweepResult``
    (``exit_code``, ``parent_run_id``, per-trial outcomes). Raises ``pretrain.config.ConfigError``
    on a bad config, before any trial starts."""
    import os

    from pretrain.scaling.spec import load_sweep
    from pretrain.scaling.sweep import run_sweep

    say = say or (lambda line: print(line, flush=True))
    spec = load_sweep(config, list(overrides))
    return run_sweep(spec, TRAIN_COMMAND, ray_address=ray_address, launcher=launcher, dry_run=dry_run, only=trial,
                     say=say, python=sys.executable, cwd=os.getcwd())


def run(args) -> int:
    from pretrain.config import ConfigError

    if args.ray_address and args.launcher == "slurm":
        print("pretrain sweep: --ray-address and --launcher slurm exclude each other", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = sweep(args.config, args.overrides, ray_address=args.ray_address, launcher=args.launcher,
                       dry_run=args.dry_run, trial=args.trial)
    except ConfigError as e:
        print(f"pretrain sweep: {e}", file=sys.stderr)
        return EXIT_USAGE
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pretrain sweep")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
