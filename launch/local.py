"""Local multi-process launcher: N ranks of one Python module on this machine.

Why not torchrun here: a preempted job must exit 0 after its ranks saved a checkpoint (torchrun
turns SIGTERM into a non-zero exit), and a rank that dies must take the others down at once with
a message naming it (ranks stuck in a collective never notice on their own). Under torchrun,
deepspeed or srun the ranks run directly and those launchers' rules apply.

The ranks die with this launcher: each asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), so a launcher killed with SIGKILL -- which can forward nothing -- leaves
no rank behind. Each rank's stdout and stderr go to the console and, like torchrun's
``--log-dir``/``--tee``, to ``<log_dir>/rank_NNNNN.log`` (appended: a resumed run keeps the old lines).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_S = 0.2
GRACE_S = 5.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def block_stop_signals() -> None:
    """Ranks start with SIGTERM/SIGUSR1 blocked: one forwarded while a rank is still starting
    waits until the trainer's handler is installed (``pretrain.signals.install`` unblocks them)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_all(procs: list[subprocess.Popen], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(POLL_S)
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def die_with_parent():
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux; elsewhere None)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def _rank_preexec():
    """Each rank: stop signals blocked until its handler is installed, and SIGKILL when we die."""
    die = die_with_parent()

    def preexec() -> None:
        block_stop_signals()
        if die is not None:
            die()

    return preexec


def rank_log(log_dir: str | os.PathLike, rank: int) -> Path:
    return Path(log_dir) / f"rank_{rank:05d}.log"


class Tee:
    """Copies a child's stdout and stderr, line by line, to our own and to one log file."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(log, "ab")  # noqa: SIM115 -- closed in close()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                        for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
        for t in self.threads:
            t.start()

    def _pump(self, src, dst) -> None:
        out = getattr(dst, "buffer", None)
        for line in iter(src.readline, b""):
            with self.lock:
                self.file.write(line)
                self.file.flush()
            if out is not None:
                try:
                    out.write(line)
                    out.flush()
                except (OSError, ValueError):  # console gone: the log file still gets everything
                    out = None
        src.close()

    def close(self, timeout: float = 5.0) -> None:
        for t in self.threads:  # a grandchild may hold the pipe open: do not wait on it forever
            t.join(timeout)
        self.file.close()


def run_ranks(nproc: int, module: str, args: list[str], master_port: int, extra_env: dict | None = None,
              log_dir: str | os.PathLike | None = None) -> int:
    """Start ``python -m module args`` as ranks 0..nproc-1 and supervise them.

    Returns 0 when every rank exits 0. SIGTERM/SIGUSR1/SIGINT are forwarded to every rank (they
    save a checkpoint and exit). When one rank fails, the rest are stopped and its code returned.
    With ``log_dir`` each rank's output is also appended to ``log_dir/rank_NNNNN.log``."""
    procs: list[subprocess.Popen] = []
    tees: list[Tee] = []
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port), WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc), **(extra_env or {}))
    pipe = subprocess.PIPE if log_dir is not None else None
    for r in range(nproc):
        env = dict(base, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=pipe, stderr=pipe,
                                      preexec_fn=_rank_preexec()))
        if log_dir is not None:
            tees.append(Tee(procs[-1], rank_log(log_dir, r)))
    try:
        return _supervise(procs, nproc)
    finally:
        for t in tees:
            t.close()


def _supervise(procs: list[subprocess.Popen], nproc: int) -> int:
    """Wait for the ranks, forwarding signals; the first failure stops the rest."""

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                print(f"pretrain: rank {rank} failed ({how}); stopping the other {nproc - 1} rank(s)",
                      file=sys.stderr, flush=True)
                _kill_all(procs, GRACE_S)
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(POLL_S)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
