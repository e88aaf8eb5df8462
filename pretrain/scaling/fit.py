"""Fitting L(N, D): Approach 3 (parametric, Huber on log-loss) and Approach 2 (IsoFLOP parabolas).

Approach 3 follows Hoffmann et al. 2022 (App. D.2) as Besiroglu et al. 2024 replicated it: minimise
``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)`` with delta = 1e-3 by
L-BFGS, from the grid of starts alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
a, b in {0, 5, ..., 25} (4,500 starts), keeping the best. Gradients are analytic (``law``).
L-BFGS-B's default stopping rule compares objective changes to max(|f|, 1); our objective is ~1e-3,
so that rule stops far from the optimum -- the very defect the replication found in the original fit
-- and the tolerances here are set on the objective's own scale.

Speed: every start is scored on the grid at once (vectorised) and L-BFGS runs from the best
``starts`` of them (``starts=0``: all 4,500, the literal procedure; same optimum on the Chinchilla
data, see docs/PERFORMANCE.md). Intervals are bootstrap percentiles: ``bootstrap`` resamples of the
points (multinomial counts as weights), each refitted from the full-data optimum.

Approach 2: points grouped by compute budget C (within a relative tolerance); per group with three
or more model sizes a parabola of L against log N (and against log D) gives N_opt(C) and D_opt(C);
least squares of log N_opt and log D_opt on log C give the exponents a and b.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.optimize import minimize

from pretrain.scaling import law

HUBER_DELTA = 1e-3
N_PARAMS = len(law.NAMES)


class FitError(ValueError):
    """Input that cannot be fitted; the message says what is wrong (the CLI exits 2)."""


@dataclass
class Points:
    """Training runs to fit: parameters N, tokens D, final loss, and (optionally) compute C."""

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    C: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)  # a row number or an MLflow run id, per point

    def __post_init__(self):
        self.N, self.D, self.loss = (np.asarray(x, dtype=np.float64) for x in (self.N, self.D, self.loss))
        self.C = self.C if self.C is None else np.asarray(self.C, dtype=np.float64)
        if not self.labels:
            self.labels = [str(i) for i in range(len(self.N))]

    def __len__(self) -> int:
        return len(self.N)

    def subset(self, keep: np.ndarray) -> Points:
        idx = np.flatnonzero(keep)
        return Points(self.N[idx], self.D[idx], self.loss[idx], None if self.C is None else self.C[idx],
                      [self.labels[i] for i in idx])

    def compute(self) -> np.ndarray:
        """C per point: as given, else 6 N D."""
        return self.C if self.C is not None else 6.0 * self.N * self.D

    def rows(self) -> list[dict]:
        C = self.compute()
        return [{"N": float(n), "D": float(d), "C": float(c), "loss": float(v), "label": lab}
                for n, d, c, v, lab in zip(self.N, self.D, C, self.loss, self.labels)]


def drop_highest_loss(points: Points, k: int) -> tuple[Points, Points]:
    """(kept, dropped): drop every point whose loss is at or above the k-th highest loss (the
    replication's exclusion of its five highest-loss points; ties drop together)."""
    if k <= 0:
        return points, points.subset(np.zeros(len(points), bool))
    if k >= len(points):
        raise FitError(f"dropping the {k} highest-loss points would leave none of the {len(points)}")
    threshold = np.sort(points.loss)[-k]
    keep = points.loss < threshold
    return points.subset(keep), points.subset(~keep)


# ----------------------------------------------------------------------------------------------
# Approach 3
# ----------------------------------------------------------------------------------------------
def start_grid() -> np.ndarray:
    """The 4,500 starts of Hoffmann et al. as rows of theta = (a, b, e, alpha, beta)."""
    exps = np.arange(0.0, 2.5, 0.5)
    es = np.arange(-1.0, 1.5, 0.5)
    coefs = np.arange(0.0, 30.0, 5.0)
    return np.array([(a, b, e, al, be) for al, be, e, a, b in product(exps, exps, es, coefs, coefs)])


def _lbfgs(theta0: np.ndarray, data: tuple, delta: float, weights: np.ndarray | None = None):
    """One L-BFGS-B run; tolerances scaled to the objective (see the module docstring)."""
    return minimize(law.huber_objective, theta0, args=(*data, delta, weights), jac=True, method="L-BFGS-B",
                    options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})


