"""The fit's plots (matplotlib, Agg): loss against N per D, IsoFLOP curves with their minima,
the compute-optimal frontier with its bootstrap band, and the residuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrain.scaling import law
from pretrain.scaling.fit import Points


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _levels(values: np.ndarray, k: int = 6) -> np.ndarray:
    """Up to ``k`` representative values: all distinct ones when few, else log-spaced quantiles."""
    distinct = np.unique(values)
    if len(distinct) <= k:
        return distinct
    return np.exp(np.quantile(np.log(values), np.linspace(0, 1, k)))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def loss_vs_n(result: dict, points: Points, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    cmap = plt.get_cmap("viridis")
    lo, hi = np.log(points.D.min()), np.log(points.D.max())
    colour = lambda d: cmap(0.5 if hi == lo else (np.log(d) - lo) / (hi - lo))  # noqa: E731
    ax.scatter(points.N, points.loss, c=[colour(d) for d in points.D], s=18, edgecolors="none")
    n = np.geomspace(points.N.min() / 1.5, points.N.max() * 1.5, 200)
    for d in _levels(points.D):
        ax.plot(n, law.loss(result, n, d), color=colour(d), lw=1, label=f"D = {d:.3g}")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="loss against N, fitted L(N, D) per D")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def isoflop(result: dict, points: Points, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    profiles = result.get("approach2", {}).get("profiles", [])
    C = points.compute()
    budgets = np.array([q["C"] for q in profiles]) if profiles else _levels(C, 5)
    cmap = plt.get_cmap("plasma")
    n = np.geomspace(points.N.min() / 3, points.N.max() * 3, 300)
    for i, c in enumerate(budgets):
        col = cmap(i / max(1, len(budgets) - 1) * 0.85)
        ax.plot(n, law.loss(result, n, c / (6 * n)), color=col, lw=1, label=f"C = {c:.3g}")
        n_opt, _ = law.optimal_allocation(result, c)
        ax.plot([n_opt], [law.loss(result, n_opt, c / (6 * n_opt))], "*", color=col, ms=10)
    for i, q in enumerate(profiles):
        col = cmap(i / max(1, len(profiles) - 1) * 0.85)
        idx = np.array(q["indices"])
        ax.scatter(points.N[idx], points.loss[idx], color=col, s=18)
        x = np.linspace(np.log(points.N[idx].min()), np.log(points.N[idx].max()), 50)
        ax.plot(np.exp(x), np.polyval(q["parabola_logN"], x), "--", color=col, lw=0.8)
        ax.axvline(q["N_opt"], color=col, ls=":", lw=0.8)
    if not profiles:
        ax.scatter(points.N, points.loss, color="0.5", s=10, label="points")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss",
           title="IsoFLOP curves of the fit (stars: minima; dashed: approach 2 parabolas)")
    if len(budgets) <= 8:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def frontier(result: dict, points: Points, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    C = points.compute()
    c = np.geomspace(C.min(), C.max() * 1e3, 100)
    n_opt, d_opt = law.optimal_allocation(result, c)
    ax.plot(c, n_opt, color="C0", label="N_opt")
    ax.plot(c, d_opt, color="C1", label="D_opt")
    samples = result.get("approach3", {}).get("bootstrap", {}).get("samples") or []
    if len(samples) > 1:
        ci = result["approach3"]["bootstrap"]["ci"]
        alloc = [law.optimal_allocation(dict(zip(law.NAMES, s)), c) for s in samples]
        for k, colour in ((0, "C0"), (1, "C1")):
            band = np.array([a[k] for a in alloc])
            lo, hi = np.percentile(band, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2], axis=0)
            ax.fill_between(c, lo, hi, color=colour, alpha=0.2, lw=0)
    for q in result.get("approach2", {}).get("profiles", []):
        ax.plot(q["C"], q["N_opt"], "o", color="C0", ms=5)
        ax.plot(q["C"], q["D_opt"], "s", color="C1", ms=5)
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N or D",
           title=f"compute-optimal frontier: N ~ C^{result['a']:.3f}, D ~ C^{result['b']:.3f}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def residuals(result: dict, points: Points, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    r = np.log(points.loss) - np.log(law.loss(result, points.N, points.D))
    sc = ax.scatter(points.N, r, c=np.log10(points.D), cmap="viridis", s=16)
    fig.colorbar(sc, ax=ax, label="log10 D")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="parameters N", ylabel="log L - log L_fit",
           title=f"residuals (RMS {np.sqrt(np.mean(r * r)):.4f})")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_all(result: dict, points: Points, out_dir: Path) -> list[Path]:
    """The four plots as PNGs in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [loss_vs_n(result, points, out_dir / "loss_vs_N.png"), isoflop(result, points, out_dir / "isoflop.png"),
            frontier(result, points, out_dir / "frontier.png"), residuals(result, points, out_dir / "residuals.png")]
