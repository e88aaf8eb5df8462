"""ImageNet (or any ImageFolder tree / ILSVRC tar) -> labelled WebDataset shards, in parallel on Ray.

Order of work, and why it makes output independent of worker count and restarts:

1. scan every requested split (sorted by source) and build the class index (or reuse the index of
   shards already in ``--out`` when it covers these classes, so train and val may run separately);
2. shuffle each split's labelled files with a seeded RNG and cut the shuffled list into shards of
   ``shard_size`` planned files -- so which file lands in which shard, and at which key, is fixed
   before any image is decoded;
3. run one Ray task per shard not already finished (see ``shard_task``), at most ``num_cpus`` at once;
4. write ``rejected/<split>.parquet``, ``_info.json`` and finally ``manifest.json``.

Rejected files keep their planned slot empty, so a shard may hold fewer than ``shard_size`` samples.
Inputs that could not be read at all (permission or I/O errors, a broken per-class tar) are failed
inputs: above ``max_failed_inputs`` (a count, or a fraction of the inputs) the run ends with
``InputsFailed`` and writes no manifest -- its finished shards stay for the rerun. A write that
fails (disk full, read-only) is an ``OutputError`` naming the path.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from data_pipeline.imagenet import outputs
from data_pipeline.imagenet.process import DEFAULT_MAX_PIXELS, ImageOptions
from data_pipeline.imagenet.shard_task import STATE_DIR, finished_summary, plan_fingerprint, process_shard
from data_pipeline.imagenet.sources import FAILED_REASONS, InputError, Item, SplitInput, build_classes, scan_split
from data_pipeline.shards import remove_stale_temps


class OutputError(RuntimeError):
    """Writing the output failed (disk full, read-only, quota); the message names the path."""


class InputsFailed(RuntimeError):
    """More inputs could not be read than allowed; the message summarises which and why."""


@dataclass
class BuildConfig:
    input: str
    out: str
    splits: list[str] = field(default_factory=lambda: ["train"])
    max_size: int = 512
    quality: int = 95
    shard_size: int = 1000
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    classes_file: str | None = None
    num_cpus: int | None = None
    ray_address: str | None = None
    progress: bool = True
    max_failed_inputs: float = 0  # inputs allowed to fail (unreadable): a count, or a fraction below 1
    shard_delay_s: float = 0.0  # test hook, not part of the output

    def image_options(self) -> ImageOptions:
        return ImageOptions(max_size=self.max_size, quality=self.quality, max_pixels=self.max_pixels)

    def recorded(self) -> dict:
        """The options that decide the output (not parallelism), as stored in the manifest."""
        keep = ("input", "splits", "max_size", "quality", "shard_size", "seed", "max_pixels", "classes_file")
        return {k: v for k, v in asdict(self).items() if k in keep}


def plan_shards(items: list[Item], split: str, seed: int, shard_size: int) -> list[list[tuple[int, Item]]]:
    """Seeded shuffle of ``items`` cut into consecutive shards of (position, item) pairs."""
    order = list(range(len(items)))
    random.Random(f"pretrain-imagenet:{seed}:{split}").shuffle(order)
    entries = [(pos, items[i]) for pos, i in enumerate(order)]
    return [entries[i:i + shard_size] for i in range(0, len(entries), shard_size)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, mininterval=1.0)


def _run_shards(ray, cfg: BuildConfig, split: str, plan, class_index: dict[str, int]) -> list[dict]:
    """Run the unfinished shards of one split as Ray tasks; return all shard summaries in index order."""
    options = cfg.image_options()
    summaries: dict[int, dict] = {}
    todo = []
    for index, entries in enumerate(plan):
        fp = plan_fingerprint(split, index, entries, class_index, options)
        done = finished_summary(cfg.out, split, index, fp)
        if done is not None:
            summaries[index] = done
        else:
            todo.append((index, entries, fp))
    total = sum(len(e) for e in plan)
    bar = _progress(total, f"{split}: {len(plan)} shards", cfg.progress)
    bar.update(sum(len(plan[i]) for i in summaries))
    if summaries:
        bar.write(f"{split}: {len(summaries)} of {len(plan)} shards already complete, skipped")
    parallelism = cfg.num_cpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=2)(process_shard)
    class_ref = ray.put(class_index)
    pending: dict = {}
    queue = deque(todo)
    try:
        while queue or pending:
            while queue and len(pending) < 2 * parallelism:  # one queued behind each running task
                index, entries, fp = queue.popleft()
                ref = task.remote(cfg.out, split, index, entries, class_ref, options, fp, cfg.shard_delay_s)
                pending[ref] = index
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = pending.pop(ref)
                summaries[index] = _result(ray, ref, cfg.out)
                bar.update(len(plan[index]))
                bar.set_postfix(shards=f"{len(summaries)}/{len(plan)}", refresh=False)
    finally:
        bar.close()
    return [summaries[i] for i in range(len(plan))]


def _result(ray, ref, out: str) -> dict:
    """A shard task's summary; a write that failed in it (an ``OSError``) becomes an ``OutputError``."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, OSError):
            raise OutputError(_write_failure(out, cause)) from None
        raise


def _write_failure(out: str, e: OSError) -> str:
    where = e.filename or out
    free = shutil.disk_usage(out).free if os.path.isdir(out) else None
    return (f"--out {out}: writing {where} failed ({e.strerror or e}"
            + (f"; {free:,} bytes free there" if free is not None else "")
            + "); finished shards are kept, rerun once there is room")


def _check_writable(out: str) -> None:
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise InputError(f"--out {out}: not writable ({e.strerror or e})") from None


