"""Training throughput: our DeepSpeed engine vs a plain PyTorch loop of the same model, in one run.

    python bench/train_throughput.py                      # CPU: debug and small GPT/Llama/BERT/ViT, fp32
    python bench/train_throughput.py --gpu                # GPU: GPT-2 124M/355M and Llama 1.3B, bf16, MFU
    python bench/train_throughput.py --gpu --variants eager,compiled --no-plain   # + train.compile

``--variants``: the DeepSpeed side eager and/or with ``train.compile`` (each its own engine, built
after the previous one is freed). MFU is reported in both counts (``pretrain.models.flops``): the
published ``6N + 12 L H T`` (``mfu_6n_12lht``) and causal attention counted exactly
(``mfu_causal_exact``); on GPUs each side's peak allocated memory too.

Both loops run the same model (same weights, same fixed batch), one rank: ``--warmup`` untimed
steps each, then ``--rounds`` alternating blocks of ``--steps`` timed steps (DeepSpeed, plain,
DeepSpeed, ...; ``--sequential``: one side after the other, for GPU memory); the best block of
each side is reported, every block is in the JSON. The DeepSpeed side is the trainer's own engine
(``pretrain.train_setup.build_setup``: LossModule, GuardedAdamW, our DeepSpeed JSON), so the
overhead column is what our training pays for DeepSpeed over plain PyTorch. Prints one JSON
object per model and a one-line summary per model.
"""

from __future__ import annotations

import argparse
import json
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
    ("llama-small", "configs/gpt/debug-llama.yaml", ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=8",
                                                     "model.num_kv_heads=4", "model.ffn_hidden_size=768",
                                                     "model.vocab_size=8192", "data.seq_len=128"]),
    ("bert-small", "configs/bert/debug.yaml", ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4",
                                               "model.vocab_size=8192", "data.seq_len=128"]),
    ("vit-small", "configs/vit/debug.yaml", ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4",
                                             "model.image_size=64", "model.num_classes=100"]),
]
GPU_CASES = [
    ("gpt2-124m", "configs/gpt/gpt2-124m.yaml", ["train.micro_batch_size=16", "data.seq_len=1024"]),
    ("gpt2-355m", "configs/gpt/gpt2-355m.yaml", ["train.micro_batch_size=8", "data.seq_len=1024"]),
    ("llama-1.3b", "configs/gpt/llama-1.3b.yaml", ["train.micro_batch_size=4", "data.seq_len=2048",
                                                   "parallel.activation_checkpointing=none"]),
]


def _cfg(path: str, overrides: list[str], run_dir: str, precision: str):
    common = [f"train.run_dir={run_dir}", "tracking.enabled=false", "data.source=synthetic", "data.path=null",
              "train.global_batch_size=null", f"parallel.precision={precision}", "parallel.zero_stage=0",
              "model.dropout=0.0", "model.attention_dropout=0.0", "data.num_workers=0"]
    return load_config(REPO / path, [*common, *overrides])


def _sync():
    from deepspeed.accelerator import get_accelerator

    get_accelerator().synchronize()


_CPU_SECONDS: dict[int, list[float]] = {}  # id(step_fn) -> process CPU seconds per step of each block


def _block(step_fn, steps: int) -> float:
    """Seconds per step over ``steps`` back-to-back steps (wall clock; the process CPU time per
    step is kept too: on a shared CPU machine with one torch thread it is the steadier figure)."""
    _sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step_fn()
    _sync()
    _CPU_SECONDS.setdefault(id(step_fn), []).append((time.process_time() - c0) / steps)
    return (time.perf_counter() - t0) / steps


def _deepspeed_side(cfg):
    """One step of the trainer's own engine, plus the fixed batch."""
    from pretrain.train_setup import build_setup, to_device

    setup = build_setup(cfg)
    batch = to_device(next(setup.train_iter), setup.device, setup.float_dtype)
    engine = setup.engine

    def ds_step():
        loss = engine(**batch)
        engine.backward(loss)
        engine.step()

    return ds_step, batch, setup


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


def _free() -> None:
    """Drop the last side's engine and memory before the next one is built."""
    import gc

    from deepspeed.accelerator import get_accelerator

    gc.collect()
    if get_accelerator().device_name() != "cpu":
        get_accelerator().empty_cache()
        get_accelerator().reset_peak_memory_stats()


def _peak_gib() -> float | None:
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return None if acc.device_name() == "cpu" else acc.max_memory_allocated() / 2**30


