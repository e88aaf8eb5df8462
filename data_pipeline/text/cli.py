"""``pretrain data commoncrawl``: Common Crawl WARC/WET (or parquet / JSON-lines datasets) ->
tokenized WebDataset shards, on Ray.

Inputs are files (``--input``: local paths and globs, ``s3://``, ``gs://`` or ``https://``; sorted)
or the first ``--max-files`` files of a crawl (``--crawl CC-MAIN-YYYY-WW --format wet``), read from
``s3://commoncrawl/`` when AWS credentials are present and over HTTPS into a resumable cache
otherwise. Rerunning the same command after a kill finishes the job and gives byte-identical output.

Exit status: 0 done (tolerated input failures are listed on stderr); 1 more inputs failed than
``--max-failed-inputs`` allows (the summary names them; finished per-file work is kept), or the
output could not be written (the message names the location); 2 a usage error, an input or output
that cannot be used (named), or a ``--vocab-size`` the text cannot support (with the minimum).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from data_pipeline.tracking import add_tracking_arguments, track_pipeline

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("inputs")
    src.add_argument("--input", nargs="+", metavar="PATH_OR_GLOB",
                     help="WARC or WET files (gzip or not), or parquet / JSON-lines (.gz, .zst) datasets with a "
                          "`text` column; local paths or globs, s3://, gs:// or https:// URIs")
    src.add_argument("--crawl", metavar="CC-MAIN-YYYY-WW", help="read a Common Crawl crawl's listing instead")
    src.add_argument("--format", default="wet", choices=("warc", "wet"), help="with --crawl: which files")
    src.add_argument("--max-files", type=int, default=None, help="with --crawl: the first N listed files")
    src.add_argument("--base-url", default=None, help="with --crawl: server root (default https://data.commoncrawl.org/)")
    src.add_argument("--cache-dir", default=None, help="with --crawl: download cache (default <output>/_downloads)")
    src.add_argument("--retries", type=int, default=5, help="download retries with exponential backoff")
    src.add_argument("--max-failed-inputs", default="0", metavar="N_OR_FRACTION",
                     help="input files allowed to fail (unreadable, corrupt, download failed) before the job stops "
                          "with exit 1: a count, or a fraction of the inputs such as 0.01 (default 0)")
    p.add_argument("--out", "--output", "-o", dest="output", metavar="DIR", required=True,
                   help="output directory (manifest.json, shards, rejected/): a local path, s3:// or gs://; "
                        "--output and -o are aliases")
    p.add_argument("--work-dir", default=None,
                   help="intermediates (default <output>/_work); on a cluster a location every node can read")
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
    r.add_argument("--dedup-partitions", type=int, default=None,
                   help="partitions of the dedup shuffle; bounds each task's memory, not the result "
                        "(default: one per 250,000 kept documents)")
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
        (args.dedup_partitions is None or args.dedup_partitions > 0,
         f"--dedup-partitions {args.dedup_partitions}: must be positive"),
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


def max_failed_inputs(value: str) -> int | float:
    """``--max-failed-inputs``: a count (``3``) or a fraction of the inputs in (0, 1) (``0.01``)."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number < 0 or (number >= 1 and not number.is_integer()):
        raise ValueError(f"--max-failed-inputs {value}: expected a count (0, 1, 2, ...) or a fraction in (0, 1)")
    return number if 0 < number < 1 else int(number)


def _crawl_inputs(args) -> list:
    from data_pipeline import storage
    from data_pipeline.text.download import crawl_files, default_base_url
    from data_pipeline.text.pipeline import InputFile

    if args.max_files is not None and args.max_files <= 0:
        raise ValueError(f"--max-files {args.max_files}: must be positive")
    base = args.base_url or default_base_url()
    cache = args.cache_dir or (None if storage.is_remote(args.output) else os.path.join(args.output, "_downloads"))
    try:
        remotes = crawl_files(args.crawl, args.format, args.max_files, base, cache, retries=args.retries)
    except OSError as e:
        raise ValueError(f"--crawl {args.crawl}: cannot read the file listing: {e}") from e
    return [InputFile(path=r.path, source=r.source, url=r.url) for r in remotes]


def resolve_inputs(args) -> list:
    """The input files, sorted; globs expanded and every file checked readable (a missing or
    unreadable one is named now, before anything is written), or the crawl's first files."""
    from data_pipeline import storage
    from data_pipeline.text.inputs import check_dataset, format_of
    from data_pipeline.text.pipeline import InputFile

    if bool(args.input) == bool(args.crawl):
        raise ValueError("give exactly one of --input PATH_OR_GLOB ... or --crawl CC-MAIN-YYYY-WW")
    if args.crawl:
        return _crawl_inputs(args)
    paths: list[str] = []
    for pattern in args.input:
        magic = glob.has_magic(pattern.split("://", 1)[-1])
        matches = storage.glob(pattern) if magic else [pattern]
        if not matches:
            raise ValueError(f"--input {pattern}: matches no files")
        for m in matches if not magic or not storage.is_remote(pattern) else []:
            try:
                storage.check_readable(m)
            except storage.StorageError as e:
                raise ValueError(f"--input {e}" if e.kind != "not_found" else f"--input {m}: no such file") from None
        paths += matches
    paths = sorted(dict.fromkeys(paths))
    for fmt in ("parquet", "jsonl"):  # a dataset without text is refused now; later files fail as inputs
        first = next((p for p in paths if format_of(p) == fmt), None)
        if first:
            check_dataset(first, fmt)
    # workers (on a cluster, or with another working directory) get absolute paths; lineage keeps
    # the names as given
    return [InputFile(path=storage.absolute(p), source=p) for p in paths]


def run(args) -> int:
    from data_pipeline import storage

    try:
        opts = _options(args)
        allowed = max_failed_inputs(args.max_failed_inputs)
        inputs = resolve_inputs(args)
        if not inputs:
            return _fail("no input files")
        storage.check_writable(args.output)
        if args.work_dir:
            storage.check_writable(args.work_dir)
    except (ValueError, storage.StorageError) as e:
        return _fail(str(e))
    from data_pipeline.text.counts import failed_inputs, failure_summary, summary_table
    from data_pipeline.text.pipeline import FailedInputs, run_pipeline

    try:
        manifest = run_pipeline(inputs, args.output, opts, ray_address=args.ray_address, num_cpus=args.num_cpus,
                                keep_work=args.keep_work, progress=not args.no_progress, retries=args.retries,
                                max_failed_inputs=allowed, dedup_partitions=args.dedup_partitions,
                                work_dir=args.work_dir)
    except FailedInputs as e:
        print(f"pretrain data commoncrawl: {e}", file=sys.stderr)
        return EXIT_FAILED
    except storage.StorageError as e:
        print(f"pretrain data commoncrawl: {e}; nothing half-written is left under its name, rerun to go on",
              file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:
        return _fail(str(e))
    print(summary_table(manifest))
    failed = failed_inputs(manifest["counts"]["files"])
    if failed:
        print("pretrain data commoncrawl: warning: " + failure_summary(failed, len(inputs)) + "\n(allowed by "
              f"--max-failed-inputs {args.max_failed_inputs})", file=sys.stderr)
    print(f"wrote {storage.join(args.output, 'manifest.json')}")
    track_pipeline(args, "commoncrawl", args.output)
    return 0
