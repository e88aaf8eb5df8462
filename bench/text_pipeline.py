"""Throughput of each text-pipeline stage on a fixed generated input, per core (one process).

Input: a WARC of HTML pages (pydoc pages of standard-library modules plus articles made of their
docstrings, with boilerplate) and a WET of the same articles' text. Prints one JSON object:
per stage documents/s and MB/s (MB of that stage's input), end to end per file on WARC and WET
(read -> ... -> MinHash, then tokenize), and the full pipeline on embedded Ray with 1 CPU.
Per-core rates are computed from CPU time (wall-clock rates are printed beside them). When
``import datatrove`` works (``pip install -e '.[bench]'`` plus faust-cchardet, python-magic and spacy,
which its WARC reader and English word tokenizer import), its equivalent stages run on the same input
files in the same run and the per-core ratio ours/datatrove is reported; otherwise that part prints
that it was skipped.

    python bench/text_pipeline.py [--pages 60] [--articles 100] [--out DIR] [--skip-ray] [--datatrove-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.text import dedup, extract, filters, pii  # noqa: E402
from data_pipeline.text.config import TextOptions  # noqa: E402
from data_pipeline.text.langid import LanguageId  # noqa: E402
from data_pipeline.text.reader import ReadStats, iter_documents  # noqa: E402

STDLIB = ("argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "configparser",
          "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email", "enum",
          "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
          "http", "imaplib", "inspect", "io", "ipaddress", "json", "logging", "lzma", "mailbox", "mimetypes",
          "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "platform", "plistlib", "poplib",
          "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
          "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
          "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "turtle",
          "typing", "unittest", "urllib", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml", "zipfile")


def build_inputs(folder: Path, pages: int, n_articles: int) -> tuple[Path, Path]:
    from data_pipeline.text.extract import extract_text
    from data_pipeline.text.sample_corpus import WarcBuilder, article_html, articles, pydoc_html

    warc, wet = WarcBuilder(folder / "bench.warc.gz"), WarcBuilder(folder / "bench.warc.wet.gz")
    for i, module in enumerate(STDLIB[:pages]):
        html = pydoc_html(module)
        warc.response(f"https://bench.example.org/pydoc/{i}", html.encode())
        wet.conversion(f"https://bench.example.org/pydoc/{i}", extract_text(html, "resiliparse"))
    for i, paras in enumerate(articles(n_articles, per_article=6)):
        warc.response(f"https://bench.example.org/a/{i}", article_html(f"A{i}", paras).encode())
        wet.conversion(f"https://bench.example.org/a/{i}", "\n".join(paras))
    return add_payload_types(warc.close(), "text/html"), add_payload_types(wet.close(), "text/plain")


def add_payload_types(path: Path, mime: str) -> Path:
    """Rewrite ``path`` with a ``WARC-Identified-Payload-Type`` header on every record, as Common Crawl's
    WARC responses carry. Without it datatrove's WarcReader sniffs the type with libmagic, which calls one
    pydoc text "text/x-Algol68" and skips it; with it both sides read the same documents."""
    import io

    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type in ("response", "conversion"):
                rec.rec_headers.replace_header("WARC-Identified-Payload-Type", mime)
            writer.write_record(rec)
    path.write_bytes(buf.getvalue())
    return path


class Clock:
    """Wall time and this process's CPU time. Per-core rates use CPU time: on a shared machine the
    wall clock also counts the time other processes held the core."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def rates(n: int, mb: float | None, clock: Clock) -> dict:
    out = {"documents": n, "cpu_s": round(clock.cpu, 4), "wall_s": round(clock.wall, 4),
           "docs_per_s": round(n / clock.cpu, 1), "docs_per_s_wall": round(n / clock.wall, 1)}
    if mb is not None:
        out |= {"mb": round(mb, 3), "mb_per_s": round(mb / clock.cpu, 3), "mb_per_s_wall": round(mb / clock.wall, 3)}
    return out


def timed(fn, items, size_of) -> tuple[list, dict]:
    with Clock() as clock:
        out = [fn(x) for x in items]
    return out, rates(len(items), sum(size_of(x) for x in items) / 1e6, clock)


