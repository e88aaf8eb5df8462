"""The parametric loss L(N, D) = E + A / N^alpha + B / D^beta and its compute-optimal frontier.

Fits work in the parameters ``theta = (a, b, e, alpha, beta)`` with ``A = exp(a)``, ``B = exp(b)``,
``E = exp(e)``, so the prediction of the log-loss is a log-sum-exp of three terms (Hoffmann et al.
2022, Appendix D.2)::

    log L(N, D) = LSE(a - alpha log N,  b - beta log D,  e)

Under the budget C = 6 N D the loss-minimising split is (their eq. 4)::

    N_opt(C) = G (C / 6)^a,  D_opt(C) = G^-1 (C / 6)^b,
    G = (alpha A / (beta B))^(1 / (alpha + beta)),  a = beta / (alpha + beta),  b = alpha / (alpha + beta)
"""

from __future__ import annotations

import numpy as np

NAMES = ("E", "A", "B", "alpha", "beta")


def to_params(theta) -> dict[str, float]:
    """(a, b, e, alpha, beta) -> {E, A, B, alpha, beta}."""
    a, b, e, alpha, beta = (float(x) for x in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def to_theta(p: dict) -> np.ndarray:
    return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]], dtype=np.float64)


def loss(p: dict, N, D) -> np.ndarray:
    """L(N, D) for parameters ``p`` ({E, A, B, alpha, beta})."""
    N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def log_loss_terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray):
    """The predicted log-loss and the softmax weights of its three terms (for the gradient)."""
    a, b, e, alpha, beta = theta
    t1 = a - alpha * log_n
    t2 = b - beta * log_d
    m = np.maximum(np.maximum(t1, t2), e)
    x1, x2, x3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    s = x1 + x2 + x3
    return m + np.log(s), x1 / s, x2 / s, x3 / s


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
                    weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """sum_i w_i Huber_delta(predicted log L_i - log L_i) and its gradient in theta.

    ``weights`` are per-point counts (a bootstrap resample is a multinomial count vector)."""
    pred, w1, w2, w3 = log_loss_terms(theta, log_n, log_d)
    r = pred - log_l
    absr = np.abs(r)
    h = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    g = np.clip(r, -delta, delta)  # dHuber/dr
    if weights is not None:
        h, g = h * weights, g * weights
    gw1, gw2 = g * w1, g * w2
    grad = np.array([gw1.sum(), gw2.sum(), (g * w3).sum(), -(gw1 * log_n).sum(), -(gw2 * log_d).sum()])
    return float(h.sum()), grad


def grid_objective(thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                   delta: float, chunk: int = 2_000_000) -> np.ndarray:
    """The Huber objective at each row of ``thetas`` (k x 5), vectorised in chunks of ~``chunk``
    elements so 5,000 points x 4,500 starts stay small in memory."""
    out = np.empty(len(thetas))
    step = max(1, chunk // max(1, len(log_n)))
    for i in range(0, len(thetas), step):
        t = thetas[i:i + step]
        a, b, e, alpha, beta = (t[:, j:j + 1] for j in range(5))
        t1, t2 = a - alpha * log_n, b - beta * log_d
        m = np.maximum(np.maximum(t1, t2), e)
        r = m + np.log(np.exp(t1 - m) + np.exp(t2 - m) + np.exp(e - m)) - log_l
        absr = np.abs(r)
        out[i:i + step] = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum(axis=1)
    return out


def exponents(p: dict) -> tuple[float, float]:
    """(a, b): N_opt ~ C^a and D_opt ~ C^b."""
    s = p["alpha"] + p["beta"]
    return p["beta"] / s, p["alpha"] / s


def optimal_allocation(p: dict, C) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising L under 6 N D = C."""
    C = np.asarray(C, dtype=np.float64)
    a, b = exponents(p)
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
    return G * (C / 6.0) ** a, (C / 6.0) ** b / G
