"""Peak memory and time of the loss: the fused, chunked head + cross-entropy against today's
logits-then-cross-entropy, side by side in one run.

    python bench/loss_memory.py                                  # GPT-2 124M head, seq 1024, micro-batch 4
    python bench/loss_memory.py --batch 8 --precision bf16 --out loss.json

Each variant runs in a fresh process (so one's peak cannot hide the other's): the final hidden
states ``[batch, seq, 768]`` (requiring grad, as from the last block) and the tied 50304 x 768
head, then ``--repeats`` forward + backward passes of the loss alone. The peak is the process's
peak resident memory above what it held just before the first pass (CPU; ``getrusage``), or the
allocator's peak above its level then (GPU). Prints one JSON object per variant and a summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(fused: bool, args) -> dict:
    """Run in the child process: one variant, returns its figures."""
    import resource

    import psutil
    import torch

    from pretrain.config import load_config
    from pretrain.models import build_model

    torch.set_num_threads(args.threads) if args.threads else None
    cfg = load_config(REPO / args.config, ["data.source=synthetic", "model.num_layers=1"]).model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    model = build_model(cfg, device=device).to(dtype)
    model.fused_loss = fused
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(args.batch, args.seq, cfg.hidden_size, generator=g, device=device, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g, device=device)

    def loss_fn():
        if fused:
            return model.lm_head(h, gather_output=False, labels=labels)
        return model.loss_fn(model.lm_head(h, gather_output=False), labels)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = psutil.Process().memory_info().rss
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        h.grad = None
        model.zero_grad(set_to_none=True)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    tokens = args.batch * args.seq
    return {"variant": "fused" if fused else "unfused", "device": device, "precision": args.precision,
            "tokens": tokens, "vocab": cfg.padded_vocab_size, "hidden": cfg.hidden_size,
            "peak_mib": round(peak / 2**20, 1), "full_fp32_logits_mib": round(tokens * cfg.padded_vocab_size * 4 / 2**20, 1),
            "loss": float(loss.detach().float()), "best_ms": round(min(times) * 1e3, 1),
            "times_ms": [round(t * 1e3, 1) for t in times], "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/gpt/gpt2-124m.yaml")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--variant", choices=["fused", "unfused"], help=argparse.SUPPRESS)  # the child's job
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args.variant == "fused", args)))
        return 0
    rows = []
    passthrough = ["--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq), "--precision",
                   args.precision, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    for variant in ("unfused", "fused"):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    before, after = rows
    print(f"loss of {before['tokens']} tokens x vocab {before['vocab']}: peak {before['peak_mib']} MiB unfused -> "
          f"{after['peak_mib']} MiB fused ({before['peak_mib'] / max(after['peak_mib'], 0.1):.1f}x less); "
          f"{before['best_ms']} -> {after['best_ms']} ms; loss {before['loss']:.6f} vs {after['loss']:.6f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