def _allowed_failures(cfg: BuildConfig, inputs: int) -> int:
    m = cfg.max_failed_inputs
    return int(m * inputs) if 0 < m < 1 else int(m)


def _check_failures(cfg: BuildConfig, split_results: dict, inputs: int) -> int:
    """The number of failed inputs; raises ``InputsFailed`` (and removes a manifest that would no
    longer describe ``--out``) when there are more than allowed."""
    rows = [r for summaries, extra in split_results.values()
            for r in [*extra, *(x for s in summaries for x in s["rejected"])] if r["reason"] in FAILED_REASONS]
    allowed = _allowed_failures(cfg, inputs)
    if len(rows) <= allowed:
        return len(rows)
    Path(cfg.out, "manifest.json").unlink(missing_ok=True)
    by_reason: dict[str, int] = {}
    for r in rows:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    shown = "\n  ".join(f"{r['source']}: {r['reason']}: {r['detail']}" for r in rows[:10])
    raise InputsFailed(f"{len(rows)} of {inputs} inputs could not be read ({by_reason}), more than the "
                       f"{allowed} allowed by --max-failed-inputs:\n  {shown}"
                       + (f"\n  ... and {len(rows) - 10} more" if len(rows) > 10 else "")
                       + "\nno manifest written; fix the inputs and rerun (finished shards are kept), or allow "
                         "them with --max-failed-inputs N (a count) or F (a fraction below 1)")


def _remove_extra_shards(out_dir: str, split: str, n_shards: int) -> None:
    """Delete shards (and their state) numbered past this plan, left by an earlier run with other
    options, so the directory holds exactly what the manifest lists."""
    for pattern in ("shard-*.tar", "shard-*.json"):
        folder = Path(out_dir) / (split if pattern.endswith(".tar") else f"{STATE_DIR}/{split}")
        for path in folder.glob(pattern):
            digits = path.name[len("shard-"):].split(".")[0]
            if digits.isdigit() and int(digits) >= n_shards:
                path.unlink()


def _labelled(split_input: SplitInput) -> tuple[list[Item], list[dict]]:
    """Items with a label, and rejection rows for files no label could be found for."""
    items, unlabeled = [], []
    for it in split_input.items:
        if it.wnid is None:
            unlabeled.append({"source": it.source, "wnid": None, "reason": "no_label",
                              "detail": "not in a class folder and not in LOC_val_solution.csv"})
        else:
            items.append(it)
    return items, unlabeled


def _check_config(cfg: BuildConfig) -> None:
    if cfg.shard_size < 1:
        raise InputError(f"--shard-size {cfg.shard_size}: must be at least 1")
    if not 1 <= cfg.quality <= 100:
        raise InputError(f"--quality {cfg.quality}: must be 1..100")
    if cfg.max_pixels < 1:
        raise InputError(f"--max-pixels {cfg.max_pixels}: must be at least 1")
    if cfg.max_size < 0:
        raise InputError(f"--max-size {cfg.max_size}: must be >= 0 (0 keeps the original size)")
    if not cfg.splits or any(not s or "/" in s or s.startswith(("_", ".")) for s in cfg.splits):
        raise InputError(f"--split {','.join(cfg.splits)}: give split names such as train,val")
    if cfg.classes_file and not Path(cfg.classes_file).is_file():
        raise InputError(f"--classes {cfg.classes_file}: no such file")
    if cfg.max_failed_inputs < 0:
        raise InputError(f"--max-failed-inputs {cfg.max_failed_inputs:g}: a count >= 0, or a fraction below 1")


def build(cfg: BuildConfig) -> dict:
    """Run the whole pipeline; returns the manifest it wrote. Raises InputError for bad input."""
    _check_config(cfg)
    cfg = replace(cfg, input=os.path.abspath(cfg.input), out=os.path.abspath(cfg.out))  # workers have another cwd
    _check_writable(cfg.out)
    scans = {split: scan_split(cfg.input, split) for split in cfg.splits}
    labelled = {split: _labelled(s) for split, s in scans.items()}
    wnids = {it.wnid for items, _ in labelled.values() for it in items}
    if not wnids:
        raise InputError(f"--input {cfg.input}: no labelled files found for split(s) {', '.join(cfg.splits)}")
    meta_dirs = [d for s in scans.values() for d in s.meta_dirs]
    classes = outputs.existing_classes(cfg.out)
    if cfg.classes_file or not classes or not wnids <= {c["wnid"] for c in classes}:
        classes = build_classes(wnids, Path(cfg.classes_file) if cfg.classes_file else None, meta_dirs)
    previous = outputs.previous_splits(cfg.out, classes, cfg.splits)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cfg.out)
    class_index = {c["wnid"]: c["index"] for c in classes}

    from data_pipeline.ray_runtime import ray_session

    split_results = {}
    with ray_session(cfg.ray_address, cfg.num_cpus, shared_dir=cfg.out) as ray:
        for split in cfg.splits:
            items, unlabeled = labelled[split]
            plan = plan_shards(items, split, cfg.seed, cfg.shard_size)
            summaries = _run_shards(ray, cfg, split, plan, class_index)
            _remove_extra_shards(cfg.out, split, len(plan))
            split_results[split] = (summaries, unlabeled + scans[split].failed)
    remove_stale_temps(cfg.out)  # all our tasks are done: temps now can only be from a killed earlier run
    _check_failures(cfg, split_results, sum(len(s.items) + len(s.failed) for s in scans.values()))
    try:
        return outputs.write_outputs(cfg.out, classes, split_results, cfg.recorded(), previous)
    except OSError as e:
        raise OutputError(_write_failure(cfg.out, e)) from None
