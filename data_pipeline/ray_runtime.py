"""Starting and stopping Ray for the pipelines: embedded local Ray by default, a cluster with an address."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Yield an initialised Ray. With no address an embedded local Ray is started (``num_cpus``
    workers at most) and shut down afterwards; with an address the job joins that cluster and
    leaves it running. A Ray already initialised by the caller is reused and left alone."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": False, "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        kwargs["include_dashboard"] = False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
