"""The files of a checkpoint: saving them (collective), ``complete.json``, ``latest``, verifying.

Layout of one checkpoint (``<run_dir>/checkpoints/step00000020/``)::

    mp_rank_XX_model_states.pt, zero_pp_rank_*...  DeepSpeed, as it writes them
    config.yaml          resolved config            deepspeed.json   the DeepSpeed JSON used
    trainer_state.json   step, tokens seen, world/data/tensor sizes, MLflow run id, last losses
    data.json            data manifest path + sha256, tokenizer ids, image normalisation
    tokenizer.model      (text) the sentencepiece model the shards were made with
    loader/rank_NNNNN.json   each rank's data-loader position
    rng/rank_NNNNN.json      each rank's Python, NumPy and torch RNG states
    complete.json        written last: every file above with its size and sha256

``<run_dir>/checkpoints/latest`` names the newest complete tag; it is replaced atomically after
``complete.json`` exists, so a crash mid-save leaves the previous checkpoint in charge. Our files
are JSON/YAML; DeepSpeed's ``.pt`` files are pickles, read only through ``pretrain.checkpoint.safe_load``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from data_pipeline.shards import sha256_file, write_bytes_atomic, write_json_atomic
from pretrain import distributed as D

COMPLETE = "complete.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used; the message names the file."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


# ----------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------
def write_complete(tag_dir: Path, tag: str, step: int) -> None:
    """Write ``complete.json`` listing every file under ``tag_dir`` with its size and sha256; the
    marker that makes a directory a usable checkpoint (for ``verify``), so it is written last."""
    write_json_atomic(tag_dir / COMPLETE, {"tag": tag, "step": step, "files": _file_list(tag_dir)})


def _file_list(tag_dir: Path) -> list[dict]:
    files = []
    for p in sorted(tag_dir.rglob("*")):
        if p.is_file() and p.name != COMPLETE and ".tmp-" not in p.name:
            files.append({"path": p.relative_to(tag_dir).as_posix(), "bytes": p.stat().st_size,
                          "sha256": sha256_file(p)})
    return files


def save(engine, run_dir: str | Path, step: int, *, rank_files: dict[str, dict], shared_files: dict[str, bytes],
         keep_last: int) -> Path:
    """Collective: every rank calls it. ``rank_files`` maps a folder (``loader``, ``rng``) to this
    rank's JSON; ``shared_files`` (rank 0's) maps a file name to bytes. Returns the tag dir."""
    root = checkpoints_root(run_dir)
    tag = tag_for(step)
    tag_dir = root / tag
    if D.rank() == 0 and tag_dir.exists() and not (tag_dir / COMPLETE).exists():
        shutil.rmtree(tag_dir)  # a save that crashed half-way; never looked complete
    D.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    r = D.rank()
    for folder, obj in rank_files.items():
        write_json_atomic(tag_dir / folder / f"rank_{r:05d}.json", obj)
    if r == 0:
        for name, data in shared_files.items():
            write_bytes_atomic(tag_dir / name, data)
    D.barrier()
    if r == 0:
        write_complete(tag_dir, tag, step)
        write_bytes_atomic(root / LATEST, (tag + "\n").encode())
        _prune(root, keep_last, keep=tag)
    D.barrier()
    return tag_dir


def _prune(root: Path, keep_last: int, keep: str) -> None:
    tags = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step"))
    complete = [p for p in tags if (p / COMPLETE).exists()]
    for p in complete[:-keep_last]:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
    for p in tags:  # half-written saves older than the newest complete one
        if not (p / COMPLETE).exists() and p.name < keep:
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# finding and checking
# ----------------------------------------------------------------------------------------------
def latest(run_dir: str | Path) -> Path | None:
    root = checkpoints_root(run_dir)
    f = root / LATEST
    if not f.is_file():
        return None
    tag_dir = root / f.read_text().strip()
    return tag_dir if (tag_dir / COMPLETE).is_file() else None


def verify(tag_dir: str | Path, checksums: bool = True) -> dict:
    """The parsed ``complete.json`` after checking every listed file exists with its size (and
    sha256 when ``checksums``). Raises ``CheckpointError`` naming the first bad file."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: not a directory")
    marker = tag_dir / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{marker}: missing; {tag_dir} is not a complete pretrain checkpoint "
                              "(never finished saving, or not a checkpoint directory)")
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{marker}: corrupt ({e})") from None
    for f in info["files"]:
        p = tag_dir / f["path"]
        if not p.is_file():
            raise CheckpointError(f"{p}: missing from checkpoint")
        if p.stat().st_size != f["bytes"]:
            raise CheckpointError(f"{p}: {p.stat().st_size} bytes, expected {f['bytes']} (truncated or changed)")
        if checksums and sha256_file(p) != f["sha256"]:
            raise CheckpointError(f"{p}: sha256 mismatch (corrupt)")
    return info


def read_json(tag_dir: str | Path, name: str) -> dict:
    p = Path(tag_dir) / name
    if not p.is_file():
        raise CheckpointError(f"{p}: missing from checkpoint")
    return json.loads(p.read_text())


def rank_state(tag_dir: str | Path, folder: str, rank: int) -> dict:
    return read_json(tag_dir, f"{folder}/rank_{rank:05d}.json")


def copy_if_exists(src: str | Path | None) -> bytes | None:
    if src and os.path.isfile(src):
        return Path(src).read_bytes()
    return None
