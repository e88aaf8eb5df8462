"""Load a checkpoint into an engine of another layout: data size, tensor size, ZeRO stage, precision.

DeepSpeed's ``load_checkpoint`` restores a checkpoint bit for bit, but only into the layout that
wrote it: ZeRO's optimizer files are flat partitions cut for one data size, and tensor shards for
one tensor size. A job that lost a node, or moves from 8 GPUs to 16, would otherwise restart from
the weights alone (``checkpoint.init_from``) and lose its optimizer state and data position.

Here the checkpoint is read as full per-parameter tensors -- fp32 master weights and AdamW's two
moments, from any ZeRO stage, tensor ranks merged (``pretrain.checkpoint.reader``) -- each tensor is cut
to this rank's tensor shard, and written into whatever the new engine keeps: the parameters
themselves (ZeRO 0, fp32), DeepSpeed's fp32 master copies (ZeRO 0, bf16/fp16), or its flat
partitions (ZeRO 1/2/3). The LR schedule and DeepSpeed's step/sample counters carry over.

The data position and RNG states are restored by ``pretrain.checkpoint.resume``. What does not
carry over: fp16's dynamic loss scale (it re-calibrates from its initial value).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pretrain.checkpoint.deepspeed_files import plain_key
from pretrain.checkpoint.store import CheckpointError
from pretrain.config import Config, global_batch

MOMENTS = ("exp_avg", "exp_avg_sq")


# ----------------------------------------------------------------------------------------------
# writing into the engine
# ----------------------------------------------------------------------------------------------
def _new_adam_state(inner: torch.optim.Optimizer, tensor: torch.Tensor, step: float, group: dict | None = None) -> dict:
    """AdamW state for ``tensor`` (of param ``group``, found when not given) as torch creates it on
    a first step: zero moments, the given step count."""
    group = group or next(g for g in inner.param_groups if any(p is tensor for p in g["params"]))
    on_device = group.get("fused") or group.get("capturable")
    state = {"step": torch.tensor(step, dtype=torch.float32, device=tensor.device if on_device else "cpu"),
             "exp_avg": torch.zeros_like(tensor, memory_format=torch.preserve_format),
             "exp_avg_sq": torch.zeros_like(tensor, memory_format=torch.preserve_format)}
    inner.state[tensor] = state
    return state


class _Writer:
    """Puts full (this tensor rank's) fp32 weights and moments into one engine's own storage."""

    def __init__(self, engine, step: float):
        self.opt, self.step = engine.optimizer, step
        opt = self.opt
        if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO 3
            self.kind = "zero3"
            for i, flat in enumerate(opt.fp32_partitioned_groups_flat):  # joins its group only during step()
                _new_adam_state(opt.optimizer, flat, step, opt.optimizer.param_groups[opt.sub_group_to_group_id[i]])
        elif hasattr(opt, "single_partition_of_fp32_groups") or hasattr(opt, "fp32_groups_flat_partition"):
            # ZeRO 1/2, or DeepSpeed's BF16_Optimizer (bf16 with fp32 gradient accumulation): flat fp32
            # partitions, each parameter mapped onto its fragment (``_hp_mapping``)
            self.kind = "zero12"
            flats = getattr(opt, "single_partition_of_fp32_groups", None) or opt.fp32_groups_flat_partition
            for flat in flats:
                _new_adam_state(opt.optimizer, flat, step)
            opt._hp_optimizer_states_linked = False
            opt._lazy_init_hp_params_optimizer_state()  # points each parameter's fragments at that state
        elif hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups"):  # ZeRO 0 bf16/fp16: fp32 copies
            self.kind = "masters"
            self.master = {id(lp): hp for lps, hps in zip(opt.fp16_groups, opt.fp32_groups) for lp, hp in zip(lps, hps)}
        elif isinstance(opt, torch.optim.Optimizer):  # ZeRO 0 fp32: the parameters are the masters
            self.kind = "plain"
        else:
            raise CheckpointError(f"resuming on a new layout does not know DeepSpeed's {type(opt).__name__}")

    def holds_state(self, param) -> bool:
        """Whether this rank keeps optimizer state for any of ``param`` (ZeRO 1/2 ranks own a
        fragment of some parameters only; the others' moments need not even be read)."""
        return self.kind != "zero12" or getattr(param, "_hp_mapping", None) is not None

    @torch.no_grad()
    def set(self, param: torch.nn.Parameter, weight: torch.Tensor, moments: dict[str, torch.Tensor]) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        if self.kind == "zero3":
            self.opt.set_full_hp_param(weight, param)
            for key, value in moments.items():
                self.opt.set_full_hp_param(value, param, key)
            return
        if self.kind == "zero12":
            safe_set_full_fp32_param(param, weight)  # no-op where this rank holds no fragment
            for key, value in moments.items():
                safe_set_full_optimizer_state(param, value, key)
        else:
            hp, inner = (self.master[id(param)], self.opt.optimizer) if self.kind == "masters" else (param, self.opt)
            hp.copy_(weight)
            state = _new_adam_state(inner, hp, self.step)
            for key, value in moments.items():
                state[key].copy_(value)
        param.copy_(weight.to(param.dtype))

    def finish(self) -> None:
        if self.kind == "zero3":  # the training-precision partitions follow the fp32 masters
            for i in range(len(self.opt.fp16_groups)):
                self.opt._reassign_or_swap_out_partitioned_parameters(i)


def _named_parameters(engine) -> dict[str, torch.nn.Parameter]:
    return {plain_key(n): p for n, p in engine.module.named_parameters()}


def _shape(param) -> torch.Size:
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape


def load_resharded(engine, tag_dir: Path, cfg: Config, mpu, step: int) -> None:
    """Write ``tag_dir``'s weights, AdamW moments (any layout), LR schedule and DeepSpeed's counters
    into this rank's ``engine``; collective only in DeepSpeed's ZeRO 3 bookkeeping."""
    from pretrain.checkpoint.reader import CheckpointReader
    from pretrain.parallel import shard_param

    dp = mpu.get_data_parallel_world_size()
    tp_rank, tp = mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()
    readers = {f: CheckpointReader(tag_dir, check=False, field=f) for f in ("fp32", *MOMENTS)}
    writer = _Writer(engine, readers["exp_avg"].adam_step())
    for name, param in _named_parameters(engine).items():
        weight = shard_param(name, readers["fp32"].tensor(name), cfg.model, tp_rank, tp)
        if weight.shape != _shape(param):
            raise CheckpointError(f"{tag_dir}: {name} has shape {tuple(weight.shape)} for tensor rank {tp_rank}, "
                                  f"the model here {tuple(_shape(param))}")
        moments = {f: shard_param(name, readers[f].tensor(name), cfg.model, tp_rank, tp) for f in MOMENTS} \
            if writer.holds_state(param) else {}
        writer.set(param, weight, moments)
    writer.finish()

    states = readers["fp32"].engine_state()
    engine.global_steps = int(states.get("global_steps", step))
    engine.global_samples = int(states.get("global_samples", step * global_batch(cfg, dp)))
    engine.skipped_steps = int(states.get("skipped_steps", 0))
    if engine.lr_scheduler is not None and states.get("lr_scheduler"):
        engine.lr_scheduler.load_state_dict(states["lr_scheduler"])
        for group, lr in zip(engine.lr_scheduler.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr  # the LR the next step uses, as the uninterrupted run's last step left it
