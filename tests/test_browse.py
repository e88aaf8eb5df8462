"""Browsing the demo's MLflow store for real: `mlflow server` on 127.0.0.1 over the reduced demo's
``mlflow.db`` (the session fixture ``quick_demo`` of tests/conftest.py, which tests/test_demo.py
checks), and headless Chromium rendering MLflow's UI (a JavaScript app): the experiment page lists
the demo's runs, a run page shows its metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mlflow_server import Server

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--virtual-time-budget=20000"]
pytestmark = pytest.mark.timeout(1800)  # the first test to need it makes the reduced demo (quick_demo)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no chromium: `.ci/run` installs the Debian package (apt-get install -y chromium)")


class DemoStoreServer(Server):
    """The tests' `mlflow server`, over an existing store instead of a fresh one."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.store = root

    def launch(self) -> None:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
               "--default-artifact-root", str(self.store / "mlruns"), "--host", "127.0.0.1", "--port",
               str(self.port), "--workers", "1"]
        log = open(self.store / "server.log", "ab")  # noqa: SIM115 -- owned by the subprocess
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def server(quick_demo):
    cwd, _ = quick_demo
    srv = DemoStoreServer(cwd)
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def demo_runs(server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)  # through the server, as the UI reads it
    exp = client.get_experiment_by_name("demo")
    return exp.experiment_id, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def rendered_text(url: str, tmp_path: Path, want: list[str], tries: int = 4) -> str:
    """The page's DOM after its scripts ran, as text; retried until every ``want`` string is there
    (the UI fills in after its API calls answer)."""
    dom = ""
    for attempt in range(tries):
        profile = tmp_path / f"chromium-profile-{attempt}"
        proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=180)
        dom = proc.stdout
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
        if all(w in text for w in want):
            return text
        time.sleep(2)
    raise AssertionError(f"{url}: {[w for w in want if w not in dom]} not in the rendered page "
                         f"(chromium exit {proc.returncode}; {len(dom)} chars; stderr {proc.stderr[-1500:]})")


def test_experiment_page_lists_the_demo_runs(server, demo_runs, tmp_path):
    exp_id, runs = demo_runs
    want = ["demo-gpt", "demo-bert", "demo-vit", "commoncrawl text", "imagenet images", "demo-sweep"]
    assert set(want) <= set(runs)
    text = rendered_text(f"{server.uri}/#/experiments/{exp_id}/runs", tmp_path, want)
    # the datasets column: training runs read the shards the pipeline runs wrote
    assert re.search(r"text \([0-9a-f]{36}\) train", text) and re.search(r"text \([0-9a-f]{36}\) output", text)
    assert re.search(r"images \([0-9a-f]{36}\) train", text), text[:3000]


def test_run_page_shows_the_runs_metrics(server, demo_runs, tmp_path):
    exp_id, runs = demo_runs
    run = runs["demo-vit"]
    value = run.data.metrics["eval/top1"]
    text = rendered_text(f"{server.uri}/#/experiments/{exp_id}/runs/{run.info.run_id}", tmp_path,
                         ["demo-vit", "eval/top1", "Registered models"])
    shown = re.search(r"eval/top1 ([0-9.]+)", text)
    assert shown is not None and abs(float(shown.group(1)) - value) < 1e-6, text[:3000]
    version = run.data.tags["export.registered"].rsplit("/", 1)[1]  # 2 after test_demo's resumed rerun
    assert f"demo-vit v{version}" in text and f"export.path : {run.data.tags['export.path']}" in text
