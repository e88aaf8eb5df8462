"""The training loop: DeepSpeed engine x tensor parallel x data parallel, exact resume, MLflow.

``train(cfg)`` runs in every rank. One optimizer step = ``gradient_accumulation_steps`` micro
batches; ranks of one tensor group read the same batches, data-parallel ranks disjoint ones.
Everything a resumed run needs to continue bit-for-bit -- engine (weights, optimizer, LR
schedule), each rank's loader position and RNG states, counters and the MLflow run id -- goes
into the checkpoint (``pretrain.checkpoint``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain import checkpoint as C
from pretrain import distributed as D
from pretrain import faults, signals
from pretrain.config import (
    Config,
    dp_size,
    global_batch,
    global_batch_at,
    grad_accum_steps,
    layout,
    to_yaml,
)
from pretrain.deepspeed_json import deepspeed_config
from pretrain.train_setup import Setup, build_setup, grad_norm, loss_scale_can_fall, to_device
from pretrain.watchdog import Watchdog, default_store


class NonFiniteStop(RuntimeError):
    """Too many non-finite steps in a row; a checkpoint was saved before raising."""


@dataclass
class Result:
    """What a run did, returned by ``train`` (rank 0's view; losses are data-parallel means)."""

    losses: dict[int, float] = field(default_factory=dict)  # step -> loss
    eval: dict[int, dict] = field(default_factory=dict)
    start_step: int = 0
    final_step: int = 0
    skipped_steps: int = 0
    stopped_by: str = "finished"  # finished | signal | nonfinite
    checkpoint: str | None = None
    run_id: str | None = None


def _fault_steps() -> set[int]:
    """Fault injection for tests and drills: ``PRETRAIN_FAULT_NAN_STEPS=3,4`` makes those steps' loss NaN."""
    raw = os.environ.get("PRETRAIN_FAULT_NAN_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


_STEP_SLEEP = float(os.environ.get("PRETRAIN_TEST_STEP_SLEEP", "0") or 0)


class _BackwardFault(torch.autograd.Function):
    """Identity on the loss whose backward fires the ``backward`` fault drill of its step: the
    first node the autograd engine runs, so the drill acts inside the backward pass."""

    @staticmethod
    def forward(ctx, loss, step):
        ctx.step = step
        return loss.view_as(loss)

    @staticmethod
    def backward(ctx, grad):
        faults.at("backward", ctx.step)
        return grad, None


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.s: Setup = build_setup(cfg)
        self.result = Result(run_id=self.s.tracker.run_id)
        self._metrics_file = None
        self.watchdog = Watchdog(cfg.train.hang_timeout_s, D.rank(), D.world_size(), default_store())

    # ------------------------------------------------------------------------------------------
    def run(self) -> Result:
        signals.install()  # pretrain train installed it at start already; train(cfg) callers get it here
        faults.set_steps(self.s.start_step + 1, self.cfg.train.steps)
        self.watchdog.start()
        try:
            return self._run()
        finally:
            self.watchdog.stop()

    def _run(self) -> Result:
        cfg, s, dog = self.cfg, self.s, self.watchdog
        nan_steps = _fault_steps()
        ramp = cfg.train.batch_rampup is not None
        per_sample = s.items_per_step // global_batch(cfg, s.dp_size)  # tokens of a sample (seq_len), or 1 image
        step = s.start_step
        self.result.start_step = self.result.final_step = step
        if self._any_rank(signals.requested() is not None):  # a signal while the job was starting
            self.result.stopped_by = "signal"
            kept = f"the checkpoint of step {step} stays in charge" if step else "no checkpoint yet"
            D.print0(f"[pretrain] stop signal received while starting: nothing new to save ({kept}), exiting cleanly")
            return self.result
        nonfinite_in_row = 0
        t_last, tokens_last = time.perf_counter(), s.tokens_seen
        while step < cfg.train.steps:
            step += 1
            dog.mark(step, "data")
            faults.at("step", step)
            accum = self._accumulation(ramp, per_sample)
            loss_sum = self._micro_batches(step, accum, ramp, per_sample, step in nan_steps)
            s.tokens_seen += accum * cfg.train.micro_batch_size * s.dp_size * per_sample
            if _STEP_SLEEP:
                time.sleep(_STEP_SLEEP)  # test hook: lets a test signal or kill a job mid-run
            skipped = s.engine.skipped_steps > s.skipped_before
            s.skipped_before = s.engine.skipped_steps
            # one small all-reduce: mean loss over data-parallel ranks, and any rank's stop signal (on
            # the compute device: NCCL reduces no CPU tensors)
            stop_flag = torch.tensor([1.0 if signals.requested() else 0.0], dtype=torch.float64, device=s.device)
            stats = torch.cat([(loss_sum / accum).reshape(1), stop_flag])
            dog.mark(step, "all-reduce")
            work = dist.all_reduce(stats, async_op=True) if D.world_size() > 1 else None
            faults.at("collective", step)  # drills: a rank lost while the collective is in flight
            if work is not None:
                work.wait()
            loss_total, stop_total = stats.tolist()  # the step's one host sync
            loss_mean = loss_total / D.world_size()
            stop_requested = stop_total > 0
            self._record(step, loss_mean, skipped)
            if skipped or not math.isfinite(loss_mean):
                # an fp16 overflow skip while the loss scale can still fall is loss scaling settling, not
                # divergence: only non-finite losses and skips at the minimum scale count towards the stop
                if not math.isfinite(loss_mean) or not loss_scale_can_fall(s.engine):
                    nonfinite_in_row += 1
                self.result.skipped_steps += 1
                s.tracker.log_metrics({"train/skipped_steps": self.result.skipped_steps}, step)
            else:
                nonfinite_in_row = 0
                self.result.losses[step] = loss_mean
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                now = time.perf_counter()
                self._log(step, loss_mean, now - t_last, s.tokens_seen - tokens_last, max(1, step - s.last_logged))
                t_last, tokens_last, s.last_logged = now, s.tokens_seen, step
            if cfg.train.eval_every and step % cfg.train.eval_every == 0:
                dog.mark(step, "eval")
                paused = time.perf_counter()
                self.result.eval[step] = self.evaluate(step)
                t_last += time.perf_counter() - paused  # the throughput window counts training only
            if nonfinite_in_row >= cfg.train.max_nonfinite_in_row:
                self._save(step)
                self.result.stopped_by = "nonfinite"
                raise NonFiniteStop(
                    f"{nonfinite_in_row} non-finite steps in a row (last at step {step}); checkpoint saved at "
                    f"{self.result.checkpoint}. Lower optim.lr, check the data, or raise train.max_nonfinite_in_row.")
            if stop_requested:
                self._save(step)
                self.result.stopped_by = "signal"
                D.print0(f"[pretrain] stop signal received: checkpoint saved at step {step}, exiting cleanly")
                break
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
                paused = time.perf_counter()
                self._save(step)
                t_last += time.perf_counter() - paused
        self.result.final_step = step
        if self.result.stopped_by == "finished" and step > s.start_step:
            self._save(step)
        return self.result

    def _micro_batches(self, step: int, accum: int, ramp: bool, per_sample: int, nan: bool) -> torch.Tensor:
        """Forward, backward and DeepSpeed's step for each of the step's micro-batches; their loss sum,
        on the device (no host sync per micro-batch)."""
        s, dog = self.s, self.watchdog
        loss_sum = torch.zeros((), dtype=torch.float64, device=s.device)
        batches = [next(s.train_iter) for _ in range(accum)]
        for i, (batch, weight) in enumerate(zip(batches, self._label_weights(batches, accum))):
            if ramp:  # the boundary from this step's own count, not DeepSpeed's running micro-step count
                s.engine.set_gradient_accumulation_boundary(i == accum - 1)
            dog.mark(step, "forward")
            loss = s.engine(**to_device(batch, s.device, s.float_dtype))
            if weight != 1.0:
                loss = loss * weight
            if nan:
                loss = loss * float("nan")
            if faults.pending("backward", step):
                loss = _BackwardFault.apply(loss, step)
            dog.mark(step, "backward")
            s.engine.backward(loss)
            if i == accum - 1 and step < self.cfg.train.steps:  # the next step's batches load while this one computes
                dog.mark(step, "data")  # a read that hangs is named as one, not as this backward pass
                s.train_iter.prefetch(self._next_accumulation(ramp, per_sample, accum))
            dog.mark(step, "optimizer")
            s.engine.step()
            loss_sum += loss.detach().double()
        return loss_sum

    def _next_accumulation(self, ramp: bool, per_sample: int, accum: int) -> int:
        """Micro-batches of the step after this one of ``accum`` (``_accumulation`` ahead of time,
        without moving DeepSpeed's batch)."""
        cfg, s = self.cfg, self.s
        if not ramp:
            return grad_accum_steps(cfg, s.dp_size)
        unit = cfg.train.micro_batch_size * s.dp_size
        return global_batch_at(cfg, s.dp_size, s.tokens_seen // per_sample + accum * unit) // unit

    def _accumulation(self, ramp: bool, per_sample: int) -> int:
        """Micro-batches of the next step: fixed, or per ``train.batch_rampup`` from the samples
        seen so far (DeepSpeed's global batch is moved along with it)."""
        cfg, s = self.cfg, self.s
        if not ramp:
            return grad_accum_steps(cfg, s.dp_size)
        g = global_batch_at(cfg, s.dp_size, s.tokens_seen // per_sample)
        if g != s.engine.train_batch_size():
            s.engine.set_train_batch_size(g)
        return g // (cfg.train.micro_batch_size * s.dp_size)

    def _label_weights(self, batches: list[dict], accum: int) -> list[float]:
        """Per micro-batch loss weights. BERT's loss is a mean over the micro-batch's masked tokens,
        and their number varies from micro-batch to micro-batch: weighting each by its share of the
        step's masked tokens on all data ranks makes every masked token count the same, as in one
        big batch -- so the loss and gradients do not depend on the data x micro x accumulation
        split (a new layout on resume, more nodes). One scalar all-reduce per step; GPT windows and
        ViT images all weigh the same already."""
        if self.s.family != "bert":
            return [1.0] * len(batches)
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        total = D.all_reduce_scalar(sum(counts), group=self.s.mpu.get_data_parallel_group())
        if total <= 0:
            return [1.0] * len(batches)
        return [c * self.s.dp_size * accum / total for c in counts]

    # ------------------------------------------------------------------------------------------
    def _record(self, step: int, loss: float, skipped: bool) -> None:
        """Rank 0 appends every step to ``<run_dir>/metrics.jsonl`` (a resumed run appends too;
        readers keep the last line per step)."""
        if D.rank() != 0:
            return
        if self._metrics_file is None:
            self._metrics_file = open(Path(self.cfg.train.run_dir) / "metrics.jsonl", "a")  # noqa: SIM115
        line = {"step": step, "loss": loss if math.isfinite(loss) else None, "skipped": bool(skipped),
                "tokens_seen": self.s.tokens_seen}
        self._metrics_file.write(json.dumps(line) + "\n")
        self._metrics_file.flush()

    def _log(self, step: int, loss: float, seconds: float, items: int, steps: int) -> None:
        s = self.s
        lr = s.engine.get_lr()[0] if s.engine.get_lr() else 0.0
        gnorm = grad_norm(s.engine)
        rate = items / seconds if seconds > 0 else 0.0
        # two counts (pretrain.models.flops): the published one, 6N + 12 L H T per token (full attention),
        # and ours with causal attention counted exactly; None: peak unknown (CPU, unlisted device)
        mfu_6n = s.flops_per_item_anchor * rate / s.peak_flops if s.peak_flops else None
        mfu_exact = s.flops_per_item * rate / s.peak_flops if s.peak_flops else None
        mfu = "n/a" if mfu_6n is None else f"{mfu_6n * 100:.1f}% (6N+12LHT) {mfu_exact * 100:.1f}% (causal exact)"
        mem = s.memory_gb()
        unit = "img" if s.family == "vit" else "tok"
        D.print0(f"step {step:>7d} | loss {loss:.4f} | lr {lr:.3e} | gnorm {gnorm:.3f} | {rate:,.0f} {unit}/s | "
                 f"mfu {mfu} | {seconds / steps * 1000:.0f} ms/step | mem {mem:.2f} GB | "
                 f"{unit}s {s.tokens_seen:,}")
        metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": gnorm, f"train/{unit}_per_s": rate,
                   "train/step_time_s": seconds / steps, "train/memory_gb": mem, f"train/{unit}s_seen": s.tokens_seen}
        if mfu_6n is not None:
            metrics["train/mfu_6n_12lht"], metrics["train/mfu_causal_exact"] = mfu_6n, mfu_exact
        s.tracker.log_metrics(metrics, step)

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (one small all-reduce)."""
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.s.device)
        if D.world_size() > 1:
            dist.all_reduce(t)
        return bool(t.item() > 0)

    def evaluate(self, step: int) -> dict:
        from pretrain.evaluation import evaluate

        started = time.perf_counter()
        metrics = evaluate(self.s, self.cfg, on_batch=lambda: self.watchdog.mark(step, "eval"))
        if metrics:
            D.print0(f"eval  {step:>7d} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                     + f" | {time.perf_counter() - started:.1f} s")
            self.s.tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step)
        return metrics

    def _save(self, step: int) -> None:
        s, cfg = self.s, self.cfg
        self.watchdog.mark(step, "checkpoint")
        state = {
            "step": step, "tokens_seen": s.tokens_seen, "skipped_steps": self.result.skipped_steps,
            "started_from_step": s.start_step, "resumed_from": str(s.resume_dir) if s.resume_dir else None,
            **layout(cfg, D.world_size()),
            "mlflow_run_id": s.tracker.run_id, "family": s.family,
            "last_loss": self.result.losses.get(step), "command": " ".join(sys.argv),
        }
        shared: dict[str, bytes] = {}
        if D.rank() == 0:  # C.save writes rank 0's shared files only: the other ranks need not build them
            shared = {
                "config.yaml": to_yaml(cfg).encode(),
                "deepspeed.json": _json_bytes(deepspeed_config(cfg, D.world_size())),
                "trainer_state.json": _json_bytes(state),
                "data.json": _json_bytes(s.data_info),
            }
            tok = C.copy_if_exists(s.data_info.get("tokenizer_path"))  # local or remote: a GET per save
            if tok is not None:
                shared["tokenizer.model"] = tok
        tag_dir = C.save(s.engine, cfg.train.run_dir, step,
                         rank_files={"loader": s.train_loader.state_dict(), "rng": C.rng_state()},
                         shared_files=shared, keep_last=cfg.checkpoint.keep_last,
                         progress=lambda: self.watchdog.mark(step, "checkpoint"))
        self.result.checkpoint = str(tag_dir)
        D.print0(f"[pretrain] checkpoint {tag_dir}")


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _write_pids(run_dir: str) -> None:
    """``<run_dir>/pids.json``: global rank -> (host-local) pid, for operators and drills."""
    pids = [None] * D.world_size()
    if D.world_size() > 1:
        dist.all_gather_object(pids, os.getpid())
    else:
        pids = [os.getpid()]
    if D.rank() == 0:
        from data_pipeline.shards import write_json_atomic

        write_json_atomic(Path(run_dir) / "pids.json", {str(r): p for r, p in enumerate(pids)})


def train(cfg: Config) -> Result:
    """Train per ``cfg`` in this rank (call it in every rank). Returns the run's ``Result``."""
    signals.install()
    D.init_distributed()
    faults.install(D.rank())
    dp_size(cfg, D.world_size())  # the batch identity must hold for this world
    Path(cfg.train.run_dir).mkdir(parents=True, exist_ok=True)
    _write_pids(cfg.train.run_dir)
    trainer = Trainer(cfg)
    status = "FINISHED"
    try:
        result = trainer.run()
        trainer.s.tracker.log_loss_plot()
        trainer.s.tracker.log_artifact(str(Path(cfg.train.run_dir) / "metrics.jsonl"), "metrics")
        return result
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if trainer.result.stopped_by == "signal":
            status = "KILLED"
        trainer.s.tracker.end(status)
