"""Evaluation on the ``val`` split: loss and perplexity (GPT), MLM accuracy (BERT), top-1/top-5 (ViT).

Sums are all-reduced over data-parallel ranks, so every rank returns the same numbers; tensor
ranks see the same batches and gathered logits, so they agree without communication.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pretrain import distributed as D
from pretrain.config import Config

# a progress line at most this often during one evaluation (the environment variable is for tests)
PROGRESS_EVERY_S = float(os.environ.get("PRETRAIN_EVAL_PROGRESS_S", "10"))


def _sums(model, batch: dict, family: str) -> dict[str, float]:
    """Per-batch sums: loss x count, correct predictions, count."""
    if family == "vit":
        logits = model(batch["pixel_values"]).float()
        labels = batch["labels"]
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        return {"loss": F.cross_entropy(logits, labels, reduction="sum").item(),
                "top1": (top5[:, 0] == labels).sum().item(),
                "top5": (top5 == labels[:, None]).any(-1).sum().item(), "n": labels.numel()}
    labels = batch["labels"]
    n = int((labels != -100).sum().item())
    loss = model.loss(batch).float().item() * n
    out = {"loss": loss, "n": n}
    if family == "bert":
        logits = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        picked = labels != -100
        out["mlm_accuracy"] = (logits[picked].argmax(-1) == labels[picked]).sum().item()
    return out


def _no_val_reason(cfg: Config, dp_size: int) -> str | None:
    """Why there is nothing to evaluate on, or None."""
    if cfg.data.source != "shards":
        return None
    from pretrain.data.sources import read_manifest

    samples = read_manifest(cfg.data.path).get("splits", {}).get("val", {}).get("samples", 0)
    if samples < dp_size:
        return f"the val split of {cfg.data.path} has {samples} samples, fewer than {dp_size} data-parallel ranks"
    return None


@torch.no_grad()
def evaluate(setup, cfg: Config, on_batch=None) -> dict[str, float]:
    """Mean metrics over up to ``train.eval_steps`` batches of the val split (empty when none).
    ``on_batch()`` is called after each batch (the trainer's hang watchdog counts it as progress)."""
    from pretrain.data import build_loader
    from pretrain.train_setup import to_device

    reason = _no_val_reason(cfg, setup.dp_size)
    if reason:
        if not setup.extra.get("eval_warned"):
            setup.extra["eval_warned"] = True
            D.print0(f"[pretrain] evaluation skipped: {reason}")
        return {}
    loader = build_loader(cfg, "val", setup.dp_rank, setup.dp_size, train=False)
    model = setup.engine.module.model
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    started = last_report = time.perf_counter()
    try:
        for i, batch in enumerate(loader):
            if i >= cfg.train.eval_steps:
                break
            for k, v in _sums(model, to_device(batch, setup.device, setup.float_dtype), setup.family).items():
                totals[k] = totals.get(k, 0.0) + v
            if on_batch is not None:
                on_batch()
            now = time.perf_counter()
            if now - last_report >= PROGRESS_EVERY_S:  # long evaluations show they are alive
                last_report = now
                D.print0(f"eval  batch {i + 1}/{cfg.train.eval_steps} | {now - started:.0f} s")
    finally:
        model.train(was_training)
    keys = sorted(totals)
    t = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=setup.device)  # NCCL: no CPU tensors
    if dist.is_initialized() and setup.dp_size > 1:
        dist.all_reduce(t, group=setup.mpu.get_data_parallel_group())
    totals = dict(zip(keys, t.tolist()))
    n = totals.pop("n", 0.0)
    if not n:
        return {}
    metrics = {k: v / n for k, v in totals.items()}
    if setup.family == "gpt":
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics
