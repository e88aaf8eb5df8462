"""Real engines on this one machine, for tests: a one-node SLURM cluster (munged, slurmctld,
slurmd), a two-raylet Ray cluster (``ray start`` head + worker), and an sshd for DeepSpeed's
hostfile runner (pdsh over ssh).

Each engine lives in a private temp directory with free ports, its daemons run in their own
process sessions, and teardown stops exactly those (by pid, then their session) -- never by name:
other Ray or SLURM processes on the machine are left alone. Recipes: the team's ENGINES.md.

Use the fixtures (module-scoped) by importing them into a test module::

    from tests.engines import ray_cluster, slurm_cluster, sshd  # noqa: F401
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launch.local import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _skip_or_fail(what: str) -> None:
    """A missing engine binary fails under CI (``.ci/run`` installs them) and skips elsewhere."""
    if os.environ.get("PRETRAIN_REQUIRE_ENGINES") == "1":
        pytest.fail(f"{what} is not installed and PRETRAIN_REQUIRE_ENGINES=1")
    pytest.skip(f"{what} is not installed")


def _require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None and not Path(p).exists()]
    if missing:
        _skip_or_fail(", ".join(missing))


def short_tmpdir(prefix: str) -> Path:
    """A temp dir with a short path: Ray and munge put unix sockets under it (108-byte limit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def base_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"})
    env.update(extra or {})
    return env


class Daemon:
    """One started process in its own session; ``stop`` ends it and anything left in its session."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
                 user: str | None = None):
        self.name, self.log = name, log
        if user is not None and user != getpass.getuser():
            cmd = ["runuser", "-u", user, "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env=env, cwd=cwd, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        pgid = self.proc.pid  # its own session: the group id is its pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def wait_until(predicate, timeout: float, what: str, daemons: list[Daemon] = (), interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for d in daemons:
            if not d.alive():
                raise RuntimeError(f"{d.name} exited ({d.proc.returncode}) before {what}:\n{d.tail()}")
        time.sleep(interval)
    tails = "\n".join(f"--- {d.name}\n{d.tail()}" for d in daemons)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{tails}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def stop_all(daemons: list[Daemon]) -> None:
    for d in reversed(daemons):
        d.stop()


# ----------------------------------------------------------------------------------------------
# SLURM: munged + slurmctld + slurmd, one node with this machine's CPUs
# ----------------------------------------------------------------------------------------------
SLURM_CONF = """\
ClusterName=pretrain-test
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={munge_socket},cred_expire=20
CredType=cred/munge
SlurmUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
KillWait=5
# job ids (and the training port derived from them) differ from run to run on a shared machine
FirstJobId={first_job}
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    dir: Path
    conf: Path
    host: str
    env: dict
    daemons: list[Daemon] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...). A busy controller
        now and then drops a query (SIGPIPE): asked again, a few times."""
        for attempt in range(5):
            proc = self.run("scontrol", "-o", "show", "job", job_id, check=attempt == 4)
            if proc.returncode == 0:
                break
            time.sleep(0.5)
        out = proc.stdout
        fields = {}
        for token in out.split():
            if "=" in token:
                k, v = token.split("=", 1)
                fields[k] = v
        return fields

    def wait_job(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        return wait_until(lambda: (j := self.job(job_id)).get("JobState") in states and j, timeout,
                          f"job {job_id} in {states}", self.daemons, interval=0.5)


def start_slurm(cpus: int | None = None) -> SlurmCluster:
    _require("munged", "slurmctld", "slurmd", "sbatch")
    d = short_tmpdir("slurm")
    user = getpass.getuser()
    host = socket.gethostname().split(".")[0]
    munge_dir = d / "munge"
    munge_dir.mkdir()
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    daemons: list[Daemon] = []
    env = base_env({"SLURM_CONF": str(d / "slurm.conf")})
    try:
        munge_user = "munge" if user == "root" else None  # munged refuses root; as a user it runs as that user
        if munge_user:
            d.chmod(0o755)  # munged (its own user) must reach its directory
            shutil.chown(munge_dir, munge_user, munge_user)
        socket_path = munge_dir / "munge.socket"
        daemons.append(Daemon("munged", ["munged", "-F", "-f", f"--socket={socket_path}",
                                         f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                                         f"--seed-file={munge_dir}/munged.seed"],
                              d / "munged.out", user=munge_user))
        wait_until(socket_path.exists, 30, "munged's socket", daemons)
        (d / "slurm.conf").write_text(SLURM_CONF.format(
            host=host, munge_socket=socket_path, user=user, ctld_port=free_port(), d_port=free_port(), dir=d,
            cpus=cpus or os.cpu_count() or 2, first_job=random.randrange(1000, 19000)))
        daemons.append(Daemon("slurmctld", ["slurmctld", "-D", "-i", "-f", str(d / "slurm.conf")],
                              d / "slurmctld.out", env=env))
        daemons.append(Daemon("slurmd", ["slurmd", "-D", "-f", str(d / "slurm.conf")], d / "slurmd.out", env=env))
        cluster = SlurmCluster(dir=d, conf=d / "slurm.conf", host=host, env=env, daemons=daemons)

        def node_idle():
            out = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            return out.startswith("idle")

        wait_until(node_idle, 60, "the SLURM node to be idle", daemons, interval=0.5)
        return cluster
    except BaseException:
        stop_all(daemons)
        raise


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    cluster = start_slurm()
    try:
        yield cluster
    finally:
        cluster.run("scancel", "--user", getpass.getuser(), check=False)
        stop_all(cluster.daemons)
        shutil.rmtree(cluster.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Ray: two raylets (head + worker), one CPU each, private RAY_TMPDIR, dashboard for `ray job submit`
# ----------------------------------------------------------------------------------------------
@dataclass
class RayCluster:
    dir: Path
    address: str  # GCS host:port
    dashboard: str  # http://127.0.0.1:port (job submission)
    env: dict  # RAY_TMPDIR (so `--ray-address auto` finds this cluster), no auth token needed
    private: Path | None  # a directory the two nodes see differently (None where that cannot be made)
    daemons: list[Daemon] = field(default_factory=list)


def _own_mount_namespace(cmd: list[str], private: Path) -> list[str] | None:
    """``cmd`` in a mount namespace of its own where ``private`` is an empty tmpfs: a second node
    that does not share that directory with the first. None without root or ``unshare``."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    script = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(private), *cmd]


