"""Peak memory of ``pretrain export`` against the model's fp32 size (target: at most ~1.3x).

Trains a GPT of the given size for one step on 2 local ranks (the real trainer, so the checkpoint
has DeepSpeed's real layout: ZeRO stage and tensor size as asked), then exports it in a fresh
process per format and reports that process's peak RSS (``getrusage``), its RSS after imports
and torch's one-time initialisation on a tiny debug model -- what any Python tool pays -- and
both ratios:

    peak_over_fp32      = peak RSS / (parameters x 4 bytes)
    working_over_fp32   = (peak RSS - RSS after imports) / (parameters x 4 bytes)

    python bench/export_memory.py --hidden 768 --layers 12 --vocab 32000 --stage 3 --tp 2 --out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import psutil, torch, transformers, safetensors  # noqa: F401  the imports any export pays for
from pretrain.config import load_config
from pretrain.export import export_checkpoint
from pretrain.models import build_model
build_model(load_config("configs/gpt/debug.yaml").model, device="meta")  # torch's one-time lazy init (~75 MB)
base = psutil.Process().memory_info().rss
t = time.perf_counter()
export_checkpoint(sys.argv[1], sys.argv[2], fmt=sys.argv[3], check=False)
print(json.dumps({"baseline_rss": base, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": time.perf_counter() - t}))
"""


def train(run_dir: Path, a) -> None:
    cmd = [sys.executable, "-m", "launch.cli", "train", str(REPO / "configs/gpt/debug.yaml"),
           f"model.hidden_size={a.hidden}", f"model.num_layers={a.layers}", f"model.num_heads={a.hidden // 64}",
           f"model.vocab_size={a.vocab}", "data.seq_len=32", "train.steps=1", "train.micro_batch_size=1",
           f"train.run_dir={run_dir}", "tracking.enabled=false", f"parallel.zero_stage={a.stage}",
           f"parallel.tensor_size={a.tp}", "--nproc", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def export(ckpt: Path, out: Path, fmt: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(out), fmt], cwd=REPO, capture_output=True,
                          text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--out", "--json", dest="out", default=None, help="also write the JSON here")
    p.add_argument("--workdir", default=None, help="where the temporary run and exports go")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="export-mem-", dir=a.workdir) as tmp:
        run_dir = Path(tmp) / "run"
        t = time.perf_counter()
        train(run_dir, a)
        train_s = time.perf_counter() - t
        sys.path.insert(0, str(REPO))
        from pretrain.checkpoint import CheckpointReader

        reader = CheckpointReader(run_dir, check=False)
        params = reader.num_parameters()
        ckpt_bytes = sum(f.stat().st_size for f in reader.dir.iterdir() if f.suffix == ".pt")
        fp32 = params * 4
        result = {"model": {"hidden": a.hidden, "layers": a.layers, "vocab": a.vocab, "parameters": params},
                  "zero_stage": a.stage, "tensor_size": a.tp, "fp32_bytes": fp32, "checkpoint_pt_bytes": ckpt_bytes,
                  "train_seconds": round(train_s, 1), "exports": {}}
        for fmt in ("hf", "safetensors"):
            r = export(reader.dir, Path(tmp) / f"out-{fmt}", fmt)
            r["peak_over_fp32"] = round(r["peak_rss"] / fp32, 3)
            r["working_over_fp32"] = round((r["peak_rss"] - r["baseline_rss"]) / fp32, 3)
            r["seconds"] = round(r["seconds"], 2)
            result["exports"][fmt] = r
    print(json.dumps(result, indent=2))
    hf = result["exports"]["hf"]
    print(f"export of {params / 1e6:.1f}M params (fp32 {fp32 / 2**20:.0f} MiB, ZeRO {a.stage}, tensor {a.tp}): "
          f"peak RSS {hf['peak_rss'] / 2**20:.0f} MiB = {hf['peak_over_fp32']}x fp32 "
          f"({hf['working_over_fp32']}x above the {hf['baseline_rss'] / 2**20:.0f} MiB after imports)")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
