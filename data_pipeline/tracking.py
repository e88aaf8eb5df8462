"""MLflow records of data-pipeline runs, and the MLflow dataset that names a shard directory.

A finished ``pretrain data commoncrawl|imagenet`` logs one run (experiment ``data`` unless
``--experiment``) to ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
in the working directory -- the store training uses by default, so pipelines and trainings are
browsed side by side. The run holds:

* params: the command's options; tags: ``kind``, ``out``, ``manifest_sha256``;
* metrics, the per-stage funnel: ``funnel/documents`` (text) or ``funnel/<split>/images`` (image)
  at step i is what is left after stage i (step 0: what came in), so MLflow draws the funnel as a
  curve; ``dropped/<stage>`` or ``<split>/rejected/<reason>``; and per split shards, samples, tokens
  or bytes;
* artifacts: ``manifest.json``, ``funnel.json`` (+ ``funnel.txt`` for text), ``sample/``: the first
  sample decoded as ``pretrain data inspect`` shows it (and its JPEGs for image shards);
* the shard directory as an MLflow dataset input (context ``output``): the same dataset training
  runs log as their input (context ``train``), so the UI links a training run to the pipeline run
  that made its data. The dataset's digest is the manifest's sha256 cut to MLflow's 36 characters;
  the full hash is in its profile and in an input tag.

Tracking never costs the data: it runs after ``manifest.json`` is written, and a store that cannot
be reached gets one warning on stderr, not a failed command. A rerun over finished shards (same
manifest) does not log a second run.

This module imports nothing from ``pretrain`` (and ``pretrain.tracking`` uses ``shard_dataset`` /
``dataset_input`` from the shard contract, ``data_pipeline.shards``, for the training side).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from data_pipeline import storage
from data_pipeline.shards import dataset_input, shard_dataset  # noqa: F401 -- re-exported

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "data"
SAMPLE_IMAGES = 4


def add_tracking_arguments(p) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--tracking-uri", default=None,
                   help=f"MLflow store for this run (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    g.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    g.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")


def funnel(manifest: dict) -> list[dict]:
    """Per-stage rows ``{split, stage, in, dropped, out}`` from a text or image manifest."""
    if manifest.get("kind") == "image":
        rows = []
        for split, entry in manifest.get("splits", {}).items():
            c = entry.get("counts", {})
            rejected = sum(c.get("rejected", {}).values())
            rows.append({"split": split, "stage": "decode and check", "in": c.get("read", 0), "dropped": rejected,
                         "out": c.get("kept", c.get("read", 0) - rejected)})
        return rows
    return [{"split": "all", **row} for row in manifest.get("counts", {}).get("stages", [])]


def funnel_metrics(manifest: dict) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` triples: the funnel as curves, drops by reason, split totals."""
    out: list[tuple[str, float, int]] = []
    rows = funnel(manifest)
    if manifest.get("kind") == "image":
        for row in rows:
            out += [(f"funnel/{row['split']}/images", row["in"], 0), (f"funnel/{row['split']}/images", row["out"], 1)]
        for split, entry in manifest.get("splits", {}).items():
            rejected = entry.get("counts", {}).get("rejected", {})
            out += [(f"{split}/rejected/{reason}", n, 0) for reason, n in rejected.items()]
    else:
        if rows:
            out.append(("funnel/documents", rows[0]["in"], 0))
        out += [("funnel/documents", row["out"], i + 1) for i, row in enumerate(rows)]
        out += [(f"dropped/{row['stage']}", row["dropped"], 0) for row in rows]
    for split, entry in manifest.get("splits", {}).items():
        out.append((f"{split}/shards", len(entry.get("shards", [])), 0))
        out += [(f"{split}/{k}", v, 0) for k in ("samples", "documents", "tokens", "bytes")
                if isinstance((v := entry.get(k)), (int, float))]
    return out


def track_pipeline(args, kind: str, out_dir: str | Path) -> str | None:
    """Log the finished pipeline run of ``args`` (the CLI's namespace) writing ``out_dir``; returns
    the MLflow run id, or None when tracking is off or failed (warned on stderr)."""
    if getattr(args, "no_tracking", False):
        return None
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(("http://", "https://")):  # a few quick retries, not MLflow's minutes of them
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        return _log_run(uri, args.experiment, kind, storage.absolute(out_dir), _options(args))
    except Exception as e:  # the shards are written; a tracking failure must not fail the command
        print(f"pretrain data {kind}: MLflow at {uri}: run not logged ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def _options(args) -> dict[str, str]:
    skip = {"overrides", "tracking_uri", "experiment", "no_tracking"}
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in sorted(vars(args).items())
            if not k.startswith(("_", "sub_")) and k != "command" and k not in skip}


def _log_run(uri: str, experiment: str, kind: str, out: str, options: dict[str, str]) -> str:
    """``out``: the absolute local path or the URI (s3://, gs://) of the shard directory."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=uri)
    raw = storage.read_bytes(storage.join(out, "manifest.json"))
    record = shard_dataset(out, raw)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    same = [r for r in client.search_runs([exp_id], f"tags.manifest_sha256 = '{record['sha256']}' and "
                                          "attributes.status = 'FINISHED'", max_results=50)
            if r.data.tags.get("out") == out]
    if same:
        print(f"pretrain data {kind}: already tracked as MLflow run {same[0].info.run_id} ({uri})", file=sys.stderr)
        return same[0].info.run_id
    manifest = json.loads(raw)
    run = client.create_run(exp_id, run_name=f"{kind} {record['name']}",
                            tags={"kind": kind, "out": out, "manifest_sha256": record["sha256"]})
    run_id = run.info.run_id
    try:
        params = [Param(k, v[:6000]) for k, v in options.items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v, step in funnel_metrics(manifest)],
                         tags=[RunTag("data.kind", str(manifest.get("kind")))])
        client.log_inputs(run_id, [dataset_input(record, "output")])
        _log_artifacts(client, run_id, out, manifest, raw)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    print(f"pretrain data {kind}: tracked as MLflow run {run_id} (experiment {experiment!r}, {uri})", file=sys.stderr)
    return run_id


def _log_artifacts(client, run_id: str, out: str, manifest: dict, raw: bytes) -> None:
    from data_pipeline.inspect_cli import first_sample, summarise

    with tempfile.TemporaryDirectory(prefix="pretrain-data-mlflow-") as tmp:
        tmp = Path(tmp)
        (tmp / "funnel.json").write_text(json.dumps(funnel(manifest), indent=2) + "\n")
        if manifest.get("kind") == "text":
            from data_pipeline.text.counts import summary_table

            (tmp / "funnel.txt").write_text(summary_table(manifest) + "\n")
        sample = tmp / "sample"
        sample.mkdir()
        report = summarise(out, None, 0, 4000)
        (sample / "sample.json").write_text(json.dumps(report["sample"], indent=2, ensure_ascii=False) + "\n")
        if manifest.get("kind") == "image" and report["sample"] is not None:
            shard = storage.join(out, report["sample"]["shard"])
            for i in range(SAMPLE_IMAGES):
                try:
                    key, fields = first_sample(shard, i)
                except IndexError:
                    break
                (sample / f"{key}.cls{fields.get('cls', b'').decode()}.jpg").write_bytes(fields["jpg"])
        for name in ("funnel.json", "funnel.txt"):
            if (tmp / name).is_file():
                client.log_artifact(run_id, str(tmp / name))
        (tmp / "manifest.json").write_bytes(raw)
        client.log_artifact(run_id, str(tmp / "manifest.json"))
        client.log_artifacts(run_id, str(sample), "sample")
