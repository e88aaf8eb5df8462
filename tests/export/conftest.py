"""Session fixtures: every export test reads checkpoints trained once, in one 2-rank job.

The matrix is GPT (GPT-2 and Llama presets), BERT and ViT x ZeRO 1 and 3 x tensor 1 and 2, each
trained 2 steps by the real trainer (``pretrain.trainer.train``) under the real local launcher
with gloo. All runs of one model see the same global batch (micro 4 x data 2 at tensor 1, micro
4 x accumulation 2 x data 1 at tensor 2), so their final weights must agree -- an independent
check of the consolidation. A tiny sentencepiece model trained here (the pipeline's trainer and
special ids) is placed in the text checkpoints, with ``complete.json`` updated, as training on
shards would have done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = {"gpt": "configs/gpt/debug.yaml", "llama": "configs/gpt/debug-llama.yaml",
          "bert": "configs/bert/debug.yaml", "vit": "configs/vit/debug.yaml"}
LAYOUTS = [(1, 1), (1, 2), (3, 1), (3, 2)]  # (ZeRO stage, tensor size) on 2 ranks
# bf16 (DeepSpeed's CPU accelerator has no fp16), ZeRO 0 and 2, CPU offload: name -> (model, stage, tp, extra)
EXTRA = {
    "gpt_bf16_z2_offload_tp2": ("gpt", 2, 2, ["parallel.precision=bf16", "parallel.offload_optimizer=true"]),
    "llama_bf16_z3_offload_tp1": ("llama", 3, 1, ["parallel.precision=bf16", "parallel.offload_optimizer=true",
                                                  "parallel.offload_params=true"]),
    "bert_bf16_z0_tp2": ("bert", 0, 2, ["parallel.precision=bf16"]),
    "vit_fp32_z0_tp2": ("vit", 0, 2, []),
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog while 12345 apples fall.",
    "Le cœur a ses raisons que la raison ne connaît point, disait Pascal.",
    "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.",
    "日本語のテキストも少し入れておきます。東京は大きな都市です。",
    "Привет, как дела? Всё хорошо, спасибо большое за вопрос.",
    "El niño comió paella en Valencia; ¿te gusta la comida española?",
    "Ελληνικά γράμματα και λέξεις για τον έλεγχο του λεξικού.",
    "مرحبا بالعالم، هذا نص عربي قصير للاختبار.",
    "Tabs\tand  double  spaces\nand newlines stay as they are.",
]
SAMPLE = TEXTS + ["unseen scripts: 中文汉字 ქართული हिन्दी 🦊", " a leading space and <mask> <cls> x<sep>y",
                  "ﬁ ligatures, Ⅻ and full-width ＡＢＣ are NFKC-normalised", "", "3.14159 and 2026-11-25",
                  "Paris est la <mask> de la France.", "  two leading spaces", "a <cls> b <sep> c <sep>"]


def run_name(model: str, stage: int, tp: int) -> str:
    return f"{model}_z{stage}_tp{tp}"


def _overrides(run_dir: Path, stage: int, tp: int) -> list[str]:
    return [f"train.run_dir={run_dir}", "train.steps=2", "train.micro_batch_size=4", "train.global_batch_size=8",
            "train.log_every=1", "tracking.enabled=false", "checkpoint.keep_last=1", f"parallel.zero_stage={stage}",
            f"parallel.tensor_size={tp}"]


def train_matrix(root: Path, runs: list[tuple[str, int, int]], extra: dict | None = None) -> dict[str, Path]:
    """Train every (model, stage, tp) and every ``EXTRA``-style entry in one 2-rank job; returns
    name -> run dir."""
    from launch.local import free_port, run_ranks

    jobs = {run_name(m, s, t): (m, s, t, []) for m, s, t in runs} | dict(extra or {})
    spec = [{"config": str(REPO / MODELS[m]), "overrides": _overrides(root / name, s, t) + more}
            for name, (m, s, t, more) in jobs.items()]
    (root / "spec.json").write_text(json.dumps(spec))
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code = run_ranks(2, "tests.export.multi_train", [str(root / "spec.json")], free_port(), env)
    finally:
        os.chdir(cwd)
    assert code == 0, f"training the export matrix failed (exit {code})"
    return {name: root / name for name in jobs}


def add_tokenizer(run_dir: Path, model: bytes) -> None:
    """Put ``tokenizer.model`` into the latest checkpoint and list it in complete.json."""
    from data_pipeline.shards import sha256_file
    from pretrain.checkpoint import latest

    tag = latest(run_dir)
    (tag / "tokenizer.model").write_bytes(model)
    info = json.loads((tag / "complete.json").read_text())
    p = tag / "tokenizer.model"
    info["files"].append({"path": "tokenizer.model", "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    (tag / "complete.json").write_text(json.dumps(info))


@pytest.fixture(scope="session")
def spm_model() -> bytes:
    """A 512-piece BPE sentencepiece model (the model vocabulary), as the text pipeline trains them."""
    from data_pipeline.text.tokenizer import train_tokenizer

    return train_tokenizer(TEXTS * 40, vocab_size=512, model_type="bpe", threads=1)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, spm_model) -> dict[str, Path]:
    """name (``gpt_z1_tp2`` ..., and the ``EXTRA`` names) -> run dir, for all 20 runs."""
    root = tmp_path_factory.mktemp("export_runs")
    runs = train_matrix(root, [(m, s, t) for m in MODELS for s, t in LAYOUTS], EXTRA)
    for name, run_dir in runs.items():
        if not name.startswith("vit"):
            add_tokenizer(run_dir, spm_model)
    return runs
