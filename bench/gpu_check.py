"""The prepared GPU check (issue 16): one run on one GPU, all figures in one JSON summary.

    bench/gpu_check.sh --out DIR              # one GPU: under 8 minutes on an H100
    bench/gpu_check.sh --out DIR --cpu-smoke  # the same checks, tiny, on CPU (part of the test suite)

Checks, each in its own subprocess with its own timeout; a failure or a timeout is recorded in
``DIR/summary.json`` and the next check runs. Every check's output is in ``DIR/<check>.log``.

- ``versions``: python, torch, CUDA, cuDNN, NCCL, DeepSpeed, the device and its peak FLOP/s entry.
- ``sdpa_kernel``: which scaled-dot-product-attention kernel our attention runs on (GPT-2 124M
  and Llama-1.3B shapes, bf16, forward + backward; the target is flash or cuDNN).
- ``zero_resume``: ZeRO 0-3 in bf16 (``train.deterministic``): 6 steps straight against 3 steps,
  then a resume from the step-3 checkpoint for 3 more; steps 4-6 must match bit for bit.
- ``fp16``: an fp16 run whose loss scale starts at 2^24 (smoke: 2^21) skips steps while the scale
  falls and must not stop itself (``train.max_nonfinite_in_row=3``).
- ``throughput``: ``bench/train_throughput.py --gpu`` for GPT-2 124M (seq 1024) and the 1.3B
  Llama (seq 2048), eager and ``train.compile``: MFU in both counts, against the targets.
- ``train_mfu``: the same two models through ``pretrain train`` (synthetic data, 4 accumulated
  micro-batches, ZeRO 1), eager and compiled; MFU from the trainer's own last log line.

The checks run in this order until ``--budget`` seconds are spent; what is left is marked skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"gpt2-124m": 0.45, "llama-1.3b": 0.48}  # MFU, 6N + 12 L H T count, one H100, bf16

# (name, config, overrides) of the MFU models, as train_throughput.py's GPU cases
GPU_MODELS = [
    ("gpt2-124m", "configs/gpt/gpt2-124m.yaml", ["train.micro_batch_size=16", "data.seq_len=1024"]),
    ("llama-1.3b", "configs/gpt/llama-1.3b.yaml", ["train.micro_batch_size=4", "data.seq_len=2048"]),
]
SMOKE_MODELS = [("gpt-debug", "configs/gpt/debug.yaml", ["train.micro_batch_size=2", "data.seq_len=32"])]


# ------------------------------------------------------------------------------------------------
# running things
# ------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, out: Path, smoke: bool, budget: float):
        self.out, self.smoke, self.deadline = out, smoke, time.monotonic() + budget
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false",
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        if smoke:  # tiny CPU dry run: dynamo without inductor's C++ compiles, a made-up peak for MFU
            self.env.setdefault("PRETRAIN_COMPILE_BACKEND", "eager")
            self.env.setdefault("PRETRAIN_PEAK_FLOPS", "1e10")
            self.env.setdefault("OMP_NUM_THREADS", "1")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], timeout: float, until: str | None = None) -> dict:
        """One subprocess: returncode, seconds, output tail; its full output in ``<name>.log``.
        ``until``: stop it (returncode 0) as soon as its output matches this regex -- a training
        run's last log line, when its final checkpoint would only cost time."""
        timeout = max(1.0, min(timeout, self.left()))
        started = time.monotonic()
        log = self.out / f"{name}.log"
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            code = None
            while code is None:
                try:
                    code = proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if until and re.search(until, log.read_text(errors="replace"), re.M):
                        os.killpg(proc.pid, 9)
                        proc.wait()
                        code = 0
                    elif time.monotonic() - started > timeout:
                        os.killpg(proc.pid, 9)
                        proc.wait()
                        code = "timeout"
        text = log.read_text(errors="replace")
        return {"returncode": code, "seconds": round(time.monotonic() - started, 1), "log": log.name,
                "tail": text[-1500:] if code != 0 else ""}

    def train(self, name: str, config: str, overrides: list[str], timeout: float, fp16_on_cpu: bool = False,
              until: str | None = None) -> dict:
        cmd = [sys.executable, "-m", "launch.cli", "train", config, *overrides]
        if fp16_on_cpu:  # DeepSpeed refuses fp16 on CPUs without fp16 kernels; the smoke lifts that gate only
            cmd = [sys.executable, str(Path(__file__).resolve()), "--train-with-cpu-fp16", config, *overrides]
        return self.run(name, cmd, timeout, until)


def _metrics(run_dir: Path) -> dict[int, dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def _common(run_dir: Path, steps: int) -> list[str]:
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", "tracking.enabled=false", "data.source=synthetic",
            "data.path=null", "data.num_workers=0", "train.eval_every=0"]


