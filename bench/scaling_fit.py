"""Fit time of ``pretrain scaling fit`` (Approach 3 with bootstrap, and Approach 2), on one core.

Two inputs in one run: the 240 Chinchilla points of Besiroglu et al. (``../shared/data/chinchilla``,
their 5 highest-loss points dropped) and ``--synthetic`` points drawn from Hoffmann et al.'s law
with 2 % log-normal noise. Each is fitted as the CLI does (best ``--starts`` of the 4500-point
grid, ``--bootstrap`` resamples); ``--exhaustive`` also runs L-BFGS from all 4500 starts on the
Chinchilla points, the replication's literal procedure, and reports whether it finds the same
optimum. BLAS is held to one thread (as the fit does); run under ``taskset -c 0`` for one core.
Prints JSON (``--out`` to also write it) and a one-line summary: wall and CPU seconds (CPU is the
figure to trust on a shared machine). Plots are not timed.

    python bench/scaling_fit.py --synthetic 5000 --exhaustive --out scaling_fit.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain.scaling import fit as F  # noqa: E402
from pretrain.scaling import law  # noqa: E402

CHINCHILLA = REPO.parent / "shared" / "data" / "chinchilla" / "epoch-svg_extracted_data.csv"
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla(path: Path) -> F.Points:
    import numpy as np

    with path.open() as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    kept, _ = F.drop_highest_loss(F.Points(N, C / (6 * N), np.array([float(r["loss"]) for r in rows]), C), 5)
    return kept


def synthetic(n: int, seed: int = 0) -> F.Points:
    import numpy as np

    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(5e7), np.log(2e10), n))
    D = np.exp(rng.uniform(np.log(1e9), np.log(5e11), n))
    return F.Points(N, D, law.loss(TRUE, N, D) * np.exp(rng.normal(0, 0.02, n)))


def timed_fit(points: F.Points, starts: int, bootstrap: int) -> dict:
    t, cpu = time.perf_counter(), time.process_time()
    r = F.fit(points, starts=starts, bootstrap=bootstrap)
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"points": len(points), "starts": r["approach3"]["starts"], "bootstrap": bootstrap,
            "cpu_seconds": round(cpu, 3),
            "seconds_fit": round(r["approach3"]["seconds"]["fit"], 3),
            "seconds_bootstrap": round(r["approach3"]["seconds"]["bootstrap"], 3), "seconds_total": round(total, 3),
            "objective": r["approach3"]["objective"],
            **{k: round(r[k], 5) for k in ("E", "A", "B", "alpha", "beta", "a", "b")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=str(CHINCHILLA))
    p.add_argument("--synthetic", type=int, default=5000)
    p.add_argument("--starts", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--exhaustive", action="store_true", help="also L-BFGS from all 4500 starts (minutes)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = {"cpu_affinity": sorted(os.sched_getaffinity(0)), "load_average_1m": os.getloadavg()[0]}
    result["chinchilla_240"] = timed_fit(chinchilla(Path(args.csv)), args.starts, args.bootstrap)
    result[f"synthetic_{args.synthetic}"] = timed_fit(synthetic(args.synthetic), args.starts, args.bootstrap)
    if args.exhaustive:
        ex = timed_fit(chinchilla(Path(args.csv)), 0, 0)
        ex["same_optimum_as_screened"] = abs(ex["objective"] - result["chinchilla_240"]["objective"]) <= 1e-12
        result["chinchilla_240_all_4500_starts"] = ex
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    c, s = result["chinchilla_240"], result[f"synthetic_{args.synthetic}"]
    print(f"scaling fit: 240 Chinchilla points {c['seconds_total']:.2f} s wall, {c['cpu_seconds']:.2f} s CPU "
          f"({c['bootstrap']} bootstrap); {s['points']} synthetic {s['seconds_total']:.2f} s wall, {s['cpu_seconds']:.2f} s "
          f"CPU; alpha {c['alpha']:.4f} beta {c['beta']:.4f} E {c['E']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
