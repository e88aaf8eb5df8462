"""Continuing a run from a checkpoint: the one entry point, in two halves.

    tag_dir = preflight(cfg, world)                       # before any rank starts (``pretrain train``)
    state = restore(engine, loader, tag_dir, cfg, mpu)    # in every rank, once the engine is built

``preflight`` finds the checkpoint (``checkpoint.resume``: ``auto`` = the run dir's ``latest``, or a
directory), checks it is complete and that it continues the same run. ``restore`` loads it: bit for
bit through DeepSpeed's own loader when the layout (world, tensor size, ZeRO stage, precision) is
the checkpoint's, else resharded (``pretrain.checkpoint.reshard``); then the data position and the
RNG states.

The data order does not depend on the layout (``pretrain.data.loader``): one global stream of
items (text windows, images) is dealt to the ranks. The loader continues that stream at the first
item not yet read, whatever the new data size, micro-batch or global batch. At the same global
batch the run therefore sees exactly the batches the old layout would have read, and losses match
the uninterrupted run up to the changed reduction order; with another global batch (more nodes,
a batch-size ramp) nothing is skipped or read twice, and the LR schedule goes on by step. On a new
layout the per-rank RNG streams do not carry over (dropout reseeds from seed, step and rank).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from data_pipeline.shards import sha256_file
from pretrain import distributed as D
from pretrain.checkpoint.rng import set_rng_state
from pretrain.checkpoint.safe_load import weights_only_loads
from pretrain.checkpoint.store import COMPLETE, LATEST, CheckpointError, latest, rank_state, read_json, verify
from pretrain.config import Config, global_batch, layout, load_config


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``auto`` -> latest complete under run_dir, if any; else a tag dir."""
    if not resume:
        return None
    if resume == "auto":
        return latest(run_dir)
    path = Path(resume)
    if path.is_dir() and (path / LATEST).is_file() and not (path / COMPLETE).exists():
        path = path / (path / LATEST).read_text().strip()  # a checkpoints/ root was given
    verify(path, checksums=False)
    return path



def saved_layout(tag_dir: Path) -> tuple[Config, dict]:
    """(the checkpoint's config, its layout)."""
    state = read_json(tag_dir, "trainer_state.json")
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
        want = read_json(tag_dir, "data.json").get("manifest_sha256")
        have = sha256_file(Path(cfg.data.path) / "manifest.json")
        if want and want != have:
            problems.append(f"data.path: {cfg.data.path}/manifest.json is not the manifest the checkpoint was "
                            "trained on (sha256 differs)")
    if saved.train.seed != cfg.train.seed:
        problems.append(f"train.seed: checkpoint {saved.train.seed}, this job {cfg.train.seed}")
    if problems:
        raise CheckpointError(f"{tag_dir}: cannot continue this run on a new layout: " + "; ".join(problems)
                                + ". To start a different run from these weights use checkpoint.init_from.")


def preflight(cfg: Config, world: int) -> Path | None:
    """Before any rank starts: the checkpoint to resume from (None: a fresh start) exists, is
    complete, and -- on a new layout or micro-batch size -- continues the same run. Raises
    ``CheckpointError`` naming the problem."""
    tag_dir = resolve_resume(cfg.checkpoint.resume, cfg.train.run_dir)
    if tag_dir is None:
        return None
    saved, old = saved_layout(tag_dir)
    if old != layout(cfg, world) or new_batch_geometry(saved, cfg, old["world_size"], world):
        check_compatible(tag_dir, saved, cfg)
    return tag_dir



# ----------------------------------------------------------------------------------------------
# in every rank
# ----------------------------------------------------------------------------------------------
def restore(engine, loader, tag_dir: Path, cfg: Config, mpu) -> dict:
    """Continue from ``tag_dir`` in this rank: engine (weights, optimizer, LR schedule, counters),
    data position and RNG states. Returns the checkpoint's trainer state."""
    from pretrain.checkpoint.reshard import load_resharded

    saved, old = saved_layout(tag_dir)
    state = read_json(tag_dir, "trainer_state.json")
    if old != layout(cfg, D.world_size()):
        check_compatible(tag_dir, saved, cfg)
        step = int(state["step"])
        load_resharded(engine, tag_dir, cfg, mpu, step)
        continue_data(loader, tag_dir, saved, cfg, old["world_size"])
        seed = cfg.train.seed * 1_000_003 + step * 1_009 + D.rank()
        random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)
        D.print0(f"[pretrain] resumed {tag_dir.name} on a new layout: world {old['world_size']} -> {D.world_size()}, "
                 f"tensor {old['tensor_parallel_size']} -> {cfg.parallel.tensor_size}, ZeRO {old['zero_stage']} -> "
                 f"{cfg.parallel.zero_stage}, {old['precision']} -> {cfg.parallel.precision}")
        return state
    with weights_only_loads(tag_dir):
        load_path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
    if not new_batch_geometry(saved, cfg, old["world_size"], D.world_size()):
        loader.load_state_dict(rank_state(tag_dir, "loader", D.rank()))
        set_rng_state(rank_state(tag_dir, "rng", D.rank()))
    else:  # same engine layout, another micro-batch or global batch
        check_compatible(tag_dir, saved, cfg)
        continue_data(loader, tag_dir, saved, cfg, old["world_size"])
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
    states = [rank_state(tag_dir, "loader", r) for r in range(saved_world)]
    first = states[0]
    try:
        consumed = {int(st.get("offset", 0)) + int(st["batches"]) * int(st["batch_size"]) * int(st["dp_size"])
                    for st in states}
    except KeyError as e:
        raise CheckpointError(f"{tag_dir}/loader: a rank's loader state lacks {e} (written by an older version)") from None
    if len(consumed) != 1:
        raise CheckpointError(f"{tag_dir}/loader: ranks disagree on the items read ({sorted(consumed)})")
    positions = [tuple(int(x) for x in st["pos"]) for st in states
                 if isinstance(st.get("pos"), list) and len(st["pos"]) == 3]
    out = {"batches": 0, "offset": consumed.pop(), "pos": list(min(positions)) if positions else None}
    out.update({k: first[k] for k in ("family", "seed", "seq_len") if k in first})
    return out
