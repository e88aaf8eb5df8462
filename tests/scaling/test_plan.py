"""The compute planner: the allocation minimises the fitted loss on the budget, the intervals come
from the bootstrap fits, the written config is the ladder shape nearest N_opt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from launch import cli
from pretrain.config import global_batch, load_config
from pretrain.models import build_model, count_parameters
from pretrain.scaling import law
from pretrain.scaling.plan import allocate, budget

REPO = Path(__file__).resolve().parents[2]
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _fit_json(tmp_path, n_kind: str | None = "non_embedding") -> Path:
    rng = np.random.default_rng(0)
    samples = [[TRUE[k] * (1 + 0.02 * rng.standard_normal()) for k in law.NAMES] for _ in range(50)]
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({**TRUE, "N_kind": n_kind, "approach3": {"bootstrap": {"samples": samples, "ci": 0.9}},
                                "source": {}}))
    return path


def test_the_allocation_is_the_minimum_of_the_law_on_the_budget():
    C = 1e21
    plan = allocate(TRUE, C)
    n = np.geomspace(plan["N_opt"] / 3, plan["N_opt"] * 3, 20001)
    best = n[np.argmin(law.loss(TRUE, n, C / (6 * n)))]
    assert plan["N_opt"] == pytest.approx(best, rel=1e-3)
    assert plan["N_opt"] * plan["D_opt"] * 6 == pytest.approx(C)
    assert plan["loss"] == pytest.approx(law.loss(TRUE, plan["N_opt"], plan["D_opt"]))
    assert budget(gpus=64, days=3, mfu=0.4, peak_flops=989e12) == pytest.approx(64 * 3 * 86400 * 0.4 * 989e12)


def test_plan_cli_prints_intervals_and_writes_the_nearest_ladder_shape(tmp_path, capsys):
    fit = _fit_json(tmp_path)
    g = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / (TRUE["alpha"] + TRUE["beta"]))
    a, _ = law.exponents(TRUE)
    C = 6 * (60_000 / g) ** (1 / a)  # N_opt = 60k: between the debug ladder's 25k and 100k rungs
    out = tmp_path / "planned.yaml"
    assert cli.main(["scaling", "plan", "--fit", str(fit), "--flops", str(C), "--config",
                     str(REPO / "configs/scaling/debug.yaml"), "--write-config", str(out),
                     "--out", str(tmp_path / "plan.json")]) == 0
    text = capsys.readouterr().out
    assert "N_opt = 6e+04 (non_embedding parameters)  [" in text and "loss  = " in text
    plan = json.loads((tmp_path / "plan.json").read_text())
    lo, hi = plan["intervals"]["N_opt"]
    assert lo < plan["N_opt"] < hi
    cfg = load_config(out)  # a valid training config
    n = count_parameters(build_model(cfg.model, device="meta"), non_embedding=True)
    # grown from the nearest rung (h64 x 2 layers, 100k) along its shape: 32 wide per layer, 16 per head
    assert cfg.model.hidden_size == 32 * cfg.model.num_layers and cfg.model.num_heads == cfg.model.hidden_size // 16
    for layers in (cfg.model.num_layers - 1, cfg.model.num_layers + 1):  # no other depth comes closer
        other = cfg.model.model_copy(update={"num_layers": layers, "hidden_size": 32 * layers, "num_heads": 2 * layers})
        assert abs(np.log(count_parameters(build_model(other, device="meta"), non_embedding=True) / 6e4)) >= \
            abs(np.log(n / 6e4))
    tokens = cfg.train.steps * global_batch(cfg, 1) * cfg.data.seq_len
    assert tokens == pytest.approx(plan["D_opt"], rel=0.01)


@pytest.mark.parametrize("args, message", [
    (["--gpus", "8"], "give --flops C, or --gpus G with --days X"),
    (["--flops", "1e20", "--gpus", "8", "--days", "1"], "give --flops C, or --gpus G with --days X"),
    (["--flops", "-1"], "must be positive"),
    (["--gpus", "8", "--days", "1", "--gpu-type", "Z80"], "--gpu-type 'Z80': known"),
    (["--flops", "1e20", "--write-config", "x.yaml"], "--write-config needs the sweep's ladder"),
])
def test_bad_plan_input_exits_2(tmp_path, capsys, args, message):
    assert cli.main(["scaling", "plan", "--fit", str(_fit_json(tmp_path)), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_fit_file_that_is_not_a_fit_exits_2(tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"E": 1}')
    assert cli.main(["scaling", "plan", "--fit", str(tmp_path / "x.json"), "--flops", "1e20"]) == 2
    assert "not a `pretrain scaling fit` result (no A, B, alpha, beta)" in capsys.readouterr().err
    assert cli.main(["scaling", "plan", "--fit", str(tmp_path / "none.json"), "--flops", "1e20"]) == 2
    assert "no such file" in capsys.readouterr().err
    fit = _fit_json(tmp_path, n_kind="total")
    assert cli.main(["scaling", "plan", "--fit", str(fit), "--flops", "1e20", "--config",
                     str(REPO / "configs/scaling/debug.yaml"), "--write-config", str(tmp_path / "p.yaml")]) == 2
    assert "the fit counts total parameters" in capsys.readouterr().err
