"""Driver memory and time of the whole text pipeline as the input grows, against a baseline tree.

Input: generated WET files (``data_pipeline/text/generated.py``: short English documents, 5% exact
and 5% near duplicates, near copies with 0-8% of their words replaced) of each ``--sizes`` count,
in ``--files`` files. Each (size, tree) runs ``run_pipeline`` on embedded Ray in a fresh child
process, so its peak RSS (VmHWM) is the driver's own; Ray's workers are other processes. The
baseline tree is the code before distributed dedup, e.g. extracted with
``git archive 970e726 | tar -x -C /tmp/base``. Near-duplicate recall and precision are measured on
the current tree's output against exact Jaccard similarity of word 5-grams, on a sample.

``--reuse-stage1`` copies the current tree's stage-1 results (read, filters, MinHash: the same
bytes in both trees) into the baseline's work directory, so the baseline runs its global stages
only; its time then excludes stage 1 (the JSON says so), its driver memory does not change.

``--synthetic-stage1`` writes the stage-1 result directly instead of running stage 1 (read,
language id, filters: about 10 ms a document on this shared 2-core machine, so hours at 10^6):
every generated document kept, with its real text, text hash and signature (the real MinHash for
near copies and their originals; for all others a random signature seeded by the text hash, which
is what unrelated texts have and what exact copies share). Both trees then run only the global
stages (dedup, tokenizer, tokenize, shards) on identical stage-1 data; the JSON says so.

    python bench/text_scale.py --sizes 10000,100000,1000000 --baseline-tree /tmp/base [--work DIR]
    python bench/text_scale.py --sizes 10000,100000,1000000 --baseline-tree /tmp/base --synthetic-stage1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, os, sys, time
from data_pipeline.text.config import TextOptions
from data_pipeline.text.pipeline import InputFile, run_pipeline
files, out, cpus = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
opts = TextOptions(vocab_size=4000, tokenizer_sample_chars=2_000_000, val_fraction=0.01)
inputs = [InputFile(path=f, source=os.path.basename(f)) for f in files]
t = time.perf_counter()
m = run_pipeline(inputs, out, opts, num_cpus=cpus, progress=False, keep_work=True)
seconds = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("RESULT " + json.dumps({"seconds": round(seconds, 1), "driver_peak_rss_mib": round(hwm / 1024, 1),
                              "kept": m["counts"]["total"]["kept"], "documents": m["counts"]["total"]["documents"],
                              "dedup": m["counts"]["total"]["dropped"].get("dedup", {}),
                              "shards": sum(len(s["shards"]) for s in m["splits"].values())}))
"""


def run_tree(tree: Path, files: list[str], out: Path, cpus: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_DEDUP_LOGS": "0"}
    load_before = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(files), str(out), str(cpus)], cwd=tree, env=env,
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{tree}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    # the machine's 1-minute load average before and after: times on a shared machine need it
    return json.loads(line[len("RESULT "):]) | {"load_before": round(load_before, 2),
                                                "load_after": round(os.getloadavg()[0], 2)}


def _synth_file(job: tuple) -> None:
    """Stage-1 result of one generated file: every document kept (see --synthetic-stage1)."""
    import numpy as np
    import pyarrow as pa

    from data_pipeline.text import dedup
    from data_pipeline.text.generated import near_copy, original
    from data_pipeline.text.process import KEPT_SCHEMA, REJECTED_SCHEMA, write_json, write_table

    path, key, first, count, seed, copies, real, folder = job
    mh = dedup.MinHasher()
    cols: dict = {n: [] for n in KEPT_SCHEMA.names}
    for r in range(count):
        i = first + r
        kind = copies.get(i)
        text = (near_copy(seed, kind[1], kind[2]) if kind and kind[0] == "near" else
                "  ".join(original(seed, kind[1]).split(" ")) if kind else original(seed, i))
        norm = dedup.normalise(text)
        h = dedup.exact_hash(norm)
        if i in real or (kind and kind[0] == "near"):
            sig = mh.signature(norm)
        else:
            sig = np.random.default_rng(h).integers(0, 2 ** 32, 112, dtype=np.uint64).astype(np.uint32)
        row = (f"{key}-{r:07d}", f"https://gen.example.org/{i}", Path(path).name, 0, "en", 0.99, "{}", text, len(text),
               h, sig.tobytes())
        for name, v in zip(KEPT_SCHEMA.names, row):
            cols[name].append(v)
    write_table(f"{folder}/{key}.kept.parquet", pa.table(cols, schema=KEPT_SCHEMA))
    write_table(f"{folder}/{key}.rejected.parquet", REJECTED_SCHEMA.empty_table())
    write_json(f"{folder}/{key}.json", {"key": key, "source": Path(path).name, "records": {"conversion": count},
                                        "skipped": {}, "error": None, "error_kind": None, "documents": count,
                                        "bytes": os.path.getsize(path), "kept_stage1": count,
                                        "kept_chars": sum(cols["chars"]), "dropped": {}})


