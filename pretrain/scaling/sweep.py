"""The sweep driver: one MLflow parent run, its trials dispatched, progress lines while they run.

``<sweep.out>/`` holds ``sweep.yaml`` (the resolved sweep config: what SLURM array tasks and reruns
read), ``sweep.json`` (the parent run id, the tracking store and the plan) and one run dir per trial
(``trial.yaml``, ``train.log``, checkpoints, ``metrics.jsonl``, ``result.json`` once finished).
Rerunning the same sweep reuses the parent run, skips finished trials and resumes killed ones; a
changed config for a trial that already exists is refused (exit 2) rather than mixed in.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data_pipeline.shards import write_json_atomic
from pretrain.config import ConfigError, flatten, to_dict
from pretrain.scaling import dispatch
from pretrain.scaling import trial as T
from pretrain.scaling.spec import SweepSpec, Trial, plan

SWEEP_YAML = "sweep.yaml"
SWEEP_JSON = "sweep.json"


@dataclass
class SweepResult:
    """What ``run_sweep`` did; ``exit_code`` is the CLI's (0 ok, 1 a trial failed, 128+signal stopped)."""

    out: Path
    parent_run_id: str | None
    outcomes: dict[str, T.Outcome] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    exit_code: int = 0
    submitted: list[tuple[str, str]] = field(default_factory=list)  # SLURM (label, job id)


