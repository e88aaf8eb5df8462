"""``make demo``: the whole card on built-in data -- offline, CPU, tracked in a local MLflow.

1. a web archive (WARC) of real English pages built from this machine's Python docs, and
   ``pretrain data commoncrawl`` on it: extraction, language id, quality filters, dedup, PII, a
   trained sentencepiece tokenizer, WebDataset shards (embedded Ray);
2. a generated labelled image folder (ten classes of shapes and patterns, ImageNet layout) and
   ``pretrain data imagenet`` on it;
3. ``pretrain train`` with DeepSpeed on 2 CPU ranks: a debug GPT (ZeRO 2) and a debug BERT (ZeRO 1)
   on the text shards, a debug ViT (ZeRO 1) on the image shards, each evaluated and checkpointed;
4. ``pretrain sweep``: a small scaling sweep (3 tiny GPT sizes x 2 token budgets on the text shards,
   the trials as tasks on an embedded Ray, one per core at a time; one MLflow parent run with a
   child run per trial), then ``pretrain scaling fit``: L(N, D) fitted
   to the trials, its JSON and plots logged to the parent run;
5. ``pretrain export`` of all three to Hugging Face directories, recorded on their MLflow runs and
   registered in MLflow's model registry;
6. ``transformers.pipeline`` on the exports: text generation, fill-mask, image classification;
7. a summary: where everything is, final losses against the unigram baseline, ViT accuracy, and
   the command that browses it all (``mlflow ui --backend-store-uri sqlite:///mlflow.db``).

Everything lands under ``--out`` (default ``out/demo``), MLflow in ``mlflow.db`` + ``mlruns/`` of
the working directory. A rerun skips the steps that finished (``<out>/demo_state.json``) and
continues an interrupted one where it stopped (pipelines skip finished shards, training resumes
from its last checkpoint). ``--quick`` is the reduced size the tests run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "demo"
GPT_PROMPT = "The module provides"
BERT_TEXT = "This module provides functions for working with <mask> files."


@dataclass(frozen=True)
class Size:
    """How much of everything: the default fits 10 minutes on 2 cores with the sweep."""

    articles: int = 150
    val_fraction: float = 0.1
    sample_tokens: int = 2048
    images: tuple[int, int] = (120, 20)  # per class: train, val
    gpt_steps: int = 300
    bert_steps: int = 600
    vit_steps: int = 300
    log_every: int = 25
    checkpoint_every: int = 100
    sweep_tokens: tuple[int, int] = (10240, 40960)  # D per sweep trial: 40 and 160 steps of 8 x 32 tokens


QUICK = Size(articles=40, val_fraction=0.3, sample_tokens=512, images=(12, 4), gpt_steps=6, bert_steps=6,
             vit_steps=6, log_every=3, checkpoint_every=4, sweep_tokens=(2560, 5120))


@dataclass
class Demo:
    out: Path
    size: Size
    nproc: int
    state: dict = field(default_factory=dict)
    total_steps: int = 10
    number: int = 0

    @property
    def state_file(self) -> Path:
        return self.out / "demo_state.json"

    def load(self) -> None:
        if self.state_file.is_file():
            self.state = json.loads(self.state_file.read_text())

    def save(self) -> None:
        from data_pipeline.shards import write_json_atomic

        write_json_atomic(self.state_file, self.state)

    def step(self, key: str, title: str, fn, done_if=lambda: True) -> dict:
        """Run step ``fn`` (returning a dict of results) unless an earlier run finished it."""
        self.number += 1
        print(f"\n== {self.number}/{self.total_steps} {title}", flush=True)
        old = self.state.get(key)
        if old is not None and done_if():
            print(f"done in an earlier run ({old['seconds']:.0f}s); delete {self.state_file} to redo every step",
                  flush=True)
            return old
        started = time.perf_counter()
        result = fn() or {}
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.state[key] = result
        self.save()
        print(f"-- {title}: {result['seconds']:.0f}s", flush=True)
        return result


def _cli(args: list[str]) -> None:
    from launch.cli import main as cli

    print("$ pretrain " + " ".join(args), flush=True)
    code = cli(args)
    if code:
        raise SystemExit(f"demo: `pretrain {' '.join(args)}` failed with exit code {code}")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def text_data(d: Demo) -> dict:
    from data_pipeline.text.sample_corpus import write_demo_warc

    warc = d.out / "input" / "demo.warc.gz"
    if not warc.exists():
        warc.parent.mkdir(parents=True, exist_ok=True)
        tmp = warc.with_name(f".{warc.name}.tmp")
        write_demo_warc(tmp, n_articles=d.size.articles, per_article=6)
        tmp.rename(warc)
    print(f"web archive {warc} ({warc.stat().st_size / 1e3:.0f} kB)", flush=True)
    shards = d.out / "data" / "text"
    _cli(["data", "commoncrawl", "--input", str(warc), "--out", str(shards), "--vocab-size", "1000",
          "--val-fraction", str(d.size.val_fraction), "--sample-tokens", str(d.size.sample_tokens),
          "--num-cpus", str(d.nproc), "--experiment", EXPERIMENT])
    manifest = json.loads((shards / "manifest.json").read_text())
    return {"shards": str(shards), "vocab_size": manifest["tokenizer"]["vocab_size"],
            "documents": manifest["counts"]["total"]["kept"],
            "tokens": {s: e["tokens"] for s, e in manifest["splits"].items()}}


def image_data(d: Demo) -> dict:
    from launch.demo_images import CLASSES, write_image_folder

    train, val = d.size.images
    folder = write_image_folder(d.out / "input" / "images", {"train": train, "val": val})
    print(f"image folder {folder}: {len(CLASSES)} classes x ({train} train + {val} val) JPEGs: {', '.join(CLASSES)}",
          flush=True)
    shards = d.out / "data" / "images"
    _cli(["data", "imagenet", "--input", str(folder), "--out", str(shards), "--split", "train,val", "--max-size", "48",
          "--shard-size", "400", "--num-cpus", str(d.nproc), "--experiment", EXPERIMENT])
    manifest = json.loads((shards / "manifest.json").read_text())
    return {"shards": str(shards), "classes": len(manifest["classes"]),
            "images": {s: e["samples"] for s, e in manifest["splits"].items()}}


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _latest_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step")) if latest.is_file() else 0


def train(d: Demo, name: str, config: str, steps: int, overrides: list[str]) -> dict:
    run_dir = d.out / "runs" / name
    s = d.size
    _cli(["train", str(REPO / config), "--nproc", str(d.nproc), "--out", str(run_dir), f"train.steps={steps}",
          f"train.log_every={s.log_every}", f"train.eval_every={max(1, steps // 3)}", "train.eval_steps=8",
          f"checkpoint.every={s.checkpoint_every}", "checkpoint.keep_last=2", "checkpoint.resume=auto",
          f"tracking.experiment={EXPERIMENT}", f"tracking.run_name=demo-{name}", *overrides])
    tag = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((tag / "trainer_state.json").read_text())
    return {"run_dir": str(run_dir), "checkpoint": str(tag), "step": state["step"], "run_id": state["mlflow_run_id"],
            "metrics": _final_metrics(state["mlflow_run_id"])}


def _final_metrics(run_id: str | None) -> dict:
    """The run's latest eval metrics and train loss, as MLflow holds them."""
    if run_id is None:
        return {}
    from mlflow import MlflowClient

    from pretrain.tracking import resolve_uri

    metrics = MlflowClient(tracking_uri=resolve_uri(None)).get_run(run_id).data.metrics
    return {k: round(v, 4) for k, v in sorted(metrics.items()) if k.startswith("eval/") or k == "train/loss"}


