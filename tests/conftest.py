"""Shared fixtures. Real components only: no mocks of DeepSpeed, Ray, MLflow or tar shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRETRAIN_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_dir(*parts: str) -> Path:
    """A path under ../shared/data. Skips when absent; fails when PRETRAIN_REQUIRE_SHARED_DATA=1 (CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("PRETRAIN_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared data {path} is missing and PRETRAIN_REQUIRE_SHARED_DATA=1")
        pytest.skip(f"shared data {path} not present")
    return path


@pytest.fixture
def shared_data():
    return shared_data_dir


@pytest.fixture(autouse=True, scope="session")
def _private_mlflow_store(tmp_path_factory):
    """Runs a test does not point elsewhere go to a store of this session, not to ``mlflow.db`` in
    the checkout (in-process pipeline commands track by default). Tests of the default store unset
    ``MLFLOW_TRACKING_URI`` themselves."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow-default') / 'mlflow.db'}"
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def run_quick_demo(cwd: Path, timeout: float = 1500):
    """``python -m launch.demo --out out --quick`` in the working directory ``cwd`` (its mlflow.db,
    mlruns/ and out/ land there), asserted to succeed; returns the finished process."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the demo's own store
    proc = subprocess.run([sys.executable, "-m", "launch.demo", "--out", "out", "--quick"], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> tuple[Path, str]:
    """The reduced demo, run once per session: (its working directory, its stdout).
    tests/test_demo.py checks its artefacts, tests/test_browse.py browses its MLflow store."""
    cwd = tmp_path_factory.mktemp("demo")
    return cwd, run_quick_demo(cwd).stdout
