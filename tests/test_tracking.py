"""MLflow tracking against a real sqlite store and a real `mlflow server` subprocess (killed mid-run)."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pretrain.config import config_from_dict, flatten, to_dict
from pretrain.tracking import (
    DEFAULT_URI,
    MAX_PARAM_VALUE,
    PREVIOUS_RUN_TAG,
    NullTracker,
    Tracker,
    TrackingError,
    is_transient,
    make_tracker,
    resolve_uri,
)
from tests.mlflow_server import Server, free_port


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


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` and ``body`` (JSON, or HTML when None)."""

    def _answer(self):
        self.server.requests += 1
        body = json.dumps(self.server.body).encode() if self.server.body is not None else b"<html>no</html>"
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json" if self.server.body is not None else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def answering(status: int, body: dict | None = None):
    """A real HTTP server on 127.0.0.1 that answers everything with ``status`` (a proxy, a broken
    or refusing store), counting the requests."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    srv.status, srv.body, srv.requests = status, body, 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()


def _error_of(fn) -> BaseException:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("no error raised")


def test_only_outages_are_retried(tmp_path, monkeypatch):
    """Connection refused and HTTP 5xx are outages; a 4xx (with MLflow's error body or a proxy's
    page), a missing run, and a bug in our own code are not: retrying cannot fix them."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    errors = {}
    for status, body in ((503, None), (500, {"error_code": "INTERNAL_ERROR", "message": "db down"}),
                         (403, {"error_code": "PERMISSION_DENIED", "message": "no"}), (404, None),
                         (401, {"error_code": "X-PROXY", "message": "log in"})):
        with answering(status, body) as (_, url):
            errors[status] = _error_of(lambda url=url: MlflowClient(url).get_experiment_by_name("x"))
    errors["refused"] = _error_of(lambda: MlflowClient(f"http://127.0.0.1:{free_port()}").get_experiment_by_name("x"))
    errors["no such run"] = _error_of(lambda: MlflowClient(f"sqlite:///{tmp_path / 's.db'}").get_run("0" * 32))
    errors["bug"] = TypeError("expected str, bytes or os.PathLike object, not int")
    assert {k for k, e in errors.items() if is_transient(e)} == {503, 500, "refused"}, errors


def test_a_bug_in_the_sender_surfaces_at_once(tmp_path):
    """A TypeError in a request is not an outage to retry for ever: the next call on the training
    thread raises it."""
    tracker = Tracker(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="tests")
    tracker.start(make_cfg())
    (tmp_path / "a.txt").write_text("x")
    tracker.log_artifact(tmp_path / "a.txt", artifact_path=5)  # an int where MLflow needs a path
    deadline = time.monotonic() + 30
    while tracker.failure is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(TrackingError, match="TypeError"):
        tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert tracker.warnings == 0  # never reported as an outage
    tracker.end()  # ends quietly: the failure was raised already


def test_a_store_that_refuses_the_run_fails_at_start(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with answering(403, {"error_code": "PERMISSION_DENIED", "message": "not yours"}) as (srv, url):
        tracker = Tracker(uri=url, experiment="tests", retry_interval=0.1)
        with pytest.raises(TrackingError, match="PERMISSION_DENIED: not yours"):
            tracker.start(make_cfg(), wait=30)
        time.sleep(0.5)
        assert srv.requests == 1  # asked once, not retried
        tracker.end()


def test_a_resumed_run_that_no_longer_exists_starts_a_new_run_tagged_with_the_old(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first = Tracker(uri=uri, experiment="tests")
    old = first.start(make_cfg())
    first.end()
    client = MlflowClient(uri)
    client.delete_run(old)  # the UI's delete: the run lingers, marked deleted
    resumed = Tracker(uri=uri, experiment="tests")
    new = resumed.start(make_cfg(), run_id=old)
    resumed.end()
    assert new not in (None, old) and resumed.replaced_run_id == old
    assert client.get_run(new).data.tags[PREVIOUS_RUN_TAG] == old
    assert any("no longer exists" in r.getMessage() and old in r.getMessage() for r in warnings_of(caplog))
    gone = Tracker(uri=uri, experiment="tests")  # an id this store never had (another store's run)
    assert gone.start(make_cfg(), run_id="f" * 32) not in (None, "f" * 32)
    gone.end()
