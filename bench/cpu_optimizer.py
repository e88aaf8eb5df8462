"""The CPU optimizer step behind ZeRO optimizer offload: which AdamW to hand DeepSpeed.

With ``parallel.offload_optimizer`` the fp32 master weights and Adam moments live in host memory
and the AdamW step runs on the CPU once per optimizer step, for every parameter of the rank's
partition -- at 1B+ parameters that step is often the slowest part of an offloaded step. This
times one AdamW step over tensors shaped like the parameters of a config's model (GPT-2 124M by
default; built on the meta device), on the same tensors, with each candidate in one run:

- ``torch_default``: ``torch.optim.AdamW()`` as constructed by default (on CPU tensors: the
  single-tensor loop);
- ``torch_foreach``: ``AdamW(foreach=True)``;
- ``torch_fused``: ``AdamW(fused=True)`` (torch's fused CPU kernel);
- ``deepspeed_cpu_adam``: ``DeepSpeedCPUAdam(adamw_mode=True)`` (JIT-built on first use; its build
  time is reported apart and excluded).

and checks that every candidate gives the same weights as ``torch_default`` after the steps.

    python bench/cpu_optimizer.py --config configs/gpt/gpt2-124m.yaml --steps 5 --out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def model_shapes(config: str, overrides: list[str]) -> list[torch.Size]:
    """Parameter shapes of the model a config builds (on the meta device; tied weights once)."""
    from pretrain.config import load_config
    from pretrain.models import build_model

    model = build_model(load_config(REPO / config, overrides).model, device="meta")
    return [p.shape for p in model.parameters()]


def make(kind: str, params: list[torch.Tensor], lr: float):
    kw = {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    if kind == "torch_default":
        return torch.optim.AdamW(params, **kw)
    if kind == "torch_foreach":
        return torch.optim.AdamW(params, foreach=True, **kw)
    if kind == "torch_fused":
        return torch.optim.AdamW(params, fused=True, **kw)
    if kind == "deepspeed_cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    raise ValueError(kind)


def run(kind: str, shapes, steps: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    grads = [torch.randn(s, generator=g) * 1e-3 for s in shapes]
    t = time.perf_counter()
    opt = make(kind, params, lr=1e-3)
    build_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        for p, gr in zip(params, grads):
            p.grad = gr
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    n = sum(p.numel() for p in params)
    best = min(times[1:] or times)  # the first step allocates the moments
    return {"optimizer": kind, "params": n, "step_s_best": best, "step_s_all": times,
            "params_per_s": n / best, "construct_s": build_s, "final": [p.detach().clone() for p in params]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/gpt/gpt2-124m.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--only", default="torch_default,torch_foreach,torch_fused,deepspeed_cpu_adam")
    p.add_argument("--out", "--json", dest="out", default=None, help="also write the JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    shapes = model_shapes(a.config, a.overrides)
    results, ref = [], None
    for kind in a.only.split(","):
        r = run(kind, shapes, a.steps, seed=0)
        final = r.pop("final")
        if ref is None:
            ref = final
        r["max_abs_diff_vs_first"] = max((x - y).abs().max().item() for x, y in zip(final, ref))
        results.append(r)
    base = results[0]["step_s_best"]
    for r in results:
        r["speedup_vs_first"] = base / r["step_s_best"]
        print(f"{r['optimizer']:>20s}: {r['step_s_best'] * 1000:8.1f} ms/step  {r['params_per_s'] / 1e6:7.1f} M params/s  "
              f"x{r['speedup_vs_first']:.2f}  max|dw| vs first {r['max_abs_diff_vs_first']:.2e}  "
              f"(construct {r['construct_s']:.1f} s)", flush=True)
    out = {"bench": "cpu_optimizer", "config": a.config, "overrides": a.overrides, "threads": a.threads,
           "torch": torch.__version__, "results": results}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
