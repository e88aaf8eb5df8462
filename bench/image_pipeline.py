"""Benchmark: ImageNet shard pipeline vs a plain Pillow decode-resize-encode loop, per core.

Both run in the same invocation on the same files (an ImageFolder tree; by default the real
ImageNet sample in ../shared/data, repeated ``--copies`` times so there is enough work). For each
core count the pipeline (`build`: scan, plan, Ray tasks, shard tars, manifest; Ray start-up excluded
and reported apart) and the plain loop (one process per core, `multiprocessing`, at the niceness Ray
gives its workers) each convert every file, alternately, best of ``--repeats``.

Two views of "per core", both printed as JSON, then a one-line summary:
* wall clock: images/s divided by cores -- what a user sees, but on a shared machine it measures
  the neighbours as much as the code;
* CPU time: images per CPU-second, summed over every process involved (for the pipeline: the
  driver and all Ray processes it started, raylet and GCS included) -- insensitive to neighbours.

    python bench/image_pipeline.py [--input DIR] [--copies 4] [--max-size 256,512] [--cores 1,2]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.imagenet.process import plain_pillow_loop_step  # noqa: E402

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "imagenet-sample" / "train"


def make_tree(src: Path, dst: Path, copies: int) -> list[Path]:
    """``copies`` copies of every image of ``src`` (class folders kept), so the run is long enough."""
    files = []
    for path in sorted(src.rglob("*")):
        if path.is_file():
            for c in range(copies):
                out = dst / "train" / path.parent.name / f"{path.stem}_copy{c}{path.suffix}"
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)
                files.append(out)
    return files


def _plain_worker(args: tuple[list[str], int, int]) -> tuple[int, float]:
    paths, max_size, quality = args
    cpu0 = time.process_time()
    for p in paths:
        with open(p, "rb") as f:
            plain_pillow_loop_step(f.read(), max_size, quality)
    return len(paths), time.process_time() - cpu0


def plain_loop(files: list[Path], cores: int, max_size: int, quality: int, niceness: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) of the plain loop on ``cores`` processes."""
    chunks = [[str(p) for p in files[i::cores]] for i in range(cores)]
    with mp.get_context("fork").Pool(cores, initializer=os.nice, initargs=(niceness,)) as pool:
        pool.map(_plain_worker, [(c[:2], max_size, quality) for c in chunks])  # warm the workers
        t0 = time.perf_counter()
        done = pool.map(_plain_worker, [(c, max_size, quality) for c in chunks])
        wall = time.perf_counter() - t0
    n = sum(d[0] for d in done)
    return n / wall, n / sum(d[1] for d in done)


def _niceness() -> int:
    return os.nice(0)


def _tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and every live descendant (the embedded Ray)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def pipeline_once(tree: Path, out: Path, cores: int, max_size: int, quality: int, n: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) of one full pipeline run, Ray already started."""
    from data_pipeline.imagenet.pipeline import BuildConfig, build

    cfg = BuildConfig(input=str(tree), out=str(out), splits=["train"], max_size=max_size, quality=quality,
                      shard_size=max(1, math.ceil(n / (4 * cores))), num_cpus=cores, progress=False)
    cpu0, t0 = _tree_cpu_seconds(), time.perf_counter()
    manifest = build(cfg)
    wall, cpu = time.perf_counter() - t0, _tree_cpu_seconds() - cpu0
    assert manifest["splits"]["train"]["counts"]["read"] == n
    return n / wall, n / cpu


def _row(max_size: int, cores: int, pipe: list, base: list, start_s: float, niceness: int) -> dict:
    best = lambda runs, i: max(r[i] for r in runs)  # noqa: E731
    return {
        "max_size": max_size, "cores": cores,
        "pipeline_images_per_s_per_core": round(best(pipe, 0) / cores, 1),
        "plain_loop_images_per_s_per_core": round(best(base, 0) / cores, 1),
        "ratio_per_core_wall": round(best(pipe, 0) / best(base, 0), 3),
        "pipeline_images_per_cpu_s": round(best(pipe, 1), 1),
        "plain_loop_images_per_cpu_s": round(best(base, 1), 1),
        "ratio_per_core_cpu": round(best(pipe, 1) / best(base, 1), 3),
        "pipeline_runs_images_per_s": [round(r[0], 1) for r in pipe],
        "plain_loop_runs_images_per_s": [round(r[0], 1) for r in base],
        "ray_start_s": round(start_s, 2), "worker_niceness": niceness,
    }


def measure(tree: Path, tmp: Path, files: list[Path], cores: int, sizes: list[int], quality: int, repeats: int):
    """Alternate plain loop and pipeline runs (so load changes hit both alike)."""
    from data_pipeline.ray_runtime import ray_session

    rows = []
    t0 = time.perf_counter()
    with ray_session(num_cpus=cores) as ray:
        start_s = time.perf_counter() - t0
        niceness = ray.get(ray.remote(num_cpus=1)(_niceness).remote()) - os.nice(0)
        for max_size in sizes:
            base, pipe = [], []
            for r in range(repeats):
                base.append(plain_loop(files, cores, max_size, quality, niceness))
                out = tmp / f"pipe-{cores}-{max_size}-{r}"
                pipe.append(pipeline_once(tree, out, cores, max_size, quality, len(files)))
            rows.append(_row(max_size, cores, pipe, base, start_s, niceness))
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _scaling(results: list[dict], key: str) -> dict:
    out = {}
    for r in results:
        one = next((x for x in results if x["max_size"] == r["max_size"] and x["cores"] == 1), None)
        if one and r["cores"] > 1:
            out[f"max_size={r['max_size']},cores={r['cores']}"] = round(r[key] / one[key], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(DEFAULT_INPUT), help="an ImageFolder tree (class folders of images)")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--max-size", default="256,512", help="comma-separated --max-size values to measure")
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    src = Path(args.input)
    if not src.is_dir():
        print(f"--input {src}: not a directory", file=sys.stderr)
        return 2
    results = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        files = make_tree(src, Path(tmp) / "in", args.copies)
        sizes = [int(m) for m in args.max_size.split(",")]
        for cores in (int(c) for c in args.cores.split(",")):
            results += measure(Path(tmp) / "in", Path(tmp), files, cores, sizes, args.quality, args.repeats)
    report = {"bench": "image_pipeline", "images": len(files), "source": str(src), "copies": args.copies,
              "quality": args.quality, "machine_cpus": os.cpu_count(), "cpu": _cpu_model(),
              "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "results": results,
              "pipeline_per_core_vs_1_core_wall": _scaling(results, "pipeline_images_per_s_per_core"),
              "pipeline_per_core_vs_1_core_cpu": _scaling(results, "pipeline_images_per_cpu_s")}
    print(json.dumps(report, indent=2))
    print("summary: " + "; ".join(
        f"max_size={r['max_size']} cores={r['cores']}: {r['pipeline_images_per_s_per_core']} img/s/core "
        f"= {r['ratio_per_core_wall']}x plain loop (CPU-time ratio {r['ratio_per_core_cpu']})" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