# ------------------------------------------------------------------------------------------------
# checks (each returns a JSON-able result with "ok": bool)
# ------------------------------------------------------------------------------------------------
def check_versions(r: Runner) -> dict:
    res = r.run("versions", [sys.executable, str(Path(__file__).resolve()), "--probe", "versions",
                             "--out", str(r.out)], 120)
    probe = r.out / "versions.json"
    out = json.loads(probe.read_text()) if probe.exists() else {}
    return {**out, "run": res, "ok": res["returncode"] == 0 and (r.smoke or out.get("cuda_available", False))}


def check_sdpa(r: Runner) -> dict:
    res = r.run("sdpa_kernel", [sys.executable, str(Path(__file__).resolve()), "--probe", "sdpa",
                                "--out", str(r.out)] + (["--cpu-smoke"] if r.smoke else []), 180)
    probe = r.out / "sdpa.json"
    out = json.loads(probe.read_text()) if probe.exists() else {}
    fused = all(k in ("flash", "cudnn") for k in out.get("kernels", {}).values()) and bool(out.get("kernels"))
    return {**out, "run": res, "ok": res["returncode"] == 0 and (r.smoke or fused)}


def check_zero_resume(r: Runner, work: Path) -> dict:
    stages = [3] if r.smoke else [0, 1, 2, 3]
    config = "configs/gpt/debug-llama.yaml"
    extra = ["parallel.precision=bf16", "train.deterministic=true", "checkpoint.every=3", "train.log_every=1",
             "train.micro_batch_size=2", "data.seq_len=32"] + (["model.num_layers=1"] if r.smoke else [])

    def straight(stage):
        run_dir = work / f"zero{stage}_straight"
        return r.train(f"zero{stage}_straight", config, [*_common(run_dir, 6), *extra, f"parallel.zero_stage={stage}"],
                       240)

    def resumed(stage):
        src = work / f"zero{stage}_straight" / "checkpoints" / "step00000003"
        run_dir = work / f"zero{stage}_resumed"
        return r.train(f"zero{stage}_resumed", config, [*_common(run_dir, 6), *extra, f"parallel.zero_stage={stage}",
                                                         f"checkpoint.resume={src}"], 240)

    jobs = 1 if r.smoke else len(stages)  # tiny models: the stages share the GPU
    with ThreadPoolExecutor(jobs) as pool:
        first = dict(zip(stages, pool.map(straight, stages)))
        second = dict(zip(stages, pool.map(resumed, stages)))
    result = {}
    for stage in stages:
        a, b = _metrics(work / f"zero{stage}_straight"), _metrics(work / f"zero{stage}_resumed")
        la, lb = [a.get(s, {}).get("loss") for s in (4, 5, 6)], [b.get(s, {}).get("loss") for s in (4, 5, 6)]
        resumed_at = min(b) if b else None
        result[str(stage)] = {"straight": first[stage], "resumed": second[stage], "losses_straight": la,
                              "losses_resumed": lb, "resumed_at_step": resumed_at,
                              "match": bool(b) and resumed_at == 4 and la == lb and None not in la}
    return {"stages": result, "ok": all(v["match"] for v in result.values())}


def check_fp16(r: Runner, work: Path) -> dict:
    name, config, overrides = (SMOKE_MODELS if r.smoke else GPU_MODELS)[0]
    run_dir = work / "fp16"
    steps, power = (9, 21) if r.smoke else (14, 24)  # the debug model stops overflowing near 2^17
    res = r.train("fp16", config, [*_common(run_dir, steps), *overrides, "train.global_batch_size=null",
                                   "parallel.precision=fp16",
                                   "parallel.zero_stage=1", f"deepspeed.fp16.initial_scale_power={power}",
                                   "train.max_nonfinite_in_row=3", "train.log_every=1"], 240, fp16_on_cpu=r.smoke)
    recs = _metrics(run_dir)
    skipped = [s for s, rec in sorted(recs.items()) if rec["skipped"]]
    final = recs.get(steps, {}).get("loss")
    return {"model": name, "run": res, "skipped_steps": skipped, "final_loss": final,
            "ok": res["returncode"] == 0 and len(skipped) >= 3 and final is not None}


