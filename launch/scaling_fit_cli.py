"""``pretrain scaling fit (--experiment NAME | --run PARENT_ID | --csv FILE) [--out fit.json]``.

Fits L(N, D) = E + A / N^alpha + B / D^beta (Approach 3, with bootstrap intervals) and the IsoFLOP
parabolas (Approach 2) to a sweep's finished trials or to a CSV (columns N, D or C, loss), writes
the JSON and four plots next to it, and logs them to the sweep's parent run. Bad input exits 2.
"""

from __future__ import annotations

import sys

EXIT_USAGE = 2


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="every finished trial of the sweeps in this MLflow experiment")
    src.add_argument("--run", metavar="PARENT_ID", help="the finished trials of one sweep (its parent run id)")
    src.add_argument("--csv", metavar="FILE", help="a CSV with columns N, D (or C = 6ND) and loss")
    p.add_argument("--out", default="scaling-fit/fit.json", help="the JSON to write; plots go beside it")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--columns", nargs="*", default=[], metavar="NAME=HEADER",
                   help="CSV header names for N, D, C, loss, e.g. 'N=Model Size' 'C=Training FLOP'")
    p.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="leave out the K highest-loss points (Besiroglu et al. drop 5)")
    p.add_argument("--huber-delta", type=float, default=1e-3)
    p.add_argument("--starts", type=int, default=64,
                   help="L-BFGS from the best K of the 4500 grid starts (0: all of them)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--ci", type=float, default=0.95, help="interval coverage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isoflop-tol", type=float, default=0.05, help="relative tolerance grouping points by C (approach 2)")
    p.add_argument("--no-log", action="store_true", help="do not log the results to the sweep's parent run")


def _columns(pairs: list[str]) -> dict[str, str]:
    from pretrain.scaling.fit import FitError

    out = {}
    for pair in pairs:
        key, sep, header = pair.partition("=")
        if not sep or key not in ("N", "D", "C", "loss"):
            raise FitError(f"--columns {pair!r}: expected NAME=HEADER with NAME one of N, D, C, loss")
        out[key] = header
    return out


def _points(args):
    from pretrain.scaling import points

    if args.csv:
        return points.read_csv(args.csv, _columns(args.columns)), {"csv": args.csv, "N_kind": None}
    if args.run:
        return points.from_parent_run(args.run, args.tracking_uri)
    return points.from_experiment(args.experiment, args.tracking_uri)


def run(args) -> int:
    from pretrain.scaling.fit import FitError
    from pretrain.scaling.report import fit_to_files, summary

    if not 0 < args.ci < 1 or args.bootstrap < 0 or args.starts < 0 or args.huber_delta <= 0:
        print("pretrain scaling fit: --ci must be in (0, 1); --bootstrap, --starts >= 0; --huber-delta > 0",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        pts, source = _points(args)
        result = fit_to_files(pts, source, args.out, drop_highest=args.drop_highest_loss, delta=args.huber_delta,
                              starts=args.starts, bootstrap=args.bootstrap, ci=args.ci, seed=args.seed,
                              isoflop_rel_tol=args.isoflop_tol)
    except FitError as e:
        print(f"pretrain scaling fit: {e}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(summary(result)))
    print(f"wrote {args.out} and {len(result['plots'])} plots beside it")
    parent = source.get("parent_run")
    if parent and not args.no_log:
        from pathlib import Path

        from pretrain.scaling.points import log_to_run

        log_to_run(parent, [Path(args.out), *map(Path, result["plots"])], args.tracking_uri)
        print(f"logged to MLflow run {parent} (artifacts scaling_fit/)")
    return 0
