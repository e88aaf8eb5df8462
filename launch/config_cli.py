"""``pretrain config show CONFIG [k=v ...] [--memory]``: the resolved YAML and the DeepSpeed JSON,
and with ``--memory`` the per-rank memory estimate (``pretrain.models.memory``)."""

from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("config", help="YAML config file, or 'default' for the built-in debug GPT")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides, YAML-typed")
    p.add_argument("--world-size", type=int, default=None,
                   help="ranks the job will run on (default: parallel.world_size, else parallel.tensor_size)")
    p.add_argument("--memory", action="store_true",
                   help="also estimate the device memory per rank (weights, gradients, optimizer, activations) "
                        "and the activation checkpointing that fits --device-memory")
    p.add_argument("--device-memory", type=float, default=80.0, metavar="GiB",
                   help="memory of one accelerator for the --memory suggestion (default 80, an H100/A100 80GB)")


def run(args) -> int:
    from pretrain.config import ConfigError, load_config, to_yaml
    from pretrain.deepspeed_json import deepspeed_config

    try:
        cfg = load_config(None if args.config == "default" else args.config, args.overrides)
        world = args.world_size or cfg.parallel.world_size or cfg.parallel.tensor_size
        ds = deepspeed_config(cfg, world)
    except ConfigError as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return 2
    print("# resolved config")
    print(to_yaml(cfg), end="")
    print(f"# DeepSpeed JSON (world size {world})")
    print(json.dumps(ds, indent=2))
    if args.memory:
        print(memory_report(cfg, world, args.device_memory))
    return 0


def memory_report(cfg, world: int, device_gib: float) -> str:
    """Two lines: the estimate for the config as it is, and the checkpointing that fits the device."""
    from pretrain.models.memory import GiB, estimate, suggest_checkpointing

    p = cfg.parallel
    est = estimate(cfg, world)
    head = (f"# memory per rank (estimate; world {world} = data {world // p.tensor_size} x tensor {p.tensor_size}, "
            f"ZeRO {p.zero_stage}, {p.precision}, micro-batch {cfg.train.micro_batch_size})")
    best = suggest_checkpointing(cfg, world, device_gib * GiB)
    advice = (f"# fits {device_gib:g} GiB with the least recompute: parallel.activation_checkpointing={best}"
              if best is not None else f"# does not fit {device_gib:g} GiB even with full activation checkpointing: "
                                       "raise ZeRO, tensor size or the rank count, or lower train.micro_batch_size")
    return f"{head}\nmemory: {est.line()}\n{advice}"
