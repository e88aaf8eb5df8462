"""Recovery, proven: jobs killed, signalled, hung and fed bad checkpoints at named points (the
``PRETRAIN_FAULT`` drills of ``pretrain.faults``, not a test's sleep), on real 2-rank gloo jobs.

One uninterrupted reference run (GPT debug, 2 ranks, ZeRO 1, 12 steps, a checkpoint every 3) serves
the module. Every resumed job must say from which step it resumed (its output and the
``trainer_state.json`` it writes), append only the steps after it (nothing recomputed), and the
run, pieced together, must give the reference's losses bit for bit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.checkpoint import verify, write_complete
from tests.dist.helpers import REPO, TIMEOUT_SCALE, env, losses, run_train, train_cmd
from tests.fs_faults import read_only

GPT = "configs/gpt/debug.yaml"
STEPS, EVERY = 12, 3
pytestmark = pytest.mark.slow


def _args(run_dir: Path, extra: list[str] = (), steps: int = STEPS) -> list[str]:
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", f"checkpoint.every={EVERY}", "parallel.zero_stage=1",
            "data.synthetic_samples=100000", "train.log_every=4", "tracking.enabled=false", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("recovery") / "reference"
    run_train(GPT, _args(run_dir), nproc=2)
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1))
    return run_dir


def _latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


class Chain:
    """Jobs into one run dir; each job's appended metrics lines kept apart."""

    def __init__(self, run_dir: Path, extra: list[str]):
        self.run_dir, self.extra = run_dir, extra

    def job(self, fault: str | None, ok: bool, resume: bool = True):
        metrics = self.run_dir / "metrics.jsonl"
        before = metrics.read_text().count("\n") if metrics.exists() else 0
        extra = [*self.extra, *(["checkpoint.resume=auto"] if resume else [])]
        proc = run_train(GPT, _args(self.run_dir, extra), nproc=2, check=False,
                         extra_env={"PRETRAIN_FAULT": fault} if fault else None)
        out = proc.stdout + proc.stderr
        assert (proc.returncode == 0) == ok, f"exit {proc.returncode}:\n{out[-5000:]}"
        lines = metrics.read_text().splitlines()[before:] if metrics.exists() else []
        return out, [json.loads(x)["step"] for x in lines]


def _resumed_at(out: str, run_dir: Path, step: int) -> None:
    assert f"resumed from {run_dir / 'checkpoints' / f'step{step:08d}'} at step {step}" in out, out[-3000:]


def test_killed_and_signalled_jobs_resume_exactly(reference, tmp_path):
    """kill -9 inside the backward pass; kill during a save (after DeepSpeed's files, before
    complete.json: the previous checkpoint stays in charge); kill inside a collective at a step
    drawn from a seed; SIGTERM to the launcher alone mid-run (saves, exit 0); SIGUSR1 to the
    launcher alone while the engine is starting (honoured, exit 0); then the rest of the run."""
    run_dir = tmp_path / "chain"
    store = f"sqlite:///{tmp_path / 'ml.db'}"
    chain = Chain(run_dir, ["tracking.enabled=true", f"tracking.uri={store}", "tracking.experiment=recovery",
                            "tracking.system_metrics=false"])

    out, steps = chain.job("kill@backward:5", ok=False, resume=False)
    assert "fault drill now: kill at backward of step 5 on rank 0" in out
    assert steps == [1, 2, 3, 4] and _latest(run_dir) == "step00000003"

    out, steps = chain.job("kill@save:6/1", ok=False)
    _resumed_at(out, run_dir, 3)
    assert steps == [4, 5, 6]  # nothing before the checkpoint's step ran again
    torn = run_dir / "checkpoints" / "step00000006"
    assert torn.is_dir() and not (torn / "complete.json").exists() and _latest(run_dir) == "step00000003"
    assert json.loads((torn / "trainer_state.json").read_text())["started_from_step"] == 3

    out, steps = chain.job("kill@collective:r5/1", ok=False)  # random.Random(5) draws step 8 of 4..12
    assert "fault drill now: kill at collective of step 8 on rank 1" in out
    _resumed_at(out, run_dir, 3)  # the torn step-6 save was never used
    # rank 1 dies with step 8's all-reduce in flight: gloo may already have delivered its share, so
    # rank 0 can finish step 8's reduce and record it before it sees the loss; nothing past step 8
    assert steps in ([4, 5, 6, 7], [4, 5, 6, 7, 8]) and _latest(run_dir) == "step00000006"

    out, steps = chain.job("term@step:9", ok=True)  # SIGTERM to the launcher process only
    _resumed_at(out, run_dir, 6)
    stopped = int(_latest(run_dir).removeprefix("step"))
    assert "stop signal received: checkpoint saved at step 9" in out and stopped == 9
    assert steps == [7, 8, 9]

    out, steps = chain.job("usr1@setup", ok=True)  # SIGUSR1 to the launcher while the engines start
    assert "stop signal received while starting" in out and steps == []
    assert _latest(run_dir) == f"step{stopped:08d}"

    out, steps = chain.job(None, ok=True)
    _resumed_at(out, run_dir, stopped)
    assert steps == list(range(stopped + 1, STEPS + 1))

    ref, pieced = losses(reference), losses(run_dir)
    assert sorted(pieced) == list(range(1, STEPS + 1))
    assert all(pieced[s] == ref[s] for s in ref), {s: (pieced[s], ref[s]) for s in ref if pieced[s] != ref[s]}
    state = json.loads((run_dir / "checkpoints" / "step00000012" / "trainer_state.json").read_text())
    assert state["started_from_step"] == stopped
    assert state["resumed_from"] == str(run_dir / "checkpoints" / f"step{stopped:08d}")
    from mlflow import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    assert run.info.run_id == state["mlflow_run_id"]  # every job continued the same MLflow run
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == STEPS


