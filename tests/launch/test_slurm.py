"""SLURM for real: munged, slurmctld and slurmd on this machine (``tests.engines``), one node.

- a bare ``srun -n 2 python -m launch.train_cli`` (the documented command) forms one world of 2
  from SLURM's variables and trains like ``pretrain train --nproc 2``;
- ``pretrain launch --launcher slurm`` renders and submits its sbatch script; ``scancel
  --signal=USR1`` mid-run makes the ranks save, the script requeues the job, and the requeued job
  resumes from that checkpoint and ends with the losses of an uninterrupted run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pretrain.distributed import expand_hostlist
from tests.dist.helpers import REPO, losses, wait_for
from tests.engines import slurm_cluster  # noqa: F401 -- the module's SLURM cluster
from tests.launch.helpers import CONFIG, STEPS, assert_same_losses, launch, metric_steps, train_overrides, trainer_state

pytestmark = pytest.mark.slow


def test_bare_srun_tasks_form_one_world(slurm_cluster, reference, tmp_path):  # noqa: F811
    run_dir = tmp_path / "srun"
    cmd = ["srun", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--kill-on-bad-exit=1", sys.executable, "-m",
           "launch.train_cli", CONFIG, *train_overrides(run_dir, "parallel.world_size=2")]
    proc = subprocess.run(cmd, cwd=REPO, env=slurm_cluster.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "world 2 = data 2 x tensor 1" in proc.stdout
    assert_same_losses(run_dir, reference[1])


def test_hostlists_expand_as_scontrol_does(slurm_cluster):  # noqa: F811
    for hostlist in ["node[01-03,7],gpu-a5", "rack[1-2]-n[08-10]", "single", "a[9-11],b"]:
        want = slurm_cluster.run("scontrol", "show", "hostnames", hostlist).stdout.split()
        assert expand_hostlist(hostlist) == want, hostlist


def _steps_or_end(cluster, job_id: str, run_dir) -> float:
    """Steps trained so far; infinity once the job left RUNNING/PENDING (so the wait ends and the
    assertion after it shows why)."""
    if cluster.job(job_id)["JobState"] not in ("RUNNING", "PENDING", "CONFIGURING"):
        return float("inf")
    return len(losses(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0


def _slurm_log(path) -> str:
    return path.read_text() if path.exists() else f"(no {path})"


def test_sbatch_job_saves_on_usr1_requeues_and_resumes(slurm_cluster, reference, tmp_path):  # noqa: F811
    run_dir = tmp_path / "sbatch"
    env = dict(slurm_cluster.env, PRETRAIN_TEST_STEP_SLEEP="0.5")  # sbatch exports it to the tasks
    out = launch(CONFIG, *train_overrides(run_dir), "--launcher=slurm", "--nproc-per-node=2", "--cpus-per-task=1",
                 "--time=15:00", env=env, cwd=tmp_path)
    job_id = out.stdout.split("submitted SLURM job ")[1].split(":")[0]
    script = (run_dir / "launch" / "train.sbatch").read_text()
    assert "#SBATCH --signal=USR1@120" in script and "#SBATCH --requeue" in script
    slurm_out = run_dir / "logs" / f"slurm-{job_id}.out"
    # generous waits: on a machine shared with other busy processes a start can take minutes
    wait_for(lambda: _steps_or_end(slurm_cluster, job_id, run_dir) >= 2, 600, what="2 steps")
    assert slurm_cluster.job(job_id)["JobState"] == "RUNNING", _slurm_log(slurm_out)
    slurm_cluster.run("scancel", "--signal=USR1", job_id)
    wait_for(lambda: slurm_cluster.job(job_id).get("Restarts", "0") != "0", 300, what="the requeue")
    job = slurm_cluster.wait_job(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 600)
    log = _slurm_log(slurm_out)
    assert job["JobState"] == "COMPLETED", log[-4000:]
    stopped = int(log.split("[slurm] stopped at step")[1].split()[0])
    assert 2 <= stopped < STEPS, log[-4000:]
    assert f"at step {stopped}" in log.split("restart 1")[1]  # the requeued job resumed from that checkpoint
    steps = metric_steps(run_dir)
    assert steps[:stopped] == list(range(1, stopped + 1)) and steps[stopped:] == list(range(stopped + 1, STEPS + 1))
    assert trainer_state(run_dir)["step"] == STEPS
    assert_same_losses(run_dir, reference[1])
