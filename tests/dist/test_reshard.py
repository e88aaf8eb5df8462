"""Resuming on another parallel layout (``pretrain.checkpoint``): real jobs, real DeepSpeed engines.

One run trains 8 steps with tensor 2 x ZeRO 1 on 2 ranks and checkpoints at step 4. That step-4
checkpoint is resumed on layouts that share nothing with it but the global batch -- 1 rank with
ZeRO 3 and offloaded optimizer and parameters; 2 data ranks with ZeRO 0 and a smaller micro
batch -- and steps 5-8 must give the uninterrupted run's losses and weights, up to the changed
reduction order.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.dist.helpers import REPO, assert_close, env, losses, run_train, train_cmd

CONFIG = "configs/gpt/debug-llama.yaml"  # splits over 2 tensor ranks


def _args(run_dir, steps: int, extra: list[str] = ()) -> list[str]:
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", "train.log_every=4",
            "model.dropout=0.0", "train.global_batch_size=16", "data.synthetic_samples=100000", *extra]


NEW_LAYOUTS = {
    "1rank-zero3-offload": (1, ["parallel.zero_stage=3", "parallel.offload_optimizer=true",
                                "parallel.offload_params=true", "train.micro_batch_size=8"]),
    "2data-zero0-micro4": (2, ["parallel.zero_stage=0", "train.micro_batch_size=4"]),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One local MLflow store: a resumed run continues the run the checkpoint names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, store):
    run_dir = tmp_path_factory.mktemp("reshard") / "straight"
    run_train(CONFIG, _args(run_dir, 8, ["parallel.tensor_size=2", "parallel.zero_stage=1", f"tracking.uri={store}",
                                         "train.micro_batch_size=8", "checkpoint.every=4"]), nproc=2)
    assert (run_dir / "checkpoints" / "step00000004" / "complete.json").is_file()
    return run_dir


@pytest.mark.parametrize("name", list(NEW_LAYOUTS))
def test_resume_on_a_new_layout_continues_the_run(tmp_path, straight, store, name):
    from mlflow import MlflowClient

    from pretrain.checkpoint import from_checkpoint

    nproc, layout = NEW_LAYOUTS[name]
    run_dir = tmp_path / name
    ckpt = straight / "checkpoints" / "step00000004"
    proc = run_train(CONFIG, _args(run_dir, 8, [*layout, f"checkpoint.resume={ckpt}", f"tracking.uri={store}"]),
                     nproc=nproc)
    assert "resumed step00000004 on a new layout" in proc.stdout + proc.stderr
    resumed = losses(run_dir)
    assert sorted(resumed) == [5, 6, 7, 8]
    assert_close(losses(straight), resumed, rel=1e-5, steps=range(5, 9))
    a = from_checkpoint(straight / "checkpoints" / "step00000008").state_dict()
    b = from_checkpoint(run_dir / "checkpoints" / "step00000008").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # the same MLflow run goes on, its layout tags now this job's
    run_id = json.loads((ckpt / "trainer_state.json").read_text())["mlflow_run_id"]
    tags = MlflowClient(store).get_run(run_id).data.tags
    zero = next(o.split("=")[1] for o in layout if o.startswith("parallel.zero_stage"))
    assert (tags["world_size"], tags["tensor_parallel_size"], tags["zero_stage"]) == (str(nproc), "1", zero)
    assert tags["layout_changed_at_step"] == "4"


def test_a_change_that_would_make_another_run_is_refused_before_start(straight):
    """Another seed (or model, or data) is not a continuation: exit 2 naming the field, no rank started."""
    cmd = train_cmd(CONFIG, _args(straight, 8, ["train.seed=7", "checkpoint.resume=auto", "tracking.enabled=false"]),
                    nproc=1)
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "checkpoint.resume" in proc.stderr and "train.seed: checkpoint 1234, this job 7" in proc.stderr
    assert "[pretrain]" not in proc.stdout


def test_another_global_batch_continues_the_data_stream(tmp_path, straight):
    """More nodes, bigger batch: 2 steps at global batch 32 after 4 at 16 read items 64.. on."""
    run_dir = tmp_path / "bigger"
    proc = run_train(CONFIG, _args(run_dir, 6, ["train.global_batch_size=32", "train.micro_batch_size=16",
                                                "parallel.zero_stage=2", "tracking.enabled=false",
                                                f"checkpoint.resume={straight}/checkpoints/step00000004"]), nproc=2)
    assert "data stream continues at item 64 (global batch 16 -> 32, micro-batch 8 -> 16)" in proc.stdout
    assert sorted(losses(run_dir)) == [5, 6]
    state = json.loads((run_dir / "checkpoints" / "step00000006" / "trainer_state.json").read_text())
    assert state["tokens_seen"] == (4 * 16 + 2 * 32) * 64


def test_batch_rampup_equals_resuming_at_each_new_batch(tmp_path):
    """``train.batch_rampup=[4,4,48]`` up to 16 (ZeRO 2, 2 ranks) against four chained jobs at fixed
    global batches 4, 8, 12, 16, each resuming the last: the ramp's steps are those jobs' steps, bit
    for bit -- same data, same accumulation, same updates (a constant LR, so the job lengths do not
    bend the schedule)."""
    config = "configs/gpt/debug.yaml"
    common = ["tracking.enabled=false", "train.log_every=5", "model.dropout=0.0", "schedule.kind=constant",
              "schedule.warmup_steps=0", "data.synthetic_samples=100000", "train.micro_batch_size=2",
              "parallel.zero_stage=2"]
    ramp = tmp_path / "ramp"
    run_train(config, [*common, f"train.run_dir={ramp}", "train.steps=10", "train.global_batch_size=16",
                       "train.batch_rampup=[4,4,48]"], nproc=2)
    chained = tmp_path / "chained"
    for steps, batch in ((4, 4), (6, 8), (8, 12), (10, 16)):
        run_train(config, [*common, f"train.run_dir={chained}", f"train.steps={steps}",
                           f"train.global_batch_size={batch}", "checkpoint.resume=auto"], nproc=2)
    a, b = losses(ramp), losses(chained)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(a[s] == b[s] for s in a), (a, b)
    seen = [json.loads(line)["tokens_seen"] for line in (ramp / "metrics.jsonl").read_text().splitlines()]
    assert seen == [64 * n for n in (4, 8, 12, 16, 24, 32, 44, 56, 72, 88)]  # batches 4x4, 8x2, 12x2, 16x2
