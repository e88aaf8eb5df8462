"""Training checkpoints: writing, finding, verifying, reading, resharding and restoring.

Continue a run (the one entry point, ``resume``)::

    tag_dir = preflight(cfg, world)                       # before any rank starts: which checkpoint, same run?
    state = restore(engine, loader, tag_dir, cfg, mpu)    # in every rank: engine, data position, RNG

Save (collective) and read::

    save(engine, run_dir, step, rank_files=..., shared_files=..., keep_last=2)
    model = from_checkpoint("runs/x")                     # the trained plain model, any layout
    cfg, sd = load_full_state_dict(tag_dir)               # full fp32 tensors, any layout

Modules: ``store`` (the files, ``complete.json``, ``latest``, verify), ``integrity`` (sha256 by
every rank: of the files it wrote when saving, of its share when resuming), ``rng``, ``safe_load``
(weights-only reads of DeepSpeed's pickles), ``deepspeed_files`` (DeepSpeed's files of any ZeRO
stage), ``reader`` (full tensors, tensor ranks merged), ``reshard`` (into an engine of another
layout), ``resume`` (preflight and restore).
"""

from pretrain.checkpoint.reader import (
    CheckpointReader,
    from_checkpoint,
    load_full_state_dict,
    load_init_weights,
    resolve_checkpoint_dir,
    tied_source,
)
from pretrain.checkpoint.resume import preflight, resolve_resume, restore
from pretrain.checkpoint.rng import rng_state, set_rng_state
from pretrain.checkpoint.safe_load import DEEPSPEED_PICKLED_CLASSES, torch_load, weights_only_loads
from pretrain.checkpoint.store import (
    COMPLETE,
    LATEST,
    CheckpointError,
    checkpoints_root,
    copy_if_exists,
    latest,
    rank_state,
    read_json,
    save,
    tag_for,
    verify,
    write_complete,
)

__all__ = ["COMPLETE", "DEEPSPEED_PICKLED_CLASSES", "LATEST", "CheckpointError", "CheckpointReader", "checkpoints_root",
           "copy_if_exists", "from_checkpoint", "latest", "load_full_state_dict", "load_init_weights", "preflight",
           "rank_state", "read_json", "resolve_checkpoint_dir", "resolve_resume", "restore", "rng_state", "save",
           "set_rng_state", "tag_for", "tied_source", "torch_load", "verify", "weights_only_loads", "write_complete"]
