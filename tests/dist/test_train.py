"""The trainer end to end: real processes, real gloo ranks under torchrun, real DeepSpeed engines.

Each test runs ``pretrain train`` as a user would and reads ``metrics.jsonl`` and the checkpoints.
Kills, signals, hangs and resumes: ``test_recovery.py``.
"""

from __future__ import annotations

import json

import pytest

from tests.dist.helpers import assert_close, losses, run_train

DEBUG = {"gpt": "configs/gpt/debug.yaml", "llama": "configs/gpt/debug-llama.yaml",
         "bert": "configs/bert/debug.yaml", "vit": "configs/vit/debug.yaml"}


def _common(tmp_path, name: str, steps: int, extra: list[str] = ()) -> list[str]:
    return [f"train.run_dir={tmp_path / name}", f"train.steps={steps}", "tracking.enabled=false",
            "train.log_every=5", *extra]


# BERT sees ~15% of its tokens as labels and needs attention to use context: a bigger batch
# steadies its loss, and its bar is lower.
LEARN = {"gpt": ([], 0.85), "vit": ([], 0.85),
         "bert": (["train.micro_batch_size=32", "optim.lr=3e-3"], 0.95)}


@pytest.mark.parametrize("family", ["gpt", "bert", "vit"])
def test_loss_goes_down_on_debug_models(tmp_path, family):
    """On a small fixed synthetic set the model must fit: the last losses are well below the first."""
    run_dir = tmp_path / family
    extra, ratio = LEARN[family]
    run_train(DEBUG[family], _common(tmp_path, family, 40, ["data.synthetic_samples=64", "schedule.warmup_steps=2",
                                                           *extra]))
    ls = losses(run_dir)
    first, last = sum(ls[s] for s in (1, 2, 3)) / 3, sum(ls[s] for s in range(36, 41)) / 5
    assert last < ratio * first, (first, last)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step00000040"


def test_zero_stages_give_the_same_losses(tmp_path):
    """ZeRO 0, 1, 2 and 3 on 2 data-parallel ranks: same fp32 losses over 5 steps (1e-5 relative).
    Stage 1 runs under torchrun and stage 2 under the deepspeed launcher, as on a cluster; stages 1
    and 3 offload the optimizer (3 the parameters too), and the three AdamW kernels take turns.
    Gradient norms here are ~1, so a 0.5 clip is active at every step: stage 0's clipping (our
    guard) must match DeepSpeed's own in stages 1-3."""
    runs = {}
    launchers = {0: "local", 1: "torchrun", 2: "deepspeed", 3: "local"}
    variants = {0: ["optim.implementation=fused"],
                1: ["optim.implementation=foreach", "parallel.offload_optimizer=true"],
                2: ["optim.implementation=for-loop"],
                3: ["optim.implementation=fused", "parallel.offload_optimizer=true", "parallel.offload_params=true"]}
    for stage in (0, 1, 2, 3):
        name = f"zero{stage}"
        run_train(DEBUG["gpt"], _common(tmp_path, name, 5, [f"parallel.zero_stage={stage}", "optim.grad_clip=0.5",
                                                           *variants[stage]]),
                  nproc=2, launcher=launchers[stage])
        runs[stage] = losses(tmp_path / name)
    for stage in (1, 2, 3):
        assert_close(runs[0], runs[stage], rel=1e-5, steps=range(1, 6))
    assert runs[0][5] < runs[0][1]


def test_tensor2_x_data2_equals_tensor1_x_data4(tmp_path):
    """Same global batch, same weights: the TP split changes the arithmetic order only."""
    common = ["train.micro_batch_size=2", "train.global_batch_size=8", "model.dropout=0.0"]
    run_train(DEBUG["llama"], _common(tmp_path, "tp2", 4, [*common, "parallel.tensor_size=2"]), nproc=4)
    run_train(DEBUG["llama"], _common(tmp_path, "tp1", 4, [*common, "parallel.tensor_size=1",
                                                          "train.micro_batch_size=1"]), nproc=4)
    assert_close(losses(tmp_path / "tp1"), losses(tmp_path / "tp2"), rel=1e-5, steps=range(1, 5))