def test_a_rank_that_raises_or_hangs_ends_the_job_named(tmp_path):
    """A rank that raises ends the job at once (local launcher); a rank that stops stepping
    without dying ends it within ``train.hang_timeout_s`` (under torchrun: each rank's watchdog,
    not our launcher), naming the rank the others wait for."""
    proc = run_train(GPT, _args(tmp_path / "raise", steps=4), nproc=2, check=False,
                     extra_env={"PRETRAIN_FAULT": "raise@step:2/1"})
    assert proc.returncode != 0
    assert "rank 1 failed: RuntimeError: fault drill: raise at step of step 2" in proc.stderr, proc.stderr[-3000:]

    started = time.monotonic()
    proc = run_train(GPT, _args(tmp_path / "hang", ["train.hang_timeout_s=8"], steps=1000), nproc=2, check=False,
                     launcher="torchrun", extra_env={"PRETRAIN_FAULT": "hang@step:3/1"}, timeout=240)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "rank(s) 1 stopped making progress in data of step 3; the others wait for it" in err, err[-3000:]
    assert "train.hang_timeout_s=8" in err
    print(f"hung job ended after {time.monotonic() - started:.0f} s in all")


def _copy_checkpoint(reference: Path, step: int, run_dir: Path) -> Path:
    tag = f"step{step:08d}"
    shutil.copytree(reference / "checkpoints" / tag, run_dir / "checkpoints" / tag)
    (run_dir / "checkpoints" / "latest").write_text(tag + "\n")
    return run_dir / "checkpoints" / tag


def test_resume_refuses_a_bit_flip_naming_the_file(reference, tmp_path):
    """Each rank hashes its share of the checkpoint before loading; one flipped bit is refused with
    the file named, and nothing is trained."""
    run_dir = tmp_path / "flip"
    tag_dir = _copy_checkpoint(reference, STEPS, run_dir)
    victim = tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    proc = run_train(GPT, _args(run_dir, ["checkpoint.resume=auto"], steps=STEPS + 1), nproc=2, check=False)
    assert proc.returncode != 0
    assert f"{victim}: sha256" in proc.stderr and "complete.json records" in proc.stderr, proc.stderr[-3000:]
    assert not (run_dir / "metrics.jsonl").exists() and _latest(run_dir) == f"step{STEPS:08d}"


def test_disk_full_during_a_save_leaves_the_last_checkpoint_in_charge(reference, tmp_path):
    """RLIMIT_FSIZE below the size of one of the checkpoint's files: the save fails with the file
    named and the free space, no torn file stays behind, and `latest` still names a good checkpoint."""
    import resource

    run_dir = tmp_path / "full"
    before = _copy_checkpoint(reference, 9, run_dir)
    limit = max(f.stat().st_size for f in before.glob("*.pt")) - 1

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(train_cmd(GPT, _args(run_dir, ["checkpoint.resume=auto"], steps=10), nproc=2), cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=300 * TIMEOUT_SCALE, preexec_fn=small_files)
    assert proc.returncode != 0
    assert "writing the checkpoint of step 10 failed on rank" in proc.stderr, proc.stderr[-3000:]
    assert "bytes free there" in proc.stderr and str(run_dir / "checkpoints" / "step00000010") in proc.stderr
    failed = run_dir / "checkpoints" / "step00000010"
    assert not (failed / "complete.json").exists()
    assert all(f.stat().st_size < limit for f in failed.rglob("*") if f.is_file())  # the torn file was removed
    assert _latest(run_dir) == "step00000009"
    verify(before)  # sizes and sha256: untouched


def _cli(args: list[str], nproc: int = 1, wrap=None) -> subprocess.CompletedProcess:
    cmd = train_cmd(GPT, args, nproc=nproc)
    return subprocess.run(wrap(cmd) if wrap else cmd, cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=120 * TIMEOUT_SCALE)