def unigram_baseline(shards: Path) -> dict:
    """The best a model that ignores context does on the val split, from the train split's token
    frequencies (add-one smoothed): its cross-entropy (nats/token) and how often its one guess, the
    most frequent token, is right. A language model must get well below the one and above the other."""
    import io
    import tarfile

    import numpy as np

    manifest = json.loads((shards / "manifest.json").read_text())
    vocab = manifest["tokenizer"]["vocab_size"]

    def counts(split: str) -> np.ndarray:
        total = np.zeros(vocab, dtype=np.int64)
        for shard in manifest["splits"][split]["shards"]:
            with tarfile.open(shards / shard["path"]) as tar:
                for member in tar:
                    if member.name.endswith(".tokens.npy"):
                        tokens = np.load(io.BytesIO(tar.extractfile(member).read()))
                        total += np.bincount(tokens.astype(np.int64), minlength=vocab)
        return total

    train, val = counts("train"), counts("val")
    logp = np.log((train + 1) / (train.sum() + vocab))
    return {"unigram_loss": round(float(-(val * logp).sum() / val.sum()), 4),
            "unigram_top1": round(float(val[int(train.argmax())] / val.sum()), 4)}


def compile_deepspeed_op() -> None:
    """DeepSpeed compiles a C++ op (its CPU shared-memory all-reduce) the first time a rank starts
    on a machine: a minute or two on 2 cores, silently, inside the first training. Done here first,
    with a line every 10 s; later runs find it cached (``~/.cache/torch_extensions``) in seconds."""
    import subprocess

    code = ("import deepspeed.ops as ops; from deepspeed.accelerator import get_accelerator; "
            "b = get_accelerator().create_op_builder('ShareMemCommBuilder'); "
            "b is not None and ops.__compatible_ops__.get(b.NAME, False) and b.load(verbose=False)")
    print("DeepSpeed's CPU communication op: compiled on the first training on a machine, then cached", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code])
    while True:
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            print(f"  ... compiling or loading it ({time.perf_counter() - started:.0f}s)", flush=True)
    if proc.returncode:  # the training will fail with DeepSpeed's own message
        print(f"demo: compiling DeepSpeed's op failed (exit {proc.returncode}); the training will say why", flush=True)


