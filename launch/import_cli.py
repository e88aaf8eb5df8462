"""``pretrain import-hf HF_DIR --out DIR``: a Hugging Face model as a directory to train from.

The conversion is ``pretrain.export.hf_import.import_hf`` (what ``DIR`` holds is described there);
``checkpoint.init_from=DIR`` starts a run from its weights and ``pretrain export DIR`` exports it
again unchanged. Bad input exits 2.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


def add_arguments(p) -> None:
    p.add_argument("hf_dir", metavar="HF_DIR", help="a transformers directory (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="output directory (created; must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args) -> int:
    from pretrain.export.hf_import import import_hf

    try:
        out = import_hf(args.hf_dir, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"pretrain import-hf: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"pretrain import-hf: wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="pretrain import-hf")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
