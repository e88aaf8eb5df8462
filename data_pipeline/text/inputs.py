"""Input files of the text pipeline: where they are, what format they hold, how to read them.

Formats, told by the file name:

- WARC or WET (anything else; gzip or not), read by :mod:`data_pipeline.text.reader`;
- parquet (``*.parquet``) with a ``text`` column and optional ``id`` and ``url`` (FineWeb's layout);
- JSON lines (``*.jsonl``, ``*.json``, ``*.ndjson``, each optionally ``.gz`` or ``.zst``), one object
  per line with ``text`` and optional ``id`` and ``url`` or ``metadata.url`` (Dolma's layout).

Rows of a dataset are documents of kind "text" (as WET conversion records are): they pass the same
language, quality, PII and dedup stages. A dataset's own ``id`` is kept in the lineage as
``source_id``. Remote inputs (``s3://``, ``gs://``, ``https://``) are copied into a task-local temp
file first, so every reader works on a seekable local file and an interrupted transfer is caught
by its length, not taken for a short file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from data_pipeline import storage
from data_pipeline.text.reader import RawDoc, ReadStats, iter_documents

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


def format_of(name: str) -> str:
    """"parquet", "jsonl" or "warc" from a file name."""
    base = name.lower().rsplit("/", 1)[-1]
    for suffix in COMPRESSIONS:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith(".parquet"):
        return "parquet"
    if base.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "warc"


@dataclass
class InputFile:
    """One input: ``path`` is a local path or a URI; ``url`` is set when it must first be
    downloaded into ``path`` (``--crawl``); ``source`` is the name recorded in lineage and counts."""

    path: str
    source: str
    url: str | None = None

    @property
    def format(self) -> str:
        return format_of(self.url or self.path)

    def identity(self) -> list:
        if self.url or storage.is_remote(self.path):
            return [self.source, self.url or self.path]
        return [self.source, os.path.getsize(self.path) if os.path.exists(self.path) else -1]


class InputError(Exception):
    """Reading an input failed: ``kind`` is ``corrupt``, ``io``, ``download`` or ``format``."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        return InputError, (str(self), self.kind)


def check_dataset(path: str, fmt: str) -> None:
    """Raise ValueError naming ``path`` when a parquet or JSON-lines input has no ``text``."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with storage.open_random(path) as f, storage.errors_named(path):
            names = pq.ParquetFile(f).schema_arrow.names
        if "text" not in names:
            raise ValueError(f"{path}: a parquet input needs a `text` column (has: {', '.join(names) or 'none'})")
    elif fmt == "jsonl":
        with storage.open_read(path) as raw, _decompressed(raw, path) as f:
            line = f.readline()
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}: the first line is not JSON ({e})") from None
            if not isinstance(row, dict) or "text" not in row:
                raise ValueError(f"{path}: a JSON-lines input needs a `text` field in every line")


@contextlib.contextmanager
def _decompressed(raw, path: str):
    import io

    import pyarrow as pa

    codec = next((c for s, c in COMPRESSIONS.items() if path.lower().endswith(s)), None)
    stream = pa.CompressedInputStream(raw, codec) if codec else raw
    with io.BufferedReader(stream if hasattr(stream, "readinto") else _Readable(stream), 1 << 20) as f:
        yield f


class _Readable:
    """The raw-IO surface io.BufferedReader needs, over a pyarrow stream."""

    def __init__(self, stream):
        self.stream, self.closed = stream, False

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self):
        self.closed = True


def _dataset_doc(index: int, row: dict) -> RawDoc:
    text = row.get("text")
    url = row.get("url") or ((row.get("metadata") or {}).get("url") if isinstance(row.get("metadata"), dict) else None)
    doc = RawDoc(index, index, str(url or ""), "text", text.encode("utf-8") if isinstance(text, str) else b"")
    doc.source_id = None if row.get("id") is None else str(row["id"])
    return doc


def _iter_parquet(path: str, stats: ReadStats) -> Iterator[RawDoc]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if "text" not in names:
        raise InputError(f"no `text` column (has: {', '.join(names)})", "format")
    columns = [c for c in ("text", "id", "url") if c in names]
    index = 0
    for batch in pf.iter_batches(batch_size=4096, columns=columns):
        for row in batch.to_pylist():
            stats.records["row"] += 1
            yield _dataset_doc(index, row)
            index += 1


def _iter_jsonl(path: str, stats: ReadStats) -> Iterator[RawDoc]:
    with open(path, "rb") as raw, _decompressed(raw, path) as f:
        for index, line in enumerate(f):
            stats.records["row"] += 1
            if not line.strip():
                stats.skipped["empty_line"] += 1
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise InputError(f"line {index + 1} is not JSON: {e}", "corrupt") from None
            if not isinstance(row, dict) or "text" not in row:
                raise InputError(f"line {index + 1} has no `text` field", "format")
            yield _dataset_doc(index, row)


def iter_input(path: str, fmt: str, stats: ReadStats) -> Iterator[RawDoc]:
    """Documents of one local input file of format ``fmt``; errors end the file and land in ``stats``."""
    if fmt == "warc":
        yield from iter_documents(path, stats)
        return
    reader = _iter_parquet if fmt == "parquet" else _iter_jsonl
    try:
        yield from reader(path, stats)
    except InputError as e:
        stats.error, stats.error_kind = str(e), e.kind
    except OSError as e:
        stats.error = f"{type(e).__name__}: {e}"
        stats.error_kind = "io" if e.errno is not None else "corrupt"
    except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid and friends: a damaged file
        stats.error, stats.error_kind = f"{type(e).__name__}: {e}", "corrupt"


@contextlib.contextmanager
def local_copy(inp: InputFile, retries: int) -> Iterator[str]:
    """A local path holding the input: the file itself, the download cache (``--crawl``), or a
    task-local temp copy of a remote file that is deleted afterwards. InputError("download") when
    the copy cannot be made."""
    if inp.url:
        from data_pipeline.text.download import fetch

        try:
            fetch(inp.url, inp.path, retries=retries)
        except OSError as e:
            raise InputError(str(e), "download") from e
        yield inp.path
        return
    if not storage.is_remote(inp.path):
        yield inp.path
        return
    suffix = "-" + inp.path.rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="pretrain-input-") as tmp:
        local = os.path.join(tmp, "input" + suffix)
        try:
            if storage.scheme(inp.path) in ("http", "https"):
                from data_pipeline.text.download import fetch

                fetch(inp.path, local, retries=retries)
            else:
                storage.download(inp.path, local)
        except OSError as e:
            raise InputError(str(e), "download") from e
        yield local
