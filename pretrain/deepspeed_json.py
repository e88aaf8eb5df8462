"""The DeepSpeed JSON for a resolved config and a world size, and the two choices it shares with
the memory estimate (the gradient-accumulation dtype and the ZeRO bucket size).

The optimizer and scheduler are built by the trainer, so only batch, precision, ZeRO, clipping and
logging keys are set here; the config's ``deepspeed`` pass-through section wins over all of them.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import Config, deep_merge, dp_size, grad_accum_steps


def resolved_grad_accum_dtype(cfg: Config, world_size: int) -> str:
    """The dtype gradients accumulate (and ZeRO reduces them) in: ``parallel.grad_accum_dtype``, or
    for "auto" fp32 when bf16 steps accumulate several micro-batches at ZeRO 1-3 (bf16 sums of many
    small gradients lose their low bits), else the parameters' dtype."""
    p = cfg.parallel
    if p.grad_accum_dtype != "auto":
        return p.grad_accum_dtype
    accumulates = cfg.train.batch_rampup is not None or grad_accum_steps(cfg, dp_size(cfg, world_size)) > 1
    return "fp32" if p.precision == "bf16" and accumulates and p.zero_stage >= 1 else p.precision


def comm_bucket_elements(dp: int) -> int:
    """Elements per gradient-reduce / parameter-gather bucket: Megatron's max(40M, 1M x data-parallel
    size). DeepSpeed's default (5e8) puts a whole model below ~1B parameters into one bucket, so the
    reduction cannot start before the backward pass ends."""
    return max(40_000_000, 1_000_000 * dp)


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    """The DeepSpeed JSON for ``world_size`` ranks. The optimizer and scheduler are built by us, so
    only batch, precision, ZeRO, clipping and logging keys are set here; ``cfg.deepspeed`` wins."""
    p = cfg.parallel
    dp = dp_size(cfg, world_size)
    accum = grad_accum_steps(cfg, dp)
    ds: dict[str, Any] = {
        "train_batch_size": cfg.train.micro_batch_size * accum * dp,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": p.precision == "bf16"},
        "fp16": {"enabled": p.precision == "fp16"},
    }
    if p.precision == "fp16":
        ds["fp16"].update({"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                           "hysteresis": 2, "min_loss_scale": 1})
    accum_dtype = resolved_grad_accum_dtype(cfg, world_size)
    if accum_dtype != p.precision:
        ds["data_types"] = {"grad_accum_dtype": accum_dtype}
    zero = ds["zero_optimization"]
    if p.zero_stage >= 1:
        # gradients are reduced bucket by bucket while the backward pass still runs (overlap_comm)
        bucket = comm_bucket_elements(dp)
        zero.update({"reduce_bucket_size": bucket, "allgather_bucket_size": bucket, "contiguous_gradients": True,
                     "overlap_comm": True})
    if p.zero_stage == 3:
        # parameters below 10 x hidden (norms, biases) stay gathered instead of being fetched in every
        # pass (the Hugging Face integration's rule; 0 fetched each of them every time)
        zero.update({"stage3_gather_16bit_weights_on_model_save": False,
                     "stage3_param_persistence_threshold": 10 * cfg.model.hidden_size})
    if p.offload_optimizer:  # page-locked host buffers: asynchronous copies on GPUs (a no-op on CPU)
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if p.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if p.activation_checkpointing != "none":
        ds["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False}
    return deep_merge(ds, cfg.deepspeed)
