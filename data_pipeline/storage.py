"""Local paths and remote URIs behind one small interface, for the pipelines and the training loader.

This is the one neutral helper module both ``data_pipeline`` and ``pretrain`` import (beside the
shard contract, ``shards.py``). A location is a local path or a URI: ``s3://bucket/key`` and
``gs://bucket/key`` through pyarrow's filesystems (read and write), ``http(s)://host/path``
through fsspec's HTTP filesystem (read only). Every write is atomic: local files go to a temp
name and are renamed; an object is uploaded in one request from a local spool file, so a reader
never sees a partial object and a failed upload leaves nothing under the name.

S3 settings come from the usual environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(or a profile, a web identity, the EC2 metadata service), ``AWS_REGION``, and
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible server;
``AWS_NO_SIGN_REQUEST=1`` reads public buckets anonymously. Errors are :class:`StorageError`,
naming the location and what is wrong (no such file, permission or credentials, I/O).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")
CHUNK = 8 << 20


class StorageError(OSError):
    """A location that cannot be used: ``kind`` is ``not_found``, ``permission``, ``credentials``,
    ``read_only`` or ``io``."""

    def __init__(self, location: str, message: str, kind: str = "io"):
        super().__init__(f"{location}: {message}")
        self.location, self.message, self.kind = location, message, kind

    def __reduce__(self):  # raised in Ray tasks, re-raised in the driver
        return StorageError, (self.location, self.message, self.kind)


def scheme(location: str) -> str:
    head, sep, _ = str(location).partition("://")
    return head.lower() if sep and head[:1].isalpha() and head.replace("+", "").replace("-", "").isalnum() else ""


def is_remote(location: str | Path) -> bool:
    return scheme(str(location)) in REMOTE_SCHEMES


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...``: a URI stays a URI, a local path stays a local path."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(str(base), *parts)


def absolute(location: str | Path) -> str:
    """Workers on other nodes or with another working directory need absolute local paths."""
    return str(location) if is_remote(location) else os.path.abspath(str(location))


# -- credentials and filesystems ---------------------------------------------------------------
def s3_credentials() -> str | None:
    """Where S3 credentials would come from, or None when there are none (checked before any job
    starts, so a missing key is a clear error and not a failure in every task)."""
    env = os.environ
    if env.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes"):
        return "anonymous (AWS_NO_SIGN_REQUEST)"
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return "AWS_ACCESS_KEY_ID"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or \
            env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return "web identity or container credentials"
    files = [env.get("AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials")),
             env.get("AWS_CONFIG_FILE", os.path.expanduser("~/.aws/config"))]
    if env.get("AWS_PROFILE") or any(os.path.isfile(f) for f in files):
        return "AWS profile"
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true" and _metadata_service_answers():
        return "EC2 instance metadata"
    return None


@functools.lru_cache(maxsize=1)
def _metadata_service_answers() -> bool:
    try:
        with socket.create_connection(("169.254.169.254", 80), timeout=0.3):
            return True
    except OSError:
        return False


def _s3_filesystem():
    import pyarrow.fs as pafs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        url_scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/") if host else endpoint, scheme=url_scheme if host else "https",
                      force_virtual_addressing=False)
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes"):
        kwargs["anonymous"] = True
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _filesystem(kind: str, env_key: tuple):
    import pyarrow.fs as pafs

    if kind == "s3":
        return _s3_filesystem()
    if kind in ("gs", "gcs"):
        return pafs.GcsFileSystem()
    if kind in ("http", "https"):
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(kind)))
    return pafs.LocalFileSystem()


def filesystem(location: str):
    """(pyarrow filesystem, path inside it) for a location."""
    kind = scheme(location) if is_remote(location) else ""
    if kind == "s3" and s3_credentials() is None:
        raise StorageError(location, "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                     "AWS_PROFILE, or AWS_NO_SIGN_REQUEST=1 for a public bucket)", "credentials")
    env_key = tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION",
                                                  "AWS_ACCESS_KEY_ID", "AWS_NO_SIGN_REQUEST"))
    fs = _filesystem(kind, env_key if kind == "s3" else ())
    if kind in ("http", "https") or not kind:
        return fs, str(location)
    return fs, str(location).split("://", 1)[1]


_NOT_FOUND = re.compile(r"\b(404|not found|no such (file|key)|nosuchkey|no_such_key|nosuchbucket|no_such_bucket|"
                        r"does not exist)\b")
_DENIED = re.compile(r"\b(403|401|access_denied|accessdenied|forbidden|invalidaccesskeyid|signaturedoesnotmatch|"
                     r"invalid_access_key_id)\b")


def _translate(location: str, e: BaseException) -> StorageError:
    """An OSError from the OS, pyarrow or fsspec as a StorageError of the right kind: by errno when
    the OS set one, else by the error codes in the message (paths and keys taken out first, so a
    file named ``shard-000404.tar`` is not "not found")."""
    if isinstance(e, StorageError):
        return e
    text = str(e)
    errno_ = getattr(e, "errno", None)
    if isinstance(e, FileNotFoundError) or errno_ == errno.ENOENT:
        return StorageError(location, f"does not exist ({text})", "not_found")
    if isinstance(e, PermissionError) or errno_ in (errno.EACCES, errno.EPERM):
        return StorageError(location, f"permission denied ({text})", "permission")
    if errno_ == errno.EROFS:
        return StorageError(location, f"read-only file system ({text})", "read_only")
    if errno_ in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return StorageError(location, f"no space left ({text})", "io")
    if errno_ is None:
        codes = re.sub(r"'[^']*'|\"[^\"]*\"|\S*/\S*", " ", text.lower())
        if _NOT_FOUND.search(codes):
            return StorageError(location, f"does not exist ({text})", "not_found")
        if _DENIED.search(codes):
            return StorageError(location, f"permission denied ({text})", "permission")
    return StorageError(location, f"I/O error: {type(e).__name__}: {text}", "io")


@contextlib.contextmanager
def errors_named(location: str):
    """Re-raise OS and filesystem errors inside the block as StorageError naming ``location``."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, ValueError) as e:  # pyarrow raises OSError subclasses; fsspec some ValueErrors
        raise _translate(location, e) from e


