"""Hang detection: a rank that stops making progress without dying ends the job, named, within
``train.hang_timeout_s`` -- not after the process group's 30-minute collective timeout.

Every rank runs one ``Watchdog`` thread. The training loop marks its progress (step and phase:
data, forward, backward, optimizer, all-reduce, eval, checkpoint) -- an assignment, no I/O. The
thread publishes that progress to the process group's key-value store (the TCPStore every launcher
sets up: torchrun's agent, or rank 0 under ``--nproc``/SLURM/deepspeed) and, when its own rank has
not moved for the timeout, reads the others' to find the rank everybody waits for: the one
furthest behind, or one whose heartbeat stopped (a process frozen as a whole). It prints the
diagnosis and exits with ``EXIT_HANG``; the launcher then stops the rest, as for any failed rank.
Waiting ranks exit a moment after the laggard, so a launcher that names the first rank to exit
names the stuck one. Works the same under every launcher, since each rank watches itself.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

EXIT_HANG = 4
PHASES = ("start", "data", "forward", "backward", "optimizer", "all-reduce", "eval", "checkpoint", "done")
_KEY = "pretrain/heartbeat/{}"


class Watchdog:
    def __init__(self, timeout_s: float, rank: int, world: int, store=None, exit_code: int = EXIT_HANG):
        self.timeout, self.rank, self.world, self.store, self.exit_code = timeout_s, rank, world, store, exit_code
        self.interval = max(0.2, min(5.0, timeout_s / 5))
        self.progress = (0, "start")
        self.moved = time.monotonic()
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pretrain-watchdog", daemon=True)

    def mark(self, step: int, phase: str) -> None:
        """This rank made progress: it is now in ``phase`` of ``step`` (cheap; training thread)."""
        self.progress = (step, phase)
        self.moved = time.monotonic()

    def start(self) -> Watchdog:
        if self.timeout > 0:
            self.moved = time.monotonic()
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._publish()
            stalled = time.monotonic() - self.moved
            if stalled > self.timeout and not self._stop.is_set():
                self._end_job(stalled)

    def _publish(self) -> None:
        if self.store is None:
            return
        self._seq += 1
        step, phase = self.progress
        beat = {"seq": self._seq, "step": step, "phase": phase, "time": time.time(), "stalled_s": time.monotonic() - self.moved}
        try:
            self.store.set(_KEY.format(self.rank), json.dumps(beat))
        except Exception:  # the store's host is gone: the launcher is tearing the job down anyway
            pass

    def _beats(self) -> dict[int, dict]:
        out = {}
        if self.store is None:
            return out
        for r in range(self.world):
            key = _KEY.format(r)
            try:
                if self.store.check([key]):
                    out[r] = json.loads(self.store.get(key))
            except Exception:
                continue
        return out

    def _end_job(self, stalled: float) -> None:
        culprits, text = diagnose(self._beats(), self.rank, self.progress, stalled, self.timeout, self.world)
        if self.rank == 0 or self.rank in culprits:
            print(f"pretrain: {text} (train.hang_timeout_s={self.timeout:g}); ending the job", file=sys.stderr,
                  flush=True)
        if culprits and self.rank not in culprits:
            time.sleep(min(2.0, self.interval * 2))  # let the stuck rank exit first: launchers name the first
        os._exit(self.exit_code)


def _order(beat: dict) -> tuple[int, int]:
    phase = beat.get("phase")
    return int(beat.get("step", 0)), PHASES.index(phase) if phase in PHASES else 0


def diagnose(beats: dict[int, dict], me: int, mine: tuple[int, str], stalled: float, timeout: float,
             world: int) -> tuple[list[int], str]:
    """(the ranks the job waits for, a one-line diagnosis) from every rank's last heartbeat."""
    beats = dict(beats)
    beats[me] = {"step": mine[0], "phase": mine[1], "time": time.time()}
    now = time.time()
    silent = sorted(r for r in range(world) if r not in beats or now - float(beats[r].get("time", 0)) > timeout)
    if silent:
        return silent, (f"rank(s) {_ranks(silent)} sent no heartbeat for over {timeout:g} s (frozen or gone); "
                        f"rank {me} has waited {stalled:.0f} s in {mine[1]} of step {mine[0]}")
    lowest = min(_order(b) for b in beats.values())
    behind = sorted(r for r, b in beats.items() if _order(b) == lowest)
    step, phase = lowest[0], PHASES[lowest[1]]
    if len(behind) == len(beats):
        return [], f"all {world} ranks stopped in {phase} of step {step} for {stalled:.0f} s (a collective that never completes?)"
    return behind, f"rank(s) {_ranks(behind)} stopped making progress in {phase} of step {step}; the others wait for it"


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:16])) + (f" and {len(ranks) - 16} more" if len(ranks) > 16 else "")


def default_store():
    """The process group's key-value store, or None (single process, or not initialised)."""
    try:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None