def test_bert_loss_is_the_same_for_every_batch_split(tmp_path):
    """BERT masks a varying number of tokens per micro-batch; weighting micro-batches by their
    masked tokens makes 2 data ranks x 8, 1 rank x 8 x 2 accumulated and 1 rank x 16 one batch.
    Without the weighting the three differ by ~1e-4 from the first step."""
    common = ["train.global_batch_size=16", "model.dropout=0.0", "optim.lr=3e-3"]
    splits = {"data2": (2, ["train.micro_batch_size=8"]), "accum2": (1, ["train.micro_batch_size=8"]),
              "one": (1, ["train.micro_batch_size=16"])}
    runs = {}
    for name, (nproc, extra) in splits.items():
        run_train(DEBUG["bert"], _common(tmp_path, name, 4, [*common, *extra]), nproc=nproc)
        runs[name] = losses(tmp_path / name)
    assert_close(runs["one"], runs["data2"], rel=1e-6, steps=range(1, 5))
    assert_close(runs["one"], runs["accum2"], rel=1e-6, steps=range(1, 5))


class _RunsCode:
    """Pickles to a call of ``open(path, "w")``: what a tampered checkpoint could make a plain unpickler run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path):
    """DeepSpeed unpickles its .pt files on resume; ours reads them weights-only. A checkpoint whose
    model file was replaced by a pickle that runs code (complete.json rewritten to match) is refused
    with a clear error, and the code never runs."""
    import torch

    from pretrain.checkpoint import write_complete

    run_train(DEBUG["gpt"], _common(tmp_path, "evil", 2))
    tag = tmp_path / "evil" / "checkpoints" / "step00000002"
    marker = tmp_path / "code-ran"
    torch.save({"module": _RunsCode(marker)}, tag / "mp_rank_00_model_states.pt")
    write_complete(tag, "step00000002", 2)
    proc = run_train(DEBUG["gpt"], _common(tmp_path, "evil", 3, ["checkpoint.resume=auto"]), check=False)
    assert proc.returncode != 0
    assert "refused to load a file that is not plain tensors" in proc.stderr, proc.stderr[-3000:]
    assert "step00000002" in proc.stderr
    assert not marker.exists()


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    """NaN loss at steps 3 and 4 is skipped and counted; 3 in a row stops with a checkpoint."""
    run_train(DEBUG["gpt"], _common(tmp_path, "nan", 8), extra_env={"PRETRAIN_FAULT_NAN_STEPS": "3,4"})
    recs = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["skipped"]] == [3, 4]
    proc = run_train(DEBUG["gpt"], _common(tmp_path, "nan3", 10, ["train.max_nonfinite_in_row=3"]),
                     extra_env={"PRETRAIN_FAULT_NAN_STEPS": "4,5,6"}, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "3 non-finite steps in a row" in proc.stderr
    assert (tmp_path / "nan3" / "checkpoints" / "latest").read_text().strip() == "step00000006"


def test_init_from_checkpoint_and_from_import_hf(tmp_path):
    """checkpoint.init_from starts from the weights alone: the first loss equals the source model's
    loss on that batch, whether from a training checkpoint or from an import-hf directory."""
    import subprocess
    import sys

    import torch

    from pretrain.checkpoint import from_checkpoint
    from pretrain.config import load_config
    from pretrain.data import build_loader
    from tests.dist.helpers import REPO

    run_train(DEBUG["llama"], _common(tmp_path, "src", 4))
    src = tmp_path / "src" / "checkpoints" / "step00000004"
    hf, imported = tmp_path / "hf", tmp_path / "imported"
    for args in (["export", str(src), "--out", str(hf)], ["import-hf", str(hf), "--out", str(imported)]):
        proc = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    overrides = _common(tmp_path, "x", 1, ["train.seed=7"])
    cfg = load_config(REPO / DEBUG["llama"], overrides)
    batch = next(iter(build_loader(cfg, "train", 0, 1, train=True)))
    with torch.no_grad():
        expected = from_checkpoint(src).loss(batch).item()
    for name, init in (("from_ckpt", src), ("from_hf", imported)):
        run_train(DEBUG["llama"], _common(tmp_path, name, 1, ["train.seed=7", f"checkpoint.init_from={init}"]))
        assert losses(tmp_path / name)[1] == pytest.approx(expected, rel=1e-5), name
    fresh = tmp_path / "fresh"
    run_train(DEBUG["llama"], _common(tmp_path, "fresh", 1, ["train.seed=7"]))
    assert abs(losses(fresh)[1] - expected) > 1e-3  # a fresh init of the same seed gives another loss
