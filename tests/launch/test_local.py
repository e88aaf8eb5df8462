"""The local launcher (``pretrain train --nproc N``): ranks never outlive it, and each rank's output
is kept in ``<run_dir>/logs/rank_NNNNN.log`` as well as shown on the console."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.dist.helpers import REPO, env, train_cmd, wait_for
from tests.launch.helpers import CONFIG, STEPS, train_overrides

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_rank_logs_hold_each_ranks_output_and_the_console_too(reference):
    run_dir, _, proc = reference
    logs = sorted(p.name for p in (run_dir / "logs").iterdir())
    assert logs == ["rank_00000.log", "rank_00001.log"]
    rank0 = (run_dir / "logs" / "rank_00000.log").read_text()
    for line in (ln for ln in proc.stdout.splitlines() if ln.startswith("step ")):
        assert line in rank0  # what the console showed of rank 0 is in its log
    assert f"step {STEPS:>7} | loss" in rank0
    rank1 = (run_dir / "logs" / "rank_00001.log").read_text()
    assert "step " not in rank1 and rank1.strip()  # rank 1 logs no steps, but its own start-up output


def test_sigkill_of_the_launcher_alone_takes_its_ranks_down(tmp_path):
    """SIGKILL to the `pretrain train --nproc 2` process only (not its process group): it can
    forward nothing, yet no rank may keep running (or keep training into the run dir). The ranks
    print nothing while they train (log_every), so no broken console pipe ends them either."""
    run_dir = tmp_path / "run"
    log = tmp_path / "console.log"
    cmd = train_cmd(CONFIG, train_overrides(run_dir, "train.steps=100000", "train.log_every=100000"), nproc=2)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env({"PRETRAIN_TEST_STEP_SLEEP": "0.2"}), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").exists(), 240, what="the first step", proc=proc, log=log)
        ranks = [int(p) for p in json.loads((run_dir / "pids.json").read_text()).values()]
        assert all(_alive(p) for p in ranks)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in ranks if _alive(p)], "ranks outlived their launcher"
        assert "fresh start" in (run_dir / "logs" / "rank_00000.log").read_text()  # the log kept what was printed
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
