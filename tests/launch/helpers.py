"""What the launcher tests share: the one training they all run, and how its losses are compared.

Every launcher trains the debug GPT with ``TRAIN`` (8 steps, tracking off) plus its own run dir
and, where it needs one, a checkpoint interval -- neither changes the numbers -- and must match the
session's reference run (``pretrain train --nproc 2``, ``conftest.reference``) at every step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.dist.helpers import REPO, assert_close, losses

CONFIG = str(REPO / "configs" / "gpt" / "debug.yaml")
STEPS = 8
TRAIN = [f"train.steps={STEPS}", "tracking.enabled=false", "train.log_every=1", "data.synthetic_samples=100000"]


def train_overrides(run_dir: Path, *extra: str) -> list[str]:
    return [f"train.run_dir={run_dir}", *TRAIN, *extra]


def assert_same_losses(run_dir: Path, reference_losses: dict[int, float]) -> dict[int, float]:
    """Every step of ``run_dir`` (the last record per step) equals the reference (1e-6 relative)."""
    got = losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1)), sorted(got)
    assert_close(got, reference_losses, rel=1e-6, steps=range(1, STEPS + 1))
    return got


def metric_steps(run_dir: Path) -> list[int]:
    """Steps in metrics.jsonl in the order written: a resumed run repeats the steps after its checkpoint."""
    return [json.loads(line)["step"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def trainer_state(run_dir: Path) -> dict:
    tag = (Path(run_dir) / "checkpoints" / "latest").read_text().strip()
    return json.loads((Path(run_dir) / "checkpoints" / tag / "trainer_state.json").read_text())


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "launch", *args]


def launch(*args: str, env: dict, cwd: Path | None = None, timeout: float = 300,
           check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_cmd(*args), env=env, cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pretrain launch failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
