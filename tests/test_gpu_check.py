"""``bench/gpu_check.sh --cpu-smoke``: the prepared GPU check runs every check end to end on CPU,
tiny, so the script cannot rot before a GPU runs it. Its fp16 check is also the test of issue 16's
item 7: DeepSpeed's real fp16 loss scaler skips steps while the scale falls from 2^21, and the run
must not stop itself (train.max_nonfinite_in_row=3; before the fix it stopped at step 3, exit 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_check(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = summary["checks"]
    assert summary["mode"] == "cpu-smoke"
    assert list(checks) == ["versions", "sdpa_kernel", "zero_resume", "fp16", "throughput", "train_mfu"]
    failed = {n: c for n, c in checks.items() if not c["ok"]}
    assert not failed and proc.returncode == 0, (json.dumps(failed, indent=1)[-4000:], proc.stdout[-2000:])
    assert checks["versions"]["torch"] and checks["sdpa_kernel"]["kernels"]["gpt-debug"] == "flash-cpu"
    assert checks["zero_resume"]["stages"]["3"]["resumed_at_step"] == 4  # a real resume, from the step-3 checkpoint
    assert len(checks["fp16"]["skipped_steps"]) > 3 and checks["fp16"]["final_loss"] is not None  # > max_nonfinite_in_row
    row = checks["throughput"]["models"]["gpt-debug"]
    assert row["mfu_6n_12lht_deepspeed_compiled"] > row["mfu_causal_exact_deepspeed_compiled"] > 0
    mfu = checks["train_mfu"]["models"]["gpt-debug_compiled"]
    assert mfu["mfu_6n_12lht"] > mfu["mfu_causal_exact"] > 0 and mfu["step"] == 4
    assert (tmp_path / "fp16.log").exists()


def test_a_failing_check_is_recorded_and_the_rest_still_run(tmp_path):
    """Budget spent: the remaining checks are marked skipped in the JSON, nothing aborts."""
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(tmp_path), "--budget", "0",
                           "--only", "versions,fp16"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    checks = json.loads((tmp_path / "summary.json").read_text())["checks"]
    assert {n: c["status"] for n, c in checks.items()} == {"versions": "skipped", "fp16": "skipped"}
