"""``make demo``: the whole path on a built-in default -- offline, CPU, local MLflow.

1. a web archive (WARC) of real English pages built from this machine's Python docs,
2. ``pretrain data commoncrawl``: extraction, language id, quality filters, dedup, PII, a trained
   sentencepiece tokenizer, WebDataset shards (on an embedded Ray),
3. ``pretrain train``: a debug GPT on 2 CPU ranks with DeepSpeed ZeRO-1, evaluation and
   checkpoints, tracked in MLflow (``sqlite:///mlflow.db`` in the working directory),
4. ``pretrain export``: a Hugging Face directory, loaded back with ``transformers`` to generate.

Everything lands under ``--out`` (default ``out/demo``); rerunning resumes finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from launch.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _run(args: list[str]) -> None:
    code = cli(args)
    if code:
        raise SystemExit(f"demo: `pretrain {' '.join(args)}` failed with exit code {code}")


def _generate(hf_dir: Path, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_all = time.perf_counter()

    t = _step("1/4 web archive from the built-in corpus")
    from data_pipeline.text.sample_corpus import write_demo_warc

    warc = out / "input" / "demo.warc.gz"
    if not warc.exists():
        warc.parent.mkdir(parents=True, exist_ok=True)
        write_demo_warc(warc, n_articles=150, per_article=6)
    print(f"{warc} ({warc.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - t:.1f}s")

    _step("2/4 pretrain data commoncrawl")
    shards = out / "shards"
    _run(["data", "commoncrawl", "--input", str(warc), "--output", str(shards), "--vocab-size", "2000",
          "--val-fraction", "0.1", "--sample-tokens", "2048", "--num-cpus", str(args.nproc)])
    vocab = json.loads((shards / "manifest.json").read_text())["tokenizer"]["vocab_size"]

    _step(f"3/4 pretrain train (debug GPT, {args.nproc} ranks, ZeRO-1)")
    run_dir = out / "run"
    _run(["train", str(REPO / "configs/gpt/debug.yaml"), "data.source=shards", f"data.path={shards}",
          f"model.vocab_size={vocab}", "model.pad_vocab_multiple=64", "data.seq_len=128", f"train.steps={args.steps}",
          "train.eval_every=50", "train.eval_steps=4", "train.log_every=25", f"train.run_dir={run_dir}",
          "parallel.zero_stage=1", "checkpoint.every=50", "checkpoint.resume=auto", "tracking.experiment=demo",
          "--nproc", str(args.nproc)])

    _step("4/4 pretrain export -> Hugging Face, then transformers.generate")
    hf = out / "hf"
    _run(["export", str(run_dir), "--out", str(hf), "--overwrite"])
    prompt = "The module provides"
    print(f"prompt: {prompt!r}\ngenerated: {_generate(hf, prompt)!r}")

    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f}s: shards {shards}, checkpoints {run_dir}/checkpoints, "
          f"export {hf}\nbrowse the run: mlflow ui --backend-store-uri sqlite:///mlflow.db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
