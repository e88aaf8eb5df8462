"""Learning-rate schedules as plain functions of the step, and AdamW weight-decay groups.

``lr_factor(step, schedule, total_steps)`` is the multiplier applied to ``optim.lr`` *for* optimizer
step ``step`` (0-based: the first update uses ``lr_factor(0)``). Keeping it a pure function makes the
schedule trivially resumable (it depends on nothing but the step) and easy to test at key steps.

Warmup (all kinds): ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, so the first update
is not wasted at lr 0 and the last warmup step reaches the full lr. After warmup, with progress
``p = (step - warmup) / (total - warmup)`` clamped to [0, 1] and ``m = min_lr_ratio``:

- ``cosine``:   ``m + (1 - m) * (1 + cos(pi * p)) / 2``  (1 at p=0, m at p=1)
- ``linear``:   ``1 - (1 - m) * p``
- ``constant``: ``1``
- ``wsd``:      warmup-stable-decay: 1 until the last ``ceil(decay_fraction * total)`` steps, then
  linear from 1 to ``m`` across them (reaching ``m`` at ``step == total``).

``build_scheduler`` wraps the function in a ``torch.optim.lr_scheduler.LambdaLR`` (DeepSpeed calls
its ``step()`` after every optimizer step). ``param_groups`` splits parameters into a decayed group
and an undecayed one (norms, biases, embeddings) as GPT-2/Megatron/timm do.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from pretrain.config import Config, OptimConfig, ScheduleConfig


def _warmup(step: int, warmup: int) -> float | None:
    if step < warmup:
        return (step + 1) / warmup
    return None


def _progress(step: int, start: int, total: int) -> float:
    span = max(1, total - start)
    return min(1.0, max(0.0, (step - start) / span))


def lr_factor(step: int, schedule: ScheduleConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (see the module docstring)."""
    warm = _warmup(step, schedule.warmup_steps)
    if warm is not None:
        return warm
    m = schedule.min_lr_ratio
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "cosine":
        p = _progress(step, schedule.warmup_steps, total_steps)
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule.kind == "linear":
        p = _progress(step, schedule.warmup_steps, total_steps)
        return 1.0 - (1.0 - m) * p
    if schedule.kind == "wsd":
        decay_steps = max(1, math.ceil(schedule.decay_fraction * total_steps))
        decay_start = max(schedule.warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return 1.0
        p = _progress(step, decay_start, total_steps)
        return 1.0 - (1.0 - m) * p
    raise ValueError(f"unknown schedule kind {schedule.kind!r}")


def lr_at(step: int, cfg: Config) -> float:
    """The absolute learning rate at ``step`` for a full config."""
    return cfg.optim.lr * lr_factor(step, cfg.schedule, cfg.train.steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, last_step: int = -1):
    """A ``LambdaLR`` following ``cfg.schedule`` over ``cfg.train.steps``.

    ``last_step`` is the index of the last completed step when resuming without a saved scheduler
    state (``-1`` = fresh); the lambda is pure, so the scheduler's own state_dict also resumes it.
    """
    fn = partial(lr_factor, schedule=cfg.schedule, total_steps=cfg.train.steps)
    if last_step >= 0:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn, last_epoch=last_step)


# ----------------------------------------------------------------------------------------------
# weight-decay groups
# ----------------------------------------------------------------------------------------------
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.RMSNorm)
_EMBED_NAME_HINTS = ("embed", "wte", "wpe", "cls_token", "pos_emb", "position_emb", "mask_token")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def _is_embedding(module: nn.Module, name: str) -> bool:
    if isinstance(module, nn.Embedding) or "embedding" in type(module).__name__.lower():
        return True
    leaf = name.lower()
    return any(h in leaf for h in _EMBED_NAME_HINTS)


def classify_parameter(name: str, param: nn.Parameter, owner: nn.Module) -> str:
    """One of ``bias``, ``norm``, ``embedding``, ``weight``.

    Norm parameters (scale and shift) by the owning module's type, or any other 1-D tensor such as
    a learned scale; biases by name; embeddings by module type (nn.Embedding, vocab-parallel embeddings) or by the
    usual names for position embeddings and ViT's class token.
    """
    if _is_norm(owner):  # a norm's shift counts as part of the norm, not as a bias
        return "norm"
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias"
    if _is_embedding(owner, name):
        return "embedding"
    if param.ndim < 2:
        return "norm"
    return "weight"


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    owners = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = module
    return owners


def param_groups(model: nn.Module, optim_cfg: OptimConfig) -> list[dict]:
    """AdamW groups: ``[{"params": decayed, "weight_decay": wd}, {"params": rest, "weight_decay": 0}]``.

    Norms, biases and embeddings are not decayed unless ``optim.decay_norms`` / ``decay_biases`` /
    ``decay_embeddings`` ask for it. Tied weights appear once (``named_parameters`` deduplicates).
    Empty groups are left out (ZeRO dislikes them); frozen parameters are skipped.
    """
    allowed = {"weight": True, "bias": optim_cfg.decay_biases, "norm": optim_cfg.decay_norms,
               "embedding": optim_cfg.decay_embeddings}
    owners = _owners(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = classify_parameter(name, p, owners.get(name, model))
        (decay if allowed[kind] else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": optim_cfg.weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig) -> torch.optim.AdamW:
    """Plain torch AdamW over ``param_groups`` (DeepSpeed accepts a client optimizer)."""
    return torch.optim.AdamW(param_groups(model, optim_cfg), lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                             eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
