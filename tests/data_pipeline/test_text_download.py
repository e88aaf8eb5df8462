"""Downloads against a local HTTP server: retries with backoff, resume with Range, the cache, the
crawl listing, and errors that name what is wrong."""

from __future__ import annotations

import gzip

import pytest

from data_pipeline.text.download import crawl_files, fetch
from tests.data_pipeline.range_server import RangeServer


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    (root / "crawl-data/CC-MAIN-2024-22/segments").mkdir(parents=True)
    payload = bytes(range(256)) * 4000  # 1 MB, deterministic
    (root / "crawl-data/CC-MAIN-2024-22/segments/f1.warc.wet.gz").write_bytes(payload)
    names = [f"crawl-data/CC-MAIN-2024-22/segments/f{i}.warc.wet.gz" for i in (1, 2, 3)]
    with gzip.open(root / "crawl-data/CC-MAIN-2024-22/wet.paths.gz", "wt") as f:
        f.write("\n".join(names) + "\n")
    with RangeServer(root) as server:
        yield server, payload, tmp_path / "cache"


def test_cut_off_download_resumes_with_range(served):
    server, payload, cache = served
    rel = "crawl-data/CC-MAIN-2024-22/segments/f1.warc.wet.gz"
    server.cut_off[rel] = 2
    dest = fetch(server.url + rel, cache / "f1", retries=3, backoff=0.01)
    assert dest.read_bytes() == payload and not (cache / "f1.part").exists()
    ranges = [r for p, r in server.requests if p == "/" + rel]
    assert ranges[0] is None and ranges[1] == f"bytes={len(payload) // 2}-" and len(ranges) == 3
    fetch(server.url + rel, cache / "f1", retries=0)  # cached: no new request
    assert len(server.requests) == 3


def test_unavailable_server_is_retried_then_gives_up(served):
    server, payload, cache = served
    rel = "crawl-data/CC-MAIN-2024-22/segments/f1.warc.wet.gz"
    server.unavailable[rel] = 2
    assert fetch(server.url + rel, cache / "ok", retries=2, backoff=0.01).read_bytes() == payload
    server.unavailable[rel] = 5
    with pytest.raises(OSError, match="download failed after 2 attempts"):
        fetch(server.url + rel, cache / "never", retries=1, backoff=0.01)
    with pytest.raises(OSError, match="HTTP 404"):
        fetch(server.url + "missing.gz", cache / "missing", retries=3, backoff=0.01)


def test_crawl_listing(served):
    server, _, cache = served
    remotes = crawl_files("CC-MAIN-2024-22", "wet", 2, server.url, cache, retries=0)
    assert [r.source for r in remotes] == [f"crawl-data/CC-MAIN-2024-22/segments/f{i}.warc.wet.gz" for i in (1, 2)]
    assert remotes[0].url == server.url + remotes[0].source and remotes[0].path == str(cache / remotes[0].source)
    with pytest.raises(ValueError, match="CC-MAIN-YYYY-WW"):
        crawl_files("2024-22", "wet", 1, server.url, cache)
    with pytest.raises(OSError, match="HTTP 404"):
        crawl_files("CC-MAIN-2023-01", "wet", 1, server.url, cache, retries=0)


def test_a_body_without_a_stated_length_is_not_assumed_complete(served):
    """The server sends no Content-Length and closes the connection half-way: that end is not
    taken for the end of the file; a Range request for the rest confirms and completes it."""
    server, payload, cache = served
    rel = "crawl-data/CC-MAIN-2024-22/segments/f1.warc.wet.gz"
    server.no_length.add(rel)
    server.cut_off[rel] = 1
    dest = fetch(server.url + rel, cache / "f1", retries=2, backoff=0.01)
    assert dest.read_bytes() == payload
    assert [r for p, r in server.requests if p == "/" + rel] == [None, f"bytes={len(payload) // 2}-"]
    server.cut_off[rel] = 0
    fetch(server.url + rel, cache / "whole", retries=2, backoff=0.01)  # a whole body: confirmed by a 416
    assert [r for p, r in server.requests if p == "/" + rel][2:] == [None, f"bytes={len(payload)}-"]
