"""``pretrain export CKPT_DIR --out DIR [--dtype fp32|bf16|fp16] [--format hf|safetensors]``.

CKPT_DIR is a checkpoint tag directory, a run directory or its ``checkpoints/`` (the ``latest``
tag), or an ``import-hf`` directory. Exit 2 with the file named when the checkpoint is not one,
is incomplete, truncated or corrupt, or when the model has no Hugging Face equivalent; nothing is
left in ``--out`` then.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT_DIR", help="checkpoint tag dir, run dir, or import-hf dir")
    p.add_argument("--out", required=True, help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weight dtype (default fp32)")
    p.add_argument("--format", dest="fmt", default="hf", choices=["hf", "safetensors"],
                   help="hf: a transformers directory; safetensors: the consolidated state dict alone")
    p.add_argument("--max-shard-size", default="5GB", help="split model.safetensors above this (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-checksums", action="store_true", help="check sizes only, skip sha256 of every file")


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
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="pretrain export")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