def synthesize_stage1(truth: dict, size: int, seed: int, out: Path, cpus: int) -> None:
    """Write the stage-1 results of ``truth``'s files under ``out``'s work directory, where both
    trees look for them (the directory name is the same fingerprint of options and inputs)."""
    from multiprocessing import Pool

    from data_pipeline.text.config import READ_KEYS, TextOptions, fingerprint, subset

    files = truth["files"]
    opts = TextOptions(vocab_size=4000, tokenizer_sample_chars=2_000_000, val_fraction=0.01)
    fp = fingerprint(subset(opts, READ_KEYS), [[os.path.basename(f), os.path.getsize(f)] for f in files])
    folder = out / "_work" / fp / "stage1"
    folder.mkdir(parents=True, exist_ok=True)
    copies = {c: ("near", o, s) for c, o, s in truth["near"]} | {c: ("exact", o) for c, o in truth["exact"]}
    real = {o for _, o, _ in truth["near"]}
    per_file = -(-size // len(files))
    jobs = []
    for f, path in enumerate(files):
        first, count = f * per_file, min(size, (f + 1) * per_file) - f * per_file
        mine = {i: k for i, k in copies.items() if first <= i < first + count}
        jobs.append((path, f"{f:06d}", first, count, seed, mine, {o for o in real if first <= o < first + count},
                     str(folder)))
    with Pool(cpus) as pool:
        pool.map(_synth_file, jobs)


def stage1_dir(out: Path) -> Path:
    return next((out / "_work").glob("*/stage1"))


def near_quality(out: Path, truth: dict, per_file: int, seed: int, sample: int, tau: float) -> dict:
    """Recall: of sampled generated near copies with Jaccard >= tau to their original, the share
    dropped as duplicates. Precision: of sampled near drops, the share with Jaccard >= tau to the
    copy that was kept."""
    import pyarrow.parquet as pq

    from data_pipeline.text.generated import jaccard, near_copy, original

    def text(i: int) -> str:
        kinds = truth_index.get(i)
        if kinds and kinds[0] == "near":
            return near_copy(seed, kinds[1], kinds[2])
        if kinds and kinds[0] == "exact":
            return original(seed, kinds[1])
        return original(seed, i)

    def index_of(doc_id: str) -> int:
        f, r = doc_id.split("-")
        return int(f) * per_file + int(r)

    truth_index = {c: ("near", o, s) for c, o, s in truth["near"]} | {c: ("exact", o) for c, o in truth["exact"]}
    rejected = [r for p in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
                if r["stage"] == "dedup"]
    dropped = {index_of(r["id"]) for r in rejected}
    rng = random.Random(0)
    near = rng.sample(truth["near"], min(sample, len(truth["near"])))
    similar = [c for c, o, s in near if jaccard(text(c), original(seed, o)) >= tau]
    near_drops = [r for r in rejected if r["reason"] == "near"]
    picked = rng.sample(near_drops, min(sample, len(near_drops)))
    sims = [jaccard(text(index_of(r["id"])), text(index_of(r["detail"].split()[-1]))) for r in picked]
    return {"tau": tau, "recall": round(sum(c in dropped for c in similar) / max(len(similar), 1), 4),
            "recall_sample": len(similar), "precision": round(sum(s >= tau for s in sims) / max(len(sims), 1), 4),
            "precision_at_0.6": round(sum(s >= 0.6 for s in sims) / max(len(sims), 1), 4),
            "precision_sample": len(picked), "exact_dropped_share": round(
                sum(c in dropped for c, _ in truth["exact"]) / max(len(truth["exact"]), 1), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 10^6 (about 20 minutes on 2 quiet cores) only when asked: `make bench` runs every bench with its defaults
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--baseline-tree", default=None, help="a checkout of the baseline commit (omit: current only)")
    p.add_argument("--reuse-stage1", action="store_true", help="baseline reuses the current run's stage-1 results")
    p.add_argument("--synthetic-stage1", action="store_true", help="both trees start from a written stage-1 result")
    p.add_argument("--work", default=None, help="where inputs and outputs go (default: a temp dir, removed)")
    p.add_argument("--sample", type=int, default=400, help="documents sampled for recall and precision")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from data_pipeline.text.generated import generate_wet

    work = Path(args.work or os.environ.get("TMPDIR", "/tmp")) / "text-scale"
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        folder = work / f"in-{size}"
        t = time.perf_counter()
        truth = generate_wet(folder, size, args.files, seed=args.seed)
        row = {"documents": size, "files": args.files, "generate_s": round(time.perf_counter() - t, 1)}
        out = work / f"out-{size}-current"
        shutil.rmtree(out, ignore_errors=True)
        if args.synthetic_stage1:
            t = time.perf_counter()
            synthesize_stage1(truth, size, args.seed, out, args.cpus)
            row["synthesize_stage1_s"] = round(time.perf_counter() - t, 1)
        row["current"] = run_tree(REPO, truth["files"], out, args.cpus)
        row["current"]["stage1"] = "synthetic" if args.synthetic_stage1 else "run"
        row["near_duplicates"] = near_quality(out, truth, -(-size // args.files), args.seed, args.sample, 0.8)
        if args.baseline_tree:
            base = work / f"out-{size}-baseline"
            shutil.rmtree(base, ignore_errors=True)
            if args.reuse_stage1 or args.synthetic_stage1:
                shutil.copytree(stage1_dir(out), base / "_work" / stage1_dir(out).parent.name / "stage1")
            row["baseline"] = run_tree(Path(args.baseline_tree), truth["files"], base, args.cpus)
            row["baseline"]["stage1"] = ("synthetic" if args.synthetic_stage1 else "reused from current"
                                         if args.reuse_stage1 else "run")
            shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        results.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"text_scale": results}, indent=1))
    for r in results:
        b = r.get("baseline", {})
        print(f"{r['documents']:>9} docs: driver peak RSS {r['current']['driver_peak_rss_mib']} MiB "
              f"(baseline {b.get('driver_peak_rss_mib', '-')}), {r['current']['seconds']} s "
              f"(baseline {b.get('seconds', '-')}), near recall {r['near_duplicates']['recall']} "
              f"precision {r['near_duplicates']['precision']}", file=sys.stderr)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
