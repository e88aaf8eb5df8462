"""Run several short trainings in one multi-rank job: ``python -m tests.export.multi_train SPEC.json``.

Every rank reads the JSON list ``[{"config": path, "overrides": [...]}, ...]`` and calls the real
trainer (``pretrain.trainer.train``) for each entry in turn. Process start-up, DeepSpeed's import
and its communication-op build are paid once instead of once per checkpoint, which keeps the export
test matrix (4 models x 2 ZeRO stages x 2 tensor sizes) within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys


def main(spec_path: str) -> int:
    from pretrain.config import load_config
    from pretrain.trainer import train

    for entry in json.loads(open(spec_path).read()):
        train(load_config(entry["config"], entry["overrides"]))
    from pretrain.distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
