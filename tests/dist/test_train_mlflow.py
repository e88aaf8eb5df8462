"""Training against a real `mlflow server`: params, per-step metrics, artifacts; server loss mid-run."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.dist.helpers import losses, run_train, start_train, wait_for
from tests.mlflow_server import Server

GPT = "configs/gpt/debug.yaml"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.kill()


def _args(tmp_path, name, steps, uri, extra=()):
    return [f"train.run_dir={tmp_path / name}", f"train.steps={steps}", "train.log_every=2", f"tracking.uri={uri}",
            f"tracking.experiment=e2e-{name}", *extra]


def test_server_receives_params_metrics_and_artifacts(server, tmp_path):
    # system metrics sampled every second (MLflow's default is 10 s, longer than this run)
    run_train(GPT, _args(tmp_path, "ok", 6, server.uri), nproc=2,
              extra_env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "PRETRAIN_TEST_STEP_SLEEP": "0.3"})
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("e2e-ok")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden_size"] == "64" and run.data.params["parallel.zero_stage"] == "0"
    tags = run.data.tags
    assert tags["family"] == "gpt" and tags["world_size"] == "2" and tags["data_parallel_size"] == "2"
    assert int(tags["parameters"]) > int(tags["non_embedding_parameters"]) > 0
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [2, 4, 6]
    ours = losses(tmp_path / "ok")
    assert {m.step: m.value for m in history} == pytest.approx({s: ours[s] for s in (2, 4, 6)})
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "plots", "metrics"} <= arts
    names = {a.path for d in ("config", "plots") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"config/config.yaml", "config/deepspeed.json", "plots/loss_curve.png"} <= names


def test_training_finishes_when_the_server_dies(tmp_path):
    srv = Server(tmp_path / "srv")
    (tmp_path / "srv").mkdir()
    srv.start()
    run_dir = tmp_path / "down"
    proc = start_train(GPT, _args(tmp_path, "down", 30, srv.uri), nproc=1,
                       extra_env={"PRETRAIN_TEST_STEP_SLEEP": "0.3"}, log=tmp_path / "down.log")
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(losses(run_dir)) >= 4, 240, what="4 steps",
                 proc=proc, log=tmp_path / "down.log")
        srv.kill()
        assert proc.wait(timeout=240) == 0, (tmp_path / "down.log").read_text()[-3000:]
    finally:
        srv.kill()
        if proc.poll() is None:
            proc.kill()
    assert sorted(losses(run_dir)) == list(range(1, 31))
    log = (tmp_path / "down.log").read_text()
    assert log.count("is unreachable") == 1  # one warning for the outage, not one per metric
