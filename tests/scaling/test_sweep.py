"""Real sweeps: `pretrain sweep` runs ordinary `pretrain train` processes on real text shards, tracked as MLflow parent/child runs in a local store, then `scaling fit`.

One debug sweep (6 GPT trials) is stopped mid-trial and rerun: finished trials are skipped, the
stopped one resumes from its checkpoint, and no trial trains a step twice. A WSD sweep runs as Ray
tasks: a constant-LR run, then a cooldown fork that starts from its checkpoint as a new run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pretrain import checkpoint as C
from tests.dist.helpers import REPO, env, wait_for
from tests.scaling.text_shards import write_text_shards

pytestmark = pytest.mark.slow
DEBUG = str(REPO / "configs/scaling/debug.yaml")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """~28k tokens of real English prose, a 512-token sentencepiece vocabulary, a val split."""
    return write_text_shards(tmp_path_factory.mktemp("text") / "shards")


def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "sweep", *args]


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_debug_sweep_stopped_and_rerun_trains_no_step_twice_then_fits(shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    args = [DEBUG, f"data.path={shards}", f"tracking.uri={uri}", f"sweep.out={out}"]
    names = ["L1H16-D2560", "L1H16-D5120", "L2H32-D2560", "L2H32-D5120", "L2H64-D2560", "L2H64-D5120"]
    steps = dict(zip(names, [10, 20] * 3))
    victim = out / names[1]

    # 1. stop the sweep (SIGTERM, as `kill` or a scheduler does) while its second trial trains
    log1 = tmp_path / "first.log"
    with log1.open("w") as f:
        proc = subprocess.Popen(_sweep_cmd(*args), cwd=tmp_path, env=env({"PRETRAIN_TEST_STEP_SLEEP": "0.1"}),
                                stdout=f, stderr=subprocess.STDOUT)
    wait_for(lambda: (victim / "metrics.jsonl").is_file() and len(_steps(victim)) >= 3, timeout=600, interval=0.05,
             what="the second trial's third step", proc=proc, log=log1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log1.read_text()[-3000:]
    first = log1.read_text()
    assert "[sweep] stopped by signal 15: 5 run(s) left; rerun the same command to resume" in first
    stopped_at = json.loads((C.latest(victim) / "trainer_state.json").read_text())["step"]
    assert 3 <= stopped_at < 20 and not (victim / "result.json").exists()
    assert (out / names[0] / "result.json").is_file() and not (out / names[2]).joinpath("metrics.jsonl").exists()

    # 2. rerun the same command: the finished trial is skipped, the stopped one resumes
    second = subprocess.run(_sweep_cmd(*args), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"[sweep] 1/6 {names[0]}: skipped (finished: eval loss" in second.stdout
    assert f"[sweep] 2/6 {names[1]}: done in" in second.stdout and f"resumed at step {stopped_at}" in second.stdout
    assert "[sweep] done: 6/6 runs finished" in second.stdout
    for name in names:  # every step of every trial was trained exactly once
        assert _steps(out / name) == list(range(1, steps[name] + 1)), name
    victim_log = (victim / "train.log").read_text()
    assert victim_log.count("fresh start") == 1 and f"at step {stopped_at}" in victim_log
    assert (out / names[0] / "train.log").read_text().count("\n$ ") == 1  # one process, ever

    # 3. MLflow: one parent, one finished child per trial, tagged for the fit
    client, runs = _runs(uri, "scaling-debug")
    parents = [r for r in runs if r.data.tags.get("scaling.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.info.run_name for r in children) == sorted(names) and len(runs) == 7
    for r in children:
        t = r.data.tags
        result = json.loads((out / r.info.run_name / "result.json").read_text())
        assert r.info.status == "FINISHED" and result["run_id"] == r.info.run_id
        assert (int(t["N"]), int(t["N_total"]), int(t["N_non_embedding"])) == \
            (result["N_non_embedding"], result["N_total"], result["N_non_embedding"])
        assert int(t["D"]) == steps[r.info.run_name] * 256 == result["tokens_seen"] and t["seed"] == "1234"
        assert float(t["C"]) == pytest.approx(6 * int(t["N"]) * int(t["D"]), rel=1e-5)
        assert float(t["final_eval_loss"]) == pytest.approx(r.data.metrics["eval/loss"], abs=1e-6)
    losses = {r.info.run_name: float(r.data.tags["final_eval_loss"]) for r in children}
    assert losses[names[5]] < losses[names[0]]  # the largest model on the most tokens beats the smallest on the fewest

    # 4. the fit of the experiment: JSON, four plots, logged to the parent run
    fit_out = tmp_path / "fit" / "fit.json"
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "scaling", "fit", "--experiment", "scaling-debug",
                           "--tracking-uri", uri, "--out", str(fit_out), "--starts", "8", "--bootstrap", "20"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit = json.loads(fit_out.read_text())
    for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
        assert isinstance(fit[key], float) and key in fit["intervals"]
    assert sorted(p["label"] for p in fit["points"]) == sorted(r.info.run_id for r in children)
    assert fit["method"].startswith("approach 3: Huber") and fit["source"]["parent_run"] == parent
    arts = {a.path for a in client.list_artifacts(parent, "scaling_fit")}
    assert arts == {f"scaling_fit/{n}" for n in ("fit.json", "loss_vs_N.png", "isoflop.png", "frontier.png",
                                                   "residuals.png")}

    # 5. an experiment with no finished trials is refused
    exp = client.create_experiment("scaling-empty")
    client.create_run(exp, tags={"scaling.role": "trial"})  # started, never finished
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "scaling", "fit", "--experiment", "scaling-empty",
                           "--tracking-uri", uri, "--out", str(tmp_path / "fit2" / "fit.json")],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "experiment 'scaling-empty' has no finished sweep trials" in proc.stderr


def test_wsd_sweep_on_ray_forks_a_cooldown_from_the_constant_lr_run(shards, tmp_path):
    """One size, one budget of 20 steps: a constant-LR run to step 15, then a fork from its step-15
    checkpoint that decays over steps 16-20 -- both Ray tasks (the fork waits on the stable run)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    ray_tmp = tempfile.mkdtemp(prefix="ray-sweep-", dir="/tmp")  # a private Ray session dir (short: socket paths)
    try:
        proc = subprocess.run(_sweep_cmd(DEBUG, f"data.path={shards}", f"tracking.uri={uri}", f"sweep.out={out}",
                                         "sweep.mode=wsd", "sweep.tokens=[5120]", "sweep.cooldown_fraction=0.25",
                                         "sweep.ladder=[{hidden_size: 32, num_layers: 2, num_heads: 2}]",
                                         "train.log_every=1", "--ray-address", "local"),
                              cwd=tmp_path, env=env({"RAY_TMPDIR": ray_tmp}), capture_output=True, text=True,
                              timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stable, fork = out / "L2H32-stable", out / "L2H32-D5120"
    assert _steps(stable) == list(range(1, 16)) and _steps(fork) == list(range(16, 21))
    fork_log = (fork / "train.log").read_text()
    assert f"forked from {stable}/checkpoints/step00000015 at step 15" in fork_log and "fresh start" not in fork_log
    last = json.loads((fork / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["tokens_seen"] == 20 * 256  # the data stream went on from the stable run's position

    client, runs = _runs(uri, "scaling-debug")
    by_name = {r.info.run_name: r for r in runs}
    s_run, f_run = by_name["L2H32-stable"], by_name["L2H32-D5120"]
    parent = by_name["debug"].info.run_id
    assert s_run.info.run_id != f_run.info.run_id
    assert s_run.data.tags["mlflow.parentRunId"] == f_run.data.tags["mlflow.parentRunId"] == parent
    assert f_run.data.tags["forked_from"].endswith("step00000015") and f_run.data.tags["forked_at_step"] == "15"
    assert "final_eval_loss" in f_run.data.tags and "final_eval_loss" not in s_run.data.tags
    # the LR the stable run held (3e-3 after 2 warmup steps), then the fork's decay to 10 % over 5 steps
    lr = {m.step: m.value for run in (s_run, f_run) for m in client.get_metric_history(run.info.run_id, "train/lr")}
    assert [lr[s] for s in (3, 10, 15)] == pytest.approx([3e-3] * 3)
    assert [lr[s] for s in range(16, 21)] == pytest.approx([3e-3 * (1 - 0.9 * (s - 15) / 5) for s in range(16, 21)])
    # the fork starts from the trained weights: its first loss is near the stable run's last, not a fresh model's
    s_loss, f_loss = (json.loads(p.read_text().splitlines()[i])["loss"] for p, i in
                      ((stable / "metrics.jsonl", -1), (fork / "metrics.jsonl", 0)))
    first = json.loads((stable / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert abs(f_loss - s_loss) < abs(first - s_loss) / 2
