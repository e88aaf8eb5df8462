"""MLflow tracking against a real sqlite store and a real `mlflow server` subprocess (killed mid-run)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pretrain.config import config_from_dict, flatten, to_dict
from pretrain.tracking import DEFAULT_URI, MAX_PARAM_VALUE, NullTracker, Tracker, make_tracker, resolve_uri
from tests.mlflow_server import Server


@pytest.fixture(scope="module", autouse=True)
def launched_server(tmp_path_factory):
    """Started when the module starts; ``server`` waits until it answers."""
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.launch()
    yield srv
    srv.kill()


@pytest.fixture
def server(launched_server):
    launched_server.wait_ready()
    return launched_server


def make_cfg(**tracking):
    return config_from_dict({"tracking": {"experiment": "tests", **tracking}, "train": {"steps": 50}})


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pretrain.tracking" and r.levelno == logging.WARNING]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == DEFAULT_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_uri(None) == "http://env:5000"
    assert resolve_uri("http://cfg:5000") == "http://cfg:5000"


def test_non_zero_ranks_and_disabled_get_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for tracker in (make_tracker(make_cfg(), rank=1), make_tracker(make_cfg(enabled=False), rank=0)):
        assert type(tracker) is NullTracker
        assert tracker.start(make_cfg()) is None
        tracker.log_params(make_cfg())
        tracker.log_metrics({"train/loss": 1.0}, step=0)
        tracker.end()
    assert not (tmp_path / "mlflow.db").exists()
    assert isinstance(make_tracker(make_cfg(), rank=0), Tracker)


def test_sqlite_default_store_and_resume(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(tags={"team": "x"})
    tracker = make_tracker(cfg, rank=0)
    run_id = tracker.start(cfg)
    assert run_id is not None and (tmp_path / "mlflow.db").is_file()  # the default URI, in the working dir
    tracker.log_params(cfg)
    tracker.log_params({"notes": "y" * 10_000})
    tracker.set_tags({"family": "gpt", "parameters": 123})
    for step in range(5):
        tracker.log_metrics({"train/loss": 5.0 - step, "train/lr": 1e-3}, step=step)
    (tmp_path / "resolved.yaml").write_text("model: {}\n")
    tracker.log_artifact(tmp_path / "resolved.yaml", "config")
    tracker.log_text("{}", "deepspeed/ds_config.json")
    tracker.log_loss_plot()
    tracker.end("KILLED")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    expected = {k: ("null" if v is None else str(v)) for k, v in flatten(to_dict(cfg)).items()}
    assert {k: run.data.params[k] for k in expected} == expected
    assert len(run.data.params["notes"]) == MAX_PARAM_VALUE
    assert run.data.tags["team"] == "x" and run.data.tags["parameters"] == "123"
    assert history(client, run_id, "train/loss") == [(s, 5.0 - s) for s in range(5)]
    assert run.info.status == "KILLED"
    arts = {a.path for d in ("config", "deepspeed", "plots") for a in client.list_artifacts(run_id, d)}
    assert arts == {"config/resolved.yaml", "deepspeed/ds_config.json", "plots/loss_curve.png"}
    png = Path(client.download_artifacts(run_id, "plots/loss_curve.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    resumed = Tracker(experiment="tests")
    assert resumed.start(cfg, run_id=run_id) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.log_params(cfg)  # same values: accepted
    resumed.log_params({"train.steps": 999, "extra.key": 1})  # a changed value is refused, the rest kept
    for step in range(5, 8):
        resumed.log_metrics({"train/loss": 5.0 - step}, step=step)
    assert resumed.flush(30)
    assert resumed.history["train/loss"] == [(s, 5.0 - s) for s in range(8)]  # earlier points fetched back
    resumed.end()
    run = client.get_run(run_id)
    assert history(client, run_id, "train/loss") == [(s, 5.0 - s) for s in range(8)]
    assert run.data.params["train.steps"] == "50" and run.data.params["extra.key"] == "1"
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert any("train.steps" in r.getMessage() for r in warnings_of(caplog))


def test_server_receives_params_metrics_and_artifacts(server, tmp_path):
    cfg = make_cfg(uri=server.uri, run_name="server-run")
    tracker = make_tracker(cfg, rank=0)
    run_id = tracker.start(cfg)
    assert run_id is not None
    tracker.log_params(cfg)
    for step in range(10):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    (tmp_path / "manifest.json").write_text("{}")
    tracker.log_artifact(tmp_path / "manifest.json", "data")
    tracker.end()
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "server-run" and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert history(client, run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(10)]
    assert [a.path for a in client.list_artifacts(run_id, "data")] == ["data/manifest.json"]


def test_server_killed_mid_run_buffers_then_delivers(server, caplog):
    caplog.set_level(logging.INFO, logger="pretrain.tracking")
    cfg = make_cfg(uri=server.uri)
    tracker = Tracker(uri=server.uri, experiment="tests", retry_interval=0.2, max_retry_interval=1.0)
    run_id = tracker.start(cfg)
    for step in range(5):
        tracker.log_metrics({"train/loss": float(step)}, step=step)
    assert tracker.flush(30) and tracker.buffered == 0

    server.kill()
    for step in range(5, 25):  # training goes on; nothing raises
        tracker.log_metrics({"train/loss": float(step)}, step=step)
    deadline = time.monotonic() + 60
    while not tracker.degraded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.degraded
    for step in range(25, 30):
        tracker.log_metrics({"train/loss": float(step)}, step=step)
    assert tracker.buffered >= 5  # held for later, reported
    assert not tracker.flush(0.5)

    # a run started while the server is down neither blocks nor raises, and ends cleanly
    other = Tracker(uri=server.uri, experiment="tests", retry_interval=0.2)
    assert other.start(cfg, wait=30) is None
    other.log_metrics({"train/loss": 1.0}, step=0)
    other.end(timeout=0.5)
    assert other.buffered == 1 and other.warnings == 1

    server.launch()
    time.sleep(1.5)  # several failed retries while it boots: still exactly one warning from the first tracker
    assert tracker.warnings == 1
    server.wait_ready()
    assert tracker.flush(60), "buffered metrics were not delivered after the server came back"
    assert tracker.buffered == 0 and not tracker.degraded
    tracker.end()
    client = MlflowClient(server.uri)
    assert history(client, run_id, "train/loss") == [(s, float(s)) for s in range(30)]  # each step exactly once
    assert client.get_run(run_id).info.status == "FINISHED"
    unreachable = [r for r in warnings_of(caplog) if "unreachable" in r.getMessage()]
    assert len(unreachable) == 2  # one per tracker, for the whole outage
    assert any("reachable again" in r.getMessage() for r in caplog.records)
