"""MLflow tracking that never stops training: rank 0 only, background delivery, buffered retries.

``make_tracker(cfg, rank)`` returns a ``Tracker`` on global rank 0 (when ``tracking.enabled``) and a
``NullTracker`` elsewhere. The tracking URI is ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory.

Every call on the training thread only appends to an in-memory queue and returns; one daemon thread
talks to MLflow. When the store is unreachable (connection refused or reset, timeout, HTTP 5xx, a
locked sqlite file: ``is_transient``), the thread keeps the queue, logs exactly one warning for the
outage, and retries with exponential backoff (capped), so metrics reach the server once it is
back. Metrics beyond ``max_buffer`` drop the oldest (counted in ``dropped``). Requests the store
rejects (HTTP 4xx, e.g. changing a param of a resumed run) are not retried: dropped with their own
warning -- except the run's start, which raises ``TrackingError`` (a store that refuses to hold the
run is a misconfiguration, better known at step 0). Any other error is a bug: the sender stops and
the training thread's next tracker call raises ``TrackingError`` with it. HTTP stores get
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and a short
``MLFLOW_HTTP_REQUEST_TIMEOUT`` unless the user set them, so one attempt never blocks for long --
we do our own retrying. Artifacts are copied to a staging directory when queued, so a file the
trainer rewrites later (e.g. the loss plot) is uploaded as it was when logged.

Resume: ``start(cfg, run_id=<saved id>)`` reopens that run (status back to RUNNING) and appends to
it. When that run no longer exists (deleted, or another store), it says so and starts a new run
tagged ``pretrain.previous_run_id`` (``replaced_run_id`` holds the old id).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.config import Config, flatten, to_dict

log = logging.getLogger("pretrain.tracking")

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_BATCH = 1000  # MLflow's log_batch limit for metrics
_SERVER_ERRORS = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE"}  # MLflow's codes for HTTP 500 and 503
PREVIOUS_RUN_TAG = "pretrain.previous_run_id"
_NO_ANSWER = re.compile(r"API request to \S+ failed with (timeout )?exception")


class TrackingError(RuntimeError):
    """MLflow tracking cannot go on: the store refused the run, or the sender hit a bug."""


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def is_transient(exc: BaseException) -> bool:
    """True for an outage worth retrying: no answer (connection refused or reset, timeout), a
    server-side failure (HTTP 5xx), a locked sqlite store. False for a request the store refused
    (HTTP 4xx) and for errors in our own code (``TypeError``, ...), which retrying cannot fix."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, (ConnectionError, TimeoutError)) or _caused_by(exc, "OperationalError"):
        return True  # (an OSError such as a PermissionError on a local artifact store is no outage)
    if not isinstance(exc, MlflowException):
        return False
    if _NO_ANSWER.match(str(exc)):  # MLflow's transport errors: refused, reset, timeout, 5xx after its retries
        return True
    if isinstance(exc, RestException):  # the server answered with an error body: trust its own code only
        return exc.json.get("error_code") in _SERVER_ERRORS
    return exc.get_http_status_code() >= 500


def _caused_by(exc: BaseException, name: str) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if type(exc).__name__ == name:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def truncate_params(params: dict[str, Any]) -> dict[str, str]:
    """Stringify and cut values to MLflow's limit (``...`` marks a cut)."""
    out = {}
    for k, v in params.items():
        s = "null" if v is None else str(v)
        out[k] = s if len(s) <= MAX_PARAM_VALUE else s[: MAX_PARAM_VALUE - 3] + "..."
    return out


