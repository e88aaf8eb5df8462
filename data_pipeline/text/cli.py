"""``pretrain data commoncrawl``: Common Crawl WARC/WET -> tokenized WebDataset shards, on Ray.

Inputs are local files (``--input``, globs allowed, sorted) or the first ``--max-files`` files of a
crawl (``--crawl CC-MAIN-YYYY-WW --format wet``), downloaded into a resumable cache. Rerunning the
same command after a kill finishes the job and gives byte-identical output.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from data_pipeline.tracking import add_tracking_arguments, track_pipeline

EXIT_USAGE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("inputs")
    src.add_argument("--input", nargs="+", metavar="PATH_OR_GLOB", help="WARC or WET files (gzip or not)")
    src.add_argument("--crawl", metavar="CC-MAIN-YYYY-WW", help="read a Common Crawl crawl's listing instead")
    src.add_argument("--format", default="wet", choices=("warc", "wet"), help="with --crawl: which files")
    src.add_argument("--max-files", type=int, default=None, help="with --crawl: the first N listed files")
    src.add_argument("--base-url", default=None, help="with --crawl: server root (default https://data.commoncrawl.org/)")
    src.add_argument("--cache-dir", default=None, help="with --crawl: download cache (default <output>/_downloads)")
    src.add_argument("--retries", type=int, default=5, help="download retries with exponential backoff")
    p.add_argument("--out", "--output", "-o", dest="output", metavar="DIR", required=True,
                   help="output directory (manifest.json, shards, rejected/); --output and -o are aliases")
    f = p.add_argument_group("extraction, language and filters")
    f.add_argument("--extractor", default="resiliparse", choices=("resiliparse", "trafilatura"))
    f.add_argument("--langs", default="en", help="comma-separated languages to keep; 'all' keeps every language")
    f.add_argument("--lang-threshold", type=float, default=0.65, help="minimum language probability")
    f.add_argument("--fasttext-model", default=None, help="path to fastText lid.176.bin (default: py3langid)")
    for name in ("gopher-quality", "gopher-repetition", "c4", "c4-terminal-punct", "fineweb", "pii", "exact-dedup",
                 "near-dedup"):
        f.add_argument(f"--no-{name}", action="store_true", help=f"switch off {name.replace('-', ' ')}")
    f.add_argument("--filter", action="append", default=[], metavar="RULE.PARAM=VALUE",
                   help="override one published default, e.g. c4.min_num_sentences=3 or "
                        "gopher_quality.min_doc_words=30 (rules: gopher_quality, gopher_repetition, c4, fineweb)")
    f.add_argument("--ngram", type=int, default=5, help="MinHash word n-gram size")
    f.add_argument("--bands", type=int, default=14, help="MinHash LSH bands")
    f.add_argument("--rows", type=int, default=8, help="MinHash LSH rows per band")
    t = p.add_argument_group("tokenizer and shards")
    t.add_argument("--tokenizer", default=None, help="existing sentencepiece .model (default: train one)")
    t.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--tokenizer-sample-chars", type=int, default=200_000_000)
    t.add_argument("--tokenizer-threads", type=int, default=4, help="fixed: the trained model depends on it")
    t.add_argument("--val-fraction", type=float, default=0.01)
    t.add_argument("--sample-tokens", type=int, default=16384, help="tokens per sample (whole documents)")
    t.add_argument("--samples-per-shard", type=int, default=1000)
    r = p.add_argument_group("ray")
    r.add_argument("--ray-address", default=None, help="join this Ray cluster (default: embedded local Ray)")
    r.add_argument("--num-cpus", type=int, default=None, help="embedded Ray: CPUs to use (default: all)")
    p.add_argument("--keep-work", action="store_true", help="keep _work/ intermediates after success")
    p.add_argument("--no-progress", action="store_true")
    add_tracking_arguments(p)


def _fail(message: str) -> int:
    print(f"pretrain data commoncrawl: {message}", file=sys.stderr)
    return EXIT_USAGE


def _options(args):
    from data_pipeline.text.config import TextOptions

    langs = () if args.langs.strip().lower() in ("all", "") else tuple(x.strip() for x in args.langs.split(",") if x)
    checks = [
        (args.vocab_size >= 300, f"--vocab-size {args.vocab_size}: must be at least 300 (7 special + 256 byte pieces)"),
        (0.0 <= args.val_fraction < 1.0, f"--val-fraction {args.val_fraction}: must be in [0, 1)"),
        (0.0 <= args.lang_threshold <= 1.0, f"--lang-threshold {args.lang_threshold}: must be in [0, 1]"),
        (args.sample_tokens > 0, f"--sample-tokens {args.sample_tokens}: must be positive"),
        (args.samples_per_shard > 0, f"--samples-per-shard {args.samples_per_shard}: must be positive"),
        (args.ngram > 0 and args.bands > 0 and args.rows > 0, "--ngram, --bands and --rows must be positive"),
        (args.tokenizer is None or os.path.isfile(args.tokenizer), f"--tokenizer {args.tokenizer}: no such file"),
        (args.fasttext_model is None or os.path.isfile(args.fasttext_model),
         f"--fasttext-model {args.fasttext_model}: no such file"),
        (args.num_cpus is None or args.num_cpus > 0, f"--num-cpus {args.num_cpus}: must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if args.fasttext_model:
        try:
            import fasttext  # noqa: F401
        except ImportError as e:
            raise ValueError(f"--fasttext-model {args.fasttext_model}: the `fasttext` package is not installed") from e
    from data_pipeline.text.filters import parse_overrides

    return TextOptions(
        filter_params=parse_overrides(args.filter), extractor=args.extractor, langs=langs, lang_threshold=args.lang_threshold, fasttext_model=args.fasttext_model,
        gopher_quality=not args.no_gopher_quality, gopher_repetition=not args.no_gopher_repetition, c4=not args.no_c4,
        c4_terminal_punct=not args.no_c4_terminal_punct, fineweb=not args.no_fineweb, pii=not args.no_pii,
        exact_dedup=not args.no_exact_dedup, near_dedup=not args.no_near_dedup, ngram=args.ngram, bands=args.bands,
        rows=args.rows, tokenizer=os.path.abspath(args.tokenizer) if args.tokenizer else None,
        model_type=args.model_type, vocab_size=args.vocab_size, tokenizer_sample_chars=args.tokenizer_sample_chars,
        tokenizer_threads=args.tokenizer_threads, val_fraction=args.val_fraction, sample_tokens=args.sample_tokens,
        samples_per_shard=args.samples_per_shard)


def resolve_inputs(args) -> list:
    """The input files, sorted; local globs expanded, or the crawl's first files (to download)."""
    from data_pipeline.text.pipeline import InputFile

    if bool(args.input) == bool(args.crawl):
        raise ValueError("give exactly one of --input PATH_OR_GLOB ... or --crawl CC-MAIN-YYYY-WW")
    if args.crawl:
        from data_pipeline.text.download import DEFAULT_BASE_URL, crawl_files

        if args.max_files is not None and args.max_files <= 0:
            raise ValueError(f"--max-files {args.max_files}: must be positive")
        cache = args.cache_dir or os.path.join(args.output, "_downloads")
        try:
            remotes = crawl_files(args.crawl, args.format, args.max_files, args.base_url or DEFAULT_BASE_URL, cache,
                                  retries=args.retries)
        except OSError as e:
            raise ValueError(f"--crawl {args.crawl}: cannot read the file listing: {e}") from e
        return [InputFile(path=r.path, source=r.source, url=r.url) for r in remotes]
    paths: list[str] = []
    for pattern in args.input:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.isfile(m) for m in matches):
            raise ValueError(f"--input {pattern}: no such file")
        paths += matches
    # workers (on a cluster, or with another working directory) get absolute paths; lineage keeps
    # the names as given
    return [InputFile(path=os.path.abspath(p), source=p) for p in sorted(dict.fromkeys(paths))]


def run(args) -> int:
    try:
        opts = _options(args)
        inputs = resolve_inputs(args)
    except ValueError as e:
        return _fail(str(e))
    if not inputs:
        return _fail("no input files")
    from data_pipeline.text.counts import summary_table
    from data_pipeline.text.pipeline import run_pipeline

    try:
        manifest = run_pipeline(inputs, args.output, opts, ray_address=args.ray_address, num_cpus=args.num_cpus,
                                keep_work=args.keep_work, progress=not args.no_progress, retries=args.retries)
    except ValueError as e:
        return _fail(str(e))
    print(summary_table(manifest))
    print(f"wrote {os.path.join(args.output, 'manifest.json')}")
    track_pipeline(args, "commoncrawl", args.output)
    return 0
