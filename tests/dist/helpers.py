"""Run ``pretrain train`` as users do -- a real process, real gloo ranks under torchrun -- and read
back what it wrote (metrics.jsonl, checkpoints)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from launch.local import free_port

REPO = Path(__file__).resolve().parents[2]


def train_cmd(config: str, overrides: list[str], nproc: int = 1, launcher: str = "local") -> list[str]:
    """``local``: ``pretrain train --nproc N``; ``torchrun`` and ``deepspeed``: those launchers
    starting ``launch.train_cli`` in every rank, as users run them on clusters."""
    args = [str(REPO / config), *overrides]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                f"--master-port={free_port()}", "-m", "launch.train_cli", *args]
    if launcher == "deepspeed":
        ds = Path(sys.executable).with_name("deepspeed")
        return [str(ds), f"--num_gpus={nproc}", f"--master_port={free_port()}", "--module", "launch.train_cli", *args]
    cmd = [sys.executable, "-m", "launch.cli", "train", *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    return cmd


def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
              "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"})
    e.update(extra or {})
    return e


# a machine shared with other heavy jobs may need longer (``PRETRAIN_TEST_TIMEOUT_SCALE=4``); never shorter
TIMEOUT_SCALE = max(1.0, float(os.environ.get("PRETRAIN_TEST_TIMEOUT_SCALE", "1")))


def run_train(config: str, overrides: list[str], nproc: int = 1, timeout: float = 300, extra_env=None,
              check: bool = True, cwd: Path | None = None, launcher: str = "local") -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(config, overrides, nproc, launcher), cwd=cwd or REPO, env=env(extra_env),
                          capture_output=True, text=True, timeout=timeout * TIMEOUT_SCALE)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def start_train(config: str, overrides: list[str], nproc: int = 1, extra_env=None, cwd: Path | None = None,
                log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(train_cmd(config, overrides, nproc), cwd=cwd or REPO, env=env(extra_env),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (last line per step wins: a resumed run rewrites steps)."""
    out: dict[int, float] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition",
             proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate``; fail at ``timeout`` or as soon as ``proc`` has exited (with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text()[-4000:] if log else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def assert_close(a: dict[int, float], b: dict[int, float], rel: float, steps=None):
    steps = steps or sorted(a)
    for s in steps:
        assert s in a and s in b, f"step {s} missing: {sorted(a)} vs {sorted(b)}"
        assert abs(a[s] - b[s]) <= rel * max(abs(a[s]), abs(b[s]), 1e-12), f"step {s}: {a[s]} vs {b[s]}"
