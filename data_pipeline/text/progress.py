"""Progress of a long text-pipeline run: one line per stage every few seconds, to stderr.

Each line says how many of the stage's tasks are done, documents/s and MB/s so far, the ETA
(by input bytes when their sizes are known, else by tasks) and, while reading, the funnel: how
many documents each filter stage dropped so far. Lines rather than a redrawn bar, so that logs of
cluster jobs stay readable. The driver keeps only running sums here, never per-document state.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from data_pipeline.text.config import STAGES


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StageProgress:
    """Running totals of one stage; ``update`` with each finished task's result."""

    def __init__(self, desc: str, tasks: int, total_bytes: int | None = None, enabled: bool = True,
                 interval: float = 5.0, stream=None):
        self.desc, self.tasks, self.total_bytes = desc, tasks, total_bytes
        self.enabled, self.interval, self.stream = enabled and tasks > 0, interval, stream or sys.stderr
        self.done = self.documents = self.bytes = self.kept = 0
        self.dropped: Counter = Counter()
        self.start = self.last = time.monotonic()

    def update(self, result: dict | None, nbytes: int | None = None) -> None:
        self.done += 1
        if isinstance(result, dict):
            self.documents += int(result.get("documents", 0) or 0)
            if "kept_stage1" in result:
                self.kept += int(result["kept_stage1"])
                for key, n in (result.get("dropped") or {}).items():
                    self.dropped[key.split("/", 1)[0]] += n
        self.bytes += nbytes if nbytes is not None else int((result or {}).get("bytes", 0) or 0)
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.interval or self.done == self.tasks):
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        parts = [f"{self.desc}: {self.done}/{self.tasks} tasks"]
        if self.documents:
            parts.append(f"{self.documents:,} documents ({self.documents / elapsed:,.0f} docs/s)")
        if self.bytes:
            parts.append(f"{self.bytes / 1e6:,.1f} MB ({self.bytes / 1e6 / elapsed:,.2f} MB/s)")
        if self.done < self.tasks:
            share = (self.bytes / self.total_bytes if self.total_bytes else self.done / self.tasks) or 1e-9
            parts.append(f"ETA {_duration(elapsed / share - elapsed)}")
        else:
            parts.append(f"took {_duration(elapsed)}")
        line = ", ".join(parts)
        if self.kept or self.dropped:
            funnel = " ".join(f"{s} -{self.dropped[s]:,}" for s in STAGES if self.dropped.get(s))
            line += f" | kept {self.kept:,}" + (f" (dropped: {funnel})" if funnel else "")
        return line
