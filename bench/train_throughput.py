"""Training throughput: our DeepSpeed engine vs a plain PyTorch loop of the same model, in one run.

    python bench/train_throughput.py                      # CPU: debug GPT/BERT/ViT + a small GPT, fp32
    python bench/train_throughput.py --gpu                # GPU: GPT-2 124M/355M and Llama 1.3B, bf16, MFU

Both loops run the same model (same weights, same fixed batch), one rank: ``--warmup`` untimed
steps each, then ``--rounds`` alternating blocks of ``--steps`` timed steps (DeepSpeed, plain,
DeepSpeed, ...); the best block of each side is reported, every block is in the JSON. The DeepSpeed side is the trainer's own engine
(``pretrain.train_setup.build_setup``: LossModule, GuardedAdamW, our DeepSpeed JSON), so the
overhead column is what our training pays for DeepSpeed over plain PyTorch. Prints one JSON
object per model and a one-line summary per model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain import distributed as D  # noqa: E402
from pretrain.config import load_config  # noqa: E402

CPU_CASES = [
    ("gpt-debug", "configs/gpt/debug.yaml", []),
    ("llama-debug", "configs/gpt/debug-llama.yaml", []),
    ("bert-debug", "configs/bert/debug.yaml", []),
    ("vit-debug", "configs/vit/debug.yaml", []),
    ("gpt-small", "configs/gpt/debug.yaml", ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4",
                                             "model.vocab_size=8192", "data.seq_len=128"]),
]
GPU_CASES = [
    ("gpt2-124m", "configs/gpt/gpt2-124m.yaml", ["train.micro_batch_size=16", "data.seq_len=1024"]),
    ("gpt2-355m", "configs/gpt/gpt2-355m.yaml", ["train.micro_batch_size=8", "data.seq_len=1024"]),
    ("llama-1.3b", "configs/gpt/llama-1.3b.yaml", ["train.micro_batch_size=4", "data.seq_len=2048",
                                                   "parallel.activation_checkpointing=false"]),
]


def _cfg(path: str, overrides: list[str], run_dir: str, precision: str):
    common = [f"train.run_dir={run_dir}", "tracking.enabled=false", "data.source=synthetic", "data.path=null",
              "train.global_batch_size=null", f"parallel.precision={precision}", "parallel.zero_stage=0",
              "model.dropout=0.0", "model.attention_dropout=0.0", "data.num_workers=0"]
    return load_config(REPO / path, [*common, *overrides])


def _sync():
    from deepspeed.accelerator import get_accelerator

    get_accelerator().synchronize()


def _block(step_fn, steps: int) -> float:
    """Seconds per step over ``steps`` back-to-back steps."""
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync()
    return (time.perf_counter() - t0) / steps


def _deepspeed_side(cfg):
    """One step of the trainer's own engine, plus the fixed batch and the work per step."""
    from pretrain.train_setup import _items_and_flops, build_setup, to_device

    setup = build_setup(cfg)
    batch = to_device(next(setup.train_iter), setup.device, setup.float_dtype)
    engine = setup.engine

    def ds_step():
        loss = engine(**batch)
        engine.backward(loss)
        engine.step()

    items, flops_per_item = _items_and_flops(cfg, 1)
    return ds_step, batch, items, flops_per_item


def _plain_side(cfg, args, batch):
    """One step of a plain PyTorch loop over the same model and batch."""
    from pretrain.models import build_model
    from pretrain.train_setup import adamw_kernel

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device=D.device(), seed=cfg.train.seed)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if dtype is not None:
        model = model.to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay, **adamw_kernel(cfg.optim.implementation))

    def plain_step():
        loss = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return plain_step


def bench_case(name: str, path: str, overrides: list[str], args) -> dict:
    from pretrain.train_setup import peak_flops_per_rank

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = _cfg(path, overrides, run_dir, args.precision)
        ds_step, batch, items, flops_per_item = _deepspeed_side(cfg)
        plain_step = _plain_side(cfg, args, batch)
        for _ in range(args.warmup):
            ds_step()
            plain_step()
        # alternate blocks so both sides see the same machine; the best block of each is reported
        ds_blocks, plain_blocks = [], []
        for _ in range(args.rounds):
            ds_blocks.append(_block(ds_step, args.steps))
            plain_blocks.append(_block(plain_step, args.steps))
        ds_s, plain_s = min(ds_blocks), min(plain_blocks)
    unit = "images" if cfg.model.family == "vit" else "tokens"
    peak = peak_flops_per_rank()
    out = {
        "model": name, "family": cfg.model.family, "precision": args.precision, "device": str(D.device()),
        "threads": torch.get_num_threads(), f"{unit}_per_step": items,
        f"deepspeed_{unit}_per_s": items / ds_s, f"plain_{unit}_per_s": items / plain_s,
        "deepspeed_step_ms": ds_s * 1e3, "plain_step_ms": plain_s * 1e3,
        "deepspeed_overhead": ds_s / plain_s - 1.0, "flops_per_item": flops_per_item,
        "rounds": args.rounds, "steps_per_round": args.steps,
        "deepspeed_block_ms": [x * 1e3 for x in ds_blocks], "plain_block_ms": [x * 1e3 for x in plain_blocks],
    }
    if peak:
        out["mfu_deepspeed"] = flops_per_item * items / ds_s / peak
        out["mfu_plain"] = flops_per_item * items / plain_s / peak
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the GPU cases (bf16, MFU)")
    p.add_argument("--only", default=None, help="comma-separated case names")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed blocks per side; the best is kept")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    p.add_argument("--out", default=None, help="also write the JSON list here")
    args = p.parse_args()
    args.precision = args.precision or ("bf16" if args.gpu else "fp32")
    args.steps = args.steps or (20 if args.gpu else 10)
    cases = GPU_CASES if args.gpu else CPU_CASES
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c[0] in keep]
    os.environ.setdefault("MASTER_PORT", "29533")
    D.init_distributed()
    results = []
    for name, path, overrides in cases:
        r = bench_case(name, path, overrides, args)
        results.append(r)
        print(json.dumps(r), flush=True)
    for r in results:
        unit = "images" if r["family"] == "vit" else "tokens"
        mfu = f", MFU {r['mfu_deepspeed'] * 100:.1f}%" if "mfu_deepspeed" in r else ""
        print(f"{r['model']}: deepspeed {r[f'deepspeed_{unit}_per_s']:,.0f} {unit}/s vs plain "
              f"{r[f'plain_{unit}_per_s']:,.0f} ({r['deepspeed_overhead'] * 100:+.1f}% overhead){mfu}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
