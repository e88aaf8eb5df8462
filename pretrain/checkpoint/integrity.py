"""Sizes and sha256 of checkpoint files, worked out by all ranks at once.

Saving: each rank hashes the files it wrote itself (still in its page cache) and rank 0 gathers
the digests for ``complete.json``; nobody hashes the whole checkpoint alone while the others wait.
Resuming: the files listed in ``complete.json`` are dealt to the ranks by size (largest first, to
the least loaded rank), each rank hashes its share, and every rank learns every problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from data_pipeline.shards import sha256_file
from pretrain import distributed as D


def digests(root: Path, paths: Iterable[Path], progress: Callable[[], None] | None = None) -> dict[str, dict]:
    """``{path relative to root: {"bytes", "sha256"}}`` of ``paths``."""
    out = {}
    for p in paths:
        out[Path(p).relative_to(root).as_posix()] = {"bytes": Path(p).stat().st_size, "sha256": sha256_file(p)}
        if progress is not None:
            progress()
    return out


def shares(files: list[dict], world: int) -> list[list[dict]]:
    """``files`` (each with ``bytes``) dealt to ``world`` ranks: largest first, each to the rank
    with the fewest bytes so far (ties: the lower rank). The same on every rank."""
    out: list[list[dict]] = [[] for _ in range(world)]
    load = [0] * world
    for f in sorted(files, key=lambda f: (-int(f["bytes"]), f["path"])):
        r = min(range(world), key=lambda i: (load[i], i))
        out[r].append(f)
        load[r] += int(f["bytes"])
    return out


def gather_to_first(obj) -> list | None:
    """Every rank's ``obj`` on rank 0 (a list by rank), None elsewhere."""
    if D.world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * D.world_size() if D.rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj) -> list:
    if D.world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * D.world_size()
    dist.all_gather_object(out, obj)
    return out


class WriteFailed(Exception):
    """Writing ``path`` failed; the cause (torch.save's errors do not name the file) is chained."""

    def __init__(self, path: Path, cause: BaseException):
        super().__init__(f"{path}: {type(cause).__name__}: {str(cause).strip()[:200]}")
        self.path, self.cause = path, cause


@contextmanager
def recording_writes(engine):
    """Yield the list of files DeepSpeed's checkpoint engine writes in this rank inside the block.
    A write that fails deletes its torn file (no partial file holds the space or looks written) and
    raises ``WriteFailed`` naming it."""
    ce = engine.checkpoint_engine
    original = ce.save
    had_own = "save" in vars(ce)
    written: list[Path] = []

    def save(state_dict, path, *args, **kwargs):
        try:
            original(state_dict, path, *args, **kwargs)
        except Exception as e:  # torch.save does no communication: any error here is this file's
            Path(path).unlink(missing_ok=True)
            raise WriteFailed(Path(path), e) from e
        written.append(Path(path))

    ce.save = save
    try:
        yield written
    finally:
        if had_own:
            ce.save = original
        else:
            del ce.save