def plot_curves(history: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "loss") -> Path:
    """A PNG of each metric's (step, value) points against step (matplotlib Agg, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, points in sorted(history.items()):
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, label=key, marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if history:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class _Metric:
    seq: int
    key: str
    value: float
    step: int
    timestamp: int


class NullTracker:
    """The tracker of non-zero ranks and of ``tracking.enabled=false``: accepts everything, does nothing."""

    run_id: str | None = None
    replaced_run_id: str | None = None
    buffered = 0
    dropped = 0
    degraded = False

    def start(self, cfg: Config | None = None, run_id: str | None = None, wait: float = 30.0) -> str | None:
        return None

    def log_params(self, params) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_artifact(self, path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_loss_plot(self, filename: str = "loss_curve.png") -> None: ...
    def log_input(self, data_dir, context: str = "train", manifest: bytes | None = None) -> None: ...

    def flush(self, timeout: float = 10.0) -> bool:
        return True

    def end(self, status: str = "FINISHED", timeout: float = 10.0) -> None: ...


class Tracker(NullTracker):
    """Rank 0's MLflow client with a background sender (see the module docstring)."""

    def __init__(self, uri: str | None = None, experiment: str = "pretrain", run_name: str | None = None,
                 tags: dict[str, str] | None = None, system_metrics: bool = False, max_buffer: int = 100_000,
                 retry_interval: float = 1.0, max_retry_interval: float = 30.0, history_filter: str = "loss",
                 node_id: str | None = None):
        self.uri = resolve_uri(uri)
        if self.uri.startswith(("http://", "https://")):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.system_metrics, self.max_buffer = system_metrics, max_buffer
        self.retry_interval, self.max_retry_interval = retry_interval, max_retry_interval
        self.history_filter = history_filter
        self.node_id = node_id  # multi-node runs: system metrics as system/<node_id>/...
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.run_id: str | None = None
        self.replaced_run_id: str | None = None  # a resumed run that no longer existed
        self.failure: BaseException | None = None  # a refused start or a bug in the sender (raised to the caller)
        self.dropped = 0
        self.degraded = False
        self.warnings = 0  # outage warnings issued (one per tracker)
        self._cv = threading.Condition()
        self._ops: deque[tuple] = deque()
        self._metrics: deque[_Metric] = deque()
        self._seq = itertools.count()
        self._started = self._closing = self._abandon = False
        self._attempted = threading.Event()  # set after the first start attempt (success or failure)
        self._staging = Path(tempfile.mkdtemp(prefix="pretrain-mlflow-"))
        self._client = None
        self._monitor = None
        self._thread = threading.Thread(target=self._loop, name="mlflow-tracker", daemon=True)

    # ------------------------------------------------------------------------------------------
    # training-thread API: queue and return
    # ------------------------------------------------------------------------------------------
    def start(self, cfg: Config | None = None, run_id: str | None = None, wait: float = 30.0) -> str | None:
        """Create (or, with ``run_id``, reopen) the run. Waits up to ``wait`` seconds for the first
        attempt and returns the run id, or None if the store is unreachable (retried in background)."""
        if self._started:
            return self.run_id
        self._started = True
        if cfg is not None:
            t = cfg.tracking
            self.experiment, self.run_name = t.experiment, t.run_name or self.run_name
            self.tags.update(t.tags)
            self.system_metrics = self.system_metrics or t.system_metrics
        self._enqueue(("start", run_id))
        self._thread.start()
        atexit.register(self._at_exit)
        self._attempted.wait(wait)
        self._raise_failure()
        return self.run_id

    def log_params(self, params) -> None:
        """Log a Config, a nested dict or a flat dict as params (flattened ``a.b.c`` keys)."""
        if isinstance(params, Config):
            params = to_dict(params)
        self._enqueue(("params", truncate_params(flatten(dict(params)))))

    def set_tags(self, tags: dict) -> None:
        self._enqueue(("tags", {str(k): str(v) for k, v in tags.items()}))

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._raise_failure()
        now = int(time.time() * 1000)
        with self._cv:
            for key, value in metrics.items():
                value = float(value)
                if len(self._metrics) >= self.max_buffer:
                    self._metrics.popleft()
                    self.dropped += 1
                self._metrics.append(_Metric(next(self._seq), key, value, int(step), now))
                if self.history_filter in key:
                    self.history.setdefault(key, []).append((int(step), value))
            self._cv.notify()

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """Log a file (or a directory, as ``artifact_path/<its name>``), copied now, sent later."""
        src = Path(path)
        if src.is_dir():
            sub = f"{artifact_path}/{src.name}" if artifact_path else src.name
            return self.log_artifacts(src, sub)
        if not src.is_file():
            log.warning("not logging artifact %s: no such file", src)
            return
        dst = Path(tempfile.mkdtemp(dir=self._staging)) / src.name
        shutil.copy2(src, dst)
        self._enqueue(("artifact", str(dst), artifact_path, False))

    def log_artifacts(self, path, artifact_path: str | None = None) -> None:
        """Log the contents of directory ``path`` under ``artifact_path`` (MLflow's semantics)."""
        src = Path(path)
        if not src.is_dir():
            log.warning("not logging artifacts %s: not a directory", src)
            return
        dst = Path(tempfile.mkdtemp(dir=self._staging)) / src.name
        shutil.copytree(src, dst)
        self._enqueue(("artifact", str(dst), artifact_path, True))

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log ``text`` as the artifact ``artifact_file`` (e.g. ``config/resolved.yaml``)."""
        rel = Path(artifact_file)
        dst = Path(tempfile.mkdtemp(dir=self._staging)) / rel.name
        dst.write_text(text)
        self._enqueue(("artifact", str(dst), str(rel.parent) if str(rel.parent) != "." else None, False))

    def log_loss_plot(self, filename: str = "loss_curve.png") -> None:
        """Plot every logged metric whose name contains ``history_filter`` and log the PNG."""
        with self._cv:
            history = {k: list(v) for k, v in self.history.items()}
        path = Path(tempfile.mkdtemp(dir=self._staging)) / filename
        plot_curves(history, path)
        self._enqueue(("artifact", str(path), "plots", False))

    def log_input(self, data_dir, context: str = "train", manifest: bytes | None = None) -> None:
        """Link the shard directory ``data_dir`` to the run as an MLflow dataset input (name,
        manifest sha256, path; ``data_pipeline.shards.shard_dataset``), read now (unless the caller
        passes the ``manifest`` bytes it read already), sent later."""
        from data_pipeline import storage
        from data_pipeline.shards import shard_dataset

        raw = manifest if manifest is not None else storage.read_bytes(storage.join(str(data_dir), "manifest.json"))
        self._enqueue(("input", shard_dataset(data_dir, raw), context))

    @property
    def buffered(self) -> int:
        """Metrics queued and not yet accepted by the store."""
        with self._cv:
            return len(self._metrics)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` s for everything queued to be delivered; True if it was."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify_all()
            while self._ops or self._metrics:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def end(self, status: str = "FINISHED", timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` s), mark the run ``status`` and stop the sender."""
        if not self._started:
            return
        if self.failure is not None:  # already reported; the sender has stopped
            shutil.rmtree(self._staging, ignore_errors=True)
            return
        self._enqueue(("end", status))
        delivered = self.flush(timeout)
        with self._cv:
            self._closing = True
            if not delivered:
                self._abandon = True
                log.warning("MLflow at %s: gave up with %d metrics and %d other records undelivered",
                            self.uri, len(self._metrics), len(self._ops))
            self._cv.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        shutil.rmtree(self._staging, ignore_errors=True)

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise TrackingError(f"MLflow tracking at {self.uri} stopped: {_short(self.failure)}") from self.failure

    def _enqueue(self, op: tuple) -> None:
        self._raise_failure()
        with self._cv:
            self._ops.append(op)
            self._cv.notify()

    def _at_exit(self) -> None:
        if self._thread.is_alive() and not self._closing:
            self.flush(5.0)

    # ------------------------------------------------------------------------------------------
    # sender thread
    # ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        backoff = self.retry_interval
        while True:
            with self._cv:
                while not (self._ops or self._metrics or self._closing):
                    self._cv.wait()
                if self._abandon or self.failure is not None or (self._closing and not (self._ops or self._metrics)):
                    return
            if self._drain():
                backoff = self.retry_interval
                continue
            with self._cv:  # outage: wait, but wake at once for end()
                if not self._abandon:
                    self._cv.wait(backoff)
                if self._abandon:
                    return
            backoff = min(backoff * 2, self.max_retry_interval)

    def _drain(self) -> bool:
        """Send queued ops in order, then metrics in batches. False on an outage (retry later)."""
        while True:
            with self._cv:
                if not self._ops or self._abandon:
                    break
                op = self._ops[0]
            if op[0] != "start" and self.run_id is None:
                return False  # unreachable while start is still queued at the front
            if not self._attempt(lambda op=op: self._apply(op), what=op[0]):
                return False
            with self._cv:
                self._ops.popleft()
                self._cv.notify_all()
        if self.run_id is None:
            return not self._metrics  # metrics wait for the run; back off instead of spinning
        while True:
            with self._cv:
                chunk = list(itertools.islice(self._metrics, 0, _BATCH))
            if not chunk or self._abandon:
                break
            if not self._attempt(lambda chunk=chunk: self._send_metrics(chunk), what="metrics"):
                return False
            with self._cv:
                last = chunk[-1].seq
                while self._metrics and self._metrics[0].seq <= last:
                    self._metrics.popleft()
                self._cv.notify_all()
        return True

    def _attempt(self, fn, what: str) -> bool:
        """Run one request. True when done (or refused for good and dropped), False on an outage."""
        try:
            fn()
        except Exception as e:  # never let anything out of the sender
            if (what == "start" and not is_transient(e)) or not _from_mlflow(e):
                log.error("MLflow %s failed and tracking stops: %s", what, _short(e), exc_info=not _from_mlflow(e))
                with self._cv:
                    self.failure = e
                    self._cv.notify_all()
                self._attempted.set()
                return False
            if what == "start":
                self._attempted.set()
            if is_transient(e):
                if not self.degraded:
                    self.degraded = True
                    if self.warnings == 0:
                        self.warnings += 1
                        log.warning("MLflow at %s is unreachable (%s); training continues, metrics are buffered "
                                    "and retried", self.uri, _short(e))
                return False
            log.warning("MLflow refused %s and it was dropped: %s", what, _short(e))
            return True
        if self.degraded:
            self.degraded = False
            log.info("MLflow at %s is reachable again; sending buffered records", self.uri)
        return True

    def _mlflow(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _apply(self, op: tuple) -> None:
        from mlflow.entities import Param, RunTag

        client, kind = self._mlflow(), op[0]
        if kind == "start":
            self._start_run(op[1])
        elif kind == "params":
            items = [Param(k, v) for k, v in op[1].items()]
            for i in range(0, len(items), 100):
                self._log_params_chunk(items[i:i + 100])
        elif kind == "tags":
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in op[1].items()])
        elif kind == "artifact":
            _, path, artifact_path, is_dir = op
            if is_dir:
                client.log_artifacts(self.run_id, path, artifact_path)
            else:
                client.log_artifact(self.run_id, path, artifact_path)
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        elif kind == "input":
            from data_pipeline.shards import dataset_input

            client.log_inputs(self.run_id, [dataset_input(op[1], op[2])])
        elif kind == "end":
            if self._monitor is not None:
                self._stop_monitor()
            client.set_terminated(self.run_id, status=op[1])

    def _log_params_chunk(self, items) -> None:
        try:
            self._mlflow().log_batch(self.run_id, params=items)
        except Exception as e:
            if is_transient(e) or len(items) == 1:
                raise
            for p in items:  # a resumed run with a changed value: keep the others
                try:
                    self._mlflow().log_batch(self.run_id, params=[p])
                except Exception as inner:
                    if is_transient(inner):
                        raise
                    log.warning("MLflow kept param %s unchanged (%s)", p.key, _short(inner))

    def _send_metrics(self, chunk: list[_Metric]) -> None:
        from mlflow.entities import Metric

        self._mlflow().log_batch(self.run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in chunk])

    def _start_run(self, run_id: str | None) -> None:
        client = self._mlflow()
        if run_id is not None and not self._run_exists(run_id):
            log.warning("MLflow run %s of the checkpoint no longer exists at %s (deleted, or another store); "
                        "starting a new run tagged %s=%s", run_id, self.uri, PREVIOUS_RUN_TAG, run_id)
            self.replaced_run_id, run_id = run_id, None
        if run_id is None:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
            tags = {**self.tags, **({PREVIOUS_RUN_TAG: self.replaced_run_id} if self.replaced_run_id else {})}
            run = client.create_run(exp_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            self._load_history()
        self._attempted.set()
        if self.system_metrics:
            self._start_monitor(resumed=run_id is not None)

    def _run_exists(self, run_id: str) -> bool:
        """Whether ``run_id`` is a live run of this store (a soft-deleted run is not)."""
        try:
            run = self._mlflow().get_run(run_id)
        except Exception as e:
            if is_transient(e) or not _from_mlflow(e):
                raise
            return False
        return run.info.lifecycle_stage != "deleted"

    def _load_history(self) -> None:
        """Prepend the resumed run's earlier points of the plotted metrics, for a continuous plot."""
        client = self._mlflow()
        for key in client.get_run(self.run_id).data.metrics:
            if self.history_filter in key:
                old = [(m.step, m.value) for m in client.get_metric_history(self.run_id, key)]
                with self._cv:
                    self.history[key] = old + self.history.get(key, [])

    def _start_monitor(self, resumed: bool) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed, tracking_uri=self.uri,
                                                 node_id=self.node_id)
            self._monitor.start()
        except Exception as e:  # optional extra; never fatal
            log.warning("system metrics unavailable: %s", _short(e))
            self._monitor = None

    def _stop_monitor(self) -> None:
        try:
            self._monitor.finish()
        except Exception as e:
            log.warning("stopping system metrics failed: %s", _short(e))
        self._monitor = None


