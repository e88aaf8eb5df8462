"""Starting and stopping Ray for the pipelines: embedded local Ray by default, a cluster with an address.

Which Ray a pipeline uses:
- ``address`` given (``host:port``, ``ray://...``, or ``auto``: the cluster this node belongs to,
  as ``ray start`` recorded it): join that cluster and leave it running;
- else ``$RAY_ADDRESS`` (set by ``ray job submit`` for its entrypoint, or by the user): join it;
- else an embedded local Ray with ``num_cpus`` workers, shut down afterwards -- even on a node
  where ``ray start`` ran (pass ``auto`` to use that one).
Only an embedded Ray takes ``num_cpus``: Ray refuses it when joining a cluster. Workers' output
reaches the driver, so a failing task is visible where the pipeline was started.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, shared_dir: str | os.PathLike | None = None):
    """Yield an initialised Ray (see the module docstring for which one). A Ray already
    initialised by the caller is reused and left alone. With ``shared_dir``, a cluster of several
    nodes must show every node that directory (``check_shared_dir``)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": True, "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:  # "local": a new Ray, not whatever `ray start` left recorded on this machine
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(**kwargs)
    try:
        if shared_dir is not None:
            check_shared_dir(ray, shared_dir)
        yield ray
    finally:
        ray.shutdown()


class SharedStorageError(ValueError):
    """Nodes of the Ray cluster see different directories at the same path."""


SHARED_CHECK_TIMEOUT_S = float(os.environ.get("PRETRAIN_SHARED_FS_TIMEOUT", "30"))


def _mark(marks: str, name: str) -> None:
    Path(marks).mkdir(parents=True, exist_ok=True)
    (Path(marks) / name).write_text(name)


def _unmark(marks: str, name: str) -> None:
    with contextlib.suppress(OSError):
        (Path(marks) / name).unlink()
    with contextlib.suppress(OSError):
        Path(marks).rmdir()  # the last one out removes the directory


def _missing(marks: str, names: list[str], timeout_s: float) -> list[str]:
    """Markers not visible here after up to ``timeout_s`` (network filesystems show new files late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [n for n in names if not (Path(marks) / n).exists()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.2)


def check_shared_dir(ray, path: str | os.PathLike, timeout_s: float | None = None) -> None:
    """Every alive node of the cluster and this driver must see the same ``path``: each writes a
    marker there, and each must see all of them. Raises ``SharedStorageError`` naming the nodes
    that do not. One node: nothing to check."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    if len(nodes) < 2:
        return
    timeout_s = SHARED_CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    marks = str(Path(path).resolve() / f".shared-check-{os.urandom(6).hex()}")
    names = ["driver", *nodes]
    mark, unmark, missing = (ray.remote(num_cpus=0)(f) for f in (_mark, _unmark, _missing))

    def on(node):
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}

    _mark(marks, "driver")
    try:
        ray.get([mark.options(**on(n)).remote(marks, n) for n in nodes])
        views = dict(zip(nodes, ray.get([missing.options(**on(n)).remote(marks, names, timeout_s) for n in nodes])))
        views["driver"] = _missing(marks, names, timeout_s)
    finally:  # each node removes its own marker: on a node that does not share the path, it is elsewhere
        ray.get([unmark.options(**on(n)).remote(marks, n) for n in nodes])
        _unmark(marks, "driver")
    blind = {who: miss for who, miss in views.items() if miss}
    if blind:
        detail = "; ".join(f"{'the driver' if who == 'driver' else 'node ' + who[:12]} does not see the markers of "
                           + ", ".join("the driver" if m == "driver" else m[:12] for m in miss)
                           for who, miss in blind.items())
        raise SharedStorageError(f"{path} is not one directory shared by all {len(nodes)} Ray nodes: {detail}. "
                                 "Put inputs and outputs on a filesystem every node mounts at the same path "
                                 "(NFS, Lustre, ...) or on object storage")
