"""Everything the training loop holds, built in one place: topology, model, optimizer, LR schedule,
DeepSpeed engine, loaders, tracker, and the state restored from a checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn

from pretrain import checkpoint as C
from pretrain import distributed as D
from pretrain import faults
from pretrain.config import Config, global_batch, layout, to_yaml
from pretrain.deepspeed_json import deepspeed_config, resolved_grad_accum_dtype
from pretrain.devices import peak_description, peak_flops_per_rank, use_deterministic_algorithms


class LossModule(nn.Module):
    """What DeepSpeed wraps: ``forward(**batch)`` returns the model's scalar training loss.

    Keeps the model itself plain (``forward(input_ids)`` -> logits); its parameters appear under
    the ``model.`` prefix in DeepSpeed's checkpoint files."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return self.model.loss(batch)


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that clips, reports the gradient norm, and skips a step whose gradients are not
    finite, saying so through ``.overflow`` (which DeepSpeed reads to count skipped steps and hold
    the LR schedule).

    DeepSpeed's ZeRO and bf16 optimizers already do all three; without ZeRO in fp32 DeepSpeed
    clips but neither reports the norm nor skips, so only then is the guard on (``check=True``)
    and DeepSpeed's own clipping is switched off."""

    def __init__(self, params, check: bool, clip: float, mpu, **kw):
        super().__init__(params, **kw)
        self.check, self.clip, self.mpu = check, clip, mpu
        self.overflow = False
        self.last_grad_norm: float | None = None

    @torch.no_grad()
    def step(self, closure=None):
        if self.check:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            norm = clip_grad_norm(params, self.clip, self.mpu)
            self.last_grad_norm = float(norm)
            self.overflow = not math.isfinite(self.last_grad_norm)
            if self.overflow:
                self.zero_grad(set_to_none=True)
                return None
        return super().step(closure)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, mpu) -> torch.Tensor:
    """The global 2-norm of the gradients of ``params`` (data-parallel-reduced already, tensor-parallel
    sharded or replicated), and the gradients scaled down to ``max_norm`` when above it (0: no clipping).

    Tensor-sharded parameters (``tensor_model_parallel``) count on every tensor rank, replicated ones
    on tensor rank 0 only; the squares are summed over the tensor group. The same arithmetic as
    DeepSpeed's ``clip_grad_norm_`` (coefficient ``max_norm / (norm + 1e-6)``, at most 1), with
    multi-tensor kernels instead of a Python loop per parameter."""
    from deepspeed.runtime.utils import is_model_parallel_parameter

    tp = mpu.get_model_parallel_world_size() if mpu is not None else 1
    first = tp == 1 or mpu.get_model_parallel_rank() == 0
    grads = [p.grad for p in params]
    mine = [p.grad for p in params if first or is_model_parallel_parameter(p)]
    if mine:
        sq = torch.nn.utils.get_total_norm(mine, 2.0, foreach=True).float().square()
    else:
        sq = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else D.device())
    if tp > 1:
        torch.distributed.all_reduce(sq, group=mpu.get_model_parallel_group())
    total = sq.sqrt()
    if max_norm > 0 and grads:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return total


def adamw_kernel(implementation: str) -> dict:
    """``torch.optim.AdamW`` keywords for ``optim.implementation``."""
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[implementation]


def grad_norm(engine) -> float:
    """The last step's global gradient norm, from DeepSpeed or from ``GuardedAdamW``."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        norm = getattr(engine.optimizer, "last_grad_norm", None)
    return float(norm) if norm is not None else float("nan")


def to_device(batch: dict, device, float_dtype) -> dict:
    """A loader batch on ``device``, floating-point tensors (images) in the training precision."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if v.is_floating_point():
                v = v.to(float_dtype)
        out[k] = v
    return out


def loss_scale_can_fall(engine) -> bool:
    """Whether a skipped step was fp16 dynamic loss scaling at work: the scale is dynamic and still
    above its minimum (DeepSpeed skips the step and halves the scale; routine in the first steps,
    not a sign of divergence). False for bf16/fp32 and at the minimum scale."""
    opt = engine.optimizer
    for holder in (getattr(opt, "loss_scaler", None), getattr(opt, "loss_scale_config", None)):
        cur = getattr(holder, "cur_scale", None)
        if cur is not None and (getattr(holder, "dynamic", False) or getattr(holder, "dynamic_loss_scale", False)):
            floor = getattr(holder, "min_scale", None) or getattr(holder, "min_loss_scale", None) or 1.0
            return float(cur) > float(floor)
    return False


