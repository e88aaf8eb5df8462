"""Fault injection for tests and drills: a rank dies, hangs, raises or signals at a named point.

``PRETRAIN_FAULT`` holds comma-separated ``ACTION@POINT[:STEP][/RANK]``, for example
``kill@backward:5`` (rank 0 SIGKILLs itself inside the backward pass of step 5) or
``hang@step:r7/1`` (rank 1 stops stepping, without dying, at a step drawn from seed 7).

- ACTION: ``kill`` (SIGKILL this rank), ``hang`` (stop making progress, stay alive), ``raise``
  (a RuntimeError), ``term`` / ``usr1`` (send SIGTERM / SIGUSR1 to the launcher: this rank's parent).
- POINT: ``step`` (before the step's first micro-batch), ``backward`` (inside the backward pass),
  ``collective`` (while the step's all-reduce is in flight), ``save`` (during a checkpoint save:
  after DeepSpeed's files, before ``complete.json``), ``setup`` (while the engine is built; no STEP).
- STEP: a step number, or ``rSEED``: a step drawn with ``random.Random(SEED)`` from the steps this
  job runs (so the point is not chosen by a test's timing, yet is reproducible).
- RANK: the global rank that acts (default 0).

The rank that acts prints the resolved point first (``[pretrain] fault drill: ...``). Every action
fires once. ``PRETRAIN_FAULT_NAN_STEPS=3,4`` (non-finite losses) is read by the trainer.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass

ACTIONS = ("kill", "hang", "raise", "term", "usr1")
POINTS = ("step", "backward", "collective", "save", "setup")
_SPEC = re.compile(r"^(?P<action>\w+)@(?P<point>\w+)(?::(?P<step>r?\d+))?(?:/(?P<rank>\d+))?$")


@dataclass
class Fault:
    action: str
    point: str
    step: str | None  # "12", "r7" (drawn), or None (setup)
    rank: int
    resolved: int | None = None
    fired: bool = False

    def describe(self) -> str:
        where = self.point if self.resolved is None else f"{self.point} of step {self.resolved}"
        return f"{self.action} at {where} on rank {self.rank}"


def parse(text: str) -> list[Fault]:
    faults = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = _SPEC.match(part)
        if not m or m["action"] not in ACTIONS or m["point"] not in POINTS or (m["point"] != "setup") != bool(m["step"]):
            raise ValueError(f"PRETRAIN_FAULT: {part!r} is not ACTION@POINT[:STEP][/RANK] with ACTION in "
                             f"{ACTIONS}, POINT in {POINTS} (setup takes no STEP)")
        faults.append(Fault(m["action"], m["point"], m["step"], int(m["rank"] or 0)))
    return faults


_FAULTS: list[Fault] = []
_RANK = 0


def install(rank: int) -> None:
    """Read ``PRETRAIN_FAULT`` for this rank (no-op when unset)."""
    global _FAULTS, _RANK
    _RANK = rank
    _FAULTS = [f for f in parse(os.environ.get("PRETRAIN_FAULT", "")) if f.rank == rank]


def set_steps(first: int, last: int) -> None:
    """The steps this job runs, ``first..last``: resolves drawn steps and announces every drill."""
    for f in _FAULTS:
        if f.step is not None and f.resolved is None:
            drawn = f.step.startswith("r")
            f.resolved = random.Random(int(f.step[1:])).randint(first, max(first, last)) if drawn else int(f.step)
        _say(f"fault drill: {f.describe()}")


def pending(point: str, step: int | None = None) -> bool:
    """Whether a drill of this rank waits at ``point`` (of ``step``)."""
    return any(not f.fired and f.point == point and (f.resolved is None or f.resolved == step) for f in _FAULTS)


def at(point: str, step: int | None = None) -> None:
    """Fire the drills of ``point`` (at ``step``) for this rank; nothing when none is set."""
    for f in _FAULTS:
        if not f.fired and f.point == point and (f.resolved is None or f.resolved == step):
            f.fired = True
            _fire(f)


def _say(text: str) -> None:
    print(f"[pretrain] {text}", file=sys.stderr, flush=True)


def _fire(f: Fault) -> None:
    _say(f"fault drill now: {f.describe()}")
    if f.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif f.action == "hang":
        while True:  # alive, holding no lock, making no progress: what a stuck rank looks like from outside
            time.sleep(3600)
    elif f.action == "raise":
        raise RuntimeError(f"fault drill: raise at {f.point}" + (f" of step {f.resolved}" if f.resolved else ""))
    else:
        os.kill(os.getppid(), signal.SIGTERM if f.action == "term" else signal.SIGUSR1)
        _wait_for_forwarded_signal()


def _wait_for_forwarded_signal(timeout_s: float = 30.0) -> None:
    """Until the launcher has passed the signal on to this rank too: the drill then acts at its
    point exactly (the stop lands on this step), not whenever the forward happens to arrive."""
    from pretrain import signals

    deadline = time.monotonic() + timeout_s
    while signals.requested() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if signals.requested() is None:
        _say(f"fault drill: the launcher did not forward the signal within {timeout_s:g} s")