def training(d: Demo, text: dict, images: dict) -> None:
    vocab = text["vocab_size"]
    text_data_args = ["data.source=shards", f"data.path={text['shards']}", f"model.vocab_size={vocab}",
                      "model.pad_vocab_multiple=64", "data.seq_len=128"]
    s = d.size
    print("(each training starts its ranks first: importing torch and DeepSpeed takes a few seconds)", flush=True)

    def gpt() -> dict:
        compile_deepspeed_op()
        return train(d, "gpt", "configs/gpt/debug.yaml", s.gpt_steps, [*text_data_args, "parallel.zero_stage=2"])

    d.step("gpt", f"pretrain train: debug GPT, {d.nproc} ranks, ZeRO 2, on the text shards", gpt,
           lambda: _latest_step(d.out / "runs" / "gpt") == s.gpt_steps)
    d.step("bert", f"pretrain train: debug BERT, {d.nproc} ranks, ZeRO 1, on the same shards",
           lambda: train(d, "bert", "configs/bert/debug.yaml", s.bert_steps,
                         # 64-token windows, 32 per rank: ~0.1 lower eval loss than 128 x 8 at 600 steps
                         [*text_data_args, "parallel.zero_stage=1", "data.mlm_probability=0.3", "optim.lr=3e-3",
                          "schedule.warmup_steps=20", "data.seq_len=64", "train.micro_batch_size=32"]),
           lambda: _latest_step(d.out / "runs" / "bert") == s.bert_steps)
    d.step("vit", f"pretrain train: debug ViT, {d.nproc} ranks, ZeRO 1, on the image shards",
           lambda: train(d, "vit", "configs/vit/debug.yaml", s.vit_steps,
                         ["data.source=shards", f"data.path={images['shards']}",
                          f"model.num_classes={images['classes']}", "train.micro_batch_size=32",
                          "data.crop_scale_min=0.6", "optim.lr=3e-3", "parallel.zero_stage=1"]),
           lambda: _latest_step(d.out / "runs" / "vit") == s.vit_steps)


