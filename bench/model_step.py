"""Training-step speed of our models against ``transformers`` models of identical shape.

For each preset: build ours, export it with ``to_hf`` and load the same weights into the HF class
(so both start equal and the first losses are checked to agree), then time forward + backward +
AdamW step on the same batch, alternating ours / HF each repetition so both see the same machine
load. Prints one JSON object per preset and a one-line summary; ``--out`` also writes them to a file.

    python bench/model_step.py                       # debug and small sizes of all families
    python bench/model_step.py --presets gpt2-small --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models import build_model, preset, to_hf  # noqa: E402
from pretrain.models.hf_maps import ARCHS, hf_model_type  # noqa: E402

DEFAULT = ["gpt2-debug", "gpt2-small", "llama-debug", "llama-small", "bert-debug", "bert-small",
           "vit-debug", "vit-small"]


def make_batch(cfg, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if cfg.family == "vit":
        return {"pixel_values": torch.randn(batch_size, 3, cfg.image_size, cfg.image_size, generator=g),
                "labels": torch.randint(0, cfg.num_classes, (batch_size,), generator=g)}
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=g)
    if cfg.family == "gpt":
        return {"input_ids": ids, "labels": labels}
    labels[torch.rand(batch_size, seq_len, generator=g) > 0.15] = -100  # BERT: ~15% predicted
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}


def hf_loss(model, cfg, batch) -> torch.Tensor:
    """The same loss as ours, computed from the HF model's logits (labels are pre-shifted)."""
    if cfg.family == "vit":
        return F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    kwargs = {k: v for k, v in batch.items() if k in ("attention_mask", "token_type_ids")}
    logits = model(input_ids=batch["input_ids"], **kwargs).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100)


def load_hf_twin(ours, cfg):
    import transformers

    hf_class = getattr(transformers, ARCHS[hf_model_type(cfg)](cfg).hf_class)
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(ours, tmp)
        return hf_class.from_pretrained(tmp, attn_implementation="sdpa")


def step_time(model, loss_fn, opt) -> tuple[float, float]:
    """(wall, process CPU) seconds of one step. On a shared machine the CPU time of this process
    is the steadier number; with one thread it is the compute the step needed."""
    w0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    loss_fn().backward()
    opt.step()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_preset(name: str, steps: int, warmup: int, batch_size: int, seq_len: int) -> dict:
    cfg = preset(name)
    ours = build_model(cfg, seed=0).train()
    hf = load_hf_twin(ours, cfg).train()
    batch = make_batch(cfg, batch_size, min(seq_len, cfg.max_seq_len))
    ours_loss, theirs_loss = ours.loss(batch).item(), hf_loss(hf, cfg, batch).item()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, hf)]
    runs = [(ours, lambda: ours.loss(batch), opts[0]), (hf, lambda: hf_loss(hf, cfg, batch), opts[1])]
    times: list[list[tuple[float, float]]] = [[], []]
    for i in range(warmup + steps):
        for j, (model, fn, opt) in enumerate(runs if i % 2 == 0 else runs[::-1]):
            k = j if i % 2 == 0 else 1 - j
            t = step_time(model, fn, opt)
            if i >= warmup:
                times[k].append(t)
    ours_ms, hf_ms = (1000 * statistics.median(w for w, _ in t) for t in times)
    ours_cpu, hf_cpu = (1000 * statistics.median(c for _, c in t) for t in times)
    return {"bench": "model_step", "preset": name, "family": cfg.family, "batch_size": batch_size,
            "seq_len": None if cfg.family == "vit" else min(seq_len, cfg.max_seq_len),
            "params": sum(p.numel() for p in ours.parameters()), "threads": torch.get_num_threads(),
            "steps": steps, "ours_ms": round(ours_ms, 2), "hf_ms": round(hf_ms, 2),
            "ratio_ours_over_hf": round(ours_ms / hf_ms, 3), "ours_cpu_ms": round(ours_cpu, 2),
            "hf_cpu_ms": round(hf_cpu, 2), "cpu_ratio_ours_over_hf": round(ours_cpu / hf_cpu, 3), "first_loss_ours": round(ours_loss, 5),
            "first_loss_hf": round(theirs_loss, 5), "device": "cpu", "torch": torch.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=DEFAULT)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for name in args.presets:
        r = bench_preset(name, args.steps, args.warmup, args.batch_size, args.seq_len)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    summary = ", ".join(f"{r['preset']} {r['ratio_ours_over_hf']:.2f}x (cpu {r['cpu_ratio_ours_over_hf']:.2f}x)"
                        for r in results)
    print(f"model_step: ours/HF step time, wall (process cpu), lower is better: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