def absolute_uri(uri: str) -> str:
    """A tracking URI every trial process resolves alike, wherever it starts (relative sqlite and
    file paths made absolute)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).absolute())
    return uri


def check_inputs(spec: SweepSpec, trials: list[Trial]) -> None:
    """What would fail every trial, refused before the first: missing shards or val split."""
    from pretrain.config import config_from_dict
    from pretrain.data import build_spec
    from pretrain.evaluation import _no_val_reason

    cfg = config_from_dict(trials[0].config)
    if cfg.data.source == "shards":
        if not (Path(cfg.data.path) / "manifest.json").is_file():
            raise ConfigError([("data.path", cfg.data.path, "no manifest.json there; run `pretrain data ...` first")])
        try:
            build_spec(cfg, "train", 0, 1, train=True)  # shard kind and vocabulary against the model
        except ValueError as e:
            raise ConfigError([("data.path", cfg.data.path, str(e))]) from None
        reason = _no_val_reason(cfg, spec.sweep.nproc // cfg.parallel.tensor_size)
        if reason:
            raise ConfigError([("data.path", cfg.data.path, f"trials end with an evaluation, but {reason}")])


def table(trials: list[Trial]) -> list[str]:
    lines = [f"{'#':>3} {'trial':<24} {'role':<10} {'N':>13} {'D':>17} {'C':>10} {'steps':>9}"]
    for t in trials:
        fork = f"  (fork of {t.fork_of} at step {t.fork_step})" if t.fork_of is not None else ""
        lines.append(f"{t.index:>3} {t.name:<24} {t.role:<10} {t.N:>13,} {t.D:>17,} {t.C:>10.3g} {t.steps:>9}{fork}")
    return lines


class _Progress(dispatch.Report):
    """Prints one line per event and counts finished trials on the parent run."""

    def __init__(self, trials: list[Trial], client, parent: str | None, say: Callable[[str], None],
                 result: SweepResult):
        self.total, self.client, self.parent, self.say, self.result = len(trials), client, parent, say, result
        self.t0: dict[str, float] = {}
        self.lock = threading.Lock()

    def _head(self, trial: Trial) -> str:
        return f"[sweep] {trial.index + 1}/{self.total} {trial.name}"

    def start(self, trial: Trial) -> None:
        self.t0[trial.name] = time.perf_counter()
        done = T.finished(trial)
        if done is None:
            self.say(f"{self._head(trial)}: N={trial.N:,} D={trial.D:,} C={trial.C:.3g} steps={trial.steps} ...")

    def done(self, trial: Trial, outcome: T.Outcome) -> None:
        with self.lock:
            self.result.outcomes[trial.name] = outcome
            loss = "" if outcome.eval_loss is None else f": eval loss {outcome.eval_loss:.4f}"
            if outcome.status == "skipped":
                self.say(f"{self._head(trial)}: skipped (finished{loss})")
                return
            resumed = f", resumed at step {outcome.resumed_at}" if outcome.resumed_at else ""
            self.say(f"{self._head(trial)}: done in {outcome.seconds:.1f} s{resumed}{loss}")
            finished = len(self.result.outcomes)
            if self.client is not None and self.parent:
                self.client.log_metric(self.parent, "trials_finished", finished, step=finished)

    def failed(self, trial: Trial, error: BaseException) -> None:
        with self.lock:
            self.result.failed[trial.name] = str(error)
            self.say(f"{self._head(trial)}: {'stopped' if isinstance(error, T.TrialInterrupted) else 'FAILED'}: {error}")


def _saved_parent(out: Path, uri: str) -> str | None:
    """The parent run id of the sweep already in ``out`` (None: a new sweep)."""
    state = out / SWEEP_JSON
    if not state.is_file():
        return None
    saved = json.loads(state.read_text())
    if saved.get("tracking_uri") != uri:
        raise ConfigError([("tracking.uri", uri, f"{out} belongs to a sweep tracked at {saved.get('tracking_uri')}; "
                                                "use that store or another sweep.out")])
    return saved["parent_run_id"]


def _new_parent(spec: SweepSpec, client, out: Path) -> str:
    exp = client.get_experiment_by_name(spec.base.tracking.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(spec.base.tracking.experiment)
    run = client.create_run(exp_id, run_name=spec.sweep.name, tags={
        "scaling.role": "sweep", "scaling.sweep": spec.sweep.name, "scaling.mode": spec.sweep.mode,
        "scaling.config": str(out / SWEEP_YAML), "scaling.dir": str(out), "N_kind": spec.sweep.n_params})
    client.log_batch(run.info.run_id, params=_params(flatten(spec.sweep.model_dump(mode="json"), "sweep.")))
    return run.info.run_id


def _params(flat: dict) -> list:
    from mlflow.entities import Param

    from pretrain.tracking import truncate_params

    return [Param(k, v) for k, v in truncate_params(flat).items()]


def _write_state(spec: SweepSpec, trials: list[Trial], out: Path, uri: str, parent: str | None) -> None:
    sweep = spec.sweep.model_dump(mode="json")
    sweep["out"] = str(out)
    (out / SWEEP_YAML).write_text(yaml.safe_dump({**to_dict(spec.base), "sweep": sweep}, sort_keys=False))
    write_json_atomic(out / SWEEP_JSON, {
        "name": spec.sweep.name, "parent_run_id": parent, "tracking_uri": uri,
        "experiment": spec.base.tracking.experiment,
        "trials": [{"index": t.index, "name": t.name, "role": t.role, "N": t.N, "D": t.D, "C": t.C, "steps": t.steps,
                    "fork_of": t.fork_of, "fork_step": t.fork_step} for t in trials]})


def _trial_configs(trials: list[Trial], parent: str | None, uri: str, n_kind: str) -> list[str]:
    """Each trial's ``trial.yaml`` text, refusing a trial dir that holds another config (this
    sweep rerun with a changed config, or another sweep's trials)."""
    texts = [T.config_text(t, parent, uri, n_kind) for t in trials]
    for t, text in zip(trials, texts):
        path = t.run_dir / T.CONFIG
        if path.is_file() and (parent is None or path.read_text() != text):
            raise ConfigError([(f"trial {t.name}", str(path), "already exists with another config; rerun with the "
                                                              "config that made it, or use another sweep.out")])
    return texts


