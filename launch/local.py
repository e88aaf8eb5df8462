"""Local multi-process launcher: N ranks of one Python module on this machine.

Why not torchrun here: a preempted job must exit 0 after its ranks saved a checkpoint (torchrun
turns SIGTERM into a non-zero exit), and a rank that dies must take the others down at once with
a message naming it (ranks stuck in a collective never notice on their own). Under torchrun,
deepspeed or srun the ranks run directly and those launchers' rules apply.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

POLL_S = 0.2
GRACE_S = 5.0


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


def run_ranks(nproc: int, module: str, args: list[str], master_port: int, extra_env: dict | None = None) -> int:
    """Start ``python -m module args`` as ranks 0..nproc-1 and supervise them.

    Returns 0 when every rank exits 0. SIGTERM/SIGUSR1/SIGINT are forwarded to every rank (they
    save a checkpoint and exit). When one rank fails, the rest are stopped and its code returned."""
    procs: list[subprocess.Popen] = []
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port), WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc), **(extra_env or {}))
    for r in range(nproc):
        env = dict(base, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                                      preexec_fn=block_stop_signals))

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
