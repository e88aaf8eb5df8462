"""``train.compile`` (torch.compile per block, inductor on CPU) against eager, in the hardest
layout: ZeRO 3 (the blocks as ZeRO-3 leaf modules), tensor parallel 2 (graph breaks at the
collectives) and activation checkpointing of every 2nd block (a checkpointed and a plain block
share the compiled code). One 2-rank run each; inductor compiles on CPU are slow, so this is the
only compiled training run in the suite."""

from __future__ import annotations

import pytest

from tests.dist.helpers import assert_close, losses, run_train


@pytest.mark.slow
def test_compiled_blocks_give_eager_losses_under_zero3_tp2_checkpointing(tmp_path):
    common = ["train.steps=3", "train.log_every=1", "tracking.enabled=false", "model.dropout=0.0",
              "parallel.zero_stage=3", "parallel.tensor_size=2", "parallel.activation_checkpointing=2",
              "train.micro_batch_size=2", "data.seq_len=32"]
    # a private inductor cache each: files there prove inductor compiled code (a no-op compile would
    # pass the loss check too), none on the eager side prove the flag is what turns it on
    caches = {name: tmp_path / f"inductor-{name}" for name in ("eager", "compiled")}
    run_train("configs/gpt/debug-llama.yaml", [f"train.run_dir={tmp_path / 'eager'}", *common], nproc=2,
              extra_env={"TORCHINDUCTOR_CACHE_DIR": str(caches["eager"])})
    proc = run_train("configs/gpt/debug-llama.yaml", [f"train.run_dir={tmp_path / 'compiled'}", *common,
                                                      "train.compile=true"], nproc=2, timeout=600,
                     extra_env={"PRETRAIN_COMPILE_BACKEND": "inductor",
                                "TORCHINDUCTOR_CACHE_DIR": str(caches["compiled"])})
    assert "compiled blocks" in proc.stdout
    assert not caches["eager"].exists() or not any(caches["eager"].rglob("*.py"))
    assert any(caches["compiled"].rglob("*.py")), "inductor generated no code: the blocks ran eager"
    assert "recompile_limit" not in proc.stderr  # no block fell back to eager after too many recompiles
    assert_close(losses(tmp_path / "eager"), losses(tmp_path / "compiled"), rel=1e-5, steps=range(1, 4))