# ------------------------------------------------------------------------------------------------
# scaling sweep and fit
# ------------------------------------------------------------------------------------------------
SWEEP_CONFIG = "configs/scaling/debug.yaml"  # 3 tiny GPTs x 2 token budgets, one rank each


def scaling_sweep(d: Demo, text: dict) -> dict:
    """``pretrain sweep`` (6 trials: MLflow child runs of one parent) on the demo's text shards,
    then ``pretrain scaling fit`` of their final eval losses, its JSON and plots logged to the
    parent. A rerun skips finished trials and resumes a stopped one (the sweep's own rerun rule)."""
    from launch.sweep_cli import sweep
    from pretrain.config import ConfigError

    out = d.out / "runs" / "scaling"
    overrides = [f"data.path={text['shards']}", f"model.vocab_size={text['vocab_size']}", f"sweep.out={out}",
                 "sweep.name=demo-sweep", f"sweep.tokens=[{','.join(map(str, d.size.sweep_tokens))}]",
                 f"tracking.experiment={EXPERIMENT}"]
    print(f"$ pretrain sweep {SWEEP_CONFIG} {' '.join(overrides)} --ray-address local", flush=True)
    try:  # the trials as Ray tasks on an embedded Ray: one per core at a time
        result = sweep(str(REPO / SWEEP_CONFIG), overrides, ray_address="local")
    except ConfigError as e:
        raise SystemExit(f"demo: pretrain sweep: {e}") from None
    if result.exit_code:
        raise SystemExit(f"demo: the scaling sweep failed (exit {result.exit_code}); rerun to resume it")
    fit_json = out / "fit" / "fit.json"
    _cli(["scaling", "fit", "--run", result.parent_run_id, "--out", str(fit_json)])
    fit = json.loads(fit_json.read_text())
    return {"dir": str(out), "parent_run_id": result.parent_run_id, "fit": str(fit_json),
            "plots": [str(p) for p in fit["plots"]],
            "trials": [{"N": p["N"], "D": p["D"], "loss": round(p["loss"], 4)} for p in fit["points"]],
            "law": {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")}}


# ------------------------------------------------------------------------------------------------
# exports and transformers pipelines
# ------------------------------------------------------------------------------------------------
def export(d: Demo, name: str) -> dict:
    hf = d.out / "hf" / name
    _cli(["export", str(d.out / "runs" / name), "--out", str(hf), "--overwrite", "--register", f"demo-{name}"])
    return {"dir": str(hf), "files": sorted(p.name for p in hf.iterdir())}


def use_exports(d: Demo, images: dict) -> dict:
    from launch.demo_use import classify_images, fill_mask, generate

    out = {"generation": generate(d.out / "hf" / "gpt", GPT_PROMPT),
           "fill_mask": fill_mask(d.out / "hf" / "bert", BERT_TEXT),
           "classification": classify_images(d.out / "hf" / "vit", Path(images["shards"]), d.out / "samples")}
    for img in out["classification"]["images"]:
        print(f"  {img['path']}: {img['predicted']} ({img['score']:.2f}), true class {img['true']}")
    print_uses(out)
    return out


def print_uses(out: dict) -> None:
    g, f, c = out["generation"], out["fill_mask"], out["classification"]
    print(f"text-generation       {g['prompt']!r} -> {g['text']!r}")
    print(f"fill-mask             {f['text']!r} -> " + ", ".join(f"{p['token']!r} {p['score']:.2f}" for p in f["top"]))
    print(f"image-classification  {c['correct']} of {len(c['images'])} val JPEGs from the shards right, e.g. "
          f"{Path(c['images'][0]['path']).name}: {c['images'][0]['predicted']} (true: {c['images'][0]['true']})")


# ------------------------------------------------------------------------------------------------
def summary(d: Demo, elapsed: float) -> None:
    st = d.state
    text, images = st["text"], st["images"]
    base = st["baseline"]
    print(f"\n== demo finished in {elapsed:.0f}s (this invocation)\n")
    print(f"shards      text   {text['shards']}  ({text['documents']} documents, vocab {text['vocab_size']})")
    print(f"            images {images['shards']}  ({images['classes']} classes, {images['images']})")
    for name in ("gpt", "bert", "vit"):
        r = st[name]
        m = r["metrics"]
        loss = m.get("eval/loss", float("nan"))
        if name == "vit":
            quality = f"eval loss {loss:.3f}, top-1 accuracy {m.get('eval/top1', 0):.1%} (chance {1 / images['classes']:.0%})"
        else:
            quality = (f"eval loss {loss:.3f}, {base['unigram_loss'] - loss:.2f} below the unigram baseline "
                       f"{base['unigram_loss']:.3f} (perplexity {math.exp(loss):.0f} vs {math.exp(base['unigram_loss']):.0f})")
            if "eval/mlm_accuracy" in m:
                quality += (f"; masked tokens right {m['eval/mlm_accuracy']:.1%} (most frequent token: "
                            f"{base['unigram_top1']:.1%})")
        print(f"{name:<5} step {r['step']}: {quality}")
        print(f"      checkpoints {r['run_dir']}/checkpoints, export {st['export_' + name]['dir']}, "
              f"MLflow run {r['run_id']}")
    sw = st["sweep"]
    law, losses = sw["law"], [t["loss"] for t in sw["trials"]]
    print(f"sweep {len(sw['trials'])} trials, eval loss {max(losses):.3f} (smallest, shortest) to {min(losses):.3f}; "
          f"fit L = {law['E']:.2f} + {law['A']:.3g}/N^{law['alpha']:.2f} + {law['B']:.3g}/D^{law['beta']:.2f} "
          "(6 tiny points: a smoke test of the path, not a law)")
    print(f"      trials {sw['dir']}, fit and plots {Path(sw['fit']).parent}, MLflow parent run {sw['parent_run_id']}")
    print()
    print_uses(st["use"])
    from pretrain.tracking import resolve_uri

    print(f"\nbrowse it all: mlflow ui --backend-store-uri {resolve_uri(None)}   (in {Path.cwd()})")
    print(f"results: {d.state_file}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo", help="where everything goes (default out/demo)")
    p.add_argument("--nproc", type=int, default=2, help="ranks per training (default 2)")
    p.add_argument("--quick", action="store_true", help="the reduced size the tests run (a minute or two)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    d = Demo(Path(args.out), QUICK if args.quick else Size(), args.nproc)
    d.out.mkdir(parents=True, exist_ok=True)
    d.load()
    started = time.perf_counter()
    text = d.step("text", "text data: web archive -> pretrain data commoncrawl", lambda: text_data(d),
                  lambda: Path(d.out / "data" / "text" / "manifest.json").is_file())
    d.state["baseline"] = unigram_baseline(Path(text["shards"]))
    images = d.step("images", "image data: generated labelled folder -> pretrain data imagenet",
                    lambda: image_data(d), lambda: Path(d.out / "data" / "images" / "manifest.json").is_file())
    training(d, text, images)
    d.step("sweep", "pretrain sweep: 6 tiny GPTs (3 sizes x 2 token budgets), then pretrain scaling fit",
           lambda: scaling_sweep(d, text), lambda: Path(d.state.get("sweep", {}).get("fit", "")).is_file())
    for name in ("gpt", "bert", "vit"):
        d.step(f"export_{name}", f"pretrain export {name} -> Hugging Face directory, MLflow model registry",
               lambda name=name: export(d, name), lambda name=name: (d.out / "hf" / name / "config.json").is_file())
    d.step("use", "transformers.pipeline on the exports: generation, fill-mask, image classification",
           lambda: use_exports(d, images))
    summary(d, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
