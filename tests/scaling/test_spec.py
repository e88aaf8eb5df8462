"""Sweep planning without training: the trials a config makes, what bad configs are refused with
(exit 2, nothing created), and the SLURM job arrays (dry-run goldens)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from launch import cli
from pretrain.config import ConfigError, config_from_dict
from pretrain.models import build_model, count_parameters
from pretrain.models.flops import flops_per_token
from pretrain.scaling.spec import load_sweep, plan
from pretrain.schedules import lr_factor
from tests.data.fixtures import make_text_shards

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/scaling/debug.yaml")
GOLDEN = Path(__file__).parent / "golden"


def _plan(*overrides: str):
    spec = load_sweep(DEBUG, ["sweep.out=/srv/sweeps/debug", *overrides])
    return spec, plan(spec)


def test_token_budgets_make_ladder_times_budgets_trials():
    spec, trials = _plan()
    assert [t.name for t in trials] == ["L1H16-D2560", "L1H16-D5120", "L2H32-D2560", "L2H32-D5120", "L2H64-D2560",
                                        "L2H64-D5120"]
    for t in trials:
        cfg = config_from_dict(t.config)  # every trial config is a valid training config
        meta = build_model(cfg.model, device="meta")
        assert (t.N_total, t.N_non_embedding) == (count_parameters(meta), count_parameters(meta, non_embedding=True))
        assert t.N == t.N_non_embedding  # sweep.n_params: non_embedding
        assert t.D == t.steps * 8 * 32 == cfg.train.steps * cfg.train.micro_batch_size * cfg.data.seq_len
        assert t.C == 6 * t.N * t.D
        assert cfg.train.eval_every == cfg.train.steps  # one evaluation, at the end
        assert cfg.train.run_dir == f"/srv/sweeps/debug/{t.name}"
        assert t.tags("non_embedding")["N_total"] == str(t.N_total)
    assert [t.steps for t in trials] == [10, 20] * 3


def test_isoflop_budgets_trade_size_for_tokens():
    _, trials = _plan("sweep.mode=isoflop", "sweep.flops=[2.0e9,6.0e9]", "sweep.flops_per_token=exact")
    assert len(trials) == 6
    for t in trials:
        cfg = config_from_dict(t.config)
        per_token = flops_per_token(cfg.model, cfg.data.seq_len)
        assert t.C == pytest.approx(per_token * t.D)
        assert abs(t.C - t.C_budget) <= per_token * 256 / 2  # within half a step of the budget
    small = [t for t in trials if t.C_budget == 2e9]
    assert [t.steps for t in small] == sorted((t.steps for t in small), reverse=True)  # ladder order: N grows
    assert small[0].D > small[-1].D and small[0].N < small[-1].N  # bigger model, fewer tokens
    # left out: L2H64 (13 steps < min_steps) and L1H16 (D / N = 30 > 10)
    _, kept = _plan("sweep.mode=isoflop", "sweep.flops=[2.0e9]", "sweep.min_steps=20", "sweep.tokens_per_param=[0.01,10]")
    assert [t.name for t in kept] == ["L2H32-C2e9"]


def test_wsd_forks_branch_off_one_constant_lr_run_per_size():
    _, trials = _plan("sweep.mode=wsd", "sweep.tokens=[2560,5120,10240]", "sweep.ladder=[{hidden_size: 32, num_layers: 2, "
                      "num_heads: 2}]", "checkpoint.every=5")
    stable, forks = trials[0], trials[1:]
    assert stable.role == "wsd-stable" and stable.segments == [8, 16, 32] and stable.steps == 32
    s_cfg = config_from_dict(stable.config)
    assert s_cfg.schedule.kind == "constant" and s_cfg.train.eval_every == 0
    # every fork point survives pruning: 3 segment ends + periodic saves at 5, 10, 15, 20, 25, 30 (+1)
    assert s_cfg.checkpoint.keep_last == 3 + 6 + 1
    for fork, steps, start in zip(forks, (10, 20, 40), (8, 16, 32)):
        cfg = config_from_dict(fork.config)
        assert (fork.fork_of, fork.fork_step, fork.steps, fork.depends_on) == (0, start, steps, [0])
        sched = cfg.schedule
        assert sched.kind == "wsd"
        # the fork continues the stable run's constant LR up to its branch point, then decays to the minimum
        assert [lr_factor(s, sched, steps) for s in (start - 1, start)] == [1.0, 1.0]
        assert lr_factor(start + 1, sched, steps) < 1.0
        assert lr_factor(steps, sched, steps) == pytest.approx(sched.min_lr_ratio)
        assert lr_factor(start, s_cfg.schedule, stable.steps) == 1.0


def _sweep(tmp_path, *args: str) -> int:
    return cli.main(["sweep", *args, f"sweep.out={tmp_path / 'sweep'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])


def _nothing_started(tmp_path) -> None:
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("overrides, message", [
    (["sweep.ladder=[{hidden_size: 32, num_layers: 2, num_heads: 2}, {hidden_size: 30, num_layers: 2, num_heads: 4}]"],
     "sweep.ladder[1] (L2H30): model.num_heads: got 4; must divide model.hidden_size=30"),
    (["parallel.tensor_size=4", "sweep.nproc=4"],
     "sweep.ladder[0] (L1H16): model.num_heads: got 2; must be divisible by parallel.tensor_size=4"),
    (["sweep.ladder=[{hidden_size: 32, num_layers: 2, num_heads: 2, widht: 3}]"], "model.widht: got 3; unknown key"),
    (["sweep.tokens=[]"], "sweep.tokens: got []; mode tokens needs a non-empty list of positive budgets"),
    (["sweep.mode=bogus"], "sweep.mode"),
    (["tracking.enabled=false"], "tracking.enabled: got False; a sweep records its trials as MLflow runs"),
    (["sweep.mode=wsd", "sweep.tokens=[512]", "schedule.warmup_steps=3"], "inside the warmup (3 steps)"),
])
def test_a_bad_sweep_config_exits_2_before_anything_starts(tmp_path, capsys, overrides, message):
    assert _sweep(tmp_path, DEBUG, *overrides) == 2
    assert message in capsys.readouterr().err
    _nothing_started(tmp_path)


def test_bad_data_is_refused_before_the_first_trial(tmp_path, capsys):
    assert _sweep(tmp_path, str(REPO / "configs/gpt/debug.yaml")) == 2
    assert "a sweep config needs a `sweep:` section" in capsys.readouterr().err
    assert _sweep(tmp_path, DEBUG, f"data.path={tmp_path / 'nowhere'}") == 2
    assert "no manifest.json there" in capsys.readouterr().err
    shards = tmp_path / "shards"
    shards.mkdir()
    make_text_shards(shards, {"train": [4]})  # no val split: no trial could report an eval loss
    assert _sweep(tmp_path, DEBUG, f"data.path={shards}") == 2
    assert "trials end with an evaluation, but the val split" in capsys.readouterr().err
    make_text_shards(shards, {"train": [4], "val": [2]})
    assert _sweep(tmp_path, DEBUG, f"data.path={shards}", "model.vocab_size=100") == 2
    assert "the shards' tokenizer has 300 tokens but model.vocab_size=100" in capsys.readouterr().err
    _nothing_started(tmp_path)


@pytest.mark.parametrize("name, overrides", [
    ("slurm_tokens.sh", []),
    ("slurm_wsd.sh", ["sweep.mode=wsd", "sweep.tokens=[2560,5120]", "sweep.slurm.max_parallel=2",
                      "sweep.slurm.partition=gpu", "sweep.gpus_per_rank=1", "sweep.nproc=2"]),
])
def test_slurm_dry_run_prints_the_job_arrays(tmp_path, capsys, name, overrides):
    """The sbatch scripts, compared with goldens (this interpreter and directory as placeholders)."""
    assert cli.main(["sweep", DEBUG, "--launcher", "slurm", "--dry-run", "sweep.out=/srv/sweeps/debug", *overrides]) == 0
    out = capsys.readouterr().out
    scripts = out[out.index("# --- sbatch script"):].replace(sys.executable, "{PYTHON}").replace(os.getcwd(), "{CWD}")
    if os.environ.get("PRETRAIN_UPDATE_GOLDEN") == "1":
        (GOLDEN / name).write_text(scripts)
    assert scripts == (GOLDEN / name).read_text()
    assert not Path("/srv/sweeps/debug").exists()


def test_a_trial_index_outside_the_sweep_is_refused(tmp_path):
    spec = load_sweep(DEBUG, [f"sweep.out={tmp_path}"])
    from pretrain.scaling.sweep import run_sweep

    with pytest.raises(ConfigError, match="--trial"):
        run_sweep(spec, [], only=6, dry_run=True, say=lambda _: None)


def test_a_fork_needs_a_checkpoint_to_branch_from():
    with pytest.raises(ConfigError, match="checkpoint.fork: got True; needs checkpoint.resume=<a checkpoint directory>"):
        config_from_dict({"checkpoint": {"fork": True, "resume": "auto"}})
    assert config_from_dict({"checkpoint": {"fork": True, "resume": "runs/x/checkpoints/step00000010"}}).checkpoint.fork
