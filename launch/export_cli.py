"""``pretrain export CKPT_DIR --out DIR [--dtype fp32|bf16|fp16] [--format hf|safetensors]``.

CKPT_DIR is a checkpoint tag directory, a run directory or its ``checkpoints/`` (the ``latest``
tag), or an ``import-hf`` directory. Exit 2 with the file named when the checkpoint is not one,
is incomplete, truncated or corrupt, or when the model has no Hugging Face equivalent; nothing is
left in ``--out`` then.

The export is then recorded on the MLflow run that trained the checkpoint (tags ``export.*``, the
card and configs as artifacts; ``--no-tracking`` skips it, a store that cannot be reached only
warns), and ``--register NAME`` adds it to MLflow's model registry (exit 1 when that fails; the
export stays). See ``pretrain.export.record``.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2
EXIT_REGISTER_FAILED = 1


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT_DIR", help="checkpoint tag dir, run dir, or import-hf dir")
    p.add_argument("--out", required=True, help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weight dtype (default fp32)")
    p.add_argument("--format", dest="fmt", default="hf", choices=["hf", "safetensors"],
                   help="hf: a transformers directory; safetensors: the consolidated state dict alone")
    p.add_argument("--max-shard-size", default="5GB", help="split model.safetensors above this (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-checksums", action="store_true", help="check sizes only, skip sha256 of every file")
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--register", metavar="NAME", default=None,
                   help="also register the export as a new version of MLflow model NAME (the whole export is "
                        "copied into the training run's artifacts, so the registry can serve it)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow store of the training run (default: the run's tracking.uri, else "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    g.add_argument("--no-tracking", action="store_true", help="do not record the export on the training run")


def run(args) -> int:
    from pretrain.checkpoint import CheckpointError
    from pretrain.export import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype, fmt=args.fmt,
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                check=not args.no_checksums, progress=sys.stderr.isatty())
    except (CheckpointError, FileExistsError, ValueError, KeyError) as e:
        print(f"pretrain export: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"pretrain export: wrote {out}")
    if args.no_tracking and not args.register:
        return 0
    return _record(args, out)


def _record(args, out) -> int:
    """The export on its training run (a failure only warns: the export is written) and, with
    --register, in the model registry (a failure there is the command's: exit 1)."""
    from pretrain.checkpoint import resolve_checkpoint_dir
    from pretrain.export.record import record_export

    try:
        done = record_export(resolve_checkpoint_dir(args.checkpoint), out, uri=args.tracking_uri,
                             register=args.register)
    except Exception as e:
        print(f"pretrain export: MLflow: export not recorded ({type(e).__name__}: {str(e)[:300]})", file=sys.stderr)
        return EXIT_REGISTER_FAILED if args.register else 0
    if done["run_id"]:
        print(f"pretrain export: recorded on MLflow run {done['run_id']} ({done['uri']})")
    if done["version"]:
        print(f"pretrain export: registered as MLflow model {args.register!r} version {done['version']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="pretrain export")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
