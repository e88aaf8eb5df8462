"""Stage 1, one input file at a time: read -> extract -> language -> quality filters -> PII, then
the exact hash and MinHash signature that global dedup needs.

The result of a file is three files under ``_work/<fp>/stage1/``: ``<key>.kept.parquet`` (the kept
documents, their text, lineage, scores, hash and signature), ``<key>.rejected.parquet`` (id, url,
source, offset, stage, reason) and ``<key>.json`` (counts), the JSON written last as the marker
that the file is done. All writes are atomic (local or object store, through
:mod:`data_pipeline.storage`), so a killed run leaves either a finished file result or nothing.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline import storage
from data_pipeline.text import dedup, extract, filters, pii
from data_pipeline.text.config import TextOptions
from data_pipeline.text.inputs import iter_input
from data_pipeline.text.langid import LanguageId
from data_pipeline.text.reader import ReadStats

KEPT_SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("source", pa.string()), ("offset", pa.int64()),
                         ("lang", pa.string()), ("lang_score", pa.float64()), ("scores", pa.string()),
                         ("text", pa.large_string()), ("chars", pa.int64()), ("hash", pa.uint64()),
                         ("minhash", pa.binary())])
REJECTED_SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("source", pa.string()),
                             ("offset", pa.int64()), ("stage", pa.string()), ("reason", pa.string()),
                             ("detail", pa.string())])


class DocumentFilter:
    """Text-level stages for one document; built once per task (loads the language model)."""

    def __init__(self, opts: TextOptions):
        self.opts = opts
        self.lang = LanguageId(opts.fasttext_model)
        rules = filters.build_rules(opts.filter_params, opts.c4_terminal_punct)
        self.gopher_quality, self.gopher_repetition = rules["gopher_quality"], rules["gopher_repetition"]
        self.c4, self.fineweb = rules["c4"], rules["fineweb"]
        self.minhasher = dedup.MinHasher(opts.ngram, opts.bands, opts.rows, opts.minhash_seed)

    def apply(self, text: str, scores: dict) -> tuple[str, str, str]:
        """(stage, reason, text): stage is "" when the document is kept; text may be rewritten."""
        o = self.opts
        lang, score = self.lang.classify(text)
        scores["lang"], scores["lang_score"] = lang, round(score, 4)
        if o.langs and lang not in o.langs:
            return "lang", f"language_{lang}", text
        if score < o.lang_threshold:
            return "lang", "low_score", text
        words = filters.words_of(text)
        if o.gopher_repetition and (r := self.gopher_repetition.check(text, words, scores)):
            return "gopher_repetition", r, text
        if o.gopher_quality and (r := self.gopher_quality.check(text, words, scores)):
            return "gopher_quality", r, text
        if o.c4:
            r, text = self.c4.apply(text)
            if r:
                return "c4", r, text
            words = filters.words_of(text)
        if o.fineweb and (r := self.fineweb.check(text, words, scores)):
            return "fineweb", r, text
        if o.pii:
            text, scores["pii"] = pii.scrub(text, o.email_replacement, o.ip_replacement)
        return "", "", text


def process_file(path: str, source: str, key: str, opts: TextOptions, out_dir: str, fmt: str = "warc") -> dict:
    """Run stage 1 on one local file of format ``fmt`` and write its results under ``out_dir``
    (a local directory or a URI); returns the counts."""
    stats = ReadStats()
    doc_filter = DocumentFilter(opts)
    kept: dict[str, list] = {name: [] for name in KEPT_SCHEMA.names}
    rejected: dict[str, list] = {name: [] for name in REJECTED_SCHEMA.names}
    dropped: Counter = Counter()
    documents = 0
    for raw in iter_input(path, fmt, stats):
        documents += 1
        doc_id = f"{key}-{raw.index:07d}"
        stage, reason, text, scores = _one_document(raw, doc_filter, opts)
        if raw.source_id is not None:
            scores["source_id"] = raw.source_id
        if stage:
            dropped[f"{stage}/{reason}"] += 1
            for col, val in zip(REJECTED_SCHEMA.names, (doc_id, raw.url, source, raw.offset, stage, reason, "")):
                rejected[col].append(val)
            continue
        norm = dedup.normalise(text)
        lang, lang_score = scores.pop("lang"), scores.pop("lang_score")
        row = (doc_id, raw.url, source, raw.offset, lang, lang_score, json.dumps(scores, sort_keys=True), text,
               len(text), dedup.exact_hash(norm), doc_filter.minhasher.signature(norm).tobytes())
        for col, val in zip(KEPT_SCHEMA.names, row):
            kept[col].append(val)
    write_table(storage.join(out_dir, f"{key}.kept.parquet"), kept, KEPT_SCHEMA)
    write_table(storage.join(out_dir, f"{key}.rejected.parquet"), rejected, REJECTED_SCHEMA)
    counts = {"key": key, "source": source, **stats.to_dict(), "documents": documents,
              "bytes": os.path.getsize(path) if os.path.exists(path) else 0,
              "kept_stage1": len(kept["id"]), "kept_chars": sum(kept["chars"]), "dropped": dict(sorted(dropped.items()))}
    if stats.error_kind != "io":  # an I/O error may pass (permissions fixed, disk back): no marker, a rerun retries
        write_json(storage.join(out_dir, f"{key}.json"), counts)
    return counts


def _one_document(raw, doc_filter: DocumentFilter, opts: TextOptions) -> tuple[str, str, str, dict]:
    scores: dict = {}
    if raw.truncated:
        return "read", "truncated", "", scores
    if raw.status is not None and not 200 <= raw.status < 300:
        return "read", f"http_{raw.status}", "", scores
    if len(raw.payload) > opts.max_record_bytes:
        return "read", "too_large", "", scores
    text, reason = extract.document_text(raw.kind, raw.payload, raw.charset, opts.extractor)
    if reason:
        return "extract", reason, "", scores
    stage, reason, text = doc_filter.apply(text, scores)
    return stage, reason, text, scores


def write_table(path: str, columns: dict[str, list] | pa.Table, schema: pa.Schema | None = None) -> None:
    """A zstd parquet file, written atomically to a local path or a URI."""
    table = columns if isinstance(columns, pa.Table) else pa.table(columns, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(path, buf.getvalue())


def write_json(path: str, obj) -> None:
    """JSON with sorted keys and a trailing newline (equal content, equal bytes), written atomically."""
    storage.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def read_json(path: str):
    return json.loads(storage.read_bytes(path))


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_random(path) as f, storage.errors_named(path):
        return pq.read_table(f, columns=columns)
