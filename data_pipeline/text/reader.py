"""Reading WARC and WET files (gzip or not) into documents, counting everything that is not one.

A *document* is an HTML ``response`` record (WARC) or a ``conversion`` record (WET). Everything
else -- warcinfo, request, revisit, metadata, resource, non-HTML responses -- is skipped and
counted by type. A file that cannot be parsed further (bad header, truncated gzip member, a record
whose body ends before its Content-Length) ends with a counted error for that file; the documents
read before the error are still processed. fastwarc does the parsing: it is fast and accepts the
old WARC/0.18 headers of ClueWeb09.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body", b"<div", b"<p>", b"<title", b"<meta", b"<table")


@dataclass
class RawDoc:
    """One document as read: ``payload`` is HTML bytes (kind "html") or UTF-8 text bytes (kind "text")."""

    index: int  # position among this file's records, stable across runs
    offset: int  # byte offset of the record in the (possibly compressed) file
    url: str
    kind: str
    payload: bytes
    charset: str | None = None
    status: int | None = None
    truncated: bool = False
    source_id: str | None = None  # the document's id in a dataset input (parquet, JSON lines)


@dataclass
class ReadStats:
    """What one file held: records by WARC type, skipped records by reason, and the error if any,
    with its kind: ``corrupt`` (the bytes are not a valid file) or ``io`` (the system could not read
    them: permission, I/O error), so one is never reported as the other."""

    records: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    error: str | None = None
    error_kind: str | None = None

    def to_dict(self) -> dict:
        return {"records": dict(sorted(self.records.items())), "skipped": dict(sorted(self.skipped.items())),
                "error": self.error, "error_kind": self.error_kind}


def looks_like_html(content_type: str | None, body_head: bytes) -> bool:
    """HTML by Content-Type, or by sniffing the first bytes when the server sent no type (ClueWeb09)."""
    if content_type:
        ct = content_type.lower()
        if "html" in ct:
            return True
        if not ct.startswith(("text/plain", "application/octet-stream", "unknown")):
            return False
    head = body_head[:2048].lower()
    return any(tag in head for tag in HTML_SNIFF)


def _record_type(record) -> str:
    return str(record.record_type).rsplit(".", 1)[-1]


def iter_documents(path: str, stats: ReadStats) -> Iterator[RawDoc]:
    """Yield the documents of one WARC/WET file, filling ``stats``; never raises for a bad file."""
    from fastwarc.warc import ArchiveIterator

    index = 0
    try:
        with open(path, "rb") as fh:
            for record in ArchiveIterator(fh, parse_http=True, strict_mode=False):
                doc = _to_document(record, index, stats)
                index += 1
                if doc is not None:
                    yield doc
                    if doc.truncated:
                        stats.error = f"record {doc.index} at offset {doc.offset} ends before its Content-Length"
                        stats.error_kind = "corrupt"
                        return
    except (OSError, ValueError, EOFError, RuntimeError) as e:
        stats.error = f"{type(e).__name__}: {e} (after {index} records)"
        # the OS sets errno (permission, EIO, missing file); fastwarc's parse errors carry none
        stats.error_kind = "io" if isinstance(e, OSError) and e.errno is not None else "corrupt"


def _to_document(record, index: int, stats: ReadStats) -> RawDoc | None:
    rtype = _record_type(record)
    stats.records[rtype] += 1
    url = record.headers.get("WARC-Target-URI", "") or ""
    if rtype == "conversion":
        body = record.reader.read()
        return RawDoc(index, record.stream_pos, url, "text", body, "utf-8", None,
                      truncated=len(body) < record.content_length)
    if rtype != "response":
        stats.skipped[f"type_{rtype}"] += 1
        return None
    raw_body = record.reader.read()
    http = record.http_headers
    truncated = len(raw_body) < record.content_length
    body = decode_http_body(raw_body, http)
    if not looks_like_html(record.http_content_type, body):
        stats.skipped["non_html"] += 1
        return None
    status = http.status_code if http is not None else None
    return RawDoc(index, record.stream_pos, url, "html", body, record.http_charset, status, truncated=truncated)


def dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer encoding; returns the input unchanged when it is not chunked."""
    out, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return body
        try:
            size = int(body[pos:eol].split(b";")[0].strip(), 16)
        except ValueError:
            return body
        if size == 0:
            return b"".join(out)
        out.append(body[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


def decode_http_body(body: bytes, http) -> bytes:
    """The payload as the server meant it: chunked and gzip/deflate encodings undone where present
    (wget-made WARCs keep them; Common Crawl stores payloads already decoded)."""
    if http is None:
        return body
    if "chunked" in (http.get("Transfer-Encoding") or "").lower():
        body = dechunk(body)
    encoding = (http.get("Content-Encoding") or "").lower().strip()
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            body = zlib.decompressobj(47 if "gzip" in encoding else zlib.MAX_WBITS).decompress(body, 64 << 20)
        except zlib.error:
            try:
                body = zlib.decompress(body, -zlib.MAX_WBITS)
            except zlib.error:
                pass  # left as is; the binary check drops it and counts why
    return body
