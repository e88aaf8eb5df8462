"""Deterministic WebDataset tar shards and atomic file writes, shared by the text and image pipelines.

A shard is a plain POSIX (ustar) tar: every member has mtime 0, uid/gid 0, empty owner names and
mode 0644, members appear in the order given, and the archive ends with the two zero blocks the
format requires -- without Python's padding to 10 KiB records, which would cost small shards more
than the 10% overhead budget. Same samples in, same bytes out, on any machine.

Writes go to ``<name>.tmp-<pid>`` and are renamed into place only when complete and fsynced, so a
crash never leaves a file under its final name that looks finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE  # 512


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


@dataclass
class ShardInfo:
    """One finished shard, as recorded in manifest.json (``path`` relative to the output dir)."""

    path: str
    samples: int
    bytes: int
    sha256: str
    payload_bytes: int  # sum of member sizes; bytes - payload_bytes = tar overhead

    def to_dict(self) -> dict:
        return asdict(self)


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def encode_sample(key: str, fields: Mapping[str, bytes]) -> tuple[bytes, int]:
    """Tar bytes of one WebDataset sample: members ``<key>.<field>`` in the given field order."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/' (WebDataset splits on them)")
    out = io.BytesIO()
    payload = 0
    for field, data in fields.items():
        out.write(_member_header(f"{key}.{field}", len(data)))
        out.write(data)
        pad = (-len(data)) % BLOCK
        if pad:
            out.write(b"\0" * pad)
        payload += len(data)
    return out.getvalue(), payload


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path):
    """Open ``path`` for writing under a temporary name; on a clean exit flush, fsync and rename
    it into place (then fsync the directory), on any error delete it. Readers never see a partial file."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_samples(f, rel_path: str, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> ShardInfo:
    """Write ``samples`` ((key, {field: bytes}) pairs) as one tar to the open binary file ``f``."""
    h = hashlib.sha256()
    n = payload = size = 0
    for key, fields in samples:
        data, p = encode_sample(key, fields)
        f.write(data)
        h.update(data)
        n, payload, size = n + 1, payload + p, size + len(data)
    end = b"\0" * (2 * BLOCK)
    f.write(end)
    h.update(end)
    size += len(end)
    return ShardInfo(path=rel_path, samples=n, bytes=size, sha256=h.hexdigest(), payload_bytes=payload)


def write_shard(out_dir: str | Path, rel_path: str, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> ShardInfo:
    """Write ``samples`` ((key, {field: bytes}) pairs) to ``out_dir/rel_path`` atomically."""
    with atomic_file(Path(out_dir) / rel_path) as f:
        return write_samples(f, rel_path, samples)


def shard_problem(path: str | Path, size: int | None, sha256: str | None = None) -> str | None:
    """Why the local file ``path`` is not the shard a manifest describes (missing, another size,
    another sha256 when given), or None when it is."""
    try:
        have = os.stat(path).st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size is not None and have != size:
        return f"{path}: {have} bytes, the manifest says {size} (truncated or changed after it was written)"
    if sha256 is not None and sha256_file(path) != sha256:
        return f"{path}: sha256 differs from the manifest's (the file was changed after it was written)"
    return None


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_json_atomic(path: str | Path, obj) -> None:
    """JSON with sorted keys and a trailing newline, so equal content is equal bytes."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def remove_stale_temps(out_dir: str | Path) -> int:
    """Delete ``*.tmp-<pid>`` files a killed run left behind; returns how many."""
    n = 0
    for p in Path(out_dir).rglob("*.tmp-*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json; is {out_dir} a shard directory written by `pretrain data`?")
    return json.loads(path.read_text())


DATASET_DIGEST_CHARS = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE


def shard_dataset(out_dir: str | Path, manifest_bytes: bytes | None = None) -> dict:
    """What names a shard directory as a dataset (MLflow's dataset input): name, digest, source,
    profile, full sha256. ``out_dir`` is a local directory, or a URI (s3://, gs://, https://)
    whose ``manifest.json`` the caller read into ``manifest_bytes``."""
    remote = "://" in str(out_dir)
    uri = str(out_dir).rstrip("/") if remote else str(Path(out_dir).resolve())
    raw = manifest_bytes if manifest_bytes is not None else (Path(uri) / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    sha = hashlib.sha256(raw).hexdigest()
    splits = {name: {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
              | {"shards": len(entry.get("shards", []))} for name, entry in manifest.get("splits", {}).items()}
    profile = {"kind": manifest.get("kind"), "manifest_sha256": sha, "splits": splits}
    if manifest.get("kind") == "image":
        profile["classes"] = len(manifest.get("classes", []))
    return {"name": uri.rsplit("/", 1)[-1], "digest": sha[:DATASET_DIGEST_CHARS], "source": json.dumps({"uri": uri}),
            "profile": json.dumps(profile), "sha256": sha}


def dataset_input(record: dict, context: str):
    """``shard_dataset``'s record as the ``mlflow.entities.DatasetInput`` of ``log_inputs``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=record["name"], digest=record["digest"], source_type="local", source=record["source"],
                      profile=record["profile"])
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context),
                                       InputTag("manifest_sha256", record["sha256"])])
