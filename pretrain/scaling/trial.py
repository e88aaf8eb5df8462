"""One trial: an ordinary ``pretrain train`` process in the trial's run dir, a child run in MLflow.

Rerunning is safe at every point: a trial with ``result.json`` is finished and skipped; a trial
with a checkpoint short of its steps resumes from it (``checkpoint.resume=auto``); a trial whose
last checkpoint is at its final step is only collected, never trained again. A WSD fork without a
checkpoint of its own starts from its stable run's checkpoint at the fork step as a new run
(``checkpoint.fork=true``: weights, optimizer, step and data position carry over, the MLflow run
is its own); a WSD stable run trains segment by segment to each fork step.

The process gets SIGTERM when the sweep is stopped: it saves a checkpoint and exits, and the trial
reports ``TrialInterrupted`` (its checkpoint is short of the target).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from data_pipeline.shards import write_json_atomic
from pretrain import checkpoint as C
from pretrain.scaling.spec import Trial

RESULT = "result.json"
CONFIG = "trial.yaml"
LOG = "train.log"
POLL_S = 0.2

_RUNNING: set[subprocess.Popen] = set()
_STOPPING = {"signal": None}  # set once this process has asked its trials to stop


class TrialFailed(RuntimeError):
    """The training process failed; the message carries the end of its log."""


class TrialInterrupted(RuntimeError):
    """The training process stopped (signal) before the trial's last step; rerun to resume."""


@dataclass
class Outcome:
    name: str
    status: str  # finished | skipped
    eval_loss: float | None
    run_id: str | None
    seconds: float = 0.0
    resumed_at: int | None = None  # the step a killed trial resumed from


def stop_running(signum: int = signal.SIGTERM) -> None:
    """Pass ``signum`` to every training process of this process (they checkpoint and exit)."""
    _STOPPING["signal"] = signum
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.send_signal(signum)


def config_text(trial: Trial, parent_run_id: str | None, uri: str, n_kind: str) -> str:
    """The trial's full training config (YAML), tagged as a child run of the sweep's parent."""
    cfg = json.loads(json.dumps(trial.config))
    tags = {**cfg["tracking"].get("tags", {}), **trial.tags(n_kind)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    cfg["tracking"].update({"uri": uri, "run_name": trial.name, "tags": tags})
    cfg["checkpoint"]["resume"] = "auto"
    return yaml.safe_dump(cfg, sort_keys=False)


def write_config(trial: Trial, text: str) -> Path:
    """``<run_dir>/trial.yaml`` (rewritten only when it changes)."""
    path = trial.run_dir / CONFIG
    trial.run_dir.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(CONFIG + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def finished(trial: Trial) -> dict | None:
    p = trial.run_dir / RESULT
    return json.loads(p.read_text()) if p.is_file() else None


def still_running(trial: Trial) -> list[int]:
    """Pids of this machine's processes still training ``trial`` (a sweep killed hard leaves its
    trial running; a second one in the same run dir would corrupt it). Read from ``pids.json``,
    kept only when the process's command line names this trial's config."""
    try:
        pids = json.loads((trial.run_dir / "pids.json").read_text()).values()
    except (OSError, ValueError):
        return []
    alive = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if str(trial.run_dir / CONFIG) in cmdline:
            alive.append(int(pid))
    return alive


def _step(tag_dir: Path | None) -> int:
    return int(C.read_json(tag_dir, "trainer_state.json")["step"]) if tag_dir else 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the sweep that started it dies, even by
    SIGKILL, so the trial checkpoints and exits instead of training on as an orphan."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _train(trial: Trial, train_cmd: list[str], nproc: int, overrides: list[str], env: dict | None) -> None:
    """Run one training process to completion; raise on failure."""
    cmd = [*train_cmd, str(trial.run_dir / CONFIG), *overrides] + (["--nproc", str(nproc)] if nproc > 1 else [])
    log = trial.run_dir / LOG
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        # its own session: a terminal's Ctrl-C reaches the sweep, which asks the trial to checkpoint
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True, preexec_fn=_die_with_parent)
        _RUNNING.add(proc)
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:  # the sweep itself is dying: do not leave an orphan training
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            _RUNNING.discard(proc)
    if proc.returncode != 0 and _STOPPING["signal"] is not None:  # stopped while starting up: nothing to save yet
        raise TrialInterrupted(f"trial {trial.name} was stopped (exit {proc.returncode}); rerun the sweep to resume it")
    if proc.returncode != 0:
        raise TrialFailed(f"trial {trial.name}: `pretrain train` exited {proc.returncode}; end of {log}:\n"
                          f"{_tail(log)}")


def _train_to(trial: Trial, target: int, train_cmd: list[str], nproc: int, env: dict | None,
              fork_from: Path | None = None) -> int | None:
    """Train ``trial`` until its checkpoint is at step ``target``; returns the step it resumed at
    (None for a fresh start or nothing to do)."""
    own = C.latest(trial.run_dir)
    at = _step(own)
    if at >= target:
        return None
    overrides = [f"train.steps={target}"]
    if own is None and fork_from is not None:
        overrides += [f"checkpoint.resume={fork_from}", "checkpoint.fork=true"]
    _train(trial, train_cmd, nproc, overrides, env)
    reached = _step(C.latest(trial.run_dir))
    if reached < target:
        raise TrialInterrupted(f"trial {trial.name} stopped at step {reached}/{target}; rerun the sweep to resume it")
    return at or None


def _fork_source(trial: Trial, stable: Trial) -> Path:
    tag_dir = C.checkpoints_root(stable.run_dir) / C.tag_for(trial.fork_step)
    if not (tag_dir / C.COMPLETE).is_file():
        raise TrialFailed(f"trial {trial.name}: its stable run {stable.name} has no complete checkpoint at step "
                          f"{trial.fork_step} ({tag_dir}); rerun the sweep so that the stable run makes it")
    return tag_dir


def final_eval_loss(uri: str, run_id: str, step: int) -> float:
    from mlflow import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, "eval/loss")
    at_end = [m.value for m in history if m.step == step]
    if not at_end:
        raise TrialFailed(f"MLflow run {run_id} has no eval/loss at step {step} (is there a val split?)")
    return float(at_end[-1])


