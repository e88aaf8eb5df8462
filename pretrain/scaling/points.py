"""Fit inputs: (N, D, loss) points from a CSV file or from a sweep's MLflow runs.

A trial's MLflow child run carries the tags ``N`` (the parameter count the sweep fits: total or
non-embedding, ``N_kind``), ``N_total``, ``N_non_embedding``, ``D`` (tokens), ``C`` (FLOPs),
``seed`` and, once finished, ``final_eval_loss``; ``scaling.role`` is ``trial`` for them, ``sweep``
for the parent run and ``wsd-stable`` for a WSD long run (not a point of its own).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pretrain.scaling.fit import FitError, Points

ROLE = "scaling.role"


def read_csv(path: str | Path, columns: dict[str, str] | None = None) -> Points:
    """Points from a CSV with columns ``N``, ``D`` (or ``C``: then D = C / (6 N)) and ``loss``;
    ``columns`` maps those names to the file's own headers (``{"N": "Model Size"}``)."""
    path = Path(path)
    if not path.is_file():
        raise FitError(f"{path}: no such file")
    names = {"N": "N", "D": "D", "C": "C", "loss": "loss", **(columns or {})}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [k for k in ("N", "loss") if names[k] not in header]
        if names["D"] not in header and names["C"] not in header:
            missing.append("D (or C)")
        if missing:
            raise FitError(f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(header) or 'none'}"
                           " (map other names with --columns N=... D=... loss=...)")
        use = [k for k in ("N", "D", "C", "loss") if names[k] in header]
        values: dict[str, list[float]] = {k: [] for k in use}
        for row_no, row in enumerate(reader, start=2):  # the header is line 1
            for k in use:
                raw = (row.get(names[k]) or "").strip()
                try:
                    v = float(raw)
                except ValueError:
                    raise FitError(f"{path}:{row_no}: column {names[k]} is {raw!r}, not a number") from None
                if not math.isfinite(v) or v <= 0:
                    raise FitError(f"{path}:{row_no}: column {names[k]} is {raw}; values must be positive")
                values[k].append(v)
    N = np.array(values["N"])
    C = np.array(values["C"]) if "C" in values else None
    D = np.array(values["D"]) if "D" in values else C / (6.0 * N)
    return Points(N, D, np.array(values["loss"]), C, [f"row {i}" for i in range(2, len(N) + 2)])


def _client(uri: str | None):
    from mlflow import MlflowClient

    from pretrain.tracking import resolve_uri

    return MlflowClient(resolve_uri(uri))


def _trial_points(runs: list, what: str) -> tuple[Points, str]:
    """Points of the finished trials among ``runs`` and the N kind they share."""
    done = [r for r in runs if r.data.tags.get(ROLE) == "trial" and "final_eval_loss" in r.data.tags]
    if not done:
        raise FitError(f"{what} has no finished sweep trials (child runs tagged {ROLE}=trial with a "
                       "final_eval_loss); run `pretrain sweep` first or wait for its trials")
    kinds = {r.data.tags.get("N_kind", "non_embedding") for r in done}
    if len(kinds) > 1:
        raise FitError(f"{what} mixes trials whose N counts {' and '.join(sorted(kinds))} parameters; fit one sweep "
                       "at a time (--run PARENT_ID)")
    tag = lambda r, k: float(r.data.tags[k])  # noqa: E731
    done.sort(key=lambda r: (tag(r, "N"), tag(r, "D"), r.info.run_id))
    points = Points([tag(r, "N") for r in done], [tag(r, "D") for r in done],
                    [tag(r, "final_eval_loss") for r in done], [tag(r, "C") for r in done],
                    [r.info.run_id for r in done])
    return points, kinds.pop()


def from_parent_run(parent_id: str, uri: str | None = None) -> tuple[Points, dict]:
    """The finished trials under one sweep's parent run; source info names the parent."""
    client = _client(uri)
    try:
        parent = client.get_run(parent_id)
    except Exception as e:  # MlflowException for an unknown id
        raise FitError(f"run {parent_id}: not found in the MLflow store ({type(e).__name__})") from None
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=50_000)
    points, kind = _trial_points(runs, f"sweep run {parent_id}")
    return points, {"parent_run": parent_id, "experiment_id": parent.info.experiment_id, "N_kind": kind,
                    "sweep_config": parent.data.tags.get("scaling.config")}


def from_experiment(name: str, uri: str | None = None) -> tuple[Points, dict]:
    """Every finished trial of every sweep in experiment ``name``; artifacts go to its newest sweep."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise FitError(f"experiment {name!r}: not found in the MLflow store")
    runs = client.search_runs([exp.experiment_id], max_results=50_000)
    points, kind = _trial_points(runs, f"experiment {name!r}")
    parents = sorted((r for r in runs if r.data.tags.get(ROLE) == "sweep"), key=lambda r: r.info.start_time or 0)
    parent = parents[-1] if parents else None
    return points, {"experiment": name, "experiment_id": exp.experiment_id, "N_kind": kind,
                    "parent_run": parent.info.run_id if parent else None,
                    "sweep_config": parent.data.tags.get("scaling.config") if parent else None}


def log_to_run(run_id: str, files: list[Path], uri: str | None = None, artifact_path: str = "scaling_fit") -> None:
    """Attach the fit's JSON and plots to the sweep's parent run."""
    client = _client(uri)
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)
