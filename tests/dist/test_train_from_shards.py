"""The contract between the parts: shards made by `pretrain data ...` train GPT, BERT and ViT.

Real pipeline runs (embedded Ray) on generated inputs, then real training runs with evaluation on
the val split; the checkpoint carries the shards' tokenizer or image normalisation.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.dist.helpers import REPO, env, losses, run_train


def _pretrain(*args: str, timeout: float = 600) -> None:
    proc = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory):
    from tests.data_pipeline.warc_factory import build_corpus

    root = tmp_path_factory.mktemp("text")
    corpus = build_corpus(root / "in", n_a=20, n_b=20, n_wet=10)
    _pretrain("data", "commoncrawl", "--input", *corpus["files"], "--output", str(root / "out"),
              "--vocab-size", "600", "--val-fraction", "0.3", "--sample-tokens", "512", "--num-cpus", "2",
              "--no-progress")
    return root / "out"


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
            d = root / "in" / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((40, 48, 3), np.uint8)
                base[..., c] = 200
                img = np.clip(base + rng.integers(0, 50, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{wnid}_{i}.JPEG", quality=90)
    for split in ("train", "val"):
        _pretrain("data", "imagenet", "--input", str(root / "in"), "--split", split, "--out", str(root / "out"),
                  "--max-size", "40", "--shard-size", "6", "--num-cpus", "2", "--no-progress")
    return root / "out"


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_text_shards_train_with_eval(text_shards, tmp_path, family):
    manifest = json.loads((text_shards / "manifest.json").read_text())
    assert manifest["splits"]["val"]["samples"] >= 2
    vocab = manifest["tokenizer"]["vocab_size"]
    run_dir = tmp_path / family
    run_train(f"configs/{family}/debug.yaml", [
        "data.source=shards", f"data.path={text_shards}", f"model.vocab_size={vocab}", "model.pad_vocab_multiple=8",
        "data.seq_len=64", "train.steps=6", "train.eval_every=3", "train.eval_steps=2", "tracking.enabled=false",
        f"train.run_dir={run_dir}", "train.log_every=3"], nproc=2)
    assert sorted(losses(run_dir)) == list(range(1, 7))
    ckpt = run_dir / "checkpoints" / "step00000006"
    assert (ckpt / "tokenizer.model").read_bytes() == (text_shards / "tokenizer.model").read_bytes()
    data = json.loads((ckpt / "data.json").read_text())
    assert data["tokenizer"]["eos_id"] == manifest["tokenizer"]["eos_id"]


def test_image_shards_train_vit_with_eval(image_shards, tmp_path):
    manifest = json.loads((image_shards / "manifest.json").read_text())
    assert [c["wnid"] for c in manifest["classes"]] == ["n01440764", "n01443537", "n01484850"]
    run_dir = tmp_path / "vit"
    proc = run_train("configs/vit/debug.yaml", [
        "data.source=shards", f"data.path={image_shards}", "model.num_classes=3", "train.steps=6",
        "train.eval_every=3", "train.eval_steps=2", "tracking.enabled=false", f"train.run_dir={run_dir}",
        "train.micro_batch_size=4", "train.log_every=3"], nproc=2, extra_env={"PRETRAIN_EVAL_PROGRESS_S": "0"})
    assert "eval " in proc.stdout and "top1" in proc.stdout
    # progress during evaluation (after every batch here; the val split holds one batch per rank),
    # printed by rank 0 only, in each of the two evaluations
    assert proc.stdout.count("eval  batch 1/2 |") == 2 and "eval  batch 2/2" not in proc.stdout
    data = json.loads((run_dir / "checkpoints" / "step00000006" / "data.json").read_text())
    assert data["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_shards_of_the_wrong_kind_are_refused_before_any_rank_starts(text_shards, image_shards, tmp_path):
    """Text shards given to a ViT, image shards to a GPT: exit 2 naming data.path and the family,
    before any rank starts (they used to raise inside the ranks with a traceback)."""
    cases = (("configs/vit/debug.yaml", text_shards, "holds text shards but model.family=vit needs image shards"),
             ("configs/gpt/debug.yaml", image_shards, "holds image shards but model.family=gpt needs text shards"))
    for config, shards, needle in cases:
        proc = run_train(config, ["data.source=shards", f"data.path={shards}", f"train.run_dir={tmp_path / 'x'}",
                                  "tracking.enabled=false"], nproc=2, check=False)
        assert proc.returncode == 2 and "data.path" in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
        assert "[pretrain]" not in proc.stdout and "Traceback" not in proc.stderr
