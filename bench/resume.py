"""Restart cost: resuming a checkpoint on its own layout (DeepSpeed's loader) against resuming it
on another layout (``pretrain.checkpoint.reshard``), in one run, same checkpoint, same process count;
and the cost of saving it, with the integrity hashes worked out by every rank against rank 0 alone.

Trains a model for one step on 2 local ranks (``--stage``, ``--tp`` as asked) and saves; then, in
fresh 2-rank jobs, times only the restore (``pretrain.checkpoint.restore`` after the engine is
built: sha256 of every file over the ranks, then the load) for each target layout, best of
``--repeats``. ``--save`` adds one 2-rank job that saves the restored engine ``--repeats`` times
each way, alternating: ``pretrain.checkpoint.save`` (each rank hashes the files it wrote, rank 0
gathers the digests) and the save before that (the same files, then rank 0 hashing all of them
while the other ranks wait). Prints JSON and a one-line summary.

    python bench/resume.py --config configs/gpt/gpt2-124m.yaml --stage 1 --targets 1,0,2,3 --save --out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RANK = r"""
import json, os, sys, time
from pretrain import distributed as D
from pretrain.config import load_config
D.init_distributed()
cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
from pretrain import train_setup as T
resume = cfg.checkpoint.resume
cfg = cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"resume": None})})
setup = T.build_setup(cfg)  # the engine of the target layout, fresh
from pathlib import Path
D.barrier()
t = time.perf_counter()
from pretrain.checkpoint import restore
restore(setup.engine, setup.train_loader, Path(resume), cfg, setup.mpu)
D.barrier()
if D.rank() == 0:
    print("RESTORE_SECONDS", time.perf_counter() - t, flush=True)
D.shutdown()
"""


SAVE = r"""
import json, sys, time
from pathlib import Path
from data_pipeline.shards import write_bytes_atomic, write_json_atomic
from pretrain import checkpoint as C
from pretrain import distributed as D
from pretrain.config import load_config
D.init_distributed()
cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
from pretrain import train_setup as T
setup = T.build_setup(cfg)
engine, r = setup.engine, D.rank()
rank_files = {"loader": setup.train_loader.state_dict(), "rng": C.rng_state()}
shared = {"trainer_state.json": json.dumps({"step": 1}).encode(), "config.yaml": b"x"}


def parallel(run_dir, step):
    C.save(engine, run_dir, step, rank_files=rank_files, shared_files=shared, keep_last=1)


def rank0(run_dir, step):  # pretrain.checkpoint.save as it was: rank 0 hashes every file alone
    root = C.checkpoints_root(run_dir)
    tag = C.tag_for(step)
    D.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    for folder, obj in rank_files.items():
        write_json_atomic(root / tag / folder / f"rank_{r:05d}.json", obj)
    if r == 0:
        for name, data in shared.items():
            write_bytes_atomic(root / tag / name, data)
    D.barrier()
    if r == 0:
        C.write_complete(root / tag, tag, step)
        write_bytes_atomic(root / "latest", (tag + "\n").encode())
    D.barrier()


times = {"parallel": [], "rank0": []}
work = Path(sys.argv[3])
for i in range(int(sys.argv[4])):
    for name, fn in (("rank0", rank0), ("parallel", parallel)):
        D.barrier()
        t = time.perf_counter()
        fn(work / f"{name}-{i}", 2 + i)
        D.barrier()
        times[name].append(time.perf_counter() - t)
if r == 0:
    tag_dir = C.checkpoints_root(work / "parallel-0") / C.tag_for(2)
    size = sum(f["bytes"] for f in C.verify(tag_dir)["files"])
    print("SAVE_SECONDS", json.dumps({**times, "bytes": size}), flush=True)
