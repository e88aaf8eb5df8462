"""Inputs beyond WARC/WET (parquet, JSON lines with gzip or zstd) and remote storage: reading and
writing through a real S3-compatible server (moto's server mode, a separate process on 127.0.0.1)
and reading over HTTP from a local server; bad remote inputs fail before anything is written.

Every run here is compared with one local run of the same documents as a WET file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from data_pipeline import storage
from data_pipeline.text.config import TextOptions
from data_pipeline.text.pipeline import InputFile, run_pipeline
from tests.data_pipeline.range_server import RangeServer
from tests.data_pipeline.warc_factory import WarcBuilder, articles

OPTS = dict(vocab_size=600, sample_tokens=1024, samples_per_shard=2, val_fraction=0.0)
CLI = ["--vocab-size", "600", "--sample-tokens", "1024", "--samples-per-shard", "2", "--val-fraction", "0.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free port; the AWS environment points at it for this module (and for
    the Ray workers started below, which inherit it)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": url, "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True,
                      access_key="testing", secret_key="testing").create_dir("bucket")
    yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_started(s3_server):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """The same 8 articles (the last an exact copy of the first) as WET, parquet (FineWeb's layout),
    JSON lines with gzip and with zstd (Dolma's layout)."""
    d = tmp_path_factory.mktemp("docs")
    arts = articles(7, per_article=5)
    texts = ["\n".join(a) for a in arts] + ["\n".join(arts[0])]
    urls = [f"https://d.example.org/{i}" for i in range(len(texts))]
    wet = WarcBuilder(d / "docs.warc.wet.gz")
    for url, text in zip(urls, texts):
        wet.conversion(url, text)
    wet.close()
    pq.write_table(pa.table({"text": texts, "id": [f"<urn:{i}>" for i in range(len(texts))], "url": urls,
                             "dump": ["CC-MAIN-2024-22"] * len(texts)}), d / "docs.parquet")
    lines = "".join(json.dumps({"id": f"dolma-{i}", "text": t, "metadata": {"url": u}}) + "\n"
                    for i, (t, u) in enumerate(zip(texts, urls))).encode()
    (d / "docs.jsonl.gz").write_bytes(gzip.compress(lines))
    with pa.CompressedOutputStream(str(d / "docs.jsonl.zst"), "zstd") as f:
        f.write(lines)
    pq.write_table(pa.table({"body": texts}), d / "notext.parquet")
    return d


@pytest.fixture(scope="module")
def local_run(ray_started, documents, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    m = run_pipeline([InputFile(str(documents / "docs.warc.wet.gz"), "docs.warc.wet.gz")], out, TextOptions(**OPTS),
                     progress=False)
    return out, m


def decoded(manifest: dict, read, model: bytes) -> list[tuple[str, str]]:
    """(url, text) of every document in the shards; ``read(path)`` gives a file's bytes."""
    import tarfile

    sp = spm.SentencePieceProcessor(model_proto=model)
    out = []
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(fileobj=io.BytesIO(read(shard["path"]))) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name in sorted(n for n in members if n.endswith(".json")):
            meta, tokens = json.loads(members[name]), np.load(io.BytesIO(members[name[:-4] + "tokens.npy"]))
            starts = np.cumsum([0] + meta["doc_lengths"])
            out += [(doc["url"], sp.decode(tokens[starts[i]:starts[i + 1]].tolist()))
                    for i, doc in enumerate(meta["documents"])]
    return out


def local_documents(local_run) -> list[tuple[str, str]]:
    out, m = local_run
    return decoded(m, lambda p: (out / p).read_bytes(), (out / "tokenizer.model").read_bytes())


def test_parquet_and_json_lines_give_the_documents_of_the_wet_file(ray_started, documents, local_run, tmp_path):
    names = ["docs.parquet", "docs.warc.wet.gz", "docs.jsonl.gz", "docs.jsonl.zst"]
    inputs = [InputFile(str(documents / n), n) for n in names]
    m = run_pipeline(inputs, tmp_path / "out", TextOptions(**OPTS), progress=False)
    files = {f["source"]: f for f in m["counts"]["files"]}
    assert files["docs.parquet"]["documents"] == 8 and files["docs.parquet"]["dropped"] == {"dedup/exact": 1}
    for later in names[1:]:  # the same texts, read from other formats: every one an exact copy of the parquet's
        assert files[later]["documents"] == 8 and files[later]["dropped"] == {"dedup/exact": 8}, later
    got = decoded(m, lambda p: (tmp_path / "out" / p).read_bytes(), (tmp_path / "out" / "tokenizer.model").read_bytes())
    assert got == local_documents(local_run)
    dropped = pq.read_table(tmp_path / "out" / "rejected" / "000003.parquet").to_pylist()
    assert [r["detail"] for r in dropped[:2]] == ["duplicate of 000000-0000000", "duplicate of 000000-0000001"]
    first = json.loads(_first_member(tmp_path / "out" / m["splits"]["train"]["shards"][0]["path"], ".json"))
    assert first["documents"][0]["source_id"] == "<urn:0>" and first["documents"][0]["url"] == "https://d.example.org/0"


def _first_member(path: Path, suffix: str) -> bytes:
    import tarfile

    with tarfile.open(path) as tar:
        return next(tar.extractfile(m).read() for m in tar if m.name.endswith(suffix))


def test_s3_input_and_output_through_a_real_s3_server(ray_started, s3_server, documents, local_run, capsys):
    from data_pipeline.text import cli
    from pretrain.data.sources import ShardSource

    storage.write_bytes("s3://bucket/in/docs.warc.wet.gz", (documents / "docs.warc.wet.gz").read_bytes())
    args = _args(cli, ["--input", "s3://bucket/in/*.gz", "-o", "s3://bucket/out", *CLI])
    assert cli.run(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "read+filter: 1/1 tasks, 8 documents (" in err and "docs/s" in err and "MB/s" in err and "| kept 8" in err
    m = json.loads(storage.read_bytes("s3://bucket/out/manifest.json"))
    assert m["counts"]["files"][0]["source"] == "s3://bucket/in/docs.warc.wet.gz"
    for shard in m["splits"]["train"]["shards"]:
        assert storage.sha256(f"s3://bucket/out/{shard['path']}") == shard["sha256"]
    model = storage.read_bytes("s3://bucket/out/tokenizer.model")
    assert decoded(m, lambda p: storage.read_bytes(f"s3://bucket/out/{p}"), model) == local_documents(local_run)
    assert storage.listdir("s3://bucket/out/_work") == []  # intermediates removed after success
    source = ShardSource("s3://bucket/out", "train", cache_dir=str(documents / "cache"))
    local = ShardSource(local_run[0], "train")
    assert [source.doc_lengths(s, 0) for s in range(len(source.shards))] == \
        [local.doc_lengths(s, 0) for s in range(len(local.shards))]
    assert np.array_equal(source.tokens(0, 0), local.tokens(0, 0))
    from launch.cli import main

    assert main(["data", "inspect", "s3://bucket/out", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sample"]["shard"] == "train/shard-000000.tar" and report["counts"]["total"]["kept"] == 7


def test_crawl_listing_and_files_read_from_s3(ray_started, s3_server, documents, local_run, tmp_path, monkeypatch,
                                              capsys):
    """--crawl reads the listing and the files from an S3 base (Common Crawl's bucket when AWS
    credentials are present, HTTPS without them)."""
    from data_pipeline.text import cli
    from data_pipeline.text.download import DEFAULT_BASE_URL, S3_BASE_URL, default_base_url

    rel = "crawl-data/CC-MAIN-2024-22/segments/1/docs.warc.wet.gz"
    storage.write_bytes(f"s3://bucket/cc/{rel}", (documents / "docs.warc.wet.gz").read_bytes())
    storage.write_bytes("s3://bucket/cc/crawl-data/CC-MAIN-2024-22/wet.paths.gz", gzip.compress(rel.encode() + b"\n"))
    args = _args(cli, ["--crawl", "CC-MAIN-2024-22", "--base-url", "s3://bucket/cc/", "-o", str(tmp_path / "out"),
                       "--no-progress", *CLI])
    assert cli.run(args) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [f["source"] for f in m["counts"]["files"]] == [rel] and m["counts"]["total"]["kept"] == 7
    assert not (tmp_path / "out" / "_downloads").exists()  # read from the bucket, not cached over HTTP
    assert default_base_url() == S3_BASE_URL
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert default_base_url() == DEFAULT_BASE_URL


def test_https_input_from_a_local_server(ray_started, documents, local_run, tmp_path, capsys):
    from data_pipeline.text import cli

    with RangeServer(documents) as server:
        args = _args(cli, ["--input", server.url + "docs.warc.wet.gz", "-o", str(tmp_path / "out"), "--no-progress",
                           *CLI])
        assert cli.run(args) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    got = decoded(m, lambda p: (tmp_path / "out" / p).read_bytes(), (tmp_path / "out" / "tokenizer.model").read_bytes())
    assert got == local_documents(local_run)


def _args(cli, argv):
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("case", ["missing_object", "missing_bucket", "no_credentials", "no_text", "http_404"])
def test_bad_remote_inputs_exit_2_naming_the_path_and_write_nothing(s3_server, documents, tmp_path, monkeypatch,
                                                                     capsys, case):
    from data_pipeline.text import cli

    out = tmp_path / "out"
    with RangeServer(documents) as server:
        given, named = {
            "missing_object": ("s3://bucket/in/nothing.warc.gz", "s3://bucket/in/nothing.warc.gz: no such file"),
            "missing_bucket": ("s3://no-such-bucket/x.warc.gz", "s3://no-such-bucket/x.warc.gz"),
            "no_credentials": ("s3://bucket/in/docs.warc.wet.gz", "s3://bucket/in/docs.warc.wet.gz: no AWS credentials"),
            "no_text": (str(documents / "notext.parquet"), f"{documents / 'notext.parquet'}: a parquet input needs a "
                                                           f"`text` column (has: body)"),
            "http_404": (server.url + "missing.warc.gz", f"{server.url}missing.warc.gz: no such file"),
        }[case]
        if case == "no_credentials":
            storage.write_bytes(given, b"x")
            monkeypatch.delenv("AWS_ACCESS_KEY_ID")
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
            monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        assert cli.run(_args(cli, ["--input", given, "-o", str(out), *CLI])) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert not out.exists()


def test_output_to_s3_without_credentials_exits_2(s3_server, documents, monkeypatch, capsys, tmp_path):
    from data_pipeline.text import cli

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert cli.run(_args(cli, ["--input", str(documents / "docs.warc.wet.gz"), "-o", "s3://bucket/elsewhere",
                               *CLI])) == 2
    assert "s3://bucket/elsewhere" in capsys.readouterr().err


def test_training_reads_remote_shards_and_checks_them_on_resume(s3_server, local_run, tmp_path):
    """data.path=s3://...: preflight, the loader (through its local cache), the checkpoint's
    tokenizer and manifest hash, and resume's identity check all read the remote directory."""
    import hashlib

    from pretrain.checkpoint import CheckpointError, preflight
    from pretrain.config import load_config
    from tests.dist.helpers import REPO, losses, run_train

    local, manifest = local_run
    for p in sorted(local.rglob("*")):
        if p.is_file() and "_work" not in p.relative_to(local).parts:
            storage.write_bytes(f"s3://bucket/train-data/{p.relative_to(local).as_posix()}", p.read_bytes())
    run_dir = tmp_path / "run"
    over = ["data.source=shards", "data.path=s3://bucket/train-data", f"data.cache_dir={tmp_path / 'cache'}",
            f"model.vocab_size={manifest['tokenizer']['vocab_size']}", "model.pad_vocab_multiple=8",
            "data.seq_len=64", "train.steps=2", "train.eval_every=0", "tracking.enabled=false",
            f"train.run_dir={run_dir}"]
    run_train("configs/gpt/debug.yaml", over)
    assert sorted(losses(run_dir)) == [1, 2]
    ckpt = run_dir / "checkpoints" / "step00000002"
    assert (ckpt / "tokenizer.model").read_bytes() == (local / "tokenizer.model").read_bytes()
    raw = (local / "manifest.json").read_bytes()
    assert json.loads((ckpt / "data.json").read_text())["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    cfg = load_config(REPO / "configs/gpt/debug.yaml", [*over, "checkpoint.resume=auto", "train.steps=3"])
    assert preflight(cfg, 1) == ckpt  # the remote manifest is the one trained on
    rebuilt = json.loads(raw)
    rebuilt["pipeline"] = {**rebuilt.get("pipeline", {}), "rebuilt": True}
    storage.write_bytes("s3://bucket/train-data/manifest.json", json.dumps(rebuilt).encode())
    with pytest.raises(CheckpointError, match="not the manifest the checkpoint was trained on"):
        preflight(cfg, 1)
