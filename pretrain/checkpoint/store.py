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
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from data_pipeline.shards import sha256_file, write_bytes_atomic, write_json_atomic
from pretrain import distributed as D
from pretrain import faults
from pretrain.checkpoint import integrity

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
    """Write ``complete.json`` listing every file under ``tag_dir`` with its size and sha256, all
    hashed here (``save`` has the ranks hash their own files); the marker that makes a directory a
    usable checkpoint (for ``verify``), so it is written last."""
    write_json_atomic(tag_dir / COMPLETE, {"tag": tag, "step": step, "files": _file_list(tag_dir)})


def save(engine, run_dir: str | Path, step: int, *, rank_files: dict[str, dict], shared_files: dict[str, bytes],
         keep_last: int, progress: Callable[[], None] | None = None) -> Path:
    """Collective: every rank calls it. ``rank_files`` maps a folder (``loader``, ``rng``) to this
    rank's JSON; ``shared_files`` (rank 0's) maps a file name to bytes. Each rank hashes the files it
    wrote, rank 0 gathers the digests into ``complete.json`` and then moves ``latest``. ``progress()``
    is called as work gets done (the hang watchdog). Returns the tag dir."""
    root = checkpoints_root(run_dir)
    tag = tag_for(step)
    tag_dir = root / tag
    r = D.rank()
    if r == 0 and tag_dir.exists() and not (tag_dir / COMPLETE).exists():
        shutil.rmtree(tag_dir)  # a save that crashed half-way; never looked complete
    D.barrier()
    written = _write_files(engine, root, tag_dir, step, rank_files, shared_files if r == 0 else {})
    faults.at("save", step)  # drills: a crash with every file written but complete.json not yet
    mine = integrity.digests(tag_dir, written, progress)
    gathered = integrity.gather_to_first(mine)
    if r == 0:
        recorded = {k: v for digests in gathered for k, v in digests.items()}
        write_json_atomic(tag_dir / COMPLETE, {"tag": tag, "step": step, "files": _file_list(tag_dir, recorded)})
        write_bytes_atomic(root / LATEST, (tag + "\n").encode())
        _prune(root, keep_last, keep=tag)
    D.barrier()
    return tag_dir


def _write_files(engine, root: Path, tag_dir: Path, step: int, rank_files: dict, shared_files: dict) -> list[Path]:
    """DeepSpeed's files and ours, as this rank writes them; the paths written. A failed write
    (disk full, read-only, quota) is a ``CheckpointError`` naming the directory and its free space."""
    r = D.rank()
    path = tag_dir
    try:
        with integrity.recording_writes(engine) as written:
            engine.save_checkpoint(str(root), tag=tag_dir.name, client_state={"step": step}, save_latest=False)
        for folder, obj in rank_files.items():
            path = tag_dir / folder / f"rank_{r:05d}.json"
            write_json_atomic(path, obj)
            written.append(path)
        for name, data in shared_files.items():
            path = tag_dir / name
            write_bytes_atomic(path, data)
            written.append(path)
    except (integrity.WriteFailed, OSError) as e:
        path, cause = (e.path, e.cause) if isinstance(e, integrity.WriteFailed) else (path, e)
        raise CheckpointError(f"{path}: writing the checkpoint of step {step} failed on rank {r} ({_short(cause)}; "
                              f"{_free_space(tag_dir)}); `latest` still names the last complete checkpoint") from e
    return written


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}"


def _free_space(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return f"{shutil.disk_usage(p).free:,} bytes free there"
            except OSError:
                break
    return "free space unknown"


def _file_list(tag_dir: Path, recorded: dict[str, dict] | None = None) -> list[dict]:
    """Every file of ``tag_dir`` with size and sha256, from ``recorded`` digests where present
    (hashed here otherwise). Temp files of interrupted writes are not part of a checkpoint."""
    recorded = recorded or {}
    files = []
    for p in sorted(tag_dir.rglob("*")):
        if p.is_file() and p.name != COMPLETE and ".tmp-" not in p.name:
            rel = p.relative_to(tag_dir).as_posix()
            d = recorded.get(rel) or {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            files.append({"path": rel, "bytes": d["bytes"], "sha256": d["sha256"]})
    missing = sorted(set(recorded) - {f["path"] for f in files})
    if missing:
        raise CheckpointError(f"{tag_dir}: files written by the ranks are gone before complete.json: {missing[:5]}")
    return files


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
    info = read_complete(tag_dir)
    for f in info["files"]:
        problem = file_problem(tag_dir, f, checksums)
        if problem:
            raise CheckpointError(problem)
    return info


def read_complete(tag_dir: Path) -> dict:
    """The parsed ``complete.json`` of ``tag_dir``; ``CheckpointError`` when there is none."""
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: not a directory")
    marker = tag_dir / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{marker}: missing; {tag_dir} is not a complete pretrain checkpoint "
                              "(never finished saving, or not a checkpoint directory)")
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{marker}: corrupt ({e})") from None


def file_problem(tag_dir: Path, f: dict, checksum: bool) -> str | None:
    """What is wrong with listed file ``f`` (``path``, ``bytes``, ``sha256``), or None."""
    p = tag_dir / f["path"]
    if not p.is_file():
        return f"{p}: missing from checkpoint"
    if p.stat().st_size != f["bytes"]:
        return f"{p}: {p.stat().st_size} bytes, expected {f['bytes']} (truncated or changed)"
    if checksum:
        have = sha256_file(p)
        if have != f["sha256"]:
            return f"{p}: sha256 {have[:16]}... but complete.json records {f['sha256'][:16]}... (corrupt or changed)"
    return None


def verify_in_parallel(tag_dir: str | Path, progress: Callable[[], None] | None = None) -> dict:
    """Collective ``verify``: each file checked (size, sha256) by one rank (``integrity.shares``),
    every problem known to every rank. Raises ``CheckpointError`` naming the bad file(s)."""
    tag_dir = Path(tag_dir)
    started = time.perf_counter()
    info = read_complete(tag_dir)
    problems = []
    for f in integrity.shares(info["files"], D.world_size())[D.rank()]:
        problems.append(file_problem(tag_dir, f, checksum=True))
        if progress is not None:
            progress()
    problems = sorted(p for mine in integrity.all_gather([p for p in problems if p]) for p in mine)
    if problems:
        raise CheckpointError("; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    total = sum(int(f["bytes"]) for f in info["files"])
    D.print0(f"[pretrain] verified {tag_dir.name}: {len(info['files'])} files, {total / 2**20:,.1f} MiB, sha256 "
             f"over {D.world_size()} rank(s) in {time.perf_counter() - started:.1f} s")
    return info


def read_json(tag_dir: str | Path, name: str) -> dict:
    p = Path(tag_dir) / name
    if not p.is_file():
        raise CheckpointError(f"{p}: missing from checkpoint")
    return json.loads(p.read_text())


def rank_state(tag_dir: str | Path, folder: str, rank: int) -> dict:
    return read_json(tag_dir, f"{folder}/rank_{rank:05d}.json")


def copy_if_exists(src: str | Path | None) -> bytes | None:
    """The bytes of ``src`` (a local path or a URI: s3://, gs://, https://), None when it is not there."""
    from data_pipeline import storage

    if src and storage.exists(str(src)):
        return storage.read_bytes(str(src))
    return None
