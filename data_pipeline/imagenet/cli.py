"""``pretrain data imagenet``: ImageNet folders or ILSVRC tars -> labelled WebDataset shards on Ray.

Example::

    pretrain data imagenet --input /data/imagenet --out /data/shards/imagenet --split train,val \\
        --max-size 512 --shard-size 1000 --num-cpus 16

Exit codes: 0 done (bad images are rejected and counted, not failures); 2 bad arguments or input
(missing, corrupt outer tar, ``--out`` not writable); 1 more inputs could not be read (permission,
I/O) than ``--max-failed-inputs`` allows -- no manifest is written then -- or a write failed (disk full).
"""

from __future__ import annotations

import argparse
import sys

from data_pipeline.tracking import add_tracking_arguments, track_pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True,
                        help="dataset root (train/, val/, ILSVRC2012_img_train.tar, Kaggle ILSVRC/Data/CLS-LOC/), "
                             "a split folder / ImageFolder tree, or a tar (tar of per-class tars, or of folders)")
    parser.add_argument("--out", required=True, help="output directory for shards, manifest.json, _info.json")
    parser.add_argument("--split", default="train", help="split(s) to convert, comma separated (default: train)")
    parser.add_argument("--max-size", type=int, default=512,
                        help="reduce the shorter side to this many pixels, never upscale; 0 keeps sizes (default 512)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)")
    parser.add_argument("--shard-size", type=int, default=1000, help="planned images per shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default 0)")
    parser.add_argument("--classes", default=None,
                        help="class list file (one wnid per line, optional name after it) fixing the index order; "
                             "default: sorted class folders, names from LOC_synset_mapping.txt")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="refuse images declaring more pixels than this (decompression bombs; default 89478485)")
    parser.add_argument("--max-failed-inputs", type=float, default=0, metavar="N|F",
                        help="inputs allowed to be unreadable (permission or I/O errors, a broken class tar): "
                             "a count, or a fraction below 1 of all inputs (default 0: any failure exits 1)")
    parser.add_argument("--num-cpus", type=int, default=None, help="parallel workers (default: all Ray CPUs)")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug-shard-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from data_pipeline.imagenet.pipeline import BuildConfig, InputsFailed, OutputError, build
    from data_pipeline.imagenet.process import DEFAULT_MAX_PIXELS
    from data_pipeline.imagenet.sources import InputError
    from data_pipeline.ray_runtime import SharedStorageError

    if args.num_cpus is not None and args.num_cpus < 1:
        print(f"pretrain data imagenet: error: --num-cpus {args.num_cpus}: must be at least 1", file=sys.stderr)
        return 2
    cfg = BuildConfig(
        input=args.input, out=args.out, splits=[s.strip() for s in args.split.split(",") if s.strip()],
        max_size=args.max_size, quality=args.quality, shard_size=args.shard_size, seed=args.seed,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels, classes_file=args.classes, num_cpus=args.num_cpus,
        ray_address=args.ray_address, progress=not args.no_progress, shard_delay_s=args.debug_shard_delay,
        max_failed_inputs=args.max_failed_inputs,
    )
    try:
        manifest = build(cfg)
    except (InputError, SharedStorageError) as e:
        print(f"pretrain data imagenet: error: {e}", file=sys.stderr)
        return 2
    except (InputsFailed, OutputError) as e:
        print(f"pretrain data imagenet: error: {e}", file=sys.stderr)
        return 1
    for split, entry in manifest["splits"].items():
        c = entry["counts"]
        print(f"{split}: {entry['samples']} samples in {len(entry['shards'])} shards, {entry['bytes']} bytes; "
              f"read {c['read']}, rejected {sum(c['rejected'].values())} {c['rejected']}")
        if c.get("failed_inputs"):
            print(f"pretrain data imagenet: warning: {split}: {c['failed_inputs']} input(s) could not be read "
                  f"(allowed by --max-failed-inputs); see {args.out}/{entry['rejected']}", file=sys.stderr)
    print(f"wrote {args.out}/manifest.json ({len(manifest['classes'])} classes)")
    track_pipeline(args, "imagenet", args.out)
    return 0