D.shutdown()
"""


def _save_seconds(args, tag_dir: Path, work: str) -> dict:
    """Save times of the restored engine (same layout as saved), each way, ``--repeats`` times."""
    from launch.local import free_port

    over = [*_overrides(args, work, args.stage, args.tp), f"checkpoint.resume={tag_dir}"]
    script = Path(work) / "save.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SAVE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           str(script), str(REPO / args.config), json.dumps(over), work, str(args.repeats)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"save timing failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SAVE_SECONDS"))
    return json.loads(line.split(" ", 1)[1])


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}


def _overrides(args, run_dir: str, stage: int, tp: int) -> list[str]:
    return [f"train.run_dir={run_dir}", "train.steps=1", "tracking.enabled=false", "data.source=synthetic",
            "data.path=null", f"data.seq_len={args.seq_len}", "train.micro_batch_size=1", "train.global_batch_size=2",
            f"parallel.zero_stage={stage}", f"parallel.tensor_size={tp}", "model.dropout=0.0"]


def _restore_seconds(args, tag_dir: Path, stage: int, tp: int, work: str) -> tuple[float, float]:
    """(the restore, the sha256 verification within it) in seconds."""
    from launch.local import free_port

    over = [*_overrides(args, work, stage, tp), f"checkpoint.resume={tag_dir}"]
    script = Path(work) / "rank.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           str(script), str(REPO / args.config), json.dumps(over)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"restore into ZeRO {stage} / tensor {tp} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESTORE_SECONDS"))
    verified = re.search(r"\[pretrain\] verified .* in ([0-9.]+) s", proc.stdout)
    return float(line.split()[1]), float(verified.group(1)) if verified else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/gpt/gpt2-124m.yaml")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--stage", type=int, default=1, help="ZeRO stage the checkpoint is saved with")
    p.add_argument("--tp", type=int, default=1, help="tensor size the checkpoint is saved with")
    p.add_argument("--targets", default="1,0,2,3", help="ZeRO stages to resume into (2 ranks, tensor --tp)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--save", action="store_true", help="also time saving: hashes by every rank vs rank 0 alone")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "launch.cli", "train", str(REPO / args.config),
               *_overrides(args, str(run_dir), args.stage, args.tp), "--nproc", "2"]
        subprocess.run(cmd, cwd=REPO, env=_env(), check=True, capture_output=True, timeout=1800)
        tag_dir = run_dir / "checkpoints" / "step00000001"
        size = sum(f.stat().st_size for f in tag_dir.rglob("*.pt"))
        results = []
        for stage in (int(s) for s in args.targets.split(",")):
            runs = [_restore_seconds(args, tag_dir, stage, args.tp, str(Path(tmp) / f"t{stage}-{i}"))
                    for i in range(args.repeats)]
            times = [t for t, _ in runs]
            same = stage == args.stage
            results.append({"target_zero_stage": stage, "tensor_size": args.tp, "path": "deepspeed" if same else "reshard",
                            "restore_s": min(times), "all_s": times,
                            "of_which_verify_s": runs[times.index(min(times))][1]})
        save = _save_seconds(args, tag_dir, str(Path(tmp) / "save")) if args.save else None
    out = {"bench": "resume", "config": args.config, "seq_len": args.seq_len, "saved_zero_stage": args.stage,
           "saved_tensor_size": args.tp, "world": 2, "checkpoint_bytes": size, "results": results}
    if save:
        out["save"] = {"parallel_hashing_s": min(save["parallel"]), "rank0_hashing_s": min(save["rank0"]),
                       "all_s": {k: save[k] for k in ("parallel", "rank0")}, "checkpoint_bytes": save["bytes"]}
    print(json.dumps(out, indent=2))
    base = next((r["restore_s"] for r in results if r["path"] == "deepspeed"), None)
    for r in results:
        rel = f" ({r['restore_s'] / base:.1f}x DeepSpeed's own load)" if base and r["path"] == "reshard" else ""
        print(f"ZeRO {args.stage} -> {r['target_zero_stage']}: {r['path']} restore {r['restore_s']:.2f} s{rel}, "
              f"of which sha256 verification {r['of_which_verify_s']:.2f} s")
    if save:
        s = out["save"]
        print(f"save ZeRO {args.stage}: hashes by every rank {s['parallel_hashing_s']:.2f} s, by rank 0 alone "
              f"{s['rank0_hashing_s']:.2f} s ({s['checkpoint_bytes'] / 2**30:.2f} GiB)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
