"""Resume a checkpoint on another layout: data size, tensor size, ZeRO stage, precision, batch.

DeepSpeed's ``load_checkpoint`` restores a checkpoint bit for bit, but only into the layout that
wrote it: ZeRO's optimizer files are flat partitions cut for one data size, and tensor shards for
one tensor size. A job that lost a node, or moves from 8 GPUs to 16, would otherwise restart from
the weights alone (``checkpoint.init_from``) and lose its optimizer state and data position.

Here the checkpoint is read as full per-parameter tensors -- fp32 master weights and AdamW's two
moments, from any ZeRO stage, tensor ranks merged (``pretrain.consolidate``) -- each tensor is cut
to this rank's tensor shard, and written into whatever the new engine keeps: the parameters
themselves (ZeRO 0, fp32), DeepSpeed's fp32 master copies (ZeRO 0, bf16/fp16), or its flat
partitions (ZeRO 1/2/3). The LR schedule and DeepSpeed's step/sample counters carry over.

The data order does not depend on the layout (``pretrain.data.loader``): one global stream of
items (text windows, images) is dealt to the ranks. The loader continues that stream at the first
item not yet read, whatever the new data size, micro-batch or global batch. At the same global
batch the run therefore sees exactly the batches the old layout would have read, and losses match
the uninterrupted run up to the changed reduction order; with another global batch (more nodes,
a batch-size ramp) nothing is skipped or read twice, and the LR schedule goes on by step. What
does not carry over: the per-rank RNG streams (dropout reseeds from seed, step and rank) and fp16's
dynamic loss scale (it re-calibrates from its initial value).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from data_pipeline.shards import sha256_file
from pretrain import checkpoint as C
from pretrain import distributed as D
from pretrain.config import Config, global_batch, layout, load_config

MOMENTS = ("exp_avg", "exp_avg_sq")


def saved_layout(tag_dir: Path) -> tuple[Config, dict]:
    """(the checkpoint's config, its layout)."""
    state = C.read_json(tag_dir, "trainer_state.json")
    saved = load_config(tag_dir / "config.yaml")
    return saved, layout(saved, int(state["world_size"]))  # the saved config, the saved world


def new_batch_geometry(saved: Config, cfg: Config, saved_world: int, world: int) -> bool:
    """Whether the micro-batch or the global batch changed (the loader position is then remapped)."""
    old = (saved.train.micro_batch_size, global_batch(saved, saved_world // saved.parallel.tensor_size))
    return old != (cfg.train.micro_batch_size, global_batch(cfg, world // cfg.parallel.tensor_size))


def check_compatible(tag_dir: Path, saved: Config, cfg: Config) -> None:
    """A new layout or batch geometry keeps the model, the data stream and the seed; anything else
    would not continue the same run. Raises ``CheckpointError`` naming what differs."""
    problems = []
    if saved.model != cfg.model:
        a, b = saved.model.model_dump(), cfg.model.model_dump()
        problems += [f"model.{k}: checkpoint {a[k]!r}, this job {b[k]!r}" for k in a if a[k] != b.get(k)]
    for key in ("source", "seq_len", "shuffle_buffer") + (("synthetic_samples",) if cfg.data.source == "synthetic" else ()):
        a, b = getattr(saved.data, key), getattr(cfg.data, key)
        if a != b:
            problems.append(f"data.{key}: checkpoint {a!r}, this job {b!r}")
    if cfg.data.source == "shards" and saved.data.source == "shards":
        want = C.read_json(tag_dir, "data.json").get("manifest_sha256")
        have = sha256_file(Path(cfg.data.path) / "manifest.json")
        if want and want != have:
            problems.append(f"data.path: {cfg.data.path}/manifest.json is not the manifest the checkpoint was "
                            "trained on (sha256 differs)")
    if saved.train.seed != cfg.train.seed:
        problems.append(f"train.seed: checkpoint {saved.train.seed}, this job {cfg.train.seed}")
    if problems:
        raise C.CheckpointError(f"{tag_dir}: cannot continue this run on a new layout: " + "; ".join(problems)
                                + ". To start a different run from these weights use checkpoint.init_from.")


def preflight(cfg: Config, world: int) -> Path | None:
    """Before any rank starts: the checkpoint to resume from (None: a fresh start) exists, is
    complete, and -- on a new layout or micro-batch size -- continues the same run. Raises
    ``CheckpointError`` naming the problem."""
    tag_dir = C.resolve_resume(cfg.checkpoint.resume, cfg.train.run_dir)
    if tag_dir is None:
        return None
    saved, old = saved_layout(tag_dir)
    if old != layout(cfg, world) or new_batch_geometry(saved, cfg, old["world_size"], world):
        check_compatible(tag_dir, saved, cfg)
    return tag_dir


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
            raise C.CheckpointError(f"resuming on a new layout does not know DeepSpeed's {type(opt).__name__}")

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
    from pretrain.consolidate import _plain

    return {_plain(n): p for n, p in engine.module.named_parameters()}


def _shape(param) -> torch.Size:
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape


# ----------------------------------------------------------------------------------------------
# the whole restore
# ----------------------------------------------------------------------------------------------
def restore(engine, loader, tag_dir: Path, cfg: Config, mpu) -> dict:
    """Load ``tag_dir`` (any layout) into this rank's ``engine`` and ``loader``; collective only in
    DeepSpeed's ZeRO 3 bookkeeping. Returns the checkpoint's trainer state."""
    from pretrain.consolidate import CheckpointReader
    from pretrain.parallel import shard_param

    state = C.read_json(tag_dir, "trainer_state.json")
    saved, old = saved_layout(tag_dir)
    dp = mpu.get_data_parallel_world_size()
    check_compatible(tag_dir, saved, cfg)
    step = int(state["step"])
    tp_rank, tp = mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()

    readers = {f: CheckpointReader(tag_dir, check=False, field=f) for f in ("fp32", *MOMENTS)}
    writer = _Writer(engine, readers["exp_avg"].adam_step())
    for name, param in _named_parameters(engine).items():
        weight = shard_param(name, readers["fp32"].tensor(name), cfg.model, tp_rank, tp)
        if weight.shape != _shape(param):
            raise C.CheckpointError(f"{tag_dir}: {name} has shape {tuple(weight.shape)} for tensor rank {tp_rank}, "
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

    continue_data(loader, tag_dir, saved, cfg, old["world_size"])
    seed = cfg.train.seed * 1_000_003 + step * 1_009 + D.rank()
    random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)
    D.print0(f"[pretrain] resumed {tag_dir.name} on a new layout: world {old['world_size']} -> {D.world_size()}, "
             f"tensor {old['tensor_parallel_size']} -> {tp}, ZeRO {old['zero_stage']} -> {cfg.parallel.zero_stage}, "
             f"{old['precision']} -> {cfg.parallel.precision}")
    return state


def continue_data(loader, tag_dir: Path, saved: Config, cfg: Config, saved_world: int) -> None:
    """Point ``loader`` at the first item of the data stream the checkpoint's run had not read."""
    state = loader_state(tag_dir, saved_world)
    loader.load_state_dict(state)
    old_g = global_batch(saved, saved_world // saved.parallel.tensor_size)
    new_g = global_batch(cfg, D.world_size() // cfg.parallel.tensor_size)
    D.print0(f"[pretrain] data stream continues at item {state['offset']:,} (global batch {old_g} -> {new_g}, "
             f"micro-batch {saved.train.micro_batch_size} -> {cfg.train.micro_batch_size})")


def loader_state(tag_dir: Path, saved_world: int) -> dict:
    """A loader state that continues the checkpoint's data stream under any batch geometry: every
    item read so far (``offset`` + batches x micro-batch x data size of the old geometry, the same
    on every old rank at a step boundary) becomes the new ``offset``, and batch counting restarts.
    Text streams restart their scan at the earliest position any old rank had reached (every later
    window lies after it); images need no scan position."""
    states = [C.rank_state(tag_dir, "loader", r) for r in range(saved_world)]
    first = states[0]
    try:
        consumed = {int(st.get("offset", 0)) + int(st["batches"]) * int(st["batch_size"]) * int(st["dp_size"])
                    for st in states}
    except KeyError as e:
        raise C.CheckpointError(f"{tag_dir}/loader: a rank's loader state lacks {e} (written by an older version)") from None
    if len(consumed) != 1:
        raise C.CheckpointError(f"{tag_dir}/loader: ranks disagree on the items read ({sorted(consumed)})")
    positions = [tuple(int(x) for x in st["pos"]) for st in states
                 if isinstance(st.get("pos"), list) and len(st["pos"]) == 3]
    out = {"batches": 0, "offset": consumed.pop(), "pos": list(min(positions)) if positions else None}
    out.update({k: first[k] for k in ("family", "seed", "seq_len") if k in first})
    return out
