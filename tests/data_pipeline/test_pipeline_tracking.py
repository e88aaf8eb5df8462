"""MLflow records of data-pipeline runs (``data_pipeline.tracking``) on a real sqlite store: the
funnel as a curve, the dataset the run wrote, no second run for the same shards, and a store that
cannot be reached costing a warning, never the command. (The full path, real pipelines included,
runs in ``tests/test_demo.py``.)"""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest

from data_pipeline.tracking import funnel_metrics, shard_dataset, track_pipeline

STAGES = [{"stage": "read", "in": 10, "dropped": 1, "out": 9}, {"stage": "lang", "in": 9, "dropped": 3, "out": 6},
          {"stage": "dedup", "in": 6, "dropped": 2, "out": 4}]


@pytest.fixture
def shards(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    manifest = {"format": "pretrain-shards", "version": 1, "kind": "text",
                "splits": {"train": {"shards": [], "samples": 0, "documents": 4, "tokens": 0, "bytes": 0}},
                "counts": {"stages": STAGES, "total": {"files": 1, "files_with_errors": 0, "records": {"response": 10},
                                                       "skipped": {}, "documents": 10, "kept": 4, "dropped": {}}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _args(uri: str | None, **kw) -> argparse.Namespace:
    return argparse.Namespace(input=["a.warc"], output="shards", vocab_size=2000, tracking_uri=uri, experiment="data",
                              no_tracking=False, _run=print, sub_0="commoncrawl", **kw)


def test_funnel_is_a_curve_of_what_is_left():
    metrics = funnel_metrics({"kind": "text", "counts": {"stages": STAGES}, "splits": {}})
    assert [(v, s) for k, v, s in metrics if k == "funnel/documents"] == [(10, 0), (9, 1), (6, 2), (4, 3)]
    assert ("dropped/lang", 3, 0) in metrics


def test_run_logged_once_with_options_funnel_manifest_and_dataset(shards, tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = track_pipeline(_args(uri), "commoncrawl", shards)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["vocab_size"] == "2000"
    assert "_run" not in run.data.params and "tracking_uri" not in run.data.params
    steps = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "funnel/documents"))
    assert steps == [(0, 10), (1, 9), (2, 6), (3, 4)]
    sha = hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest, json.loads(inp.dataset.source)["uri"]) == \
        ("shards", sha[:36], str(shards.resolve()))
    assert json.loads(inp.dataset.profile)["manifest_sha256"] == sha == shard_dataset(shards)["sha256"]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"manifest.json", "funnel.json", "funnel.txt", "sample"}
    # the same shards again: no second run
    assert track_pipeline(_args(uri), "commoncrawl", shards) == run_id
    assert "already tracked" in capsys.readouterr().err
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_unreachable_store_warns_and_no_tracking_logs_nothing(shards, tmp_path, monkeypatch, capsys):
    from tests.mlflow_server import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.chdir(tmp_path)
    assert track_pipeline(_args(f"http://127.0.0.1:{free_port()}"), "commoncrawl", shards) is None
    assert "run not logged" in capsys.readouterr().err
    args = _args(None)
    args.no_tracking = True
    assert track_pipeline(args, "commoncrawl", shards) is None
    assert not (tmp_path / "mlflow.db").exists()