def check_throughput(r: Runner) -> dict:
    out = r.out / "throughput.json"
    cmd = [sys.executable, "bench/train_throughput.py", "--variants", "compiled" if r.smoke else "eager,compiled",
           "--no-plain", "--sequential", "--out", str(out)]
    cmd += (["--only", "gpt-debug", "--steps", "2", "--rounds", "1", "--warmup", "1"] if r.smoke else
            ["--gpu", "--only", ",".join(m for m, _, _ in GPU_MODELS), "--steps", "10", "--rounds", "3", "--warmup",
             "3"])
    res = r.run("throughput", cmd, 300)
    rows = json.loads(out.read_text()) if out.exists() else []
    models = {}
    for row in rows:
        target = TARGETS.get(row["model"])
        entry = {k: row.get(k) for k in ("tokens_per_step", "deepspeed_step_ms", "deepspeed_compiled_step_ms",
                                         "mfu_6n_12lht_deepspeed", "mfu_causal_exact_deepspeed",
                                         "mfu_6n_12lht_deepspeed_compiled", "mfu_causal_exact_deepspeed_compiled",
                                         "deepspeed_peak_gib", "deepspeed_compiled_peak_gib", "compiled_speedup")}
        best = max((v for k, v in entry.items() if k.startswith("mfu_6n") and v is not None), default=None)
        entry.update({"target_mfu_6n_12lht": target, "target_met": None if target is None or best is None
                      else best >= target})
        models[row["model"]] = entry
    return {"run": res, "models": models, "ok": res["returncode"] == 0 and len(rows) == (1 if r.smoke else 2)}


STEP_LINE = re.compile(r"^step\s+(\d+) \| .* \| ([\d,]+) tok/s \| mfu (?:([\d.]+)% \(6N\+12LHT\) ([\d.]+)% \(causal "
                       r"exact\)|n/a) \| (\d+) ms/step \| mem ([\d.]+) GB", re.M)


def check_train_mfu(r: Runner, work: Path) -> dict:
    models = SMOKE_MODELS if r.smoke else GPU_MODELS
    steps, log_every = (4, 2) if r.smoke else (20, 10)
    result = {}
    for compiled in (True,) if r.smoke else (False, True):
        for name, config, overrides in models:
            key = f"{name}{'_compiled' if compiled else ''}"
            run_dir = work / f"mfu_{key}"
            accum = ["train.global_batch_size=" + str(4 * int(o.split("=")[1])) for o in overrides
                     if o.startswith("train.micro_batch_size=")]
            res = r.train(f"mfu_{key}", config, [*_common(run_dir, steps), *overrides, *accum,
                                                 "parallel.zero_stage=1", "parallel.precision=" +
                                                 ("fp32" if r.smoke else "bf16"), f"train.log_every={log_every}",
                                                 f"train.compile={compiled}", "checkpoint.every=0"], 300,
                          until=rf"^step\s+{steps} \|")  # the figures are out; skip the final checkpoint
            lines = STEP_LINE.findall((r.out / res["log"]).read_text(errors="replace"))
            last = lines[-1] if lines else None  # the last window: compilation and warm-up are behind it
            entry = {"run": res}
            if last:
                entry.update({"step": int(last[0]), "tokens_per_s": float(last[1].replace(",", "")),
                              "mfu_6n_12lht": float(last[2]) / 100 if last[2] else None,
                              "mfu_causal_exact": float(last[3]) / 100 if last[3] else None,
                              "ms_per_step": int(last[4]), "memory_gb": float(last[5])})
            target = TARGETS.get(name)
            entry["target_mfu_6n_12lht"] = target
            entry["target_met"] = None if target is None or entry.get("mfu_6n_12lht") is None else \
                entry["mfu_6n_12lht"] >= target
            entry["ok"] = res["returncode"] == 0 and last is not None
            result[key] = entry
    return {"models": result, "ok": all(v["ok"] for v in result.values())}


