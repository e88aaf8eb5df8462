"""The resolved options of one text-pipeline run, and fingerprints of the parts each stage depends on.

Intermediate results live under ``_work/<fingerprint>/`` so a rerun with the same options reuses
them and a rerun with changed options never does. Options that cannot change the output (number
of CPUs, Ray address, progress display) are kept out of the fingerprints and of the manifest, so
1 and 2 workers write identical manifests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

STAGES = ("read", "extract", "lang", "gopher_repetition", "gopher_quality", "c4", "fineweb", "dedup", "tokenize")


@dataclass
class TextOptions:
    """Everything that decides the output bytes. Defaults are the published ones (Gopher, C4, FineWeb)."""

    extractor: str = "resiliparse"  # or "trafilatura"
    max_record_bytes: int = 10_000_000
    langs: tuple[str, ...] = ("en",)  # empty = keep all languages
    lang_threshold: float = 0.65
    fasttext_model: str | None = None  # path to lid.176.bin; None = py3langid
    gopher_repetition: bool = True
    gopher_quality: bool = True
    c4: bool = True
    c4_terminal_punct: bool = True
    filter_params: dict = field(default_factory=dict)  # {"c4": {"min_num_sentences": 3}, ...} over the defaults
    fineweb: bool = True
    pii: bool = True
    email_replacement: str = "email@example.com"
    ip_replacement: str = "192.0.2.1"
    exact_dedup: bool = True
    near_dedup: bool = True
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    minhash_seed: int = 1
    tokenizer: str | None = None  # existing sentencepiece model; None = train one
    model_type: str = "bpe"
    vocab_size: int = 32000
    tokenizer_sample_chars: int = 200_000_000
    tokenizer_threads: int = 4  # fixed: sentencepiece results depend on the thread count
    val_fraction: float = 0.01
    sample_tokens: int = 16384
    samples_per_shard: int = 1000
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["langs"] = list(self.langs)
        return d


READ_KEYS = ("extractor", "max_record_bytes", "langs", "lang_threshold", "fasttext_model", "gopher_repetition",
             "gopher_quality", "c4", "c4_terminal_punct", "filter_params", "fineweb", "pii", "email_replacement",
             "ip_replacement", "ngram", "bands", "rows", "minhash_seed")
DEDUP_KEYS = ("exact_dedup", "near_dedup")
TOKENIZER_KEYS = ("tokenizer", "model_type", "vocab_size", "tokenizer_sample_chars", "tokenizer_threads", "seed")


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def subset(opts: TextOptions, keys) -> dict:
    d = opts.to_dict()
    return {k: d[k] for k in keys}
