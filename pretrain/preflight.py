"""Checks of a training job before any rank starts: a problem found here costs no process start
and exits 2 naming the field, instead of a traceback in N ranks after minutes of setup.

- the data: a shard directory with a manifest, of the kind the model needs (text or image), a
  tokenizer that fits ``model.vocab_size``, classes that fit ``model.num_classes``;
- the run directory: writable, and not holding another run unless this job continues it
  (``checkpoint.resume``) -- a second fresh run would append to its metrics and replace ``latest``;
- the checkpoint to continue from (``pretrain.checkpoint.preflight``).

Heavy modules (torch, the loaders) are imported only when a check needs them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pretrain.config import Config, ConfigError


def check_job(cfg: Config, world: int, run_dir: bool = True) -> Path | None:
    """Raise ``ConfigError`` naming the first field that cannot work; return the checkpoint to
    continue from (None: a fresh start). ``run_dir=False``: leave the run dir alone (``pretrain
    launch`` on a submit host; the ranks check it where they run)."""
    check_data(cfg)
    if run_dir:
        check_run_dir(cfg)
    if not cfg.checkpoint.resume:
        return None
    from pretrain.checkpoint import CheckpointError, preflight

    first = os.environ.get("RANK", "0") == "0"  # under a launcher every rank runs this: one stats the files
    try:
        return preflight(cfg, world, sizes=first)
    except CheckpointError as e:
        raise ConfigError([("checkpoint.resume", cfg.checkpoint.resume, str(e))]) from None


def check_data(cfg: Config) -> None:
    if cfg.data.source != "shards":
        return
    from pretrain.data import build_spec, check_shards, read_manifest

    try:  # local or remote (s3://, gs://, https://)
        manifest = read_manifest(cfg.data.path)
    except FileNotFoundError:
        raise ConfigError([("data.path", cfg.data.path, "no manifest.json there; run `pretrain data ...` first")]) from None
    except OSError as e:
        raise ConfigError([("data.path", cfg.data.path, str(e))]) from None
    try:  # every listed shard there with its size; the loaders' own checks: shard kind and tokenizer size
        check_shards(cfg, manifest)
        build_spec(cfg, "train", 0, 1, train=True)
    except (ValueError, OSError) as e:
        raise ConfigError([("data.path", cfg.data.path, str(e))]) from None
    if cfg.model.family == "vit":
        classes = manifest.get("classes") or []
        needed = 1 + max((int(c.get("index", i)) for i, c in enumerate(classes)), default=-1)
        if needed > cfg.model.num_classes:
            raise ConfigError([("model.num_classes", cfg.model.num_classes,
                                f"data.path={cfg.data.path} holds {needed} classes (labels 0..{needed - 1}); "
                                f"set model.num_classes={needed}")])


def check_run_dir(cfg: Config) -> None:
    run_dir = Path(cfg.train.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigError([("train.run_dir", str(run_dir), f"not writable ({e.strerror or e})")]) from None
    if cfg.checkpoint.resume:
        return
    held = [name for name in ("metrics.jsonl", "checkpoints")
            if (run_dir / name).is_file() or ((run_dir / name).is_dir() and any(os.scandir(run_dir / name)))]
    if held:
        raise ConfigError([("train.run_dir", str(run_dir),
                            f"already holds a run ({', '.join(held)}); continue it with checkpoint.resume=auto, "
                            "or choose a new train.run_dir")])
