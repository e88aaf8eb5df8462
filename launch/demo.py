"""``make demo``: the main job on a built-in default (offline, CPU, local MLflow).

Until the trainer lands this runs what exists and says plainly what is not built yet.
"""

from __future__ import annotations

import sys

from launch.cli import main as cli_main


def main() -> int:
    print("== pretrain demo: resolved default config and DeepSpeed JSON")
    code = cli_main(["config", "show", "configs/gpt/debug.yaml"])
    if code:
        return code
    print("== the full demo (pipeline -> train -> export) is not built yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