@dataclass
class Setup:
    cfg: Config
    mpu: object
    model: nn.Module
    engine: object
    train_loader: object
    train_iter: object
    tracker: object
    data_info: dict
    dp_size: int
    dp_rank: int
    family: str
    device: torch.device
    float_dtype: torch.dtype
    items_per_step: int
    flops_per_item: float  # pretrain.models.flops, causal attention counted exactly
    peak_flops: float
    flops_per_item_anchor: float = 0.0  # 6N + 12 L H T per token, as nanoGPT/PaLM/Megatron count
    start_step: int = 0
    resume_dir: Path | None = None  # the checkpoint this job continued from
    tokens_seen: int = 0
    skipped_before: int = 0
    last_logged: int = 0
    extra: dict = field(default_factory=dict)

    def memory_gb(self) -> float:
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        if acc.device_name() != "cpu":
            return acc.max_memory_allocated() / 2**30
        return psutil.Process().memory_info().rss / 2**30


def _items_and_flops(cfg: Config, dp: int) -> tuple[int, float]:
    from pretrain.models import flops

    batch = global_batch(cfg, dp)
    if cfg.model.family == "vit":
        return batch, flops.flops_per_image(cfg.model, cfg.data.image_size)
    head_fraction = cfg.data.mlm_probability if cfg.model.family == "bert" else 1.0
    return batch * cfg.data.seq_len, flops.flops_per_token(cfg.model, cfg.data.seq_len, head_fraction)


def anchor_flops_per_item(cfg: Config) -> float:
    """Training FLOPs per token (image) as the published MFU figures count them: ``6 N + 12 L H T``."""
    from pretrain.models import flops

    if cfg.model.family == "vit":
        return flops.flops_per_image(cfg.model, cfg.data.image_size)
    head_fraction = cfg.data.mlm_probability if cfg.model.family == "bert" else 1.0
    return flops.anchor_flops_per_token(cfg.model, cfg.data.seq_len, head_fraction)


def _build_model(cfg: Config, mpu) -> nn.Module:
    from pretrain.parallel import build_parallel_model

    model = build_parallel_model(cfg.model, mpu, device=D.device(), seed=cfg.train.seed)
    model.set_activation_checkpointing(cfg.parallel.activation_checkpointing)
    if cfg.train.compile:
        if cfg.parallel.zero_stage == 3:  # gather a block's parameters in the block's own (eager) hook:
            from deepspeed.utils import set_z3_leaf_modules  # no DeepSpeed hooks inside the compiled code

            from pretrain.models.core import Block

            set_z3_leaf_modules(model, [Block])
        model.compile_blocks()
    return model


def _load_init_weights(model: nn.Module, cfg: Config, mpu) -> None:
    """``checkpoint.init_from``: weights only, from an import-hf directory or a checkpoint."""
    from pretrain.parallel import shard_state_dict

    full = C.load_init_weights(cfg.checkpoint.init_from, cfg.model)
    local = shard_state_dict(full, cfg.model, mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size())
    missing, unexpected = model.load_state_dict(local, strict=False)
    if missing or unexpected:
        raise C.CheckpointError(f"{cfg.checkpoint.init_from}: weights do not fit model (missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]})")