def start_ray_cluster(cpus_per_node: int = 1) -> RayCluster:
    ray = BIN / "ray"
    _require(str(ray))
    d = short_tmpdir("rt")
    port, dash = free_port(), free_port()
    # Ray 2.60's token auth would keep the token in ~/.ray, shared by everyone on the machine
    # Ray runs its workers at nice 15; on this machine, shared with other busy processes, that
    # starves a training for minutes, so the test cluster's workers run at the usual priority
    env = base_env({"RAY_TMPDIR": str(d), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_DEDUP_LOGS": "0", "RAY_worker_niceness": "0"})
    common = ["--block", f"--num-cpus={cpus_per_node}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
              "--disable-usage-stats"]
    daemons: list[Daemon] = []
    try:
        daemons.append(Daemon("ray head", [str(ray), "start", "--head", f"--port={port}", "--include-dashboard=true",
                                           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *common],
                              d / "head.log", env=env, cwd=d))
        wait_until(lambda: port_open(port), 120, "the Ray head's GCS port", daemons)
        # the worker raylet starts while the head brings up its dashboard
        worker = [str(ray), "start", f"--address=127.0.0.1:{port}", *common]
        private = d / "private"
        private.mkdir()
        apart = _own_mount_namespace(worker, private)
        daemons.append(Daemon("ray worker", apart or worker, d / "worker.log", env=env, cwd=d))
        for dm in daemons:
            wait_until(lambda dm=dm: "Ray runtime started" in dm.tail(100_000), 180, f"{dm.name} to start", daemons)
        wait_until(lambda: port_open(dash), 60, "the Ray dashboard", daemons)
        return RayCluster(dir=d, address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", env=env,
                          private=private if apart else None, daemons=daemons)
    except BaseException:
        stop_all(daemons)
        raise


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    cluster = start_ray_cluster()
    try:
        yield cluster
    finally:
        stop_all(cluster.daemons)
        shutil.rmtree(cluster.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# sshd on a free port with a private key, for DeepSpeed's runner (it reaches every host by ssh)
# ----------------------------------------------------------------------------------------------
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv *
"""

SSH_CONFIG = """\
Host localhost 127.0.0.1
  Port {port}
  IdentityFile {dir}/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
"""


@dataclass
class Sshd:
    dir: Path
    port: int
    env: dict  # PATH starts with an `ssh` that uses this server's client config and key
    daemons: list[Daemon] = field(default_factory=list)


def start_sshd() -> Sshd:
    _require("/usr/sbin/sshd", "ssh", "ssh-keygen", "pdsh")
    d = short_tmpdir("sshd")
    port = free_port()
    daemons: list[Daemon] = []
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id_ed25519")], check=True)
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=d))
        (d / "ssh_config").write_text(SSH_CONFIG.format(port=port, dir=d))
        bin_dir = d / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d}/ssh_config "$@"\n')
        wrapper.chmod(0o755)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        daemons.append(Daemon("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], d / "sshd.log"))
        wait_until(lambda: port_open(port), 30, "sshd", daemons)
        env = base_env()
        env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
        return Sshd(dir=d, port=port, env=env, daemons=daemons)
    except BaseException:
        stop_all(daemons)
        raise


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    server = start_sshd()
    try:
        yield server
    finally:
        stop_all(server.daemons)
        shutil.rmtree(server.dir, ignore_errors=True)
