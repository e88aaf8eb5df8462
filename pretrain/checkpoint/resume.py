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

from pretrain import distributed as D
from pretrain.checkpoint.rng import set_rng_state
from pretrain.checkpoint.safe_load import weights_only_loads
from pretrain.checkpoint.store import (
    COMPLETE,
    LATEST,
    CheckpointError,
    checkpoints_root,
    rank_state,
    read_complete,
    read_json,
    verify,
    verify_in_parallel,
)
from pretrain.config import Config, global_batch, layout, load_config


def resolve_resume(resume: str | None, run_dir: str | Path, sizes: bool = True) -> Path | None:
    """The checkpoint to continue from, checked complete (with every file's size when ``sizes``),
    or None for a fresh start.

    ``None``: no resume. ``auto``: the tag ``<run_dir>/checkpoints/latest`` names; a fresh start only
    when the run dir holds no complete checkpoint at all (its first job). A ``latest`` that names a
    missing or incomplete directory, or complete checkpoints without a ``latest``, are errors naming
    what is wrong -- never a silent start from step 0. Else a tag dir, or a ``checkpoints/`` root."""
    if not resume:
        return None
    path = checkpoints_root(run_dir) if resume == "auto" else Path(resume)
    if resume == "auto" and not (path / LATEST).is_file():
        complete = sorted(p.name for p in path.glob("step*") if (p / COMPLETE).is_file()) if path.is_dir() else []
        if complete:
            raise CheckpointError(f"{path / LATEST}: missing, yet {path} holds complete checkpoints ({', '.join(complete[-3:])}); "
                                  f"name one with checkpoint.resume=DIR")
        return None
    if path.is_dir() and (path / LATEST).is_file() and not (path / COMPLETE).exists():
        tag = (path / LATEST).read_text().strip()
        if not (path / tag).is_dir():
            raise CheckpointError(f"{path / LATEST}: names {tag!r}, which does not exist in {path}")
        if not (path / tag / COMPLETE).is_file():
            raise CheckpointError(f"{path / LATEST}: names {tag!r}, which has no {COMPLETE} (a save that never "
                                  f"finished); name a complete checkpoint with checkpoint.resume=DIR")
        path = path / tag
    if sizes:
        verify(path, checksums=False)
    else:
        read_complete(path)
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


def check_same_run(tag_dir: Path, saved: Config, cfg: Config) -> None:
    """This job continues the checkpoint's run: same model, data stream (source, window, shuffle,
    the same manifest) and seed -- on any layout or batch geometry. Anything else would be another
    run. Raises ``CheckpointError`` naming what differs."""
    problems = []
    if saved.model != cfg.model:
        a, b = saved.model.model_dump(), cfg.model.model_dump()
        problems += [f"model.{k}: checkpoint {a[k]!r}, this job {b[k]!r}" for k in a if a[k] != b.get(k)]
    for key in ("source", "seq_len", "shuffle_buffer") + (("synthetic_samples",) if cfg.data.source == "synthetic" else ()):
        a, b = getattr(saved.data, key), getattr(cfg.data, key)
        if a != b:
            problems.append(f"data.{key}: checkpoint {a!r}, this job {b!r}")
    if cfg.data.source == "shards" and saved.data.source == "shards":
        problems += _manifest_problems(tag_dir, saved, cfg)
    if saved.train.seed != cfg.train.seed:
        problems.append(f"train.seed: checkpoint {saved.train.seed}, this job {cfg.train.seed}")
    if problems:
        raise CheckpointError(f"{tag_dir}: this job would not continue the checkpoint's run: " + "; ".join(problems)
                              + ". To start a different run from these weights use checkpoint.init_from.")


def _manifest_problems(tag_dir: Path, saved: Config, cfg: Config) -> list[str]:
    """The shards must be the ones trained on: the manifest's sha256 (re-tokenised or re-built shards
    get another manifest). The same manifest under another path (data moved) is the same data."""
    want = read_json(tag_dir, "data.json").get("manifest_sha256")
    from data_pipeline import storage
    from pretrain.data import manifest_sha256

    manifest = storage.join(cfg.data.path, "manifest.json")  # local or remote (s3://, gs://, https://)
    if not storage.exists(manifest):
        return [f"data.path: {manifest} does not exist"]
    if want is None:
        same = Path(saved.data.path or "").resolve() == Path(cfg.data.path).resolve()
        return [] if same else [f"data.path: checkpoint {saved.data.path!r}, this job {cfg.data.path!r}"]
    if manifest_sha256(cfg.data.path) != want:
        moved = "" if saved.data.path == cfg.data.path else f" (the checkpoint trained on {saved.data.path})"
        return [f"data.path: {manifest} is not the manifest the checkpoint was trained on (sha256 differs: other "
                f"or re-built shards){moved}"]
    return []


def preflight(cfg: Config, world: int, sizes: bool = True) -> Path | None:
    """Before any rank starts: the checkpoint to resume from (None: a fresh start) exists, is
    complete (every file's size, unless not ``sizes``: a job of many ranks has one do it), and
    continues the same run (``check_same_run``) on whatever layout. Raises ``CheckpointError``
    naming the problem. The sha256 of every file is checked by the ranks together when they load
    it (``restore``)."""
    tag_dir = resolve_resume(cfg.checkpoint.resume, cfg.train.run_dir, sizes)
    if tag_dir is None:
        return None
    saved, _ = saved_layout(tag_dir)
    check_same_run(tag_dir, saved, cfg)
    return tag_dir


# ----------------------------------------------------------------------------------------------
# in every rank
# ----------------------------------------------------------------------------------------------
def restore(engine, loader, tag_dir: Path, cfg: Config, mpu) -> dict:
    """Continue from ``tag_dir`` in this rank (collective): every file's sha256 checked (the ranks
    share the work), then engine (weights, optimizer, LR schedule, counters), data position and RNG
    states. ``preflight`` has checked it is the same run. Returns the checkpoint's trainer state."""
    verify_in_parallel(tag_dir)
    saved, old = saved_layout(tag_dir)
    state = read_json(tag_dir, "trainer_state.json")
    if old != layout(cfg, D.world_size()):
        _restore_resharded(engine, loader, tag_dir, cfg, mpu, saved, old, int(state["step"]))
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
        continue_data(loader, tag_dir, saved, cfg, old["world_size"])
    return state


def _restore_resharded(engine, loader, tag_dir: Path, cfg: Config, mpu, saved: Config, old: dict, step: int) -> None:
    """Another layout: the engine through ``reshard``, the data stream from its position, fresh
    per-rank RNG streams (seeded by seed, step and rank: the old ranks' streams have no new owner)."""
    from pretrain.checkpoint.reshard import load_resharded

    load_resharded(engine, tag_dir, cfg, mpu, step)
    continue_data(loader, tag_dir, saved, cfg, old["world_size"])
    seed = cfg.train.seed * 1_000_003 + step * 1_009 + D.rank()
    random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)
    D.print0(f"[pretrain] resumed {tag_dir.name} on a new layout: world {old['world_size']} -> {D.world_size()}, "
             f"tensor {old['tensor_parallel_size']} -> {cfg.parallel.tensor_size}, ZeRO {old['zero_stage']} -> "
             f"{cfg.parallel.zero_stage}, {old['precision']} -> {cfg.parallel.precision}")


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
