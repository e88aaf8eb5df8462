"""Benchmark: ImageNet shard pipeline vs a plain Pillow decode-resize-encode loop, per core.

Both run in the same invocation on the same files (an ImageFolder tree; by default the real
ImageNet sample in ../shared/data, repeated ``--copies`` times so there is enough work). For 1 and 2
cores: the pipeline (`build`, Ray tasks, shards, manifest; Ray start-up excluded and reported apart)
and the plain loop (one process per core, `multiprocessing`) each convert every file; the ratio
pipeline/loop of images per second per core is printed as JSON, then a one-line summary.

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


def _plain_worker(args: tuple[list[str], int, int]) -> int:
    paths, max_size, quality = args
    for p in paths:
        with open(p, "rb") as f:
            plain_pillow_loop_step(f.read(), max_size, quality)
    return len(paths)


def plain_loop(files: list[Path], cores: int, max_size: int, quality: int) -> float:
    """Images/s of the plain loop on ``cores`` processes (files split evenly)."""
    chunks = [[str(p) for p in files[i::cores]] for i in range(cores)]
    with mp.get_context("fork").Pool(cores) as pool:
        pool.map(_plain_worker, [(c[:2], max_size, quality) for c in chunks])  # warm the workers
        t0 = time.perf_counter()
        n = sum(pool.map(_plain_worker, [(c, max_size, quality) for c in chunks]))
        return n / (time.perf_counter() - t0)


def pipeline(tree: Path, out_root: Path, cores: int, max_size: int, quality: int, n: int, repeats: int) -> dict:
    """Images/s of the full pipeline on an embedded Ray limited to ``cores`` CPUs (best of ``repeats``)."""
    from data_pipeline.imagenet.pipeline import BuildConfig, build
    from data_pipeline.ray_runtime import ray_session

    t0 = time.perf_counter()
    best = math.inf
    with ray_session(num_cpus=cores):
        start_s = time.perf_counter() - t0
        for r in range(repeats):
            out = out_root / f"pipe-{cores}-{max_size}-{r}"
            cfg = BuildConfig(input=str(tree), out=str(out), splits=["train"], max_size=max_size, quality=quality,
                              shard_size=max(1, math.ceil(n / (4 * cores))), num_cpus=cores, progress=False)
            t = time.perf_counter()
            manifest = build(cfg)
            best = min(best, time.perf_counter() - t)
            assert manifest["splits"]["train"]["counts"]["read"] == n
    return {"images_per_s": n / best, "ray_start_s": round(start_s, 2)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


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
        for max_size in (int(m) for m in args.max_size.split(",")):
            for cores in (int(c) for c in args.cores.split(",")):
                base = max(plain_loop(files, cores, max_size, args.quality) for _ in range(args.repeats))
                pipe = pipeline(Path(tmp) / "in", Path(tmp), cores, max_size, args.quality, len(files), args.repeats)
                results.append({
                    "max_size": max_size, "cores": cores,
                    "pipeline_images_per_s_per_core": round(pipe["images_per_s"] / cores, 1),
                    "plain_loop_images_per_s_per_core": round(base / cores, 1),
                    "ratio_per_core": round(pipe["images_per_s"] / base, 3),
                    "ray_start_s": pipe["ray_start_s"],
                })
    scaling = {}
    for r in results:
        one = next((x for x in results if x["max_size"] == r["max_size"] and x["cores"] == 1), None)
        if one and r["cores"] > 1:
            scaling[f"max_size={r['max_size']},cores={r['cores']}"] = round(
                r["pipeline_images_per_s_per_core"] / one["pipeline_images_per_s_per_core"], 3)
    report = {"bench": "image_pipeline", "images": len(files), "source": str(src), "copies": args.copies,
              "quality": args.quality, "machine_cpus": os.cpu_count(), "cpu": _cpu_model(),
              "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "results": results,
              "per_core_efficiency_vs_1_core": scaling}
    print(json.dumps(report, indent=2))
    print("summary: " + "; ".join(f"max_size={r['max_size']} cores={r['cores']}: {r['pipeline_images_per_s_per_core']} "
                                  f"img/s/core = {r['ratio_per_core']}x plain loop" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