def _measure(builders: dict, args) -> dict[str, tuple[list[float], float | None, list[float]]]:
    """name -> (seconds per step of each timed block, peak GiB, CPU seconds per step of each
    block). Default: every side built at once,
    warmed up, then ``--rounds`` alternating blocks (the same machine load hits all sides);
    ``--sequential``: one side at a time, freed before the next is built (GPU memory)."""
    out = {}
    if args.sequential:
        for name, build in builders.items():
            _free()
            step = build()
            for _ in range(args.warmup):
                step()
            out[name] = ([_block(step, args.steps) for _ in range(args.rounds)], _peak_gib(), _CPU_SECONDS[id(step)])
            del step
        return out
    _free()
    steps = {name: build() for name, build in builders.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    blocks: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            blocks[name].append(_block(step, args.steps))
    return {name: (b, _peak_gib(), _CPU_SECONDS[id(steps[name])]) for name, b in blocks.items()}


def bench_case(name: str, path: str, overrides: list[str], args) -> dict:
    from pretrain.devices import peak_flops_per_rank
    from pretrain.train_setup import _items_and_flops, anchor_flops_per_item

    peak = peak_flops_per_rank()
    out: dict = {"model": name, "precision": args.precision, "device": str(D.device()),
                 "threads": torch.get_num_threads(), "rounds": args.rounds, "steps_per_round": args.steps,
                 "sequential": args.sequential}
    keep = []  # the temporary run directories live until the case is done
    shared: dict = {}

    def deepspeed(compiled: bool):
        def build():
            keep.append(tempfile.TemporaryDirectory())
            cfg = _cfg(path, [*overrides, f"train.compile={compiled}"], keep[-1].name, args.precision)
            step, batch, setup = _deepspeed_side(cfg)
            shared.setdefault("batch", batch)
            shared["cfg"] = cfg
            return step
        return build

    builders = {{"eager": "deepspeed", "compiled": "deepspeed_compiled"}[v]: deepspeed(v == "compiled")
                for v in args.variants}
    if args.plain:
        builders["plain"] = lambda: _plain_side(shared["cfg"], args, shared["batch"])
    measured = _measure(builders, args)
    for d in keep:
        d.cleanup()
    cfg = shared["cfg"]
    items, flops_exact = _items_and_flops(cfg, 1)
    flops_6n = anchor_flops_per_item(cfg)
    unit = "images" if cfg.model.family == "vit" else "tokens"
    out.update({"family": cfg.model.family, f"{unit}_per_step": items, "flops_per_item": flops_exact,
                "flops_per_item_6n_12lht": flops_6n})
    for side, (blocks, peak_mem, cpu) in measured.items():
        best = min(blocks)
        out.update({f"{side}_block_ms": [x * 1e3 for x in blocks], f"{side}_step_ms": best * 1e3,
                    f"{side}_{unit}_per_s": items / best, f"{side}_cpu_ms": min(cpu) * 1e3})
        if peak_mem is not None and args.sequential:
            out[f"{side}_peak_gib"] = peak_mem
        if peak:
            out[f"mfu_6n_12lht_{side}"] = flops_6n * items / best / peak
            out[f"mfu_causal_exact_{side}"] = flops_exact * items / best / peak
    if "deepspeed" in measured and "plain" in measured:
        out["deepspeed_overhead"] = out["deepspeed_step_ms"] / out["plain_step_ms"] - 1.0
    if "deepspeed" in measured and "deepspeed_compiled" in measured:
        out["compiled_speedup"] = out["deepspeed_step_ms"] / out["deepspeed_compiled_step_ms"]
        out["compiled_speedup_cpu"] = out["deepspeed_cpu_ms"] / out["deepspeed_compiled_cpu_ms"]
    return out


def _summary(r: dict) -> str:
    unit = "images" if r["family"] == "vit" else "tokens"
    parts = []
    for side in ("deepspeed", "deepspeed_compiled", "plain"):
        if f"{side}_{unit}_per_s" in r:
            mfu = r.get(f"mfu_6n_12lht_{side}")
            parts.append(f"{side} {r[f'{side}_{unit}_per_s']:,.0f} {unit}/s"
                         + (f" (MFU {mfu * 100:.1f}% 6N+12LHT, {r[f'mfu_causal_exact_{side}'] * 100:.1f}% causal exact)"
                            if mfu is not None else ""))
    extra = f", DeepSpeed overhead {r['deepspeed_overhead'] * 100:+.1f}%" if "deepspeed_overhead" in r else ""
    extra += (f", compiled {r['compiled_speedup']:.2f}x (CPU time {r['compiled_speedup_cpu']:.2f}x)"
              if "compiled_speedup" in r else "")
    return f"{r['model']}: " + " | ".join(parts) + extra


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="the GPU cases (bf16, MFU)")
    p.add_argument("--only", default=None, help="comma-separated case names")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed blocks per side; the best is kept")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    p.add_argument("--variants", default="eager", help="DeepSpeed side: eager, compiled or eager,compiled")
    p.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain PyTorch loop")
    p.add_argument("--sequential", action="store_true",
                   help="build, time and free one side at a time instead of alternating (less GPU memory)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="also write the JSON list here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision = args.precision or ("bf16" if args.gpu else "fp32")
    args.steps = args.steps or (20 if args.gpu else 10)
    args.variants = [v for v in args.variants.split(",") if v]
    if not set(args.variants) <= {"eager", "compiled"}:
        p.error(f"--variants: {args.variants}; allowed eager, compiled")
    cases = GPU_CASES if args.gpu else CPU_CASES
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c[0] in keep]
    D.init_distributed()
    results = []
    for name, path, overrides in cases:
        r = bench_case(name, path, overrides, args)
        results.append(r)
        print(json.dumps(r), flush=True)
    for r in results:
        print(_summary(r))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