def run_trial(trial: Trial, train_cmd: list[str], nproc: int, uri: str, stable: Trial | None = None,
              env: dict | None = None) -> Outcome:
    """Run (or resume, or skip) ``trial``; ``stable`` is the WSD run a fork branches from."""
    done = finished(trial)
    if done:
        return Outcome(trial.name, "skipped", done.get("eval_loss"), done.get("run_id"))
    running = still_running(trial)
    if running:
        raise TrialFailed(f"trial {trial.name} is still being trained by pid(s) {running} (an earlier sweep that was "
                          "killed hard?); stop them or wait, then rerun")
    started = time.perf_counter()
    resumed = None
    if trial.role == "wsd-stable":
        for segment in trial.segments:
            resumed = _train_to(trial, segment, train_cmd, nproc, env) or resumed
    else:
        fork = _fork_source(trial, stable) if stable is not None and C.latest(trial.run_dir) is None else None
        resumed = _train_to(trial, trial.steps, train_cmd, nproc, env, fork_from=fork)
    state = C.read_json(C.latest(trial.run_dir), "trainer_state.json")
    run_id = state.get("mlflow_run_id")
    if not run_id:
        raise TrialFailed(f"trial {trial.name}: its checkpoint names no MLflow run (was the store reachable?)")
    loss = None
    if trial.role == "trial":
        loss = final_eval_loss(uri, run_id, trial.steps)
        from mlflow import MlflowClient

        MlflowClient(uri).set_tag(run_id, "final_eval_loss", f"{loss:.6f}")
    write_json_atomic(trial.run_dir / RESULT, {
        "name": trial.name, "role": trial.role, "run_id": run_id, "eval_loss": loss, "steps": trial.steps,
        "N": trial.N, "N_total": trial.N_total, "N_non_embedding": trial.N_non_embedding, "D": trial.D,
        "C": trial.C, "seed": trial.seed, "tokens_seen": state.get("tokens_seen")})
    return Outcome(trial.name, "finished", loss, run_id, time.perf_counter() - started, resumed)
