"""Two torchrun "nodes" on one machine: two ``pretrain launch --launcher torchrun --nnodes 2``
processes (agents) rendezvous over c10d on 127.0.0.1 and train as one world.

- same losses as ``pretrain train --nproc 2``, and MLflow gets system metrics from each node;
- elastic: a killed worker makes torchrun restart the group, which resumes from the latest
  checkpoint (the resume is seen in the output and in metrics.jsonl) and ends with the
  uninterrupted run's losses;
- nodes that see different run dirs are refused, with a message, instead of diverging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from launch.local import free_port
from tests.dist.helpers import REPO, env, wait_for
from tests.launch.helpers import CONFIG, STEPS, assert_same_losses, launch_cmd, metric_steps, train_overrides

pytestmark = pytest.mark.slow


class Agents:
    """``pretrain launch --launcher torchrun`` for node ranks 0 and 1, each in its own session."""

    def __init__(self, tmp: Path, overrides: list[str], extra=(), cwds=(REPO, REPO), env_extra=None):
        port = free_port()
        self.logs = [tmp / f"node{r}.log" for r in range(2)]
        self.procs = []
        for r in range(2):
            cmd = launch_cmd(CONFIG, *overrides, "--launcher=torchrun", "--nnodes=2", "--nproc-per-node=1",
                             f"--node-rank={r}", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test-{port}", *extra)
            with open(self.logs[r], "w") as out:
                self.procs.append(subprocess.Popen(cmd, cwd=cwds[r], env=env(env_extra), stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True))

    def wait(self, timeout: float = 300) -> list[int]:
        return [p.wait(timeout) for p in self.procs]

    def output(self, r: int) -> str:
        return self.logs[r].read_text()

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


@pytest.fixture
def agents():
    started: list[Agents] = []
    yield lambda *a, **k: started.append(Agents(*a, **k)) or started[-1]
    for a in started:
        a.stop()


def test_two_nodes_train_as_one_world_restart_elastically_and_report_each_nodes_metrics(agents, reference, tmp_path):
    """One job does it all (each start costs seconds): world 2 over two agents, a worker killed
    after the step-4 checkpoint, torchrun's restart resuming there, MLflow system metrics from both."""
    import mlflow

    run_dir, db = tmp_path / "run", f"sqlite:///{tmp_path / 'ml.db'}"
    overrides = [o for o in train_overrides(run_dir, "checkpoint.every=4") if o != "tracking.enabled=false"]
    a = agents(tmp_path, [*overrides, f"tracking.uri={db}", "tracking.system_metrics=true"],
               extra=["--max-restarts=2"],
               env_extra={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "PRETRAIN_TEST_STEP_SLEEP": "0.5"})
    wait_for(lambda: (run_dir / "checkpoints" / "latest").exists() and len(metric_steps(run_dir)) >= 5, 300,
             what="the checkpoint at step 4 and step 5", proc=a.procs[0], log=a.logs[0])
    victim = json.loads((run_dir / "pids.json").read_text())["1"]
    os.kill(victim, signal.SIGKILL)
    assert a.wait() == [0, 0], a.output(0)[-3000:] + a.output(1)[-3000:]
    out = a.output(0) + a.output(1)
    assert "world 2 = data 2 x tensor 1" in out
    assert "checkpoints/step00000004 at step 4" in out, out[-3000:]  # the restarted group resumed there
    steps = metric_steps(run_dir)
    assert steps[:5] == [1, 2, 3, 4, 5] and steps[-4:] == [5, 6, 7, 8] and len(steps) > STEPS, steps
    assert json.loads((run_dir / "pids.json").read_text())["1"] != victim
    assert_same_losses(run_dir, reference[1])
    client = mlflow.tracking.MlflowClient(db)
    (run,) = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    system = {k for k in run.data.metrics if k.startswith("system/")}
    for node in ("node0", "node1"):
        assert f"system/{node}/cpu_utilization_percentage" in system, system
    assert run.data.tags.get("system_metrics.node1"), run.data.tags


def test_nodes_that_see_different_run_dirs_are_refused(agents, tmp_path):
    """Each agent in its own directory, a relative run dir: the nodes would write two different runs."""
    cwds = [tmp_path / "a", tmp_path / "b"]
    for c in cwds:
        c.mkdir()
    a = agents(tmp_path, ["train.run_dir=run", *train_overrides(tmp_path)[1:]], cwds=cwds,
               env_extra={"PRETRAIN_SHARED_FS_TIMEOUT": "1"})
    codes = a.wait()
    assert all(c != 0 for c in codes), codes
    for r in range(2):
        assert "train.run_dir" in a.output(r) and "is not one directory shared by all 2 nodes" in a.output(r)
        assert not (cwds[r] / "run" / "metrics.jsonl").exists()