# -- reading ----------------------------------------------------------------------------------
def size(location: str) -> int | None:
    """Size in bytes (None when an HTTP server does not say); StorageError when absent."""
    if not is_remote(location):
        with errors_named(location):
            return os.stat(location).st_size
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    with errors_named(location):
        info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(location, "does not exist", "not_found")
    if info.type == pafs.FileType.Directory:
        raise StorageError(location, "is a directory, not a file", "not_found")
    return info.size


def exists(location: str) -> bool:
    if not is_remote(location):
        return os.path.isfile(location)
    try:
        size(location)
    except StorageError as e:
        if e.kind == "not_found":
            return False
        raise
    return True


@contextlib.contextmanager
def open_read(location: str):
    """A binary, sequential reader."""
    if not is_remote(location):
        with errors_named(location), open(location, "rb") as f:
            yield f
        return
    fs, path = filesystem(location)
    with errors_named(location):
        stream = fs.open_input_stream(path, compression=None)  # never "detect": bytes as stored
    with errors_named(location), stream:
        yield stream


@contextlib.contextmanager
def open_random(location: str):
    """A seekable binary reader (range reads on object stores)."""
    if not is_remote(location):
        with errors_named(location), open(location, "rb") as f:
            yield f
        return
    fs, path = filesystem(location)
    with errors_named(location):
        f = fs.open_input_file(path)
    with errors_named(location), f:
        yield f


def read_bytes(location: str) -> bytes:
    with open_read(location) as f, errors_named(location):
        return f.read()


