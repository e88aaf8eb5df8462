"""Orchestration of the text pipeline on Ray: resume, worker- and partition-count independence,
and a driver that holds per-file summaries only.

Every stage's output depends only on the inputs and the options. Per-document work runs in Ray
tasks that write their results atomically under the job's work directory (``<out>/_work`` or
``--work-dir``: a local path every node sees, or an object store), one marker per finished unit:

1. stage 1, one task per input file (read, extract, language, filters, PII, hashes): ``process.py``;
2. dedup as a shuffle (``shuffle.py``): scatter per file, candidate pairs per partition, clusters
   in one task over the duplicate edges; then one task per file writes its ``rejected/`` parquet;
3. the tokenizer sample: per-file tasks write the candidates below a sort-key threshold the
   driver derives from a 65,536-bin histogram; one task trains the tokenizer;
4. tokenize and plan samples, one task per file (``packing.py``);
5. shards, one task per shard, planned from per-file sample counts.

The driver holds a few numbers per input file and per shard, never per document. A rerun after a
kill reuses every finished unit (a shard only after its sha256 is checked) and gives
byte-identical output.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from data_pipeline import storage
from data_pipeline.shards import remove_stale_temps, shard_name
from data_pipeline.text import counts as counting
from data_pipeline.text import packing, shuffle
from data_pipeline.text.config import DEDUP_KEYS, READ_KEYS, TOKENIZER_KEYS, TextOptions, fingerprint, subset
from data_pipeline.text.inputs import InputError, InputFile, local_copy
from data_pipeline.text.process import process_file, read_json, write_json
from data_pipeline.text.progress import StageProgress
from data_pipeline.text.stages import finish_file, sample_file, tokenize_survivors
from data_pipeline.text.tokenizer import token_dtype, tokenizer_info, train_from_sample

__all__ = ["FailedInputs", "InputFile", "run_pipeline"]

KILL_ENV = "PRETRAIN_TEXT_KILL_AFTER"  # "<stage>:<n>": SIGKILL the driver after n tasks of a stage (tests)
DOCS_PER_PARTITION = 250_000  # default --dedup-partitions: about 150 MB of band records per partition task
HIST_BITS = 16


class FailedInputs(RuntimeError):
    """More input files failed than ``max_failed_inputs`` allows; the message lists them."""


def _stage1_task(inp: InputFile, key: str, opts: TextOptions, work: str, retries: int) -> dict:
    try:
        with local_copy(inp, retries) as path:
            return process_file(path, inp.source, key, opts, work, inp.format)
    except InputError as e:
        # empty results for the later stages, and no marker: a rerun tries the download again
        from data_pipeline.text.process import KEPT_SCHEMA, REJECTED_SCHEMA, write_table

        for name, schema in (("kept", KEPT_SCHEMA), ("rejected", REJECTED_SCHEMA)):
            write_table(storage.join(work, f"{key}.{name}.parquet"), schema.empty_table())
        return {"key": key, "source": inp.source, "records": {}, "skipped": {}, "error": str(e),
                "error_kind": e.kind, "documents": 0, "kept_stage1": 0, "kept_chars": 0, "dropped": {}}


def _marked(fn, marker: str | None, args: tuple):
    """Run ``fn(*args)`` in a task and record its (JSON) result at ``marker``: the unit is done."""
    result = fn(*args)
    if marker is not None:
        write_json(marker, result)
    return result


def allowed_failures(max_failed_inputs: float | int | None, n_inputs: int) -> int:
    """``N`` (a count) or a fraction in (0, 1) of the inputs; None allows any number."""
    if max_failed_inputs is None:
        return n_inputs
    if isinstance(max_failed_inputs, float) and 0 < max_failed_inputs < 1:
        return int(max_failed_inputs * n_inputs)
    return int(max_failed_inputs)


class Runner:
    """One run: holds the locations and the Ray handle; each method is one stage."""

    def __init__(self, inputs: list[InputFile], out_dir: str, opts: TextOptions, progress: bool = True,
                 retries: int = 5, dedup_partitions: int | None = None, work_dir: str | None = None):
        self.inputs, self.opts, self.progress, self.retries = inputs, opts, progress, retries
        self.out = storage.absolute(out_dir)  # tasks may run with another working directory, on other nodes
        self.keys = [f"{i:06d}" for i in range(len(inputs))]
        self.fp_read = fingerprint(subset(opts, READ_KEYS), [i.identity() for i in inputs])
        self.fp_all = fingerprint(self.fp_read, opts.to_dict())
        self.work_root = storage.absolute(work_dir) if work_dir else storage.join(self.out, "_work")
        self.work = storage.join(self.work_root, self.fp_read)
        self.partitions = dedup_partitions
        self.ray = None

    # -- helpers -----------------------------------------------------------------------------
    def at(self, *parts: str) -> str:
        return storage.join(self.work, *parts)

    def _remote(self, fn):
        return self.ray.remote(num_cpus=1, max_retries=2)(fn)

    def _run(self, desc: str, fn, jobs: list[tuple[str | None, tuple]], nbytes: list[int] | None = None,
             marks: bool = True, reduce=None) -> list:
        """Results of ``fn(*args)`` for every ``(marker, args)`` job, in order: a job whose marker
        (a JSON file) exists is not run again, its marker is its result; a finished task writes
        its marker (``marks``) unless ``fn`` writes it itself. Task errors surface as the task's
        own exception (a StorageError names the location). ``reduce(result)`` is what is kept
        of each result (the driver folds what it needs as results arrive and keeps little)."""
        keep = reduce or (lambda r: r)
        results: list = [None] * len(jobs)
        todo = []
        for i, (marker, _) in enumerate(jobs):
            if marker is not None and storage.exists(marker):
                results[i] = keep(read_json(marker))
            else:
                todo.append(i)
        task = self._remote(_marked if marks else fn)

        def submit(i: int):
            return task.remote(fn, jobs[i][0], jobs[i][1]) if marks else task.remote(*jobs[i][1])

        total = sum(nbytes[i] for i in todo) if nbytes and all(b is not None for b in nbytes) else None
        bar = StageProgress(desc, len(todo), total, self.progress)
        kill_stage, _, kill_after = os.environ.get(KILL_ENV, "").partition(":")
        # a bounded number of tasks in flight: the driver holds a window, not every task of the stage
        window = max(64, 4 * int(self.ray.cluster_resources().get("CPU", 1)))
        queue, refs = iter(todo), {}
        for i in queue:
            refs[submit(i)] = i
            if len(refs) >= window:
                break
        while refs:
            done, _ = self.ray.wait(list(refs), num_returns=1)
            i = refs.pop(done[0])
            try:
                result = self._get(done[0])
            except BaseException:
                self._drain(list(refs))
                raise
            bar.update(result, nbytes[i] if nbytes else None)
            results[i] = keep(result)
            if kill_stage and desc.startswith(kill_stage) and bar.done >= int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume tests
            nxt = next(queue, None)
            if nxt is not None:
                refs[submit(nxt)] = nxt
        return results

    def _drain(self, refs: list) -> None:
        """A task failed: stop the stage's other tasks and wait until they have ended, so that
        none is still writing when the error reaches the user (a cancelled write removes its
        temp file)."""
        for ref in refs:
            self.ray.cancel(ref)
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=120)

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, (storage.StorageError, ValueError)):
                raise cause from None
            raise

    def _log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    # -- stage 1 -----------------------------------------------------------------------------
    def stage1(self) -> list[dict]:
        """Read, extract, identify language, filter, scrub PII: one task per file not done yet."""
        jobs = [(self.at("stage1", f"{k}.json"), (inp, k, self.opts, self.at("stage1"), self.retries))
                for inp, k in zip(self.inputs, self.keys)]
        sizes = [None if (i.url or storage.is_remote(i.path)) else os.path.getsize(i.path) for i in self.inputs]
        files = self._run("read+filter", _stage1_task, jobs, sizes, marks=False)
        self._log(f"read+filter: {sum(f['documents'] for f in files)} documents, "
                  f"{sum(f['kept_stage1'] for f in files)} kept, {sum(1 for f in files if f['error'])} files with errors")
        return files

    # -- dedup -------------------------------------------------------------------------------
    def dedup(self, files: list[dict]) -> tuple[str, int]:
        """Exact and near duplicates over all files; returns (drops prefix, ranges) for ``file_drops``."""
        o = self.opts
        kept = sum(f["kept_stage1"] for f in files)
        parts = self.partitions or max(1, -(-kept // DOCS_PER_PARTITION))
        base = self.at(f"dedup-{fingerprint(subset(o, DEDUP_KEYS), parts)}")
        prefixes = [storage.join(base, "scatter", k) for k in self.keys]
        self._run("dedup scatter", shuffle.scatter, [
            (p + ".json", (self.at("stage1", f"{k}.kept.parquet"), i, parts, o.bands, o.rows, p))
            for i, (k, p) in enumerate(zip(self.keys, prefixes))])
        pair_paths = [storage.join(base, "pairs", f"{p:05d}.parquet") for p in range(parts)]
        self._run("dedup pairs", shuffle.find_pairs, [
            (path + ".json", (prefixes, p, o.rows, o.exact_dedup, o.near_dedup, path))
            for p, path in enumerate(pair_paths)])
        drops = storage.join(base, "drops")
        [stats] = self._run("dedup clusters", shuffle.resolve,
                            [(drops + ".json", (pair_paths, len(self.keys), parts, drops))])
        self._log(f"dedup: {stats['exact']} exact and {stats['near']} near duplicates "
                  f"({parts} partitions, {stats['near_edges']} candidate pairs)")
        return drops, parts

    def finish(self, drops: tuple[str, int]) -> tuple[list[dict], np.ndarray]:
        """``rejected/<key>.parquet`` per file: each file's dedup counts, and the survivors'
        characters by sample-key bin summed over all files (one fixed-size array)."""
        jobs = [(None, (self.at("stage1"), self.out, k, i, len(self.keys), drops, self.opts.seed, HIST_BITS))
                for i, k in enumerate(self.keys)]
        hist = np.zeros(1 << HIST_BITS, dtype=np.int64)

        def fold(result: dict) -> dict:
            bins, chars = result.pop("hist")
            np.add.at(hist, np.asarray(bins, dtype=np.int64), np.asarray(chars, dtype=np.int64))
            return result

        return self._run("rejected", finish_file, jobs, reduce=fold), hist

    # -- tokenizer ---------------------------------------------------------------------------
    def tokenizer(self, hist: np.ndarray, drops: tuple[str, int]) -> bytes:
        """The given tokenizer, or one trained on a deterministic sample of the surviving text."""
        o = self.opts
        if o.tokenizer:
            model = open(o.tokenizer, "rb").read()
        else:
            fp = fingerprint(self.fp_read, subset(o, DEDUP_KEYS + TOKENIZER_KEYS))
            path = storage.join(self.work_root, f"tokenizer-{fp}.model")
            if not storage.exists(path):
                limit = self._sample_limit(hist)
                # the sample depends on dedup, seed and budget, not on the vocabulary: kept for a rerun
                # with another --vocab-size
                base = self.at(f"toksample-{fingerprint(subset(o, DEDUP_KEYS + ('seed', 'tokenizer_sample_chars')))}")
                counts = self._run("tokenizer sample", sample_file, [
                    (storage.join(base, f"{k}.json"),
                     (self.at("stage1"), k, i, len(self.keys), drops, o.seed, limit, storage.join(base, k)))
                    for i, k in enumerate(self.keys)])
                paths = [storage.join(base, f"{k}.parquet") for k, c in zip(self.keys, counts) if c["documents"]]
                self._run("tokenizer train", train_from_sample,
                          [(None, (paths, o.tokenizer_sample_chars, o.vocab_size, o.model_type, o.tokenizer_threads,
                                   path))])
            model = storage.read_bytes(path)
        storage.write_bytes(storage.join(self.out, "tokenizer.model"), model)
        return model

    def _sample_limit(self, hist: np.ndarray) -> int | None:
        """The sample-key bound below which the tokenizer sample lies: the smallest histogram bin
        edge whose surviving characters reach the budget (None: every document)."""
        cum = np.cumsum(hist)
        if not len(cum) or cum[-1] < self.opts.tokenizer_sample_chars:
            return None
        b = int(np.searchsorted(cum, self.opts.tokenizer_sample_chars))
        return None if b + 1 >= len(hist) else (b + 1) << (64 - HIST_BITS)

    # -- tokens and shards -------------------------------------------------------------------
    def tokenize(self, drops: tuple[str, int], model: bytes, dtype: str) -> tuple[str, list[dict]]:
        import hashlib

        prefix = storage.join(self.work_root, f"tokens-{fingerprint(self.fp_all, hashlib.sha256(model).hexdigest())}")
        model_ref = self.ray.put(model)
        jobs = [(storage.join(prefix, f"{k}.summary.json"),
                 (self.at("stage1"), k, i, len(self.keys), drops, model_ref, dtype, self.opts.val_fraction,
                  self.opts.sample_tokens, storage.join(prefix, k)))
                for i, k in enumerate(self.keys)]
        return prefix, self._run("tokenize", tokenize_survivors, jobs, marks=False)

    def shards(self, prefix: str, summaries: list[dict], dtype: str) -> dict[str, list[dict]]:
        results: dict[str, list[dict]] = {}
        records = storage.join(prefix, "shards")
        for split in packing.SPLITS:
            counts = [(k, s["samples"][split]) for k, s in zip(self.keys, summaries)]
            jobs = []
            for n, pieces in enumerate(packing.plan_shards(counts, self.opts.samples_per_shard)):
                rel = f"{split}/{shard_name(n)}"
                plan = fingerprint(prefix, split, n, pieces)
                jobs.append((None, (self.out, rel, split, n, pieces, prefix, dtype,
                                    storage.join(records, f"{split}-{n:06d}.json"), plan)))
            _remove_extra_shards(storage.join(self.out, split), len(jobs))
            results[split] = self._run(f"shards {split}", packing.write_text_shard, jobs, marks=False)
            reused = sum(1 for e in results[split] if e.get("reused"))
            if reused:
                self._log(f"shards {split}: {reused} of {len(jobs)} finished shards verified (sha256) and kept")
        return results


def _remove_extra_shards(split_dir: str, count: int) -> None:
    """Shards past the planned count are left over from a run with other options."""
    for name in storage.listdir(split_dir):
        if name.startswith("shard-") and name.endswith(".tar") and int(name[6:12]) >= count:
            storage.remove(storage.join(split_dir, name))


def _claim_output(out: str, fp: str) -> None:
    """Resume only our own partial output: unless ``_work/run.json`` says this directory holds a
    partial run with the same options, remove the outputs another run left (shards, rejected,
    manifest, tokenizer) so none of them is taken for finished work. Intermediates under the work
    directory stay: their names already say which options made them."""
    marker = storage.join(out, "_work", "run.json")
    if storage.exists(marker) and read_json(marker).get("fingerprint") == fp:
        return
    for folder in ("train", "val", "rejected"):
        for name in storage.listdir(storage.join(out, folder)):
            if name.endswith((".tar", ".parquet")):
                storage.remove(storage.join(out, folder, name))
    for name in ("manifest.json", "tokenizer.model"):
        storage.remove(storage.join(out, name))
    write_json(marker, {"fingerprint": fp})


def run_pipeline(inputs: list[InputFile], out_dir: str, opts: TextOptions, ray_address: str | None = None,
                 num_cpus: int | None = None, keep_work: bool = False, progress: bool = True, retries: int = 5,
                 max_failed_inputs: float | int | None = 0, dedup_partitions: int | None = None,
                 work_dir: str | None = None) -> dict:
    """Run (or finish) the whole pipeline; returns the manifest written to ``<out>/manifest.json``.

    Raises FailedInputs (before any global stage, finished per-file work kept) when more input
    files failed than ``max_failed_inputs`` (a count, or a fraction in (0, 1)) allows."""
    from data_pipeline.ray_runtime import ray_session
    from data_pipeline.text import complete

    runner = Runner(inputs, str(out_dir), opts, progress, retries, dedup_partitions, work_dir)
    shared = None if storage.is_remote(runner.out) else runner.out  # every node must see a local --out
    with ray_session(ray_address, num_cpus, shared_dir=shared) as ray:
        runner.ray = ray
        done = complete.finished_manifest(runner)
        if done is not None:
            return done
        if not storage.is_remote(runner.out):
            os.makedirs(runner.out, exist_ok=True)
            remove_stale_temps(runner.out)
        _claim_output(runner.out, runner.fp_all)
        files = runner.stage1()
        failed = counting.failed_inputs(files)
        if len(failed) > allowed_failures(max_failed_inputs, len(files)):
            raise FailedInputs(counting.failure_summary(failed, len(files)) + "\nthe per-file work that succeeded is "
                               "kept; rerun to retry downloads and I/O errors, or allow failures with "
                               "--max-failed-inputs N (or a fraction)")
        drops = runner.dedup(files)
        finished, hist = runner.finish(drops)
        model = runner.tokenizer(hist, drops)
        info = tokenizer_info(model)
        runner._log(f"tokenizer ({'given' if opts.tokenizer else 'trained'}): {info['model_type']}, "
                    f"vocab {info['vocab_size']}")
        dtype = token_dtype(info["vocab_size"])
        prefix, summaries = runner.tokenize(drops, model, dtype)
        shards = runner.shards(prefix, summaries, dtype)
    manifest = complete.manifest(runner, files, finished, info, dtype, shards)
    write_json(storage.join(runner.out, "manifest.json"), manifest)
    if not keep_work:
        storage.remove_tree(runner.work_root)
        storage.remove_tree(storage.join(runner.out, "_work"))
    return manifest
