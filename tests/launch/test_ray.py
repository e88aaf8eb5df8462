"""Ray for real: a head and a worker raylet started with ``ray start`` on this machine
(``tests.engines``) form a two-node cluster.

- ``pretrain launch --launcher ray`` (Ray Train's TorchTrainer, a worker per rank, one on each
  node) trains like ``pretrain train --nproc 2``;
- ``pretrain data commoncrawl --ray-address auto`` and the same command under ``ray job submit``
  write exactly the bytes of an embedded-Ray run;
- a pipeline output that the two nodes see differently (the worker raylet has its own mount
  namespace with a tmpfs there) is refused with a message;
- what a failing task prints reaches the driver.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data_pipeline.warc_factory import build_corpus
from tests.engines import BIN, ray_cluster  # noqa: F401 -- the module's Ray cluster
from tests.launch.helpers import CONFIG, assert_same_losses, launch, train_overrides

pytestmark = pytest.mark.slow

PIPELINE_ARGS = ["--vocab-size", "1000", "--sample-tokens", "2048", "--samples-per-shard", "2", "--val-fraction", "0.1",
                 "--no-progress"]


def test_ray_train_on_two_raylets_trains_like_the_local_launcher(ray_cluster, reference, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    out = launch(CONFIG, *train_overrides(run_dir), "--launcher=ray", f"--ray-address={ray_cluster.address}",
                 "--nnodes=2", "--nproc-per-node=1", env=ray_cluster.env, cwd=tmp_path)
    assert "world 2 = data 2 x tensor 1" in out.stdout + out.stderr
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["rank_00000.log", "rank_00001.log"]
    assert_same_losses(run_dir, reference[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Path(build_corpus(tmp_path_factory.mktemp("warc"))["files"][0]).parent


def _pipeline(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "data", "commoncrawl", "--input", "a.warc.gz", "b.warc",
            "c.warc.wet.gz", "-o", str(out), *PIPELINE_ARGS, *extra]


def _files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _run(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _submit(cluster, entrypoint: list[str], patience_s: float = 180) -> subprocess.CompletedProcess:
    """``ray job submit`` and wait for the job. A head still starting answers "No available agent
    to submit job, please try again later" (no job was created): try again, as it says."""
    deadline = time.monotonic() + patience_s
    while True:
        proc = subprocess.run([str(BIN / "ray"), "job", "submit", f"--address={cluster.dashboard}", "--", *entrypoint],
                              env=cluster.env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
            return proc
        time.sleep(2)


def test_commoncrawl_on_the_cluster_writes_the_bytes_of_an_embedded_run(ray_cluster, corpus, tmp_path):  # noqa: F811
    env = ray_cluster.env
    _run(_pipeline(tmp_path / "embedded", "--num-cpus", "2"), {k: v for k, v in env.items() if k != "RAY_TMPDIR"},
         corpus)
    reference = _files(tmp_path / "embedded")
    assert any(name.endswith(".tar") for name in reference) and "manifest.json" in reference
    _run(_pipeline(tmp_path / "auto", "--ray-address", "auto"), env, corpus)
    assert _files(tmp_path / "auto") == reference
    entry = f"cd {corpus} && " + " ".join(_pipeline(tmp_path / "job"))  # RAY_ADDRESS comes from ray job submit
    job = _submit(ray_cluster, ["bash", "-c", entry])
    assert "succeeded" in job.stdout + job.stderr
    assert _files(tmp_path / "job") == reference


def test_pipeline_output_the_nodes_see_differently_is_refused(ray_cluster, corpus):  # noqa: F811
    if ray_cluster.private is None:
        pytest.skip("needs root and unshare to give the second node a directory of its own")
    out = ray_cluster.private / "out"
    env = dict(ray_cluster.env, PRETRAIN_SHARED_FS_TIMEOUT="2")  # a missing marker is not waited for long
    proc = subprocess.run(_pipeline(out, "--ray-address", "auto"), cwd=corpus, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "is not one directory shared by all 2 Ray nodes" in proc.stderr, proc.stderr[-3000:]
    assert not (out / "manifest.json").exists()


FAILING_TASK = """
import io, sys, time
from data_pipeline.ray_runtime import ray_session

seen = io.StringIO()
class Tee(io.TextIOBase):  # what reaches the driver's stdout/stderr, kept to look at
    def __init__(self, out): self.out = out
    def write(self, s): seen.write(s); return self.out.write(s)
    def flush(self): self.out.flush()
sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)

with ray_session("auto") as ray:
    @ray.remote(max_retries=0)
    def parse(x):
        print("worker says: cannot parse record", x, flush=True)
        raise ValueError("bad record")
    try:
        ray.get(parse.remote(7))
    except Exception as e:
        print("driver got", type(e).__name__, flush=True)
    deadline = time.monotonic() + 60
    while "worker says: cannot parse record 7" not in seen.getvalue() and time.monotonic() < deadline:
        time.sleep(0.2)
    print("FORWARDED" if "worker says" in seen.getvalue() else "NOT FORWARDED", flush=True)
"""


def test_a_failing_tasks_output_reaches_the_driver(ray_cluster):  # noqa: F811
    proc = subprocess.run([sys.executable, "-c", FAILING_TASK], env=ray_cluster.env, capture_output=True, text=True,
                          timeout=300)
    assert "driver got" in proc.stdout, proc.stderr[-3000:]
    assert "FORWARDED" in proc.stdout.splitlines(), proc.stdout[-2000:] + proc.stderr[-2000:]
