"""``pretrain config show CONFIG [k=v ...]``: the resolved YAML and the DeepSpeed JSON."""

from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("config", help="YAML config file, or 'default' for the built-in debug GPT")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides, YAML-typed")
    p.add_argument("--world-size", type=int, default=None,
                   help="ranks the job will run on (default: parallel.world_size, else parallel.tensor_size)")


def run(args) -> int:
    from pretrain.config import ConfigError, deepspeed_config, load_config, to_yaml

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
    return 0