class _Stop:
    """Signals during a sweep: remember the first, ask running trials to checkpoint and stop."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.signum = self.signum or signum
        T.stop_running(signal.SIGTERM)

    def install(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}


def run_sweep(spec: SweepSpec, train_cmd: list[str], *, ray_address: str | None = None, launcher: str = "local",
              dry_run: bool = False, only: int | None = None, say: Callable[[str], None] = print,
              python: str = "python", cwd: str | None = None) -> SweepResult:
    """Plan, validate, then run the sweep (see the module docstring). ``only``: run that trial
    index alone (a SLURM array task). Raises ``ConfigError`` before anything starts."""
    trials = plan(spec)
    try:
        check_inputs(spec, trials)
    except ConfigError as e:
        if not dry_run:
            raise
        say(f"[sweep] note: a real run would stop here: {e}")
    out = spec.out
    if only is not None and not 0 <= only < len(trials):
        raise ConfigError([("--trial", only, f"the sweep has trials 0..{len(trials) - 1}")])
    todo = trials if only is None else [trials[only]]
    result = SweepResult(out, None)
    if dry_run:
        say(f"[sweep] {spec.sweep.name}: {len(trials)} runs -> {out} (dry run: nothing started)")
        for line in table(trials):
            say(line)
        if launcher == "slurm":
            for label, script in dispatch.slurm_arrays(spec.sweep, todo, out, python, cwd or os.getcwd()):
                say(f"# --- sbatch script: {label} ---\n{script}")
        return result
    from mlflow import MlflowClient

    from pretrain.tracking import resolve_uri

    uri = absolute_uri(resolve_uri(spec.base.tracking.uri))
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    parent = _saved_parent(out, uri)
    if only is not None and parent is None:
        raise ConfigError([("--trial", only, f"{out}/{SWEEP_JSON} is missing: start the sweep first")])
    _trial_configs(trials, parent, uri, spec.sweep.n_params)  # refuse a changed sweep before touching MLflow
    if parent is None:
        parent = _new_parent(spec, client, out)
    else:
        client.update_run(parent, status="RUNNING")
    result.parent_run_id = parent
    for t, text in zip(trials, _trial_configs(trials, parent, uri, spec.sweep.n_params)):
        T.write_config(t, text)
    _write_state(spec, trials, out, uri, parent)
    if only is None:
        client.log_artifact(parent, str(out / SWEEP_YAML), "sweep")
        client.log_artifact(parent, str(out / SWEEP_JSON), "sweep")
    left = sum(T.finished(t) is None for t in todo)
    say(f"[sweep] {spec.sweep.name}: {len(todo)} run(s), {left} to go, in {out}; MLflow {uri}, experiment "
        f"{spec.base.tracking.experiment!r}, parent run {parent}")
    if launcher == "slurm":
        result.submitted = dispatch.submit_slurm(dispatch.slurm_arrays(spec.sweep, todo, out, python, cwd or os.getcwd()), out)
        say(f"[sweep] submitted {', '.join(f'{k} array {v}' for k, v in result.submitted)}; rerun this command once "
            "they finish to close the parent run (finished trials are skipped)")
        return result
    job = dispatch.TrialJob(trials, train_cmd, spec.sweep.nproc, uri)
    report = _Progress(trials, client, parent, say, result)
    stop = _Stop()
    old = stop.install()
    try:
        if ray_address:
            for trial, error in dispatch.run_ray(job, todo, report, ray_address, dispatch.resources(spec.sweep),
                                                 lambda: stop.signum is not None):
                result.failed.setdefault(trial.name, str(error))
        else:
            dispatch.run_sequential(job, todo, report, lambda: stop.signum is not None)
    except T.TrialInterrupted:
        pass
    except T.TrialFailed:
        pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return _finish(result, stop.signum, client, parent, trials, only, say)


def _finish(result: SweepResult, signum: int | None, client, parent: str, trials: list[Trial], only: int | None,
            say: Callable[[str], None]) -> SweepResult:
    result.interrupted = signum is not None
    missing = [t.name for t in trials if T.finished(t) is None]
    if result.interrupted:
        result.exit_code = 128 + signum
        status = "KILLED"
        say(f"[sweep] stopped by signal {signum}: {len(missing)} run(s) left; rerun the same command to resume")
    elif result.failed:
        result.exit_code, status = 1, "FAILED"
        say(f"[sweep] {len(result.failed)} trial(s) failed: {', '.join(result.failed)}; rerun to retry them")
    else:
        status = "FINISHED" if not missing else "RUNNING"
        say(f"[sweep] done: {len(trials) - len(missing)}/{len(trials)} runs finished"
            + (f"; fit them with `pretrain scaling fit --run {parent}`" if not missing else ""))
    if only is None and status != "RUNNING":  # an array task leaves the parent to the sweep's last rerun
        client.set_terminated(parent, status)
    return result
