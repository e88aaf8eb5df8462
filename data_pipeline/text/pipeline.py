"""Orchestration of the text pipeline on Ray, with resume and worker-count independence.

Every stage's output depends only on the inputs and the options: per-file work runs as Ray tasks
that write their results atomically under ``_work/``; the driver then merges those results in
sorted file order (global dedup, tokenizer sample, packing). A rerun after a kill reuses every
finished per-file result and every finished shard, and gives byte-identical output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from data_pipeline.ray_runtime import ray_session
from data_pipeline.shards import remove_stale_temps, sha256_file, shard_name, write_bytes_atomic, write_json_atomic
from data_pipeline.text import counts as counting
from data_pipeline.text import packing
from data_pipeline.text.config import DEDUP_KEYS, READ_KEYS, TOKENIZER_KEYS, TextOptions, fingerprint, subset
from data_pipeline.text.dedup import find_duplicates
from data_pipeline.text.process import REJECTED_SCHEMA, process_file
from data_pipeline.text.tokenizer import token_dtype, tokenizer_info, train_tokenizer

KILL_ENV = "PRETRAIN_TEXT_KILL_AFTER"  # "<stage>:<n>": SIGKILL the driver after n tasks of a stage (tests)
FORMAT = "pretrain-text-shards"
VERSION = 1


@dataclass
class InputFile:
    """One input: a local ``path``; ``url`` when it must be downloaded there first; ``source`` is the
    name recorded in lineage and counts."""

    path: str
    source: str
    url: str | None = None

    def identity(self) -> list:
        if self.url:
            return [self.source, self.url]
        return [self.source, os.path.getsize(self.path) if os.path.exists(self.path) else -1]


def _stage1_task(inp: InputFile, key: str, opts: TextOptions, work: str, retries: int) -> dict:
    if inp.url:
        from data_pipeline.text.download import fetch

        try:
            fetch(inp.url, inp.path, retries=retries)
        except OSError as e:
            # a file that cannot be fetched is a counted error, like a corrupt one; no done-marker is
            # written, so a rerun tries the download again
            from data_pipeline.text.process import KEPT_SCHEMA, _write_table

            _write_table(Path(work) / f"{key}.kept.parquet", {n: [] for n in KEPT_SCHEMA.names}, KEPT_SCHEMA)
            _write_table(Path(work) / f"{key}.rejected.parquet", {n: [] for n in REJECTED_SCHEMA.names},
                         REJECTED_SCHEMA)
            return {"key": key, "source": inp.source, "records": {}, "skipped": {}, "error": str(e),
                    "documents": 0, "kept_stage1": 0, "dropped": {}}
    return process_file(inp.path, inp.source, key, opts, Path(work))


class Runner:
    """One run: holds the paths and the Ray handle; each method is one stage."""

    def __init__(self, inputs: list[InputFile], out_dir: str | Path, opts: TextOptions, progress: bool = True,
                 retries: int = 5):
        self.inputs, self.opts, self.progress, self.retries = inputs, opts, progress, retries
        self.out = Path(out_dir).absolute()  # tasks may run with another working directory
        self.keys = [f"{i:06d}" for i in range(len(inputs))]
        self.fp_read = fingerprint(subset(opts, READ_KEYS), [i.identity() for i in inputs])
        self.fp_all = fingerprint(self.fp_read, opts.to_dict())
        self.work = self.out / "_work" / self.fp_read
        self.ray = None

    # -- helpers -----------------------------------------------------------------------------
    def _wait(self, refs: list, desc: str) -> list:
        """Results of ``refs`` in submission order, with a progress bar as they finish."""
        from tqdm import tqdm

        pending = list(refs)
        kill_stage, _, kill_after = os.environ.get(KILL_ENV, "").partition(":")
        with tqdm(total=len(refs), desc=desc, disable=not self.progress or not refs, file=sys.stderr) as bar:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                bar.update(len(done))
                if kill_stage and desc.startswith(kill_stage) and len(refs) - len(pending) >= int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume tests
        return self.ray.get(refs)

    def _log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def _remote(self, fn):
        return self.ray.remote(num_cpus=1, max_retries=2)(fn)

    # -- stages ------------------------------------------------------------------------------
    def stage1(self) -> list[dict]:
        """Read, extract, identify language, filter, scrub PII: one task per file not done yet."""
        stage1 = self.work / "stage1"
        stage1.mkdir(parents=True, exist_ok=True)
        task = self._remote(_stage1_task)
        todo = [(i, k) for i, k in enumerate(self.keys) if not (stage1 / f"{k}.json").is_file()]
        refs = [task.remote(self.inputs[i], k, self.opts, str(stage1), self.retries) for i, k in todo]
        fresh = {k: counts for (_, k), counts in zip(todo, self._wait(refs, "read+filter"))}
        return [fresh[k] if k in fresh else json.loads((stage1 / f"{k}.json").read_text()) for k in self.keys]

    def dedup(self) -> dict[str, dict[int, tuple[str, str]]]:
        """Global exact + near dedup over all files; {key: {row: (reason, kept id)}}."""
        ids, hashes, sigs, where = [], [], [], []
        for k in self.keys:
            t = pq.read_table(self.work / "stage1" / f"{k}.kept.parquet", columns=["id", "hash", "minhash"])
            ids += t.column("id").to_pylist()
            hashes.append(t.column("hash").to_numpy())
            sigs += t.column("minhash").to_pylist()
            where += [(k, r) for r in range(t.num_rows)]
        n = self.opts.bands * self.opts.rows
        sig = np.frombuffer(b"".join(sigs), dtype=np.uint32).reshape(-1, n) if sigs else np.zeros((0, n), np.uint32)
        hv = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        drops = find_duplicates(ids, hv, sig, self.opts.bands, self.opts.rows, self.opts.exact_dedup,
                                self.opts.near_dedup)
        out: dict[str, dict[int, tuple[str, str]]] = {k: {} for k in self.keys}
        for i, (reason, keeper) in drops.items():
            k, r = where[i]
            out[k][r] = (reason, ids[keeper])
        return out

    def write_rejected(self, drops: dict[str, dict[int, tuple[str, str]]]) -> None:
        """``rejected/<key>.parquet``: stage-1 drops of the file, then its dedup drops."""
        import io

        for k in self.keys:
            rej = pq.read_table(self.work / "stage1" / f"{k}.rejected.parquet")
            if drops[k]:
                kept = pq.read_table(self.work / "stage1" / f"{k}.kept.parquet",
                                     columns=["id", "url", "source", "offset"]).take(sorted(drops[k]))
                extra = kept.append_column("stage", pa.array(["dedup"] * kept.num_rows, pa.string()))
                extra = extra.append_column("reason", pa.array([drops[k][r][0] for r in sorted(drops[k])]))
                extra = extra.append_column("detail", pa.array([f"duplicate of {drops[k][r][1]}" for r in sorted(drops[k])]))
                rej = pa.concat_tables([rej, extra.cast(REJECTED_SCHEMA)])
            buf = io.BytesIO()
            pq.write_table(rej, buf, compression="zstd")
            write_bytes_atomic(self.out / "rejected" / f"{k}.parquet", buf.getvalue())

    def tokenizer(self, drops) -> bytes:
        """The given tokenizer, or one trained on a deterministic sample of the surviving text."""
        o = self.opts
        if o.tokenizer:
            model = Path(o.tokenizer).read_bytes()
        else:
            path = self.out / "_work" / f"tokenizer-{fingerprint(self.fp_read, subset(o, DEDUP_KEYS + TOKENIZER_KEYS))}.model"
            if not path.is_file():
                write_bytes_atomic(path, train_tokenizer(self._tokenizer_sample(drops), o.vocab_size, o.model_type,
                                                         o.tokenizer_threads))
            model = path.read_bytes()
        write_bytes_atomic(self.out / "tokenizer.model", model)
        return model

    def _tokenizer_sample(self, drops) -> list[str]:
        """Surviving documents in the order of a seeded hash of their id, up to the character
        budget; only the chosen texts are read."""
        order = []
        for k in self.keys:
            t = pq.read_table(self.work / "stage1" / f"{k}.kept.parquet", columns=["id", "chars"]).to_pydict()
            order += [(xxhash.xxh64_intdigest(i.encode(), self.opts.seed), k, r, n)
                      for r, (i, n) in enumerate(zip(t["id"], t["chars"])) if r not in drops[k]]
        order.sort()
        chosen, budget = [], self.opts.tokenizer_sample_chars
        for _, k, r, n in order:
            if budget <= 0:
                break
            chosen.append((k, r, budget))
            budget -= n
        rows: dict[str, list[int]] = {}
        for k, r, _ in chosen:
            rows.setdefault(k, []).append(r)
        texts = {(k, r): text for k, rs in rows.items() for r, text in zip(rs, pq.read_table(
            self.work / "stage1" / f"{k}.kept.parquet", columns=["text"]).take(rs).column("text").to_pylist())}
        return [texts[k, r][:limit] for k, r, limit in chosen]

    def tokenize(self, drops, model: bytes, dtype: str) -> Path:
        prefix = self.out / "_work" / f"tokens-{fingerprint(self.fp_all, sha256_file_bytes(model))}"
        prefix.mkdir(parents=True, exist_ok=True)
        task = self._remote(packing.tokenize_file)
        model_ref = self.ray.put(model)
        refs = []
        for k in self.keys:
            if not (prefix / f"{k}.json").is_file():
                rows = [r for r in range(self._kept_rows(k)) if r not in drops[k]]
                refs.append(task.remote(str(self.work / "stage1" / f"{k}.kept.parquet"), rows, model_ref, dtype,
                                        self.opts.val_fraction, str(prefix / k)))
        self._wait(refs, "tokenize")
        return prefix

    def _kept_rows(self, key: str) -> int:
        return pq.ParquetFile(self.work / "stage1" / f"{key}.kept.parquet").metadata.num_rows

    def shards(self, prefix: Path, dtype: str) -> dict[str, list[dict]]:
        metas = [(k, json.loads((prefix / f"{k}.json").read_text())["documents"]) for k in self.keys]
        plan = packing.plan_samples(metas, self.opts.sample_tokens)
        task = self._remote(packing.write_text_shard)
        results: dict[str, list] = {}
        for split, samples in plan.items():
            groups = [samples[i:i + self.opts.samples_per_shard]
                      for i in range(0, len(samples), self.opts.samples_per_shard)]
            _remove_extra_shards(self.out / split, len(groups))
            entries = []
            for n, group in enumerate(groups):
                rel = f"{split}/{shard_name(n)}"
                if (self.out / rel).is_file():
                    entries.append(packing.existing_shard_info(str(self.out), rel, group, str(prefix)))
                else:
                    entries.append(task.remote(str(self.out), rel, split, n, group, str(prefix), dtype))
            refs = [e for e in entries if not isinstance(e, dict)]
            done = iter(self._wait(refs, f"shards {split}"))
            results[split] = [e if isinstance(e, dict) else next(done) for e in entries]
        return results


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _remove_extra_shards(split_dir: Path, count: int) -> None:
    """Shards past the planned count are left over from a run with other options."""
    if split_dir.is_dir():
        for p in split_dir.glob("shard-*.tar"):
            if int(p.stem.split("-")[1]) >= count:
                p.unlink()


def _claim_output(out: Path, fp: str) -> None:
    """Resume only our own partial output: unless ``_work/run.json`` says this directory holds a
    partial run with the same options, remove the outputs another run left (shards, rejected,
    manifest, tokenizer) so none of them is taken for finished work. Per-file intermediates under
    ``_work/<fingerprint>/`` stay: their names already say which options made them."""
    marker = out / "_work" / "run.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        return
    for pattern in ("train/shard-*.tar", "val/shard-*.tar", "rejected/*.parquet", "manifest.json", "tokenizer.model"):
        for path in out.glob(pattern):
            path.unlink()
    write_json_atomic(marker, {"fingerprint": fp})


def run_pipeline(inputs: list[InputFile], out_dir: str | Path, opts: TextOptions, ray_address: str | None = None,
                 num_cpus: int | None = None, keep_work: bool = False, progress: bool = True,
                 retries: int = 5) -> dict:
    """Run (or finish) the whole pipeline; returns the manifest written to ``<out>/manifest.json``."""
    runner = Runner(inputs, out_dir, opts, progress, retries)
    runner.out.mkdir(parents=True, exist_ok=True)
    manifest_path = runner.out / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        shards = [s["path"] for split in old.get("splits", {}).values() for s in split.get("shards", [])]
        if old.get("pipeline", {}).get("fingerprint") == runner.fp_all and all(
                (runner.out / p).is_file() for p in shards):
            return old  # already complete
    remove_stale_temps(runner.out)
    _claim_output(runner.out, runner.fp_all)
    with ray_session(ray_address, num_cpus, shared_dir=runner.out) as ray:
        runner.ray = ray
        files = runner.stage1()
        runner._log(f"read+filter: {sum(f['documents'] for f in files)} documents, "
                    f"{sum(f['kept_stage1'] for f in files)} kept, {sum(1 for f in files if f['error'])} files with errors")
        drops = runner.dedup()
        runner._log(f"dedup: {sum(map(len, drops.values()))} duplicates dropped")
        runner.write_rejected(drops)
        model = runner.tokenizer(drops)
        info = tokenizer_info(model)
        runner._log(f"tokenizer ({'given' if opts.tokenizer else 'trained'}): {info['model_type']}, "
                    f"vocab {info['vocab_size']}")
        dtype = token_dtype(info["vocab_size"])
        prefix = runner.tokenize(drops, model, dtype)
        shards = runner.shards(prefix, dtype)
    manifest = _manifest(runner, files, drops, info, dtype, shards)
    write_json_atomic(manifest_path, manifest)
    if not keep_work:
        shutil.rmtree(runner.out / "_work", ignore_errors=True)
    return manifest


def _manifest(runner: Runner, files, drops, info, dtype, shards) -> dict:
    splits, tar_bytes, payload, tokens = {}, 0, 0, 0
    for split, entries in shards.items():
        splits[split] = {k: sum(e[k] for e in entries) for k in ("samples", "documents", "tokens", "bytes")}
        splits[split]["shards"] = [{k: e[k] for k in ("path", "samples", "documents", "tokens", "bytes", "sha256")}
                                   for e in entries]
        tar_bytes += splits[split]["bytes"]
        payload += sum(e["payload_bytes"] for e in entries)
        tokens += splits[split]["tokens"]
    token_bytes = tokens * np.dtype(dtype).itemsize
    overhead = tar_bytes - payload
    return {
        "format": FORMAT, "version": VERSION, "kind": "text",
        "tokenizer": {"path": "tokenizer.model", "sha256": sha256_file(runner.out / "tokenizer.model"), **info},
        "token_dtype": dtype,
        "splits": splits,
        "tar_overhead": {"tar_bytes": tar_bytes, "token_bytes": token_bytes, "payload_bytes": payload,
                         "header_and_padding_bytes": overhead,
                         "ratio": round(overhead / token_bytes, 6) if token_bytes else 0.0},
        "pipeline": {**runner.opts.to_dict(), "inputs": [i.source for i in runner.inputs],
                     "fingerprint": runner.fp_all},
        "counts": counting.summarise(files, drops, {s: splits[s]["documents"] for s in splits}),
    }