def stage_benchmarks(warc: Path, wet: Path) -> dict:
    res = {}
    with Clock() as clock:
        raws = list(iter_documents(str(warc), ReadStats()))
    res["read_warc"] = rates(len(raws), sum(len(r.payload) for r in raws) / 1e6, clock)
    texts, res["extract_resiliparse"] = timed(
        lambda r: extract.document_text(r.kind, r.payload, r.charset, "resiliparse")[0], raws, lambda r: len(r.payload))
    _, res["extract_trafilatura"] = timed(
        lambda r: extract.document_text(r.kind, r.payload, r.charset, "trafilatura")[0], raws[:40],
        lambda r: len(r.payload))
    texts = [x for x in texts if x]
    size = lambda s: len(s.encode())  # noqa: E731
    lid = LanguageId()
    _, res["langid_py3langid"] = timed(lid.classify, texts, size)
    g_rep, g_q, c4, fw = filters.GopherRepetition(), filters.GopherQuality(), filters.C4(), filters.FineWeb()
    _, res["gopher_repetition"] = timed(lambda s: g_rep.check(s, filters.words_of(s), {}), texts, size)
    _, res["gopher_quality"] = timed(lambda s: g_q.check(s, filters.words_of(s), {}), texts, size)
    _, res["c4"] = timed(c4.apply, texts, size)
    _, res["fineweb"] = timed(lambda s: fw.check(s, filters.words_of(s), {}), texts, size)
    _, res["pii"] = timed(lambda s: pii.scrub(s, "email@example.com", "192.0.2.1"), texts, size)
    mh = dedup.MinHasher()
    sigs, res["minhash"] = timed(lambda s: mh.signature(dedup.normalise(s)), texts, size)
    import numpy as np

    hashes = np.array([dedup.exact_hash(dedup.normalise(s)) for s in texts], dtype=np.uint64)
    res["dedup_shuffle"] = dedup_shuffle(hashes, sigs)
    import sentencepiece as spm

    from data_pipeline.text.tokenizer import train_tokenizer

    with Clock() as clock:
        model = train_tokenizer(texts, 4000, "bpe", threads=1)
    res["tokenizer_train_bpe_4k"] = rates(len(texts), sum(map(size, texts)) / 1e6, clock)
    sp = spm.SentencePieceProcessor(model_proto=model)
    _, res["tokenize"] = timed(lambda s: sp.encode(s), texts, size)
    return res


def dedup_shuffle(hashes, sigs) -> dict:
    """The dedup shuffle's three steps (scatter, pairs, clusters) on one partition, in this
    process: what its Ray tasks cost per document."""
    import numpy as np

    from data_pipeline.text import shuffle
    from data_pipeline.text.process import KEPT_SCHEMA, write_table

    with tempfile.TemporaryDirectory() as tmp:
        n = len(hashes)
        cols = {name: [] for name in KEPT_SCHEMA.names}
        for i in range(n):
            row = (f"000000-{i:07d}", "", "", 0, "en", 1.0, "{}", "", 0, int(hashes[i]), np.asarray(sigs[i]).tobytes())
            for name, v in zip(KEPT_SCHEMA.names, row):
                cols[name].append(v)
        write_table(f"{tmp}/kept.parquet", cols, KEPT_SCHEMA)
        with Clock() as clock:
            shuffle.scatter(f"{tmp}/kept.parquet", 0, 1, 14, 8, f"{tmp}/s")
            shuffle.find_pairs([f"{tmp}/s"], 0, 8, True, True, f"{tmp}/pairs.parquet")
            shuffle.resolve([f"{tmp}/pairs.parquet"], 1, 1, f"{tmp}/drops")
    return rates(n, None, clock)


def end_to_end(warc: Path, wet: Path, work: Path) -> dict:
    """Per file in this process: stage 1 (read -> ... -> MinHash) and tokenizing the kept text with
    a trained tokenizer, after a warm-up run that pays the one-off costs a Ray worker pays once per
    process (imports, loading the language model): the per-core rate of a long-running worker."""
    import pyarrow.parquet as pq
    import sentencepiece as spm

    from data_pipeline.text.process import process_file
    from data_pipeline.text.tokenizer import train_tokenizer

    process_file(str(wet), wet.name, "00000", TextOptions(), work / "warmup")
    texts = pq.read_table(work / "warmup" / "00000.kept.parquet").column("text").to_pylist()
    sp = spm.SentencePieceProcessor(model_proto=train_tokenizer(texts, 4000, "bpe", threads=1))
    out = {}
    for name, path in (("warc", warc), ("wet", wet)):
        raw_mb = sum(len(r.payload) for r in iter_documents(str(path), ReadStats())) / 1e6
        with Clock() as clock:
            counts = process_file(str(path), path.name, "00000", TextOptions(), work / name)
            kept = pq.read_table(work / name / "00000.kept.parquet").column("text").to_pylist()
            sp.encode(kept, num_threads=1)
        out[name] = {**rates(counts["documents"], raw_mb, clock), "kept": counts["kept_stage1"]}
    return out


