"""Shards as the manifest describes them: checked before use, and local copies of remote ones.

``data.verify`` decides how much is checked against ``manifest.json``:

- ``size``: every shard of the split exists with the listed size, when the source opens;
- ``open`` (default): that, and each shard's sha256 the first time a process opens it;
- ``full``: that, and every shard's sha256 when the source opens (once per process).

A missing, truncated or edited shard is a :class:`ShardError` naming it, never a silent wrong
batch. Remote shards (``s3://``, ``gs://``, ``https://``, through ``data_pipeline.storage``) are
copied whole into a local cache (``data.cache_dir``), their sha256 checked while they stream in,
and the least recently used copies are deleted once the cache passes ``data.cache_gb``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from data_pipeline import storage
from data_pipeline.shards import sha256_file

VERIFY_LEVELS = ("size", "open", "full")
_VERIFIED: set[tuple[str, str]] = set()  # (local path, sha256) checked in this process (inherited by forked workers)


class ShardError(ValueError):
    """A shard that is not what the manifest says; the message names it and the fix."""


def _fix(root: str) -> str:
    return f"the shard directory {root} no longer matches its manifest.json; rerun the `pretrain data ...` " \
           f"command that wrote it (it rewrites damaged or missing shards) or restore the file"


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"pretrain-shard-cache-{os.getuid()}")


class ShardStore:
    """The shards of one split: ``entries`` are the manifest's ``{path, bytes, sha256}`` records."""

    def __init__(self, root: str | Path, entries: list[dict], verify: str = "open", cache_dir: str | None = None,
                 cache_gb: float = 20.0):
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"data.verify={verify!r}: expected one of {VERIFY_LEVELS}")
        self.root, self.entries, self.verify = str(root), entries, verify
        self.remote = storage.is_remote(self.root)
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.cache_bytes = int(cache_gb * (1 << 30))

    def location(self, i: int) -> str:
        return storage.join(self.root, self.entries[i]["path"])

    def check_sizes(self) -> None:
        """Every shard is there with its listed size (a truncated shard fails here)."""
        for i, e in enumerate(self.entries):
            try:
                have = storage.size(self.location(i))
            except storage.StorageError as err:
                if err.kind != "not_found":
                    raise ShardError(f"shard {self.location(i)}: {err.message}") from None
                raise ShardError(f"shard {self.location(i)} listed in manifest.json is missing; "
                                 f"{_fix(self.root)}") from None
            if e.get("bytes") is not None and have is not None and have != e["bytes"]:
                raise ShardError(f"shard {self.location(i)} has {have} bytes but manifest.json lists {e['bytes']} "
                                 f"(truncated or changed); {_fix(self.root)}")

    def check_all(self) -> None:
        """``data.verify=full``: every shard's sha256 now."""
        for i in range(len(self.entries)):
            self.local(i)

    def open_check(self) -> None:
        self.check_sizes()
        if self.verify == "full":
            self.check_all()

    def local(self, i: int) -> Path:
        """A local file holding shard ``i``, its sha256 checked once per process when asked to."""
        e = self.entries[i]
        if self.remote:
            return self._cached(i)
        path = Path(self.location(i))
        if self.verify != "size" and e.get("sha256") and (str(path), e["sha256"]) not in _VERIFIED:
            if not path.is_file():
                raise ShardError(f"shard {path} listed in manifest.json is missing; {_fix(self.root)}")
            if sha256_file(path) != e["sha256"]:
                raise ShardError(f"shard {path}: sha256 differs from manifest.json (the file was changed after it "
                                 f"was written); {_fix(self.root)}")
            _VERIFIED.add((str(path), e["sha256"]))
        return path

    def _cached(self, i: int) -> Path:
        e = self.entries[i]
        key = e.get("sha256") or hashlib.sha256(self.location(i).encode()).hexdigest()
        path = self.cache_dir / f"{key}.tar"
        if path.is_file() and (e.get("bytes") is None or path.stat().st_size == e["bytes"]):
            os.utime(path)  # most recently used
            if self.verify == "size" or not e.get("sha256") or (str(path), key) in _VERIFIED:
                return path
            if sha256_file(path) == key:
                _VERIFIED.add((str(path), key))
                return path
            path.unlink()  # a damaged local copy: fetch it again
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            digest = storage.download(self.location(i), path, e.get("bytes"))
        except storage.StorageError as err:
            raise ShardError(f"shard {self.location(i)}: {err.message}; {_fix(self.root)}") from None
        if e.get("sha256") and digest != e["sha256"]:
            path.unlink(missing_ok=True)
            raise ShardError(f"shard {self.location(i)}: sha256 differs from manifest.json; {_fix(self.root)}")
        _VERIFIED.add((str(path), key))
        self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        """Delete least recently used copies until the cache fits its bound (never ``keep``)."""
        files = sorted((p for p in self.cache_dir.glob("*.tar") if p != keep), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files) + keep.stat().st_size
        for p in files:
            if total <= self.cache_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)  # a reader that has it open keeps reading it (POSIX)
