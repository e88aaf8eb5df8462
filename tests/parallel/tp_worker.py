"""The body of the two-rank tensor-parallel checks (run under torch.multiprocessing.spawn).

Each rank builds the TP=1 model and the TP=2 model from the same seed, runs the same batch
through both and compares loss, logits and (gathered) gradients; then checks that a model built
sharded from the meta device equals the TP=1 weights sliced, that it allocates about half the
parameter memory, and that shard/merge of state dicts round-trips.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pretrain.models import build_model, count_parameters, preset
from pretrain.parallel import (
    apply_tensor_parallel,
    build_parallel_model,
    init_topology,
    merge_shards,
    merge_tp_state_dicts,
    shard_state_dict,
)

TP = 2
RTOL = 1e-5


def make_batch(cfg, seed: int = 0) -> dict:
    """A batch exercising the masks: ignored labels (GPT), padding + segments + masked tokens (BERT)."""
    g = torch.Generator().manual_seed(seed)
    if cfg.family == "vit":
        return {"pixel_values": torch.randn(3, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g),
                "labels": torch.randint(0, cfg.num_classes, (3,), generator=g)}
    ids = torch.randint(0, cfg.vocab_size, (3, 24), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (3, 24), generator=g)
    if cfg.family == "gpt":
        labels[0, :5] = -100
        return {"input_ids": ids, "labels": labels}
    labels[torch.rand(3, 24, generator=g) > 0.3] = -100
    labels[:, 0] = 7  # at least one target per row
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, 18:] = 0
    types = torch.zeros(3, 24, dtype=torch.long)
    types[:, 12:] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "token_type_ids": types}


def gather_full(t: torch.Tensor, spec) -> torch.Tensor:
    shards = [torch.empty_like(t) for _ in range(spec.size)]
    dist.all_gather(shards, t.contiguous())
    return merge_shards(shards, spec.dim, spec.parts)


def rel_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)
    assert err <= RTOL, f"{what}: relative difference {err:.3g} > {RTOL}"


def check_equivalence(cfg, mpu, checkpointing) -> None:
    """TP=2 loss, logits and gathered gradients equal TP=1's on the same weights and batch. The
    TP=1 reference computes its loss the unfused way (logits, then cross-entropy), so the TP=2
    model's fused vocab-parallel head + loss (``linear_cross_entropy``) is checked against it."""
    batch = make_batch(cfg)
    ref = build_model(cfg, seed=11)
    if cfg.family != "vit":
        ref.fused_loss = False
    ref_loss = ref.loss(batch)
    ref_loss.backward()
    tp = apply_tensor_parallel(build_model(cfg, seed=11), mpu)
    tp.set_activation_checkpointing(checkpointing)
    tp.train()
    loss = tp.loss(batch)
    loss.backward()
    rel_close(loss.detach(), ref_loss.detach(), f"{cfg.family} loss")
    inputs = batch["pixel_values"] if cfg.family == "vit" else batch["input_ids"]
    with torch.no_grad():
        rel_close(tp(inputs), ref(inputs), f"{cfg.family} logits")
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    names = [n for n, _ in tp.named_parameters()]
    assert names == list(ref_grads), "TP model must keep the plain model's parameter names"
    sharded = 0
    for name, p in tp.named_parameters():
        spec = getattr(p, "tp_shard", None)
        grad = gather_full(p.grad, spec) if spec is not None else p.grad
        sharded += spec is not None
        assert getattr(p, "tensor_model_parallel", False) == (spec is not None), name  # DeepSpeed's grad norm
        rel_close(grad, ref_grads[name], f"{cfg.family} grad {name}")
    expected = 4 * cfg.num_layers + (1 if cfg.family == "vit" else 2)  # layer weights + embedding (+ bias)
    assert sharded >= expected, f"only {sharded} parameters were sharded"


def storage_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        s = p.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def check_sharded_build(cfg, mpu) -> None:
    """Meta build + materialise = TP=1 weights sliced; about half the bytes; merge round-trips."""
    rank = mpu.get_model_parallel_rank()
    full = build_model(cfg, seed=5)
    local = build_parallel_model(cfg, mpu, seed=5)
    expected = shard_state_dict(full.state_dict(), cfg, rank, TP)
    got = local.state_dict()
    assert got.keys() == expected.keys()
    for k in got:
        assert torch.equal(got[k], expected[k]), f"sharded init differs from sliced TP=1 init at {k}"
    assert all(p.tensor_model_parallel for p in local.parameters() if hasattr(p, "tp_shard"))  # kept by materialize
    assert count_parameters(local) == count_parameters(full)  # full size by default
    assert count_parameters(local, local=True) < 0.6 * count_parameters(full)
    ratio = storage_bytes(local) / storage_bytes(full)
    assert 0.5 <= ratio < 0.6, f"TP=2 rank holds {ratio:.3f} of the parameter bytes, expected about half"
    shards = []
    for r in range(TP):
        shards.append({k: v.clone() for k, v in got.items()})
        for k, v in got.items():
            gathered = [torch.empty_like(v) for _ in range(TP)]
            dist.all_gather(gathered, v.contiguous())
            shards[r][k] = gathered[r]
    merged = merge_tp_state_dicts(shards, cfg)
    for k, v in full.state_dict().items():
        assert torch.equal(merged[k], v), f"merge_tp_state_dicts differs at {k}"


def run(rank: int, port: int, presets: list[str]) -> None:
    from pretrain.parallel import tensor_parallel

    tensor_parallel.LOSS_CHUNK_BYTES = 16 * 1024  # many chunks of the fused loss even at the debug vocabulary
    torch.set_num_threads(1)
    os.environ.pop("OMP_NUM_THREADS", None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TP)
    try:
        mpu = init_topology(TP)
        assert mpu.get_model_parallel_world_size() == TP and mpu.get_data_parallel_world_size() == 1
        for i, name in enumerate(presets):
            cfg = preset(name)
            check_equivalence(cfg, mpu, checkpointing=["full", "attention"][i] if i < 2 else "none")
            check_sharded_build(cfg, mpu)
        # both ranks reach here before either tears gloo down: destroying while the peer still
        # reads from the pair aborts the process ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
