"""``pretrain scaling plan --fit fit.json (--flops C | --gpus G --days X [--mfu M])``.

Prints the compute-optimal N and D for the budget with their bootstrap intervals and the predicted
loss; ``--write-config OUT.yaml`` writes a training config for that size from the nearest shape of
the sweep's ladder (``--config``, default: the sweep the fit came from).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_USAGE = 2


def add_arguments(p) -> None:
    p.add_argument("--fit", required=True, help="fit.json written by `pretrain scaling fit`")
    p.add_argument("--flops", type=float, default=None, help="the compute budget in FLOPs")
    p.add_argument("--gpus", type=int, default=None, help="or: this many GPUs ...")
    p.add_argument("--days", type=float, default=None, help="... for this many days ...")
    p.add_argument("--mfu", type=float, default=0.4, help="... at this model FLOPs utilisation")
    p.add_argument("--gpu-type", default="H100", help="peak bf16 FLOP/s from this GPU (see --peak-flops)")
    p.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s per GPU (overrides --gpu-type)")
    p.add_argument("--config", default=None, help="the sweep config whose ladder shapes the planned model")
    p.add_argument("--world", type=int, default=None, help="ranks of the planned run (default: --gpus, else sweep.nproc)")
    p.add_argument("--write-config", metavar="OUT.yaml", default=None, help="write a training config for the planned size")
    p.add_argument("--out", metavar="plan.json", default=None, help="also write the plan as JSON")


def _fail(msg: str) -> int:
    print(f"pretrain scaling plan: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _peak(args) -> float:
    if args.peak_flops is not None:
        return args.peak_flops
    from pretrain.devices import SHORT_NAMES, peak_flops

    peak = peak_flops(SHORT_NAMES.get(args.gpu_type.upper(), args.gpu_type))
    if peak is None:
        raise ValueError(f"--gpu-type {args.gpu_type!r}: known {', '.join(SHORT_NAMES)} (or a full device name as "
                         "torch reports it, e.g. 'NVIDIA H100 PCIe'); or give --peak-flops")
    return peak


def _read_fit(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--fit {path}: no such file")
    try:
        fit = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--fit {path}: not JSON ({e})") from None
    missing = [k for k in ("E", "A", "B", "alpha", "beta") if k not in fit]
    if missing:
        raise ValueError(f"--fit {path}: not a `pretrain scaling fit` result (no {', '.join(missing)})")
    return fit


def _fmt_iv(plan: dict, key: str, fmt: str) -> str:
    iv = plan["intervals"].get(key)
    return f"  [{format(iv[0], fmt)}, {format(iv[1], fmt)}]" if iv else ""


def run(args) -> int:
    from pretrain.scaling import plan as P

    if (args.flops is None) == (args.gpus is None or args.days is None):
        return _fail("give --flops C, or --gpus G with --days X")
    if (args.flops is not None and args.flops <= 0) or (args.gpus is not None and (args.gpus < 1 or args.days <= 0)) \
            or not 0 < args.mfu <= 1:
        return _fail("--flops, --gpus and --days must be positive, --mfu in (0, 1]")
    try:
        fit = _read_fit(args.fit)
        C = P.budget(args.flops, args.gpus, args.days, args.mfu, None if args.flops else _peak(args))
    except ValueError as e:
        return _fail(str(e))
    plan = P.allocate(fit, C)
    kind = plan["N_kind"] or "the fit's"
    print(f"budget C = {C:.4g} FLOPs (C = 6 N D)")
    print(f"  N_opt = {plan['N_opt']:.4g} ({kind} parameters){_fmt_iv(plan, 'N_opt', '.4g')}")
    print(f"  D_opt = {plan['D_opt']:.4g} tokens{_fmt_iv(plan, 'D_opt', '.4g')}  ({plan['tokens_per_parameter']:.1f} per parameter)")
    print(f"  loss  = {plan['loss']:.4f}{_fmt_iv(plan, 'loss', '.4f')}")
    if args.write_config:
        code = _write_config(args, fit, plan)
        if code:
            return code
    if args.out:
        Path(args.out).write_text(json.dumps(plan, indent=1) + "\n")
    return 0


def _write_config(args, fit: dict, plan: dict) -> int:
    import yaml

    from pretrain.config import ConfigError
    from pretrain.scaling import plan as P
    from pretrain.scaling.spec import load_sweep

    config = args.config or (fit.get("source") or {}).get("sweep_config")
    if not config:
        return _fail("--write-config needs the sweep's ladder: give --config configs/scaling/<sweep>.yaml")
    try:
        spec = load_sweep(config)
        if plan["N_kind"] and spec.sweep.n_params != plan["N_kind"]:
            return _fail(f"the fit counts {plan['N_kind']} parameters, {config} counts {spec.sweep.n_params}")
        rung, model, n = P.nearest_shape(spec, plan["N_opt"])
        cfg, steps = P.planned_config(spec, model, plan["D_opt"], args.world or args.gpus or spec.sweep.nproc)
    except ConfigError as e:
        return _fail(str(e))
    Path(args.write_config).parent.mkdir(parents=True, exist_ok=True)
    head = (f"# planned by `pretrain scaling plan` for C = {plan['C']:.4g} FLOPs: N = {n:,} (N_opt {plan['N_opt']:.4g}), "
            f"{steps} steps (D_opt {plan['D_opt']:.4g} tokens), predicted loss {plan['loss']:.4f}; shape of rung {rung}\n")
    Path(args.write_config).write_text(head + yaml.safe_dump(cfg, sort_keys=False))
    shape = ", ".join(f"{k}={model[k]}" for k in ("hidden_size", "num_layers", "num_heads"))
    print(f"wrote {args.write_config}: {shape} ({n:,} parameters), {steps} steps")
    return 0