def full_pipeline(warc: Path, wet: Path, out_dir: Path) -> dict:
    from data_pipeline.text.pipeline import InputFile, run_pipeline

    res = {}
    for name, path in (("warc", warc), ("wet", wet)):
        t = time.perf_counter()
        m = run_pipeline([InputFile(str(path), path.name)], out_dir / name, TextOptions(vocab_size=4000), num_cpus=1,
                         progress=False)
        dt = time.perf_counter() - t
        res[f"pipeline_{name}_ray_1cpu"] = {"seconds_incl_ray_start": round(dt, 2), "kept": m["counts"]["total"]["kept"],
                                            "tokens": m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"],
                                            "tar_overhead_ratio": m["tar_overhead"]["ratio"]}
    return res


class RusageClock:
    """CPU time (user + system) of this process and its reaped children: datatrove extracts in a
    sandbox child process, so both sides of the datatrove comparison are measured this way."""

    @staticmethod
    def _now() -> float:
        import resource

        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                       resource.getrusage(resource.RUSAGE_CHILDREN)))

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._now()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._now() - self.cpu


def datatrove_steps(folder: Path, name: str, html: bool, work: Path, counts: dict) -> list:
    """datatrove's stages equivalent to our stage 1, FineWeb order: WarcReader -> Trafilatura (HTML only;
    datatrove has no resiliparse extractor) -> LanguageFilter(en, 0.65) -> GopherRepetition -> GopherQuality
    -> C4Quality -> FineWebQuality -> PIIFormatter -> MinhashDedupSignature (5-grams, 14 x 8), all with
    datatrove's defaults. Two counting steps record documents read and kept (``counts``)."""
    import xxhash
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import WarcReader

    def counter(key):
        def step(data, rank=0, world_size=1):
            for doc in data:
                counts[key] = counts.get(key, 0) + 1
                yield doc
        return step

    sig = MinhashDedupSignature(output_folder=str(work / "signatures"))
    # datatrove 0.10 hashes str with xxhash<4 (which encoded it); xxhash 4 wants bytes: same hash, same cost.
    sig._hash_func = lambda text: xxhash.xxh64_intdigest(text.encode())
    # timeout: datatrove's 1 s wall-clock default would drop pages only because the shared VM is loaded.
    extract = [Trafilatura(timeout=60)] if html else []
    return [WarcReader(str(folder), glob_pattern=name), counter("read"), *extract, _datatrove_language_filter(),
            GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(),
            PIIFormatter(), counter("kept"), sig]


def _datatrove_language_filter():
    """datatrove's LanguageFilter logic (``LanguageFilter.filter``, English, threshold 0.65) with py3langid
    on the first 4000 characters (as ours) in place of fastText lid.176.bin, which datatrove downloads
    at first use and which this offline machine cannot fetch."""
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.pipeline.filters.base_filter import BaseFilter

    class Py3langidLID:
        def __init__(self, languages):
            self.languages, self.lid = languages, LanguageId()

        def predict(self, doc):
            lang, prob = self.lid.classify(doc.text)
            return (lang, prob), {x: (prob if x == lang else 0.0) for x in self.languages}

    class Py3langidLanguageFilter(BaseFilter):
        name = "🌍 Language ID (py3langid)"
        filter = LanguageFilter.filter

        def __init__(self):
            super().__init__(None)
            self.languages, self.language_threshold, self.backend = ["en"], 0.65, "ft176"
            self.label_only, self.keep_top_pairs_threshold = False, -1
            self.model = Py3langidLID(self.languages)

    return Py3langidLanguageFilter()


def run_datatrove(path: Path, html: bool, work: Path) -> dict:
    """One LocalPipelineExecutor run, 1 task / 1 worker (in this process); returns the counts."""
    from datatrove.executor import LocalPipelineExecutor

    counts: dict = {}
    LocalPipelineExecutor(pipeline=datatrove_steps(path.parent, path.name, html, work, counts), tasks=1, workers=1,
                          logging_dir=str(work / "logs"), skip_completed=False).run()
    return counts