@contextmanager
def one_blas_thread():
    """L-BFGS-B's C core calls BLAS on 5 x 20 matrices; OpenBLAS threads on such sizes cost more
    than the whole fit (30x slower on a busy 2-core machine), so the fit runs on one core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the fit is only slower
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _best_fit(data: tuple, delta: float, starts: int) -> tuple[np.ndarray, float, int]:
    """(theta, objective, starts run): L-BFGS from the best ``starts`` grid points (0: all)."""
    grid = start_grid()
    if starts and starts < len(grid):
        scores = law.grid_objective(grid, *data, delta)
        grid = grid[np.argsort(scores, kind="stable")[:starts]]
    best_theta, best_f = None, math.inf
    for theta0 in grid:
        res = _lbfgs(theta0, data, delta)
        if np.all(np.isfinite(res.x)) and res.fun < best_f:
            best_theta, best_f = res.x, float(res.fun)
    if best_theta is None:
        raise FitError("no start of the L-BFGS grid converged to a finite fit")
    return best_theta, best_f, len(grid)


def _summary(samples: np.ndarray, point: dict, ci: float) -> tuple[dict, dict]:
    """Percentile intervals and standard errors over bootstrap parameter dicts (rows E, A, B, alpha, beta)."""
    al, be = samples[:, 3], samples[:, 4]
    cols = {name: samples[:, i] for i, name in enumerate(law.NAMES)}
    cols["a"], cols["b"] = be / (al + be), al / (al + be)
    lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    intervals = {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in cols.items()}
    stderr = {k: float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in cols.items()}
    return intervals, stderr


def fit_approach3(points: Points, delta: float = HUBER_DELTA, starts: int = 64, bootstrap: int = 200,
                  ci: float = 0.95, seed: int = 0) -> dict:
    """Approach 3 on ``points``; returns parameters, a, b, bootstrap intervals and samples."""
    if len(points) < N_PARAMS:
        raise FitError(f"{len(points)} points for {N_PARAMS} parameters (E, A, B, alpha, beta): need at least "
                       f"{N_PARAMS}")
    data = (np.log(points.N), np.log(points.D), np.log(points.loss))
    t0 = time.perf_counter()
    theta, objective, n_starts = _best_fit(data, delta, starts)
    p = law.to_params(theta)
    a, b = law.exponents(p)
    rng = np.random.default_rng(seed)
    n = len(points)
    samples = []
    t1 = time.perf_counter()
    for _ in range(bootstrap):
        counts = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        res = _lbfgs(theta, data, delta, counts)
        if np.all(np.isfinite(res.x)):
            q = law.to_params(res.x)
            samples.append([q[k] for k in law.NAMES])
    samples = np.array(samples).reshape(-1, N_PARAMS)
    intervals, stderr = _summary(samples, p, ci) if len(samples) > 1 else ({}, {})
    pred = law.loss(p, points.N, points.D)
    return {**p, "a": a, "b": b, "intervals": intervals, "stderr": stderr, "objective": objective,
            "starts": n_starts, "huber_delta": delta, "bootstrap": {"resamples": len(samples), "ci": ci, "seed": seed,
                                                                     "samples": samples.tolist()},
            "residuals_log": (np.log(points.loss) - np.log(pred)).tolist(),
            "seconds": {"fit": t1 - t0, "bootstrap": time.perf_counter() - t1}}


# ----------------------------------------------------------------------------------------------
# Approach 2
# ----------------------------------------------------------------------------------------------
def isoflop_groups(C: np.ndarray, rel_tol: float = 0.05) -> list[np.ndarray]:
    """Indices of points whose compute agrees within ``rel_tol`` (sorted by C; a gap larger than
    the tolerance starts a new group)."""
    order = np.argsort(C, kind="stable")
    groups, current = [], [order[0]] if len(order) else []
    for i in order[1:]:
        if C[i] <= C[current[0]] * (1 + rel_tol):
            current.append(i)
        else:
            groups.append(np.array(current))
            current = [i]
    if current:
        groups.append(np.array(current))
    return groups


def _vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, list[float]] | None:
    """The minimum of a parabola fitted to (x, y), or None when it opens downwards or its minimum
    lies outside the sampled range (an extrapolated minimum says nothing about the optimum)."""
    coef = np.polyfit(x, y, 2)
    if coef[0] <= 0:
        return None
    vertex = float(-coef[1] / (2 * coef[0]))
    return (vertex, coef.tolist()) if x.min() <= vertex <= x.max() else None


def _power_law(log_c: np.ndarray, log_y: np.ndarray, ci: float) -> tuple[float, list[float] | None]:
    """Slope of log y on log C and its t-interval (None with fewer than 3 budgets)."""
    slope, intercept = np.polyfit(log_c, log_y, 1)
    if len(log_c) < 3:
        return float(slope), None
    from scipy import stats

    resid = log_y - (slope * log_c + intercept)
    dof = len(log_c) - 2
    se = math.sqrt((resid @ resid) / dof / ((log_c - log_c.mean()) ** 2).sum())
    t = stats.t.ppf((1 + ci) / 2, dof)
    return float(slope), [float(slope - t * se), float(slope + t * se)]


def fit_approach2(points: Points, rel_tol: float = 0.05, ci: float = 0.95) -> dict:
    """IsoFLOP profiles: their parabola minima and the exponents a, b (or the reason there are none)."""
    C = points.compute()
    profiles, skipped = [], []
    for idx in isoflop_groups(C, rel_tol):
        c = float(np.exp(np.log(C[idx]).mean()))
        if len(np.unique(points.N[idx])) < 3:
            skipped.append({"C": c, "points": len(idx), "reason": "fewer than 3 model sizes"})
            continue
        vn = _vertex(np.log(points.N[idx]), points.loss[idx])
        vd = _vertex(np.log(points.D[idx]), points.loss[idx])
        if vn is None or vd is None:
            skipped.append({"C": c, "points": len(idx), "reason": "no minimum inside the sampled sizes"})
            continue
        profiles.append({"C": c, "points": len(idx), "N_opt": math.exp(vn[0]), "D_opt": math.exp(vd[0]),
                         "parabola_logN": vn[1], "indices": idx.tolist()})
    out: dict = {"profiles": profiles, "skipped_profiles": skipped, "isoflop_rel_tol": rel_tol}
    if len(profiles) < 2:
        out["skipped"] = f"{len(profiles)} IsoFLOP profile(s) with a minimum; need at least 2 for the exponents"
        return out
    log_c = np.log([q["C"] for q in profiles])
    a, a_ci = _power_law(log_c, np.log([q["N_opt"] for q in profiles]), ci)
    b, b_ci = _power_law(log_c, np.log([q["D_opt"] for q in profiles]), ci)
    out.update({"a": a, "b": b, "intervals": {"a": a_ci, "b": b_ci}})
    return out


def fit(points: Points, delta: float = HUBER_DELTA, starts: int = 64, bootstrap: int = 200, ci: float = 0.95,
        seed: int = 0, isoflop_rel_tol: float = 0.05) -> dict:
    """Both approaches; the JSON ``scaling fit`` writes (less its source and plot entries)."""
    check_points(points)
    with one_blas_thread():
        a3 = fit_approach3(points, delta, starts, bootstrap, ci, seed)
    a2 = fit_approach2(points, isoflop_rel_tol, ci)
    method = (f"approach 3: Huber (delta {delta:g}) on log-loss, L-BFGS-B with analytic gradients from the best "
              f"{a3['starts']} of the 4500-start grid of Hoffmann et al.; {a3['bootstrap']['resamples']} bootstrap "
              f"resamples, {ci:.0%} percentile intervals. approach 2: a parabola of loss in log N per IsoFLOP profile")
    return {"method": method, **{k: a3[k] for k in (*law.NAMES, "a", "b", "intervals", "stderr")},
            "approach3": {k: v for k, v in a3.items() if k not in (*law.NAMES, "a", "b", "intervals", "stderr")},
            "approach2": a2, "points": points.rows()}


def check_points(points: Points) -> None:
    """Raise ``FitError`` for non-finite or non-positive values, or too few points."""
    for name in ("N", "D", "loss"):
        v = getattr(points, name)
        bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
        if len(bad):
            i = int(bad[0])
            raise FitError(f"{name} must be positive and finite; point {points.labels[i]} has {name}={v[i]!r} "
                           f"({len(bad)} such point(s))")
    if len(points) < N_PARAMS:
        raise FitError(f"{len(points)} points for {N_PARAMS} parameters (E, A, B, alpha, beta): need at least "
                       f"{N_PARAMS}")