def build_setup(cfg: Config) -> Setup:
    import deepspeed

    from pretrain.data import build_loader, data_info
    from pretrain.parallel import init_topology
    from pretrain.prefetch import Prefetcher
    from pretrain.schedules import build_scheduler, param_groups

    use_deterministic_algorithms(cfg.train.deterministic)
    world = D.world_size()
    mpu = init_topology(cfg.parallel.tensor_size)
    dp, dp_rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
    # pretrain train ran it before starting the ranks, train(cfg) callers get it here; every file's
    # size and sha256 are checked by the ranks together in restore
    resume_dir = C.preflight(cfg, world, sizes=False)

    torch.manual_seed(cfg.train.seed)
    model = _build_model(cfg, mpu)
    if cfg.checkpoint.init_from and resume_dir is None:
        _load_init_weights(model, cfg, mpu)
    o = cfg.optim
    stage0_fp32 = cfg.parallel.zero_stage == 0 and cfg.parallel.precision == "fp32"
    optimizer = GuardedAdamW(param_groups(model, o), check=stage0_fp32, clip=o.grad_clip, mpu=mpu,
                             lr=o.lr, betas=tuple(o.betas), eps=o.eps, **adamw_kernel(o.implementation))
    scheduler = build_scheduler(optimizer, cfg)
    ds_cfg = deepspeed_config(cfg, world)
    if stage0_fp32:
        ds_cfg["gradient_clipping"] = 0.0  # GuardedAdamW clips (and reports the norm) instead
    if cfg.parallel.offload_optimizer:
        ds_cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    faults.at("setup")
    engine, _, _, _ = deepspeed.initialize(model=LossModule(model), optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_cfg, mpu=mpu,
                                           dist_init_required=False)
    if dp == 1 and cfg.parallel.zero_stage == 0:
        # nothing to reduce over one data-parallel rank; DeepSpeed would still flatten, "all-reduce"
        # and copy back every gradient each step (~2.5 ms a step on the debug models)
        engine.enable_backward_allreduce = False
    loader = build_loader(cfg, "train", dp_rank, dp, train=True)
    info = data_info(cfg)
    if cfg.data.source == "shards":
        from data_pipeline import storage
        from pretrain.data import manifest_sha256

        info["manifest_sha256"] = manifest_sha256(cfg.data.path)  # local or remote
        if cfg.model.family != "vit":
            info["tokenizer_path"] = storage.join(cfg.data.path, "tokenizer.model")

    state: dict = {}
    if resume_dir is not None:
        state = C.restore(engine, loader, resume_dir, cfg, mpu)
    items, flops_per_item = _items_and_flops(cfg, dp)
    precision = cfg.parallel.precision
    float_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    fork = cfg.checkpoint.fork and resume_dir is not None
    tracker = _tracker(cfg, None if fork else state.get("mlflow_run_id"))
    batches = Prefetcher(loader, pin=D.device().type == "cuda")
    setup = Setup(cfg=cfg, mpu=mpu, model=model, engine=engine, train_loader=batches, train_iter=batches,
                  tracker=tracker, data_info=info, dp_size=dp, dp_rank=dp_rank, family=cfg.model.family,
                  device=D.device(), float_dtype=float_dtype, items_per_step=items, flops_per_item=flops_per_item,
                  peak_flops=peak_flops_per_rank() * world, flops_per_item_anchor=anchor_flops_per_item(cfg),
                  start_step=state.get("step", 0), resume_dir=resume_dir,
                  tokens_seen=state.get("tokens_seen", 0), skipped_before=engine.skipped_steps,
                  last_logged=state.get("step", 0))
    if resume_dir is None or fork or tracker.replaced_run_id:  # fresh, forked, or the checkpoint's MLflow run is gone
        log_run_metadata(tracker, cfg, world, dp)
        if fork:
            tracker.set_tags({"forked_from": str(resume_dir), "forked_at_step": setup.start_step})
    elif any(str(state.get(k)) != str(v) for k, v in layout(cfg, world).items() if k in state):
        # a resume on another layout: the run's layout tags follow, and say from which step
        tracker.set_tags({**layout(cfg, world), "layout_changed_at_step": setup.start_step})
    D.print0(f"[pretrain] {cfg.model.family} | world {world} = data {dp} x tensor {cfg.parallel.tensor_size} | "
             f"ZeRO {cfg.parallel.zero_stage} | {precision} (gradients accumulate in "
             f"{resolved_grad_accum_dtype(cfg, world)}) | global batch {global_batch(cfg, dp)} | "
             f"{'compiled blocks | ' if cfg.train.compile else ''}{'deterministic | ' if cfg.train.deterministic else ''}"
             f"{peak_description()} | "
             + (f"{'forked' if fork else 'resumed'} from {resume_dir} at step {setup.start_step}" if resume_dir
                else "fresh start"))
    return setup


def _tracker(cfg: Config, run_id: str | None):
    """Rank 0's MLflow tracker (a no-op elsewhere or when disabled), started or reopened. On more
    than one node, the first rank of each other node samples its machine's system metrics into
    the same run (``system/node<i>/...``; node i = i-th node in rank order)."""
    from pretrain.tracking import NodeSystemMetrics, make_tracker

    leaders = D.node_leaders()
    node_id = f"node{leaders.index(D.rank())}" if len(leaders) > 1 and D.rank() in leaders else None
    tracker = make_tracker(cfg, D.rank(), node_id=node_id)
    tracker.start(cfg, run_id=run_id)
    if len(leaders) > 1 and cfg.tracking.enabled and cfg.tracking.system_metrics:
        run_id = D.broadcast_object(tracker.run_id)
        if node_id and D.rank() != 0 and run_id:
            return NodeSystemMetrics(cfg, run_id, node_id)
    return tracker


def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_run_metadata(tracker, cfg: Config, world: int, dp: int) -> None:
    """Params, tags and config artifacts of a fresh run (rank 0; no-op trackers ignore it)."""
    import json

    from pretrain.models import build_model, count_parameters

    meta = build_model(cfg.model, device="meta")
    tracker.log_params(cfg)
    tracker.set_tags({
        "family": cfg.model.family, "parameters": count_parameters(meta),
        "non_embedding_parameters": count_parameters(meta, non_embedding=True), "git_commit": _git_commit(),
        **layout(cfg, world),
    })
    tracker.log_text(to_yaml(cfg), "config/config.yaml")
    tracker.log_text(json.dumps(deepspeed_config(cfg, world), indent=2), "config/deepspeed.json")
    if cfg.data.source == "shards":
        from data_pipeline import storage

        manifest = storage.read_bytes(storage.join(cfg.data.path, "manifest.json"))  # local or remote
        tracker.log_text(manifest.decode(), "data/manifest.json")
        tracker.log_input(cfg.data.path, manifest=manifest)  # the dataset: name, manifest sha256, path