def download(location: str, dest: str | Path, expect_size: int | None = None) -> str:
    """Copy ``location`` to the local file ``dest`` (atomically) and return its sha256; a copy
    shorter or longer than ``expect_size`` (or the size the server states) is an error."""
    from data_pipeline.shards import atomic_file

    want = expect_size if expect_size is not None else size(location)
    h, got = hashlib.sha256(), 0
    with open_read(location) as src, errors_named(str(dest)), atomic_file(dest) as out:
        while True:
            with errors_named(location):
                block = src.read(CHUNK)
            if not block:
                break
            out.write(block)
            h.update(block)
            got += len(block)
        if want is not None and got != want:
            raise StorageError(location, f"read {got} bytes but the file has {want}: the transfer was cut off")
    return h.hexdigest()


def sha256(location: str) -> str:
    h = hashlib.sha256()
    with open_read(location) as f, errors_named(location):
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def glob(pattern: str) -> list[str]:
    """Files matching a glob, sorted. Remote globs list the pattern's fixed prefix directory
    (recursively when the pattern has ``**``); HTTP has no listing, so only plain URLs work there."""
    if not is_remote(pattern):
        import glob as globmod

        return sorted(p for p in globmod.glob(pattern, recursive=True) if os.path.isfile(p))
    if scheme(pattern) in ("http", "https"):
        return [pattern]
    import pyarrow.fs as pafs

    fs, path = filesystem(pattern)
    head = pattern.split("://", 1)[0] + "://"
    fixed = path.split("*")[0].split("?")[0].split("[")[0]
    base = fixed.rsplit("/", 1)[0] if "/" in fixed else fixed
    with errors_named(head + base):
        infos = fs.get_file_info(pafs.FileSelector(base, recursive="**" in path or "/" in path[len(base) + 1:],
                                                   allow_not_found=True))
    return sorted(head + i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path))


def listdir(location: str) -> list[str]:
    """Names of the files directly in a directory (empty when it does not exist)."""
    if not is_remote(location):
        return sorted(p.name for p in Path(location).iterdir() if p.is_file()) if os.path.isdir(location) else []
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    with errors_named(location):
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


# -- writing ----------------------------------------------------------------------------------
def _check_writable_scheme(location: str) -> None:
    if scheme(location) in ("http", "https"):
        raise StorageError(location, "HTTP locations are read-only; write to a local path, s3:// or gs://",
                           "read_only")


@contextlib.contextmanager
def atomic_output(location: str):
    """A binary writer whose content appears under ``location`` only when the block ends
    without an error (local: temp file + rename; remote: spooled locally, uploaded at the end)."""
    from data_pipeline.shards import atomic_file

    if not is_remote(location):
        with errors_named(location), atomic_file(location) as f:
            yield f
        return
    _check_writable_scheme(location)
    fs, path = filesystem(location)
    with tempfile.TemporaryFile(prefix="pretrain-upload-") as spool:
        with errors_named(location):
            yield spool
        spool.seek(0)
        with errors_named(location):
            with fs.open_output_stream(path, compression=None) as out:
                shutil.copyfileobj(spool, out, CHUNK)


def write_bytes(location: str, data: bytes) -> None:
    with atomic_output(location) as f:
        f.write(data)


def remove(location: str) -> None:
    """Delete a file if it is there."""
    if not is_remote(location):
        with errors_named(location):
            Path(location).unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    with errors_named(location), contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def remove_tree(location: str) -> None:
    if not is_remote(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = filesystem(location)
    with errors_named(location), contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def check_writable(location: str) -> None:
    """Fail now, naming ``location``, when a job could not write there (before any work starts)."""
    _check_writable_scheme(location)
    probe = join(location, f".write-probe-{os.getpid()}-{os.urandom(4).hex()}")
    if not is_remote(location):
        with errors_named(location):
            os.makedirs(location, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"x")
            os.unlink(probe)
        return
    write_bytes(probe, b"x")
    remove(probe)


def check_readable(location: str) -> int | None:
    """Size of a file that can be opened for reading; StorageError naming it otherwise."""
    n = size(location)
    if not is_remote(location):
        with errors_named(location), open(location, "rb") as f:
            f.read(1)
    return n
