"""Where a sweep's trials run: one after another here, as Ray tasks, or as a SLURM job array.

All three run the same unit, ``TrialJob.run(trial)`` (``trial.run_trial``: skip, resume or start
one ``pretrain train`` with ``sweep.nproc`` local ranks), so a trial behaves the same wherever it
runs, and a SLURM array task is just ``pretrain sweep <out>/sweep.yaml --trial I``. A WSD fork
waits for its stable run: it comes later in the sequential order, takes the stable run's Ray
task as an argument, and sits in a second array submitted with ``--dependency=afterok``.

Multi-node trials (one trial over several nodes) are not covered: a trial's ranks are local to one
machine (or one Ray task, or one SLURM array task on one node).
"""

from __future__ import annotations

import math
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pretrain.scaling.spec import SweepSection, Trial
from pretrain.scaling.trial import Outcome, TrialFailed, TrialInterrupted, run_trial, stop_running


@dataclass
class TrialJob:
    """What every dispatcher needs to run any trial of one sweep (picklable, for Ray)."""

    trials: list[Trial]  # the whole plan: forks find their stable run by index
    train_cmd: list[str]
    nproc: int
    uri: str

    def run(self, trial: Trial) -> Outcome:
        stable = self.trials[trial.fork_of] if trial.fork_of is not None else None
        return run_trial(trial, self.train_cmd, self.nproc, self.uri, stable)


class Report:
    """Progress callbacks of a dispatch (the sweep driver prints lines and updates the parent run)."""

    def start(self, trial: Trial) -> None: ...
    def done(self, trial: Trial, outcome: Outcome) -> None: ...
    def failed(self, trial: Trial, error: BaseException) -> None: ...


def run_sequential(job: TrialJob, todo: list[Trial], report: Report, stopped: Callable[[], bool]) -> None:
    """Trials one after another in plan order; stops at the first failure or interruption."""
    for trial in todo:
        if stopped():
            raise TrialInterrupted("the sweep was stopped before the next trial; rerun it to go on")
        report.start(trial)
        try:
            outcome = job.run(trial)
        except (TrialFailed, TrialInterrupted) as e:
            report.failed(trial, e)
            raise
        report.done(trial, outcome)


# ----------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------
def _ray_trial(job: TrialJob, index: int, *_dependencies) -> Outcome:
    """One Ray task: one trial (its dependencies are the stable runs it forks from)."""
    try:
        return job.run(job.trials[index])
    except KeyboardInterrupt:  # ray.cancel: let the training process checkpoint first
        stop_running()
        raise


def resources(s: SweepSection) -> dict:
    """A trial's Ray resources: what its ``nproc`` ranks need."""
    return {"num_cpus": s.nproc * s.cpus_per_rank, "num_gpus": s.nproc * s.gpus_per_rank}


def run_ray(job: TrialJob, todo: list[Trial], report: Report, address: str, task_resources: dict,
            stopped: Callable[[], bool]) -> list[tuple[Trial, BaseException]]:
    """One Ray task per trial on the cluster at ``address`` (``local``: an embedded Ray on this
    machine); returns the trials that failed. A failed stable run fails its forks."""
    import ray

    own = not ray.is_initialized()
    if own:
        kwargs = {"include_dashboard": False, "log_to_driver": False} if address == "local" else {"address": address}
        ray.init(ignore_reinit_error=True, configure_logging=False, **kwargs)
    failures: list[tuple[Trial, BaseException]] = []
    try:
        task = ray.remote(_ray_trial)
        refs: dict[int, object] = {}
        pending: dict[object, Trial] = {}
        for trial in todo:
            deps = [refs[i] for i in trial.depends_on if i in refs]
            ref = task.options(name=trial.name, max_retries=0, **task_resources).remote(job, trial.index, *deps)
            refs[trial.index] = ref
            pending[ref] = trial
            report.start(trial)
        while pending:
            if stopped():
                for ref in pending:
                    ray.cancel(ref)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                trial = pending.pop(ref)
                try:
                    report.done(trial, ray.get(ref))
                except Exception as e:
                    cause = getattr(e, "cause", None) or e
                    report.failed(trial, cause)
                    failures.append((trial, cause))
    finally:
        if own:
            ray.shutdown()
    return failures


# ----------------------------------------------------------------------------------------------
# SLURM job arrays
# ----------------------------------------------------------------------------------------------
def array_spec(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    parts, run = [], [indices[0]]
    for i in indices[1:]:
        if i == run[-1] + 1:
            run.append(i)
        else:
            parts.append(run)
            run = [i]
    parts.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts)


STABLE_JOB = "{STABLE_JOB_ID}"


def slurm_arrays(s: SweepSection, todo: list[Trial], out: Path, python: str, cwd: str) -> list[tuple[str, str]]:
    """(label, sbatch script) per array: ``trials``, or for WSD ``stable`` then ``forks`` (whose
    script depends on ``{STABLE_JOB_ID}``, replaced by the stable array's job id on submission)."""
    stable = [t.index for t in todo if t.role == "wsd-stable"]
    rest = [t.index for t in todo if t.role != "wsd-stable"]
    groups = [("stable", stable, None), ("forks", rest, STABLE_JOB)] if stable else [("trials", rest, None)]
    return [(label, _sbatch(s, label, idx, dep, out, python, cwd)) for label, idx, dep in groups if idx]


def _sbatch(s: SweepSection, label: str, indices: list[int], dependency: str | None, out: Path, python: str,
            cwd: str) -> str:
    o = s.slurm
    throttle = f"%{o.max_parallel}" if o.max_parallel else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=sweep-{s.name}-{label}", f"#SBATCH --array={array_spec(indices)}{throttle}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={math.ceil(s.nproc * s.cpus_per_rank)}"]
    gpus = math.ceil(s.nproc * s.gpus_per_rank)
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    lines += [f"#SBATCH --time={o.time}", f"#SBATCH --output={out}/slurm/%x-%A_%a.out",
              "#SBATCH --signal=B:USR1@300"]  # time to checkpoint before the limit; a rerun resumes
    lines += [f"#SBATCH --partition={o.partition}"] * bool(o.partition) + [f"#SBATCH --account={o.account}"] * bool(o.account)
    if dependency:
        lines.append(f"#SBATCH --dependency=afterok:{dependency}")
    lines += [f"#SBATCH {x}" for x in o.extra]
    lines += ["", f"# one trial of sweep {s.name} per array task: `pretrain train` with {s.nproc} local rank(s); rerunning",
              "# the array (or `pretrain sweep`) skips finished trials and resumes killed ones from their checkpoints",
              f"cd {shlex.quote(cwd)}",
              f"exec {shlex.quote(python)} -m launch.sweep_cli {shlex.quote(str(out / 'sweep.yaml'))} "
              '--trial "$SLURM_ARRAY_TASK_ID"', ""]
    return "\n".join(lines)


def submit_slurm(arrays: list[tuple[str, str]], out: Path) -> list[tuple[str, str]]:
    """Write each script under ``<out>/slurm/`` and ``sbatch`` it; returns (label, job id)."""
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str]] = []
    for label, script in arrays:
        if STABLE_JOB in script:
            script = script.replace(STABLE_JOB, dict(jobs)["stable"])
        path = out / "slurm" / f"{label}.sbatch"
        path.write_text(script)
        proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise TrialFailed(f"sbatch {path} failed ({proc.returncode}): {proc.stderr.strip()}")
        jobs.append((label, proc.stdout.strip().split(";")[0]))
    return jobs
