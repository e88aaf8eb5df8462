"""LR schedules at key steps, the LambdaLR wrapper, and AdamW weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.config import OptimConfig, ScheduleConfig, config_from_dict
from pretrain.schedules import build_optimizer, build_scheduler, lr_at, lr_factor, param_groups


def sched(**kw) -> ScheduleConfig:
    return ScheduleConfig(**kw)


def test_warmup_is_linear_and_reaches_one():
    s = sched(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, s, 100) == pytest.approx(0.1)
    assert lr_factor(4, s, 100) == pytest.approx(0.5)
    assert lr_factor(9, s, 100) == pytest.approx(1.0)
    assert lr_factor(10, s, 100) == pytest.approx(1.0)  # cosine starts at its top


def test_cosine_midpoint_and_end():
    s = sched(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(55, s, 100) == pytest.approx(0.1 + 0.9 * 0.5)  # p = 0.5
    assert lr_factor(100, s, 100) == pytest.approx(0.1)
    assert lr_factor(500, s, 100) == pytest.approx(0.1)  # clamped after the end
    quarter = 10 + 90 // 4 * 1  # p = 22/90
    p = (quarter - 10) / 90
    assert lr_factor(quarter, s, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def test_linear_and_constant():
    lin = sched(kind="linear", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, lin, 10) == pytest.approx(1.0)
    assert lr_factor(5, lin, 10) == pytest.approx(0.5)
    assert lr_factor(10, lin, 10) == pytest.approx(0.0)
    const = sched(kind="constant", warmup_steps=4)
    assert [lr_factor(i, const, 10) for i in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])


def test_wsd_stable_then_decay():
    s = sched(kind="wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    assert lr_factor(50, s, 100) == 1.0
    assert lr_factor(79, s, 100) == 1.0
    assert lr_factor(80, s, 100) == pytest.approx(1.0)  # decay starts at 100 - 20
    assert lr_factor(90, s, 100) == pytest.approx(0.55)
    assert lr_factor(100, s, 100) == pytest.approx(0.1)


def test_lambda_lr_follows_function_and_resumes():
    cfg = config_from_dict({"optim": {"lr": 1e-3}, "schedule": {"kind": "cosine", "warmup_steps": 3},
                            "train": {"steps": 20}})
    model = nn.Linear(4, 4)
    opt = build_optimizer(model, cfg.optim)
    sch = build_scheduler(opt, cfg)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert seen == pytest.approx([lr_at(i, cfg) for i in range(8)])
    # a fresh scheduler told the last completed step continues from there
    opt2 = build_optimizer(nn.Linear(4, 4), cfg.optim)
    sch2 = build_scheduler(opt2, cfg, last_step=7)
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(8, cfg))
    assert sch2.last_epoch == 8


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.zeros(1, 4, 8))  # named like a ViT pos_embed below
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.wte.weight  # tied
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def named_parameters(self, *a, **kw):  # rename pos -> pos_embed to exercise the name hint
        for n, p in super().named_parameters(*a, **kw):
            yield ("pos_embed" if n == "pos" else n), p


def _ids(params):
    return {id(p) for p in params}


def test_param_groups_default_excludes_norms_biases_embeddings():
    m = Tiny()
    groups = param_groups(m, OptimConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert _ids(groups[0]["params"]) == {id(m.fc.weight)}
    assert _ids(groups[1]["params"]) == {id(m.wte.weight), id(m.pos), id(m.ln.weight), id(m.ln.bias), id(m.fc.bias)}
    n_total = sum(len(g["params"]) for g in groups)
    assert n_total == 6  # tied weight once, frozen layer skipped


def test_param_groups_flags_move_params_into_decay():
    m = Tiny()
    groups = param_groups(m, OptimConfig(decay_norms=True, decay_biases=True, decay_embeddings=True))
    assert len(groups) == 1
    assert len(groups[0]["params"]) == 6
    only_bias = param_groups(m, OptimConfig(decay_biases=True))
    assert _ids(only_bias[0]["params"]) == {id(m.fc.weight), id(m.fc.bias)}