def _from_mlflow(exc: BaseException) -> bool:
    """An error MLflow (or the store's connection) raised, as opposed to a bug in our own calls."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, (MlflowException, OSError)) or _caused_by(exc, "OperationalError")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def tracker_from_config(cfg: Config, node_id: str | None = None) -> Tracker:
    t = cfg.tracking
    return Tracker(uri=t.uri, experiment=t.experiment, run_name=t.run_name, tags=t.tags,
                   system_metrics=t.system_metrics, node_id=node_id)


def make_tracker(cfg: Config, rank: int, node_id: str | None = None) -> NullTracker:
    """A real ``Tracker`` on global rank 0 with tracking enabled, else a ``NullTracker``."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    return tracker_from_config(cfg, node_id)


class NodeSystemMetrics(NullTracker):
    """The tracker of the first rank of every node but rank 0's, in a multi-node run: MLflow's
    system-metrics monitor samples this machine (CPU, memory, disk, network, GPUs) into rank 0's
    run as ``system/<node_id>/...``, and the run gets the tag ``system_metrics.<node_id>`` = host,
    so a slow or hot node shows. Everything else is a no-op; MLflow trouble is never fatal."""

    def __init__(self, cfg: Config, run_id: str, node_id: str):
        import socket

        self.node_id, self._monitor = node_id, None
        uri = resolve_uri(cfg.tracking.uri)
        if uri.startswith(("http://", "https://")):  # one attempt never blocks for long (as Tracker)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).set_tag(run_id, f"system_metrics.{node_id}", socket.gethostname())
            self._monitor = SystemMetricsMonitor(run_id, resume_logging=True, node_id=node_id, tracking_uri=uri)
            self._monitor.start()
        except Exception as e:
            log.warning("system metrics of %s unavailable: %s", node_id, _short(e))
            self._monitor = None

    def end(self, status: str = "FINISHED", timeout: float = 10.0) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as e:
                log.warning("stopping system metrics of %s failed: %s", self.node_id, _short(e))
            self._monitor = None
