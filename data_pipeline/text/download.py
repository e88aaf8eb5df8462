"""Downloading Common Crawl files with retries, exponential backoff and a resumable cache.

``--crawl CC-MAIN-YYYY-WW --format wet`` reads ``crawl-data/<crawl>/<format>.paths.gz`` from the base
URL (``s3://commoncrawl/`` when AWS credentials are present, else Common Crawl's HTTPS endpoint)
and reads the first ``--max-files`` listed files. Over HTTP they are fetched into the cache at the
same relative paths: a partial download lives in ``<name>.part`` and is continued with a Range
request; a file is renamed into place only when its size matches the server's, and when the
server states no size the end is confirmed by asking for the bytes after it (a 416 answer), never
assumed. A file already in the cache is never fetched again. From S3 each task copies its file.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_URL = "https://data.commoncrawl.org/"
S3_BASE_URL = "s3://commoncrawl/"
CRAWL_RE = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
FORMATS = ("warc", "wet")


def default_base_url() -> str:
    """Common Crawl's bucket when AWS credentials are present (fast inside AWS), else its HTTPS
    endpoint (no credentials needed)."""
    from data_pipeline import storage

    return S3_BASE_URL if storage.s3_credentials() else DEFAULT_BASE_URL


@dataclass
class Remote:
    """One file to fetch: ``url`` into ``path``; ``source`` is its crawl-relative path (lineage)."""

    url: str | None  # None: ``path`` is a URI read directly (no cache)
    path: str
    source: str


def fetch(url: str, dest: str | Path, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless it is there; resume ``dest.part``; retry with backoff."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            state = _fetch_once(url, part, timeout)
            if state == "complete":
                os.replace(part, dest)
                return dest
            last = OSError(f"{url}: connection closed before the end of the body" if state == "short" else
                           f"{url}: the server sent no length, so the end of the body is unconfirmed (asking for "
                           f"the bytes after it got no 416 answer)")
        except urllib.error.HTTPError as e:
            if e.code in (400, 401, 403, 404, 410):
                raise OSError(f"{url}: HTTP {e.code} {e.reason}") from e
            last = e
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:
            last = e  # HTTPException: a chunked body cut off (IncompleteRead)
    raise OSError(f"{url}: download failed after {retries + 1} attempts: {last}")


def _fetch_once(url: str, part: Path, timeout: float) -> str:
    """One request continuing ``part``: "complete", "short" (fewer bytes than the stated length)
    or "unconfirmed" (no stated length: the next request asks for the bytes after the end, and a
    416 answer confirms the file is whole)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked past the end: what we have is the whole file
            return "complete"
        raise
    with response:
        if have and response.status != 206:  # server ignored Range: start over
            have = 0
        total = _total_size(response, have)
        with open(part, "ab" if have else "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    size = part.stat().st_size
    if total is None:
        return "unconfirmed"
    return "complete" if size == total else "short"


def _total_size(response, have: int) -> int | None:
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else None
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def crawl_files(crawl: str, fmt: str, max_files: int | None, base_url: str, cache_dir: str | Path,
                retries: int = 5, backoff: float = 1.0) -> list[Remote]:
    """The first ``max_files`` files of a crawl's listing (the listing itself is fetched now)."""
    if not CRAWL_RE.match(crawl):
        raise ValueError(f"--crawl {crawl!r}: expected CC-MAIN-YYYY-WW, e.g. CC-MAIN-2024-22")
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
    base = base_url if base_url.endswith("/") else base_url + "/"
    listing_rel = f"crawl-data/{crawl}/{fmt}.paths.gz"
    if base.startswith(("http://", "https://")) and cache_dir is not None:
        listing = fetch(base + listing_rel, Path(cache_dir) / listing_rel, retries, backoff).read_bytes()
    else:  # an object store, or no local cache (the output is remote): read the listing directly
        from data_pipeline import storage

        listing = storage.read_bytes(base + listing_rel)
    paths = [line.strip() for line in gzip.decompress(listing).decode("utf-8").splitlines() if line.strip()]
    if max_files is not None:
        paths = paths[:max_files]
    if base.startswith(("http://", "https://")) and cache_dir is not None:
        return [Remote(url=base + p, path=str(Path(cache_dir) / p), source=p) for p in paths]
    return [Remote(url=None, path=base + p, source=p) for p in paths]  # each task copies its file itself