# ------------------------------------------------------------------------------------------------
# probes (run in their own subprocess)
# ------------------------------------------------------------------------------------------------
def probe_versions(out: Path) -> None:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cudnn": torch.backends.cudnn.version()}
    from importlib import metadata

    missing = []
    for dist in ("deepspeed", "pydantic", "pyyaml", "webdataset", "safetensors", "mlflow", "psutil", "transformers",
                 "sentencepiece", "triton"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist != "triton" or torch.cuda.is_available():
                missing.append(dist)
    info["missing"] = missing
    if torch.cuda.is_available():
        from pretrain.devices import peak_flops

        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        info.update({"device": name, "device_count": torch.cuda.device_count(), "capability": list(props.major_minor
                     if hasattr(props, "major_minor") else (props.major, props.minor)),
                     "memory_gib": round(props.total_memory / 2**30, 1), "peak_flops_table": peak_flops(name),
                     "nccl": ".".join(map(str, torch.cuda.nccl.version()))})
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    (out / "versions.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    if missing:
        raise SystemExit(f"missing packages: {missing}")


def _sdpa_kernel_of(model, batch: dict) -> str:
    """The attention kernel the profiler saw in one forward + backward of ``model.loss``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        model.loss(batch).backward()
    names = {e.name for e in prof.events()}
    for op, kernel in (("_scaled_dot_product_cudnn_attention", "cudnn"), ("_flash_attention_for_cpu", "flash-cpu"),
                       ("_scaled_dot_product_flash_attention", "flash"),
                       ("_scaled_dot_product_efficient_attention", "efficient")):
        if any(op in n for n in names):
            return kernel
    return "math"


def probe_sdpa(out: Path, smoke: bool) -> None:
    import torch

    from pretrain.config import load_config
    from pretrain.models import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kernels, shapes = {}, {}
    for name, config, overrides in (SMOKE_MODELS if smoke else GPU_MODELS) + (
            [] if not smoke else [("llama-debug", "configs/gpt/debug-llama.yaml", ["train.micro_batch_size=2",
                                                                                    "data.seq_len=32"])]):
        cfg = load_config(REPO / config, ["data.source=synthetic", "model.num_layers=1", *overrides])
        model = build_model(cfg.model, device=device).to(dtype)
        b, t = cfg.train.micro_batch_size, cfg.data.seq_len
        ids = torch.randint(0, cfg.model.vocab_size, (b, t), device=device)
        kernels[name] = _sdpa_kernel_of(model, {"input_ids": ids, "labels": ids})
        shapes[name] = {"batch": b, "seq": t, "heads": cfg.model.num_heads, "kv_heads": cfg.model.kv_heads,
                        "head_dim": cfg.model.head_dim, "dtype": str(dtype)}
        del model
    info = {"kernels": kernels, "shapes": shapes}
    (out / "sdpa.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


def train_with_cpu_fp16(argv: list[str]) -> int:
    """``pretrain train`` with DeepSpeed's CPU fp16 capability gate lifted (the CPU smoke only: the
    real fp16 engine and loss scaler run; this CPU merely lacks fast fp16 kernels)."""
    from deepspeed.accelerator import get_accelerator

    type(get_accelerator()).is_fp16_supported = lambda self: True
    from launch.cli import main as cli

    return cli(["train", *argv])


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--train-with-cpu-fp16"]:
        return train_with_cpu_fp16(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for summary.json and the logs (default: a temp dir)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny CPU dry run of every check")
    p.add_argument("--budget", type=float, default=None, help="seconds for all checks (default 450 GPU, 900 smoke)")
    p.add_argument("--only", default=None, help="comma-separated check names")
    p.add_argument("--probe", choices=["versions", "sdpa"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.probe == "versions":
        probe_versions(out)
        return 0
    if args.probe == "sdpa":
        probe_sdpa(out, args.cpu_smoke)
        return 0
    import torch

    smoke = args.cpu_smoke or not torch.cuda.is_available()
    if smoke and not args.cpu_smoke:
        print("no GPU here: running the CPU smoke (--cpu-smoke)", flush=True)
    runner = Runner(out, smoke, args.budget if args.budget is not None else (900 if smoke else 450))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-runs-"))
    checks = [("versions", lambda: check_versions(runner)), ("sdpa_kernel", lambda: check_sdpa(runner)),
              ("zero_resume", lambda: check_zero_resume(runner, work)), ("fp16", lambda: check_fp16(runner, work)),
              ("throughput", lambda: check_throughput(runner)), ("train_mfu", lambda: check_train_mfu(runner, work))]
    if args.only:
        keep = set(args.only.split(","))
        checks = [c for c in checks if c[0] in keep]
    summary = {"mode": "cpu-smoke" if smoke else "gpu", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "budget_s": runner.left(), "checks": {}}
    started = time.monotonic()
    for name, check in checks:
        t0 = time.monotonic()
        if runner.left() < 5:
            summary["checks"][name] = {"ok": False, "status": "skipped", "reason": "out of time (--budget)"}
        else:
            try:
                result = check()
                summary["checks"][name] = {**result, "status": "ok" if result["ok"] else "failed"}
            except Exception as e:  # noqa: BLE001 - one broken check must not lose the others' figures
                summary["checks"][name] = {"ok": False, "status": "error", "error": f"{type(e).__name__}: {e}"}
        summary["checks"][name]["seconds"] = round(time.monotonic() - t0, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")  # partial results survive a kill
        print(f"[gpu_check] {name}: {summary['checks'][name]['status']} ({summary['checks'][name]['seconds']} s)",
              flush=True)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    summary["failed"] = [n for n, c in summary["checks"].items() if not c["ok"]]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[gpu_check] summary: {out / 'summary.json'} ({summary['elapsed_s']} s; failed: {summary['failed'] or 'none'})")
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
