"""End-to-end text pipeline on real WARC/WET files written by warcio, on a real (embedded) Ray.

One in-process run with 2 Ray workers is the reference; other tests compare against it: 1-worker
CLI runs killed with SIGKILL mid-way and resumed, a run on a separately started Ray cluster, a run
with the tokenizer given as a file -- all byte-identical.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import webdataset as wds

from data_pipeline.text.config import TextOptions
from data_pipeline.text.pipeline import FailedInputs, InputFile, run_pipeline
from tests.conftest import shared_data_dir
from tests.data_pipeline.warc_factory import build_corpus

REPO = Path(__file__).resolve().parents[2]
CLI_ARGS = ["--vocab-size", "1000", "--sample-tokens", "2048", "--samples-per-shard", "2", "--val-fraction", "0.1",
            "--no-progress"]


def options() -> TextOptions:
    return TextOptions(vocab_size=1000, sample_tokens=2048, samples_per_shard=2, val_fraction=0.1)


@pytest.fixture(scope="module")
def ray_started():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def reference(ray_started, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    inputs = [InputFile(path=f, source=os.path.basename(f)) for f in corpus["files"]]
    manifest = run_pipeline(inputs, out, options(), progress=False)
    return out, manifest


def shard_digests(out: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/*.tar"))}


def rejected_rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def decoded_documents(out: Path) -> list[tuple[dict, str]]:
    """(lineage, decoded text) for every document, read with plain webdataset.WebDataset."""
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    docs = []
    for sample in wds.WebDataset([str(p) for p in sorted(out.glob("*/*.tar"))], shardshuffle=False):
        tokens = np.load(io.BytesIO(sample["tokens.npy"]))
        meta = json.loads(sample["json"])
        assert sum(meta["doc_lengths"]) == len(tokens)
        starts = np.cumsum([0] + meta["doc_lengths"])
        for i, lineage in enumerate(meta["documents"]):
            docs.append((lineage, sp.decode(tokens[starts[i]:starts[i + 1]].tolist())))
    return docs


def test_counts_add_up_per_input(reference, corpus):
    out, manifest = reference
    files = {Path(f["source"]).name: f for f in manifest["counts"]["files"]}
    assert {n: f["documents"] for n, f in files.items()} == corpus["html_documents"]
    rejected = Counter(r["source"] for r in rejected_rows(out))
    for name, f in files.items():
        assert f["error"] is None
        assert f["documents"] == f["kept"] + sum(f["dropped"].values()), name
        assert rejected[name] == sum(f["dropped"].values()), name
    total = manifest["counts"]["total"]
    assert total["kept"] == sum(s["documents"] for s in manifest["splits"].values())
    assert total["skipped"] == {"non_html": 1, "type_metadata": 10, "type_request": 10, "type_warcinfo": 3}
    funnel = manifest["counts"]["stages"]
    assert funnel[0]["in"] == total["documents"] and funnel[-1]["out"] == total["kept"]


GOLDEN = json.loads((Path(__file__).parent / "golden_dedup.json").read_text())


def dedup_rows(out: Path) -> list[list[str]]:
    return sorted([r["id"], r["reason"], r["detail"]] for r in rejected_rows(out) if r["stage"] == "dedup")


def test_edge_cases_dropped_for_the_right_reason(reference, corpus):
    out, _ = reference
    assert dedup_rows(out) == GOLDEN["corpus"]["dedup"]  # what commit 970e726 dropped
    urls = corpus["urls"]
    by_url = {r["url"]: r for r in rejected_rows(out)}
    assert (by_url[urls["german"]]["stage"], by_url[urls["german"]]["reason"]) == ("lang", "language_de")
    assert (by_url[urls["exact"]]["stage"], by_url[urls["exact"]]["reason"]) == ("dedup", "exact")
    assert (by_url[urls["near"]]["stage"], by_url[urls["near"]]["reason"]) == ("dedup", "near")
    assert by_url[urls["binary"]]["reason"] == "binary"
    assert by_url[urls["empty"]]["reason"] == "empty_payload"
    assert by_url[urls["redirect"]]["reason"] == "http_301"
    assert by_url[urls["big_line"]]["stage"] == "gopher_repetition"
    kept_urls = {lineage["url"] for lineage, _ in decoded_documents(out)}
    # the first copy (smallest id, earlier input file) is the one kept
    assert "https://a.example.org/article/1" in kept_urls and "https://a.example.org/article/2" in kept_urls
    assert urls["exact"] not in kept_urls and urls["near"] not in kept_urls and urls["german"] not in kept_urls


def test_decoded_shards_give_back_the_kept_text(reference, corpus):
    out, manifest = reference
    docs = decoded_documents(out)
    assert len(docs) == manifest["counts"]["total"]["kept"] >= 25
    ids = [lineage["id"] for lineage, _ in docs]
    assert len(set(ids)) == len(ids)
    for lineage, text in docs:
        expected = [unicodedata.normalize("NFKC", p) for p in corpus["expect_kept"][lineage["url"]]]
        lines = text.split("\n")
        # C4 may drop whole lines (e.g. ones mentioning JavaScript); every kept line is a paragraph, in order
        assert lines == [p for p in expected if p in lines], lineage["url"]
        assert len(lines) >= len(expected) - 1, lineage["url"]
        assert lineage["lang"] == "en" and lineage["source"] in {"a.warc.gz", "b.warc", "c.warc.wet.gz"}
    texts = {lineage["url"]: text for lineage, text in docs}
    assert "café" in texts[corpus["urls"]["cp1252"]] and "brûlée" in texts[corpus["urls"]["latin1_meta"]]
    pii = texts[corpus["urls"]["pii"]]
    assert "email@example.com" in pii and "192.0.2.1" in pii and "jane.doe" not in pii and "8.8.4.4" not in pii


def test_manifest_contract(reference):
    out, m = reference
    assert (m["format"], m["version"], m["kind"], m["token_dtype"]) == ("pretrain-text-shards", 1, "text", "uint16")
    t = m["tokenizer"]
    assert (t["pad_id"], t["bos_id"], t["eos_id"], t["unk_id"], t["mask_id"], t["cls_id"], t["sep_id"]) == tuple(range(7))
    assert t["vocab_size"] == 1000 and t["model_type"] == "bpe"
    for split in ("train", "val"):
        s = m["splits"][split]
        assert s["shards"] and s["documents"] == sum(x["documents"] for x in s["shards"])
        for shard in s["shards"]:
            assert shard["path"].startswith(f"{split}/shard-")
            assert shard_digests(out)[shard["path"]] == shard["sha256"]
    assert not (out / "_work").exists() and not list(out.rglob("*.tmp-*"))


def test_tar_overhead_under_ten_percent(ray_started, corpus, tmp_path):
    """With the default sample size the tar headers cost well under 10% of the token bytes."""
    from tests.data_pipeline.warc_factory import WarcBuilder, articles

    wet = WarcBuilder(tmp_path / "all.warc.wet.gz")
    for i, paras in enumerate(articles(70)):
        wet.conversion(f"https://d.example.org/{i}", "\n".join(paras))
    wet.close()
    opts = TextOptions(vocab_size=1000, val_fraction=0.0)
    m = run_pipeline([InputFile(path=str(tmp_path / "all.warc.wet.gz"), source="all")], tmp_path / "out", opts,
                     progress=False)
    o = m["tar_overhead"]
    assert o["token_bytes"] == m["splits"]["train"]["tokens"] * 2 > 50_000
    assert o["tar_bytes"] == sum(s["bytes"] for s in m["splits"]["train"]["shards"])
    assert o["ratio"] == pytest.approx(o["header_and_padding_bytes"] / o["token_bytes"], abs=1e-6)
    assert o["ratio"] < 0.10


def _same_as_reference(out: Path, reference) -> None:
    ref_out, _ = reference
    assert shard_digests(out) == shard_digests(ref_out)
    assert (out / "tokenizer.model").read_bytes() == (ref_out / "tokenizer.model").read_bytes()
    assert (out / "manifest.json").read_bytes() == (ref_out / "manifest.json").read_bytes()
    assert rejected_rows(out) == rejected_rows(ref_out)


@pytest.fixture(scope="module")
def sources_in_place(corpus):
    """The CLI records the paths it is given; run it from the inputs' folder with bare names so its
    lineage equals the reference run's."""
    return Path(corpus["files"][0]).parent


