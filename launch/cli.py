"""The ``pretrain`` command line.

Each subcommand lives in the package that owns its logic, in a module with two functions:
``add_arguments(parser)`` (cheap: no heavy imports at module level) and ``run(args) -> int``.
A subcommand whose module is not there yet says so and exits 2; none pretends to work.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (words, module, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "commoncrawl"), "data_pipeline.text.cli", "Common Crawl WARC/WET -> tokenized WebDataset shards (Ray)"),
    (("data", "imagenet"), "data_pipeline.imagenet.cli", "ImageNet folders or tars -> labelled WebDataset shards (Ray)"),
    (("data", "inspect"), "data_pipeline.inspect_cli", "summarise a shard directory: manifest, counts, one decoded sample"),
    (("train",), "launch.train_cli", "train GPT, BERT or ViT with DeepSpeed from a config"),
    (("launch",), "launch.launchers", "start a training job locally, on a hostfile, torchrun, SLURM, Ray or Kubernetes"),
    (("export",), "launch.export_cli", "export a training checkpoint to a Hugging Face directory or safetensors"),
    (("import-hf",), "launch.import_cli", "import a Hugging Face model directory as a checkpoint to continue from"),
    (("sweep",), "launch.sweep_cli", "run a scaling-law sweep as MLflow parent/child runs"),
    (("scaling", "fit"), "launch.scaling_fit_cli", "fit L(N, D) to sweep results and plot it"),
    (("scaling", "plan"), "launch.scaling_plan_cli", "compute-optimal N and D for a budget, and a config for that size"),
    (("config", "show"), "launch.config_cli", "print the resolved config and the DeepSpeed JSON"),
]

# shown under `pretrain <words> --help`
EXAMPLES: dict[tuple[str, ...], str] = {
    ("train",): """\
  pretrain train configs/gpt/debug.yaml --nproc 2 --out runs/gpt-debug            # synthetic tokens, 2 CPU ranks
  pretrain train configs/gpt/gpt2-124m.yaml data.source=shards data.path=out/commoncrawl --out runs/gpt2
  pretrain train configs/bert/debug.yaml --nproc 2 parallel.zero_stage=2 train.steps=200 --out runs/bert
  pretrain train configs/vit/vit-s16.yaml data.source=shards data.path=out/imagenet --out runs/vit-s16
  pretrain train configs/gpt/debug.yaml --nproc 2 --out runs/gpt-debug checkpoint.resume=auto   # continue it
  pretrain config show configs/gpt/debug.yaml --world-size 2                        # what a run would use""",
    ("data", "commoncrawl"): """\
  pretrain data commoncrawl --input 'crawl/*.warc.gz' --out out/commoncrawl
  pretrain data commoncrawl --crawl CC-MAIN-2024-22 --max-files 2 --out out/cc --vocab-size 32000
  pretrain data commoncrawl --input a.warc.gz --out out/cc --no-near-dedup --filter c4.min_num_sentences=3
  pretrain data commoncrawl --input a.warc.gz --out out/cc --tracking-uri http://mlflow:5000 --experiment data""",
    ("data", "imagenet"): """\
  pretrain data imagenet --input /data/imagenet --split train,val --out out/imagenet
  pretrain data imagenet --input ILSVRC2012_img_train.tar --out out/imagenet --max-size 256 --num-cpus 16
  pretrain data imagenet --input my_images/ --split train --out out/mine --no-tracking   # any ImageFolder tree""",
    ("data", "inspect"): """\
  pretrain data inspect out/commoncrawl
  pretrain data inspect out/imagenet --split val --index 3 --json""",
    ("export",): """\
  pretrain export runs/gpt-debug --out hf/gpt-debug                  # the run's latest checkpoint
  pretrain export runs/gpt-debug/checkpoints/step00000100 --out hf/gpt-100 --dtype bf16
  pretrain export runs/gpt-debug --out hf/gpt-debug --overwrite --register gpt-debug   # + MLflow registry""",
}
EXIT_USAGE = 2


def _load(module: str):
    """The command module, or None when it has not been written yet (a real import error inside
    an existing module is not hidden)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return None
        raise


def _not_built(words: tuple[str, ...]):
    def run(args) -> int:
        print(f"pretrain {' '.join(words)}: not built yet", file=sys.stderr)
        return EXIT_USAGE

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrain", description="Distributed pretraining: data, training, export.")
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups[""] = top
    for words, module, help_text in COMMANDS:
        parent = ""
        for depth, word in enumerate(words[:-1]):
            key = " ".join(words[: depth + 1])
            if key not in groups:
                sub = groups[parent].add_parser(word, help=f"{word} commands")
                groups[key] = sub.add_subparsers(dest=f"sub_{depth}", metavar="SUBCOMMAND")
                groups[key].required = True
            parent = key
        mod = _load(module)
        text = help_text if mod is not None else f"{help_text} (not built yet)"
        examples = EXAMPLES.get(words)
        p = groups[parent].add_parser(words[-1], help=text, description=text,
                                      epilog=f"examples:\n{examples}" if examples else None,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        if mod is None:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(_run=_not_built(words))
        else:
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key.path=value` overrides may come after options (`train cfg.yaml --nproc 2 a.b=1`)
    stray = [x for x in extra if not (hasattr(args, "overrides") and "=" in x and not x.startswith("-"))]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    code = args._run(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