def compare_datatrove(warc: Path, wet: Path, work: Path) -> dict | str:
    """Ours (stage 1: read -> extract -> language id -> Gopher -> C4 -> FineWeb -> PII -> exact hash and
    MinHash, per file) against datatrove's equivalent stages on the same files, both after a warm-up on
    a small input that pays one-off costs (imports, language model, spaCy tokenizer, trafilatura). Rates
    are from CPU time of this process and its children; ratio > 1 means ours is faster per core."""
    try:
        import datatrove  # noqa: F401
        from loguru import logger

        for dep in ("cchardet", "magic", "spacy", "trafilatura"):  # needed by the datatrove steps used here
            __import__(dep)
    except ImportError as e:
        return f"skipped: {e} (pip install -e '.[bench]' faust-cchardet python-magic spacy)"
    from data_pipeline.text.process import process_file

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    import trafilatura  # imported here so datatrove's forked extractor child inherits it, as after a warm-up

    (work / "warmup").mkdir(parents=True, exist_ok=True)
    small_warc, small_wet = build_inputs(work / "warmup", 2, 2)
    for i, (path, html) in enumerate(((small_warc, True), (small_wet, False))):
        run_datatrove(path, html, work / f"warmup-dt-{i}")
        process_file(str(path), path.name, "00000", TextOptions(), work / f"warmup-ours-{i}")
    trafilatura.extract("<html><body><p>warm-up</p></body></html>")
    out = {}
    for name, path, html in (("warc", warc, True), ("wet", wet, False)):
        mb = sum(len(r.payload) for r in iter_documents(str(path), ReadStats())) / 1e6
        sides = [("datatrove", None), ("ours", "resiliparse")] + ([("ours_trafilatura", "trafilatura")] if html else [])
        res = {}
        for side, extractor in sides:
            with RusageClock() as clock:
                if extractor is None:
                    counts = run_datatrove(path, html, work / f"dt-{name}")
                else:
                    c = process_file(str(path), path.name, "00000", TextOptions(extractor=extractor),
                                     work / f"{side}-{name}")
                    counts = {"read": c["documents"], "kept": c["kept_stage1"]}
            res[side] = {**rates(counts.get("read", 0), mb, clock), "kept": counts.get("kept", 0)}
        dt = res["datatrove"]["cpu_s"]
        res["ratio_ours_over_datatrove_per_core"] = round(dt / res["ours"]["cpu_s"], 2)
        if html:
            res["ratio_ours_trafilatura_over_datatrove_per_core"] = round(dt / res["ours_trafilatura"]["cpu_s"], 2)
        out[name] = res
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=60)
    p.add_argument("--articles", type=int, default=100)
    p.add_argument("--out", default=None, help="folder for the generated inputs and work files (default: a temp dir)")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--datatrove-only", action="store_true", help="only the comparison with datatrove")
    args = p.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-text-"))
    folder.mkdir(parents=True, exist_ok=True)
    warc, wet = build_inputs(folder, args.pages, args.articles)
    result = {"input": {"warc_bytes": warc.stat().st_size, "wet_bytes": wet.stat().st_size, "cpu_count": os.cpu_count()}}
    if not args.datatrove_only:
        result |= {"stages_per_core": stage_benchmarks(warc, wet),
                   "end_to_end_per_core": end_to_end(warc, wet, folder / "e2e")}
        if not args.skip_ray:
            result["full_pipeline"] = full_pipeline(warc, wet, folder / "full")
    cmp = result["datatrove_comparison_per_core"] = compare_datatrove(warc, wet, folder / "datatrove")
    print(json.dumps(result, indent=2))
    if "end_to_end_per_core" in result:
        e = result["end_to_end_per_core"]
        print(f"summary: per core (CPU time), end to end: WARC {e['warc']['docs_per_s']} HTML docs/s, "
              f"WET {e['wet']['mb_per_s']} MB/s", file=sys.stderr)
    if isinstance(cmp, str):
        print(f"datatrove comparison {cmp}", file=sys.stderr)
    else:
        print("datatrove comparison, ours/datatrove per core: " + ", ".join(
            f"{k} {v[r]}" for k, v in cmp.items() for r in v if r.startswith("ratio")), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