def _cli_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "data", "commoncrawl", "--input", "a.warc.gz", "b.warc",
            "c.warc.wet.gz", "-o", str(out), "--num-cpus", "1", *CLI_ARGS, *extra]


def _reap(proc: subprocess.Popen) -> None:
    """After a SIGKILLed driver, end what its embedded Ray left in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_cli(out: Path, folder: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_cli_command(out), cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        _reap(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_killed_while_reading_then_after_a_shard_then_finished_is_identical(reference, sources_in_place, tmp_path):
    """1-worker CLI runs into one directory: SIGKILLed from outside once the first input file is
    done; rerun and SIGKILLed after its first shard; rerun to the end. The result equals the
    uninterrupted 2-worker reference byte for byte, and finished work was not redone."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_cli_command(out), cwd=sources_in_place, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list(out.glob("_work/*/stage1/*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _reap(proc)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("_work/*/stage1/*.json")}
    assert 1 <= len(finished) < 3 and not list(out.glob("*/*.tar")) and not (out / "manifest.json").exists()

    killed = _run_cli(out, sources_in_place, {"PRETRAIN_TEXT_KILL_AFTER": "shards train:1"})
    assert killed.returncode == -signal.SIGKILL
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished files were not read again
    written = {p: p.stat().st_mtime_ns for p in out.glob("train/*.tar")}
    assert 1 <= len(written) < len(reference[1]["splits"]["train"]["shards"])
    assert not (out / "manifest.json").exists()

    result = _run_cli(out, sources_in_place, {"PRETRAIN_TEXT_KILL_AFTER": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dedup" in result.stdout and "tar overhead" in result.stdout  # the summary table
    assert {p: p.stat().st_mtime_ns for p in written} == written  # finished shards were not written again
    _same_as_reference(out, reference)


def test_shared_real_files_counts_add_up_and_corrupt_files_are_counted_errors(ray_started, tmp_path):
    """The 4 damaged files among the real ones fail as inputs: with 3 allowed the job stops after
    reading (naming them, writing no output); with 4 it finishes from the per-file work kept."""
    folder = shared_data_dir("commoncrawl")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    inputs = [InputFile(path=str(p), source=p.name) for p in files]
    opts = TextOptions(langs=(), vocab_size=600, sample_tokens=4096, val_fraction=0.0)
    with pytest.raises(FailedInputs, match=r"4 of \d+ input files failed \(4 corrupt\)") as failed:
        run_pipeline(inputs, tmp_path / "out", opts, progress=False, max_failed_inputs=3)
    assert "warcio-bad.arc: corrupt: OSError: Invalid WARC header" in str(failed.value)
    assert not (tmp_path / "out" / "manifest.json").exists() and not list((tmp_path / "out").glob("*/*.tar"))
    read = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("_work/*/stage1/*.json")}
    assert len(read) == len(files)
    m = run_pipeline(inputs, tmp_path / "out", opts, progress=False, max_failed_inputs=4, keep_work=True)
    assert {p: p.stat().st_mtime_ns for p in read} == read  # the files were not read again
    per_file = {f["source"]: f for f in m["counts"]["files"]}
    assert set(per_file) == {p.name for p in files}
    rejected = Counter(r["source"] for r in rejected_rows(tmp_path / "out"))
    for name, f in per_file.items():
        assert f["documents"] == f["kept"] + sum(f["dropped"].values()), name
        assert rejected[name] == sum(f["dropped"].values()), name
        html = f["records"].get("response", 0) - f["skipped"].get("non_html", 0)
        assert f["documents"] == html + f["records"].get("conversion", 0), name
    errors = {n for n, f in per_file.items() if f["error"]}
    assert {per_file[n]["error_kind"] for n in errors} == {"corrupt"}
    assert errors == {"warcio-example-trunc.warc", "warcio-bad.arc", "resiliparse-clipped.warc.gz",
                      "CC-MAIN-2024-22.warc.paths.gz"}
    assert per_file["resiliparse-clipped.warc.gz"]["dropped"] == {"read/truncated": 1}
    assert per_file["pywb-iana.warc.gz"]["documents"] == 20 and per_file["dolma-sample-0000.warc.gz"]["documents"] == 22
    assert per_file["resiliparse-clueweb09-quirk.warc.gz"]["documents"] == 29
    assert m["counts"]["total"]["files_with_errors"] == 4 and m["counts"]["total"]["kept"] >= 20
    assert dedup_rows(tmp_path / "out") == GOLDEN["shared"]["dedup"]
    assert m["counts"]["total"]["kept"] == m["splits"]["train"]["documents"]


def test_crawl_download_from_a_local_server(ray_started, corpus, tmp_path, capsys):
    """--crawl reads <format>.paths.gz from --base-url, downloads (surviving a cut-off response) and
    processes the files; the result equals the same files given with --input. A listed file the
    server does not have fails the job (exit 1, named) unless --max-failed-inputs allows it; the
    rerun does not download the finished files again."""
    import gzip
    import shutil

    from data_pipeline.text import cli
    from tests.data_pipeline.range_server import RangeServer

    root = tmp_path / "www"
    seg = root / "crawl-data/CC-MAIN-2024-22/segments/1"
    seg.mkdir(parents=True)
    rel = []
    for f in corpus["files"]:
        if f.endswith(".gz"):
            shutil.copy(f, seg / os.path.basename(f))
            rel.append(f"crawl-data/CC-MAIN-2024-22/segments/1/{os.path.basename(f)}")
    missing = "crawl-data/CC-MAIN-2024-22/segments/1/not-there.warc.gz"
    with gzip.open(root / "crawl-data/CC-MAIN-2024-22/warc.paths.gz", "wt") as fh:
        fh.write("\n".join(rel + [missing]) + "\n")
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    with RangeServer(root) as server:
        server.cut_off[rel[0]] = 1
        argv = ["--crawl", "CC-MAIN-2024-22", "--format", "warc", "--max-files", "3", "--base-url", server.url,
                "--retries", "2", "-o", str(tmp_path / "out"), "--vocab-size", "800", "--no-progress", "--langs", "en"]
        assert cli.run(parser.parse_args(argv)) == 1
        err = capsys.readouterr().err
        assert f"1 of 3 input files failed (1 download):\n  {missing}: download: " in err and "HTTP 404" in err
        assert not (tmp_path / "out" / "manifest.json").exists()
        assert cli.run(parser.parse_args(argv + ["--max-failed-inputs", "1"])) == 0
        assert sum(1 for p, r in server.requests if p == "/" + rel[0] and r) == 1  # resumed with Range
        assert sum(1 for p, _ in server.requests if p == "/" + rel[0]) == 2  # and not fetched again on the rerun
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    files = {f["source"]: f for f in m["counts"]["files"]}
    assert files[rel[0]]["documents"] == corpus["html_documents"]["a.warc.gz"]
    assert files[rel[1]]["documents"] == corpus["html_documents"]["c.warc.wet.gz"]
    assert "HTTP 404" in files[missing]["error"] and files[missing]["error_kind"] == "download"
    assert (tmp_path / "out" / "_downloads" / rel[0]).read_bytes() == Path(corpus["files"][0]).read_bytes()
    out = capsys.readouterr()
    assert "tar overhead" in out.out and "warning: 1 of 3 input files failed" in out.err


def test_rerun_with_other_options_into_the_same_directory_never_reuses_old_shards(reference, corpus, tmp_path):
    import shutil

    ref_out, ref = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    inputs = [InputFile(path=f, source=os.path.basename(f)) for f in corpus["files"]]
    opts = options()
    opts.sample_tokens = 4096
    m = run_pipeline(inputs, out, opts, progress=False)
    assert m["pipeline"]["fingerprint"] != ref["pipeline"]["fingerprint"]
    assert m["splits"]["train"]["samples"] < ref["splits"]["train"]["samples"]
    digests = shard_digests(out)
    assert sorted(digests) == sorted(s["path"] for split in m["splits"].values() for s in split["shards"])
    for split in m["splits"].values():
        for s in split["shards"]:
            assert digests[s["path"]] == s["sha256"]
            samples = list(wds.WebDataset(str(out / s["path"]), shardshuffle=False))
            assert len(samples) == s["samples"]
            assert sum(len(np.load(io.BytesIO(x["tokens.npy"]))) for x in samples) == s["tokens"]
    assert sum(len(json.loads(x["json"])["doc_lengths"]) for x in wds.WebDataset(
        [str(p) for p in sorted(out.glob("*/*.tar"))], shardshuffle=False)) == ref["counts"]["total"]["kept"]


HEAD_SCRIPT = """
import sys, time, ray
ctx = ray.init(num_cpus=2, include_dashboard=False)
print(ctx.address_info["gcs_address"], flush=True)
time.sleep(600)
"""


def test_ray_address_joins_a_running_cluster_and_gives_the_same_bytes(reference, sources_in_place, tmp_path):
    """A separate Ray head process (another working directory) stands in for a cluster; the CLI
    joins it with --ray-address, its tasks find the inputs and the output by absolute path."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    head = subprocess.Popen([sys.executable, "-c", HEAD_SCRIPT], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        address = head.stdout.readline().strip()
        assert ":" in address, "the Ray head did not start"
        out = tmp_path / "cluster"
        cmd = [sys.executable, "-m", "launch.cli", "data", "commoncrawl", "--input", "a.warc.gz", "b.warc",
               "c.warc.wet.gz", "-o", str(out), "--ray-address", address, *CLI_ARGS]
        result = subprocess.run(cmd, cwd=sources_in_place, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        _same_as_reference(out, reference)
        assert head.poll() is None  # the cluster is left running
    finally:
        _reap(head)


def test_given_tokenizer_file_gives_the_same_shards(reference, corpus, tmp_path):
    ref_out, ref = reference
    model = tmp_path / "given.model"
    model.write_bytes((ref_out / "tokenizer.model").read_bytes())
    opts = options()
    opts.tokenizer = str(model)
    inputs = [InputFile(path=f, source=os.path.basename(f)) for f in corpus["files"]]
    m = run_pipeline(inputs, tmp_path / "out", opts, progress=False)
    assert m["tokenizer"] == ref["tokenizer"] and m["pipeline"]["tokenizer"] == str(model)
    assert shard_digests(tmp_path / "out") == shard_digests(ref_out)


def test_inspect_shows_the_first_document_of_the_reference_run(reference, capsys):
    from launch.cli import main

    out, _ = reference
    assert main(["data", "inspect", str(out), "--json", "--chars", "1000000"]) == 0
    report = json.loads(capsys.readouterr().out)
    lineage, text = decoded_documents(out)[0]
    assert report["sample"]["first_document"] == lineage and report["sample"]["text"] == text
    assert report["counts"]["total"]["kept"] == sum(s["documents"] for s in report["splits"].values())


def test_more_dedup_partitions_give_the_same_bytes(reference, corpus, tmp_path):
    inputs = [InputFile(path=f, source=os.path.basename(f)) for f in corpus["files"]]
    run_pipeline(inputs, tmp_path / "out", options(), progress=False, dedup_partitions=3, keep_work=True)
    assert len(list((tmp_path / "out").glob("_work/*/dedup-*/pairs/*.parquet"))) == 3
    _same_as_reference(tmp_path / "out", reference)


def test_rerun_rewrites_a_truncated_and_an_edited_shard_and_keeps_the_others(reference, corpus, tmp_path, capsys):
    """A finished output whose shards no longer match the manifest is not returned as finished:
    the damaged shards are written again, the verified ones kept as they are."""
    import shutil

    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    shards = sorted(out.glob("train/*.tar"))
    assert len(shards) >= 3
    shards[0].write_bytes(shards[0].read_bytes()[:-512])  # torn
    data = bytearray(shards[1].read_bytes())
    data[600] ^= 0xFF  # edited, same size
    shards[1].write_bytes(bytes(data))
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/*.tar") if p not in shards[:2]}
    inputs = [InputFile(path=f, source=os.path.basename(f)) for f in corpus["files"]]
    run_pipeline(inputs, out, options(), progress=True)
    err = capsys.readouterr().err
    assert f"{shards[0]}: " in err and f"{shards[1]}: sha256 differs from the manifest's" in err
    _same_as_reference(out, reference)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_vocab_too_small_for_the_real_warcs_exits_2_with_the_minimum_and_keeps_the_work(ray_started, tmp_path,
                                                                                         capsys):
    """As a new user would: the shared real WARCs with --vocab-size 300 (sentencepiece needs 343)."""
    from data_pipeline.text import cli

    folder = shared_data_dir("commoncrawl")
    argv = ["--input", str(folder / "*.warc.gz"), "-o", str(tmp_path / "out"), "--max-failed-inputs", "1",
            "--no-progress"]
    assert cli.run(_parse(cli, argv + ["--vocab-size", "300"])) == 2
    err = capsys.readouterr().err
    assert "--vocab-size 300 is too small for this text: the tokenizer needs at least 343 pieces" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "manifest.json").exists()
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("_work/*/*/*.json")}
    assert len([p for p in done if p.parent.name == "stage1"]) == 11
    assert cli.run(_parse(cli, argv + ["--vocab-size", "343", "--keep-work"])) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == done  # read, dedup and the sample were not redone
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["tokenizer"]["vocab_size"] == 343


def _parse(cli, argv):
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_disk_full_while_writing_shards_names_the_file_and_leaves_nothing_half_written(
        reference, sources_in_place, tmp_path, monkeypatch, capsys):
    """The output on a tmpfs with room for everything but the shards (intermediates elsewhere)
    fills up while shards are written: exit 1 naming the shard, no temp file or partial shard
    left; with room made (remount) the same command finishes and equals the reference byte for byte."""
    from data_pipeline.text import cli
    from tests.data_pipeline.test_text_units import tmpfs

    ref_out, _ = reference
    pages = sum(-(-p.stat().st_size // 4096) for p in [ref_out / "tokenizer.model", *ref_out.glob("rejected/*")])
    first = -(-min(p.stat().st_size for p in ref_out.glob("train/*.tar")) // 4096)
    monkeypatch.chdir(sources_in_place)
    with tmpfs(tmp_path / "small", f"size={(pages + 2 + first) * 4}k") as small:
        argv = ["--input", "a.warc.gz", "b.warc", "c.warc.wet.gz", "-o", str(small / "out"), "--work-dir",
                str(tmp_path / "work"), *CLI_ARGS]
        assert cli.run(_parse(cli, argv)) == 1
        err = capsys.readouterr().err
        assert "/shard-0000" in err and f"{small / 'out'}/" in err and "no space left" in err, err
        assert not list(small.rglob("*.tmp-*")) and not (small / "out" / "manifest.json").exists()
        records = {json.loads(p.read_text())["path"] for p in (tmp_path / "work").glob("tokens-*/shards/*.json")}
        written = {p.relative_to(small / "out").as_posix() for p in (small / "out").glob("*/*.tar")}
        # every shard there is a finished, recorded one (a record may outlive a shard whose write
        # failed or was stopped: the rerun checks each recorded shard's bytes before reusing it)
        assert written <= records, (written, records)
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        assert cli.run(_parse(cli, argv)) == 0
        _same_as_reference(small / "out", reference)
