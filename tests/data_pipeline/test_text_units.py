"""Unit tests of the text-pipeline stages, without Ray: reading, charsets, filters, PII, MinHash
dedup, tokenizer ids, packing and the command line's input checks."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.text import dedup, extract, filters, packing, pii
from data_pipeline.text.reader import ReadStats, dechunk, iter_documents
from tests.conftest import shared_data_dir
from tests.data_pipeline.reference_dedup import find_duplicates
from tests.data_pipeline.warc_factory import ACCENTED, WarcBuilder, article_html, articles, near_copy

# documents (HTML responses) per shared file, and whether reading it ends in an error
SHARED_DOCUMENTS = {
    "pywb-iana.warc.gz": (20, False), "resiliparse-CC-MAIN-2020-34-warcfile.warc.gz": (16, False),
    "resiliparse-clueweb09-quirk.warc.gz": (29, False), "dolma-sample-0000.warc.gz": (22, False),
    "dolma-sample-0001.warc.gz": (15, False), "whirlwind.warc.wet.gz": (1, False), "whirlwind.warc.wat.gz": (0, False),
    "empty.warc": (0, False), "warcio-example-trunc.warc": (1, True), "warcio-bad.arc": (0, True),
    "resiliparse-clipped.warc.gz": (1, True), "CC-MAIN-2024-22.warc.paths.gz": (0, True),
}


@pytest.mark.parametrize("name", sorted(SHARED_DOCUMENTS))
def test_reader_on_shared_files(name):
    path = shared_data_dir("commoncrawl", name)
    stats = ReadStats()
    docs = list(iter_documents(str(path), stats))
    documents, has_error = SHARED_DOCUMENTS[name]
    assert len(docs) == documents
    assert (stats.error is not None) == has_error, stats.error
    if name == "pywb-iana.warc.gz":
        assert stats.records == {"warcinfo": 1, "response": 48, "request": 171, "revisit": 123}
        assert stats.skipped == {"non_html": 28, "type_request": 171, "type_revisit": 123, "type_warcinfo": 1}


def test_euc_jp_warc_0_18_is_decoded():
    path = shared_data_dir("commoncrawl", "resiliparse-clueweb09-quirk.warc.gz")
    raw = next(iter_documents(str(path), ReadStats()))
    text, reason = extract.document_text(raw.kind, raw.payload, raw.charset, "resiliparse")
    assert reason is None and "検索" in text and "\ufffd" not in text


def test_gzip_content_encoding_and_chunked_bodies_are_undone():
    path = shared_data_dir("commoncrawl", "warcio-example-bad-non-chunked.warc.gz")
    raw = next(iter_documents(str(path), ReadStats()))
    assert raw.payload.lstrip().lower().startswith(b"<!doctype html")
    assert dechunk(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n") == b"Wikipedia"
    assert dechunk(b"<html>not chunked") == b"<html>not chunked"


@pytest.mark.parametrize("extractor", ["resiliparse", "trafilatura"])
def test_charsets_and_extractors(tmp_path, extractor):
    paras = articles(1)[0][:3] + [ACCENTED]
    b = WarcBuilder(tmp_path / "x.warc.gz")
    b.response("https://x/cp1252", article_html("t", paras, charset=None).encode("cp1252"),
               content_type="text/html; charset=windows-1252")
    b.response("https://x/meta", article_html("t", paras, charset="iso-8859-1").encode("latin-1"),
               content_type="text/html")
    b.close()
    for raw in iter_documents(str(tmp_path / "x.warc.gz"), ReadStats()):
        text, reason = extract.document_text(raw.kind, raw.payload, raw.charset, extractor)
        assert reason is None and ACCENTED in text and paras[0] in text, raw.url


def test_binary_and_empty_payloads():
    assert extract.document_text("html", bytes(range(256)) * 8, None, "resiliparse") == ("", "binary")
    assert extract.document_text("html", b"  ", None, "resiliparse") == ("", "empty_payload")


PROSE = " ".join(articles(1)[0])


def _check(rule, text):
    return rule.check(text, filters.words_of(text), {})


def test_gopher_quality_rules():
    g = filters.GopherQuality()
    assert _check(g, PROSE) is None
    assert _check(g, "The cat sat on the mat.") == "short_doc"
    assert _check(g, " ".join(["#hashtag"] * 60) + " the and of") == "too_many_hashes"
    assert _check(g, " ".join(["word 2024 1999"] * 40)) == "below_alpha_threshold"
    assert _check(g, " ".join(["alpha beta gamma delta"] * 20)) == "not_enough_stop_words"
    assert _check(g, " ".join(["supercalifragilistic"] * 60)) == "above_avg_word_length"


def test_gopher_repetition_rules():
    g = filters.GopherRepetition()
    assert _check(g, PROSE) is None
    assert _check(g, "\n".join(["same line here"] * 5 + ["other"])) == "dup_line_frac"
    assert _check(g, "the same words again and again make a line. " * 50) == "top_3_gram"


def test_c4_line_and_page_rules():
    c4 = filters.C4()
    keep = "This line ends well and is long enough.\n" * 1
    good = "\n".join(f"Sentence number {i} is a fine sentence." for i in range(6))
    assert c4.apply(good) == (None, good)
    reason, text = c4.apply(good + "\nmenu\nEnable JavaScript to see this page.\nRead our privacy policy today.")
    assert reason is None and text == good
    assert c4.apply(good + "\nLorem ipsum dolor sit amet.")[0] == "lorem_ipsum"
    assert c4.apply(good + "\nfunction f() { return 1; } is code.")[0] == "curly_bracket"
    assert c4.apply(keep * 3)[0] == "too_few_sentences"
    assert c4.apply("A fact with a citation[1] here.\n" * 5)[1].startswith("A fact with a citation here.")


def test_fineweb_rules():
    fw = filters.FineWeb()
    lines = [f"This is line {i} of a document and it ends with a full stop." for i in range(10)]
    assert _check(fw, "\n".join(lines)) is None
    assert _check(fw, "\n".join(line.rstrip(".") for line in lines)) == "line_punct_ratio"
    assert _check(fw, "\n".join(["Short line."] * 3 + lines[:1])) == "short_line_ratio"
    assert _check(fw, "\n".join(lines + lines[:1])) == "char_dup_ratio"
    listing = [f"Supercalifragilisticexpialidocious number{i}." for i in range(20)]
    assert _check(fw, "\n".join(listing)) == "list_ratio"


def test_filter_overrides_are_checked_and_applied():
    o = filters.parse_overrides(["c4.min_num_sentences=1", "gopher_quality.min_avg_word_length=2.5",
                                 "gopher_repetition.top_n_grams=[[2,0.5]]", "c4.terminal_punct=false"])
    assert o == {"c4": {"min_num_sentences": 1, "terminal_punct": False},
                 "gopher_quality": {"min_avg_word_length": 2.5}, "gopher_repetition": {"top_n_grams": ((2, 0.5),)}}
    rules = filters.build_rules(o)
    assert rules["c4"].apply("Only one sentence here.") == (None, "Only one sentence here.")
    assert filters.C4().apply("Only one sentence here.")[0] == "too_few_sentences"
    assert rules["fineweb"] == filters.FineWeb()
    for bad, message in [("c4.nope=1", "c4 has no parameter 'nope'"), ("gopher.x=1", "RULE one of"),
                         ("c4.min_num_sentences=2.5", "takes an int"), ("fineweb.line_punct_thr", "RULE.PARAM=VALUE")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            filters.parse_overrides([bad])


def test_pii_scrubbing():
    text, n = pii.scrub("Mail bob.smith@mail.example.com, server 8.8.8.8, lan 192.168.1.1, v1.2.3.", "<e>", "<ip>")
    assert text == "Mail <e>, server <ip>, lan 192.168.1.1, v1.2.3." and n == 2
    text, n = pii.scrub("IPv6 2001:4860:4860::8888 and 999.1.1.1", "<e>", "<ip>")
    assert text == "IPv6 <ip> and 999.1.1.1" and n == 1


def test_minhash_similarity_and_deterministic_keeper():
    a = articles(3)
    mh = dedup.MinHasher()
    docs = [a[0], near_copy(a[0]), a[1], a[0], a[2]]
    sig = np.stack([mh.signature(dedup.normalise("\n".join(d))) for d in docs])
    assert sig.shape == (5, 112) and sig.dtype == np.uint32
    assert (sig[0] == sig[1]).mean() > 0.8 and (sig[0] == sig[2]).mean() < 0.1
    hashes = np.array([dedup.exact_hash(dedup.normalise("\n".join(d))) for d in docs], dtype=np.uint64)
    ids = [f"00000-{i:07d}" for i in range(5)]
    assert find_duplicates(ids, hashes, sig, 14, 8) == {1: ("near", 0), 3: ("exact", 0)}
    assert find_duplicates(ids, hashes, sig, 14, 8, near=False) == {3: ("exact", 0)}
    assert dedup.exact_hash(dedup.normalise("Hello,   WORLD!")) == dedup.exact_hash(dedup.normalise("hello world"))


def test_tokenizer_special_ids_and_roundtrip():
    from data_pipeline.text.tokenizer import token_dtype, tokenizer_info, train_tokenizer

    texts = ["\n".join(a) for a in articles(10)]
    model = train_tokenizer(texts, vocab_size=600, model_type="unigram", threads=2)
    assert model == train_tokenizer(texts, vocab_size=600, model_type="unigram", threads=2)
    info = tokenizer_info(model)
    assert info["model_type"] == "unigram" and info["vocab_size"] <= 600
    assert [info[k] for k in ("pad_id", "bos_id", "eos_id", "unk_id", "mask_id", "cls_id", "sep_id")] == list(range(7))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    sample = texts[0] + "\nZürich 東京 ☃"
    assert sp.decode(sp.encode(sample)) == sample and sp.unk_id() not in sp.encode(sample)
    assert token_dtype(32000) == "uint16" and token_dtype(70000) == "uint32"


def test_packing_keeps_whole_documents_and_merges_a_short_tail():
    docs = [{"length": n, "split": "train"} for n in (5, 5, 5, 12, 1)] + [{"length": 3, "split": "val"}]
    plan = packing.pack(docs, sample_tokens=10)
    assert plan["train"] == [[0, 1], [2, 3, 4]]
    assert plan["val"] == [[5]]
    assert packing.split_of(123, 0.0) == "train" and packing.split_of(5, 1.0 - 1e-9) == "val"


def test_shards_are_planned_from_per_file_sample_counts():
    counts = [("000000", 3), ("000001", 0), ("000002", 4), ("000003", 1)]
    shards = list(packing.plan_shards(counts, 3))
    assert shards == [[("000000", 0, 3)], [("000002", 0, 3)], [("000002", 3, 4), ("000003", 0, 1)]]
    assert list(packing.plan_shards([("000000", 0)], 3)) == []


def _args(**kw):
    from data_pipeline.text import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    argv = ["-o", kw.pop("o", "/tmp/unused-out")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", *([v] if isinstance(v, str) else v)]
    return cli, p.parse_args(argv)


@pytest.mark.parametrize("kw, message", [
    ({"input": ["/nonexistent/x.warc.gz"]}, "--input /nonexistent/x.warc.gz: no such file"),
    ({}, "exactly one of --input"),
    ({"crawl": "CC-2024"}, "--crawl 'CC-2024'"),
    ({"input": [__file__], "vocab_size": "100"}, "--vocab-size 100"),
    ({"input": [__file__], "tokenizer": "/nonexistent.model"}, "--tokenizer /nonexistent.model"),
    ({"input": [__file__], "filter": ["c4.min_words=2"]}, "--filter c4.min_words=2: c4 has no parameter"),
])
def test_cli_rejects_bad_input_with_exit_2(kw, message, capsys):
    cli, args = _args(**kw)
    assert cli.run(args) == 2
    assert message in capsys.readouterr().err


def test_fasttext_model_without_the_package_exits_2(capsys):
    # fastText is optional; without it a --fasttext-model path is refused with a clear message
    try:
        import fasttext  # noqa: F401
    except ImportError:
        cli, args = _args(input=[__file__], fasttext_model=__file__)
        assert cli.run(args) == 2
        assert "the `fasttext` package is not installed" in capsys.readouterr().err
    else:
        pytest.skip("fasttext is installed")


def test_cli_is_registered():
    from launch.cli import build_parser

    args = build_parser().parse_args(["data", "commoncrawl", "--input", "x", "-o", "y"])
    assert args._run.__module__ == "data_pipeline.text.cli" and Path(args.output).name == "y"


# -- bad inputs and outputs: a clear error naming the path, exit 2, nothing written ---------------
@contextlib.contextmanager
def unprivileged():
    """File permissions apply to this process: as root, switch the effective user to nobody."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_input_without_read_permission_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    tmp_path.chmod(0o755)
    (tmp_path / "in").chmod(0o755)
    secret = tmp_path / "in" / "x.warc.gz"
    secret.write_bytes(b"WARC/1.0\r\n")
    secret.chmod(0o000)
    cli, args = _args(input=[str(secret)], o=str(tmp_path / "out"))
    with unprivileged():
        code = cli.run(args)
    assert code == 2
    err = capsys.readouterr().err
    assert f"--input {secret}: permission denied" in err and not (tmp_path / "out").exists()


def test_empty_input_glob_exits_2_naming_it(tmp_path, capsys):
    cli, args = _args(input=[str(tmp_path / "*.warc.gz")], o=str(tmp_path / "out"))
    assert cli.run(args) == 2
    assert f"--input {tmp_path}/*.warc.gz: matches no files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_read_only_output_exits_2_naming_it(tmp_path, capsys):
    src = tmp_path / "in.warc.wet.gz"
    b = WarcBuilder(src)
    b.conversion("https://x/1", "\n".join(articles(1)[0]))
    b.close()
    with tmpfs(tmp_path / "ro", "ro,size=1m") if os.geteuid() == 0 else contextlib.nullcontext(tmp_path / "ro") as ro:
        if os.geteuid() != 0:
            ro.mkdir()
            ro.chmod(0o555)
        cli, args = _args(input=[str(src)], o=str(ro / "out"))
        assert cli.run(args) == 2
        err = capsys.readouterr().err
        assert f"{ro / 'out'}: " in err and ("read-only file system" in err or "permission denied" in err), err
        assert not list(ro.iterdir())