def test_jobs_that_cannot_work_are_refused_before_any_rank_starts(reference, tmp_path):
    """Exit 2 naming the field, no rank started: a run dir that holds a run without
    checkpoint.resume; a read-only run dir; --nproc 0; another seed on the same layout."""
    proc = _cli(_args(reference), nproc=2)
    assert proc.returncode == 2 and "train.run_dir" in proc.stderr and "already holds a run" in proc.stderr
    assert "checkpoint.resume=auto" in proc.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = _cli(_args(ro / "run"), wrap=lambda cmd: read_only(ro, cmd))
    assert proc.returncode == 2 and f"train.run_dir: got '{ro / 'run'}'; not writable (Read-only file system)" \
        in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run(train_cmd(GPT, _args(tmp_path / "x")) + ["--nproc", "0"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120 * TIMEOUT_SCALE)
    assert proc.returncode == 2 and "--nproc: got 0; must be at least 1" in proc.stderr
    resume = f"checkpoint.resume={reference / 'checkpoints' / f'step{STEPS:08d}'}"
    proc = _cli(_args(tmp_path / "seed7", [resume, "train.seed=7"]), nproc=2)
    assert proc.returncode == 2 and "train.seed: checkpoint 1234, this job 7" in proc.stderr, proc.stderr[-2000:]
    assert "[pretrain]" not in proc.stdout
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def _check_job(run_dir: Path, extra: list[str]):
    from pretrain.config import load_config
    from pretrain.preflight import check_job

    return check_job(load_config(REPO / GPT, _args(run_dir, extra)), 2)


def test_resume_checks_the_runs_identity_and_the_checkpoint_it_names(reference, tmp_path):
    """Same layout, another model or data or seed: refused, the field named (start a new run with
    checkpoint.init_from). A `latest` naming a missing or half-written checkpoint, or complete
    checkpoints without a `latest`: an error, never a silent fresh start."""
    from pretrain.config import ConfigError
    from tests.data.fixtures import make_text_shards

    tag = reference / "checkpoints" / f"step{STEPS:08d}"
    with pytest.raises(ConfigError, match=r"model.num_layers: checkpoint 2, this job 3.*checkpoint.init_from"):
        _check_job(tmp_path / "a", [f"checkpoint.resume={tag}", "model.num_layers=3"])

    # a checkpoint trained on shards A: shards B, or A re-built, are other data; A moved is the same
    shards = {name: tmp_path / name for name in ("A", "B")}
    for seed, path in enumerate(shards.values()):
        make_text_shards(path, {"train": [4], "val": [2]}, seed=seed)
    on_shards = tmp_path / "on-shards" / "checkpoints" / tag.name
    shutil.copytree(tag, on_shards)
    text = (on_shards / "config.yaml").read_text().replace("source: synthetic", "source: shards")
    (on_shards / "config.yaml").write_text(text.replace("path: null", f"path: {shards['A']}"))
    from data_pipeline.shards import sha256_file

    data_json = json.loads((on_shards / "data.json").read_text())
    data_json["manifest_sha256"] = sha256_file(shards["A"] / "manifest.json")
    (on_shards / "data.json").write_text(json.dumps(data_json))
    write_complete(on_shards, on_shards.name, STEPS)
    resume = [f"checkpoint.resume={on_shards}", "data.source=shards"]
    with pytest.raises(ConfigError, match=r"data.path: .*B/manifest.json is not the manifest the checkpoint"):
        _check_job(tmp_path / "b", [*resume, f"data.path={shards['B']}"])
    moved = tmp_path / "moved"
    shutil.copytree(shards["A"], moved)
    assert _check_job(tmp_path / "c", [*resume, f"data.path={moved}"]) == on_shards
    make_text_shards(shards["A"], {"train": [5], "val": [2]}, seed=9)  # re-built in place
    with pytest.raises(ConfigError, match=r"data.path: .*A/manifest.json is not the manifest"):
        _check_job(tmp_path / "d", [*resume, f"data.path={shards['A']}"])

    run_dir = tmp_path / "dangling"
    _copy_checkpoint(reference, STEPS, run_dir)
    (run_dir / "checkpoints" / "latest").write_text("step00000099\n")
    with pytest.raises(ConfigError, match=r"latest: names 'step00000099', which does not exist"):
        _check_job(run_dir, ["checkpoint.resume=auto"])
    (run_dir / "checkpoints" / "step00000099").mkdir()
    with pytest.raises(ConfigError, match=r"latest: names 'step00000099', which has no complete.json"):
        _check_job(run_dir, ["checkpoint.resume=auto"])
    (run_dir / "checkpoints" / "latest").unlink()
    with pytest.raises(ConfigError, match=r"latest: missing, yet .* holds complete checkpoints \(step00000012\)"):
        _check_job(run_dir, ["checkpoint.resume=auto"])
    assert _check_job(tmp_path / "first-job", ["checkpoint.resume=auto"]) is None  # nothing yet: a fresh start
