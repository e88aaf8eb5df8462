"""Stop requests: SIGTERM and SIGUSR1 make a run save a checkpoint and exit 0.

Installed by ``pretrain train`` before anything heavy is imported, so a signal that arrives while
a rank is still starting (imports, process group, engine) is recorded and honoured at the first
step boundary instead of killing the rank. No heavy imports here.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_STOP: dict = {"signal": None}


def _record(signum, _frame) -> None:
    _STOP["signal"] = signum


def install() -> None:
    """Record SIGTERM/SIGUSR1 from now on (idempotent). A launcher that starts ranks with these
    signals blocked (``launch.local``) closes the window before this runs: a signal sent then stays
    pending and is delivered here, once the handler is in place."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def block_in_child() -> None:
    """``preexec_fn`` for rank processes: start with the stop signals blocked (the mask survives
    exec), so one that arrives before ``install`` waits instead of killing the rank."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def requested() -> int | None:
    """The stop signal received so far, or None."""
    return _STOP["signal"]
