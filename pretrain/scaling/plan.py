"""The compute planner: the loss-minimising N and D for a budget, with intervals, and a config.

The budget is ``C`` FLOPs, or ``gpus x days x 86400 x mfu x peak FLOP/s``. N and D follow the
fitted law under C = 6 N D (``law.optimal_allocation``); their intervals are the percentiles of
the same allocation under every bootstrap fit, and the loss interval is the bootstrap fits'
prediction at the planned (N, D). The config takes the ladder rung nearest to N_opt and grows or
shrinks it along its own shape (width / depth ratio, head width) to the depth whose parameter count
is closest to N_opt; steps follow from D_opt and the base config's tokens per step.
"""

from __future__ import annotations

import math

import numpy as np

from pretrain.config import ConfigError, dp_size, global_batch, to_dict
from pretrain.scaling import law
from pretrain.scaling.spec import SweepSpec, count_params, rungs, with_sections

SECONDS_PER_DAY = 86_400


def budget(flops: float | None = None, gpus: int | None = None, days: float | None = None, mfu: float = 0.4,
           peak_flops: float | None = None) -> float:
    """FLOPs of the budget: given, or what ``gpus`` deliver in ``days`` at ``mfu`` of their peak."""
    if flops is not None:
        return float(flops)
    return float(gpus * days * SECONDS_PER_DAY * mfu * peak_flops)


def allocate(fit: dict, C: float) -> dict:
    """N_opt, D_opt and the predicted loss at budget ``C``, with bootstrap intervals."""
    p = {k: fit[k] for k in law.NAMES}
    n_opt, d_opt = (float(x) for x in law.optimal_allocation(p, C))
    out = {"C": C, "N_opt": n_opt, "D_opt": d_opt, "loss": float(law.loss(p, n_opt, d_opt)),
           "tokens_per_parameter": d_opt / n_opt, "N_kind": fit.get("N_kind"), "intervals": {}}
    boot = fit.get("approach3", {}).get("bootstrap", {})
    samples = boot.get("samples") or []
    if len(samples) > 1:
        ci = boot.get("ci", 0.95)
        q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
        params = [dict(zip(law.NAMES, s)) for s in samples]
        alloc = np.array([law.optimal_allocation(s, C) for s in params])
        losses = np.array([law.loss(s, n_opt, d_opt) for s in params])
        out["intervals"] = {"N_opt": np.percentile(alloc[:, 0], q).tolist(),
                            "D_opt": np.percentile(alloc[:, 1], q).tolist(), "loss": np.percentile(losses, q).tolist()}
        out["ci"] = ci
    return out


def _shape(rung: dict, layers: int, base_model: dict) -> dict:
    """``rung``'s shape at another depth: the same width per layer and head width."""
    hidden0 = int(rung.get("hidden_size", base_model["hidden_size"]))
    layers0 = int(rung.get("num_layers", base_model["num_layers"]))
    heads0 = int(rung.get("num_heads", base_model["num_heads"]))
    head_dim = hidden0 // heads0
    hidden = max(head_dim, round(hidden0 / layers0 * layers / head_dim) * head_dim)
    shape = {**rung, "num_layers": layers, "hidden_size": hidden, "num_heads": hidden // head_dim}
    kv = rung.get("num_kv_heads")
    if kv:  # keep the query heads per key/value head
        shape["num_kv_heads"] = max(1, shape["num_heads"] // (heads0 // int(kv)))
    if rung.get("ffn_hidden_size"):
        shape["ffn_hidden_size"] = round(int(rung["ffn_hidden_size"]) * hidden / hidden0)
    return shape


def nearest_shape(spec: SweepSpec, n_target: float) -> tuple[str, dict, int]:
    """(rung name, model settings, N) for the ladder shape scaled closest to ``n_target``."""
    base = to_dict(spec.base)
    kind = spec.sweep.n_params
    sized = [(abs(math.log(count_params(with_sections(base, where, model=r), kind)[2] / n_target)), name, r, where)
             for where, name, r in rungs(spec.sweep)]
    _, name, rung, where = min(sized, key=lambda x: x[0])

    def n_at(layers: int) -> int:
        return count_params(with_sections(base, where, model=_shape(rung, layers, base["model"])), kind)[2]

    lo, hi = 1, 2
    while n_at(hi) < n_target and hi < 4096:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # parameters grow with depth: the last depth below the target, and the next
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if n_at(mid) < n_target else (lo, mid)
    layers = min((lo, hi), key=lambda L: abs(math.log(n_at(L) / n_target)))
    return name, _shape(rung, layers, base["model"]), n_at(layers)


def planned_config(spec: SweepSpec, model: dict, d_opt: float, world: int) -> tuple[dict, int]:
    """(the training config for ``model`` trained on ~``d_opt`` tokens by ``world`` ranks, its steps)."""
    base = to_dict(spec.base)
    train: dict = {}
    probe = with_sections(base, "the planned size", model=model)
    dp = world // probe.parallel.tensor_size
    glob = probe.train.global_batch_size
    if glob is not None and glob % (probe.train.micro_batch_size * dp) and glob % dp == 0:
        train["micro_batch_size"] = glob // dp  # the sweep's global batch over more ranks: smaller micro-batches
    probe = with_sections(base, "the planned size", model=model, train=dict(train))
    try:
        tokens_per_step = global_batch(probe, dp_size(probe, world)) * probe.data.seq_len
    except ConfigError as e:
        raise ConfigError([(f"a world of {world} ranks: {p}", v, m) for p, v, m in e.problems]) from None
    steps = max(1, round(d_opt / tokens_per_step))
    train.update({"steps": steps, "run_dir": f"runs/scaling/{spec.sweep.name}-planned"})
    cfg = with_sections(base, "the planned size", model=model, train=train)
    return to_dict(cfg), steps
