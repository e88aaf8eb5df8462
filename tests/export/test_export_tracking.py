"""``pretrain export`` records the export on the MLflow run that trained the checkpoint and, with
``--register NAME``, in MLflow's model registry (a real sqlite store); a run the store does not
hold costs a warning, a failed registration the exit code, never the export."""

from __future__ import annotations

import json
import shutil

import pytest

from data_pipeline.shards import sha256_file
from launch import export_cli
from pretrain.checkpoint import latest
from tests.export.conftest import run_name


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def _checkpoint_of_run(checkpoints, tmp_path, run_id: str | None):
    """A copy of a trained checkpoint whose trainer_state.json names ``run_id`` (complete.json kept true)."""
    tag = tmp_path / "ckpt" / latest(checkpoints[run_name("gpt", 1, 1)]).name
    shutil.copytree(latest(checkpoints[run_name("gpt", 1, 1)]), tag)
    state = json.loads((tag / "trainer_state.json").read_text())
    (tag / "trainer_state.json").write_text(json.dumps({**state, "mlflow_run_id": run_id}))
    info = json.loads((tag / "complete.json").read_text())
    for f in info["files"]:
        if f["path"] == "trainer_state.json":
            f.update(bytes=(tag / "trainer_state.json").stat().st_size, sha256=sha256_file(tag / "trainer_state.json"))
    (tag / "complete.json").write_text(json.dumps(info))
    return tag


def test_export_is_recorded_on_its_run_and_registered(checkpoints, tmp_path, store):
    uri, client = store
    run_id = client.create_run(client.create_experiment("train")).info.run_id
    tag = _checkpoint_of_run(checkpoints, tmp_path, run_id)
    out = tmp_path / "hf"
    assert export_cli.main([str(tag), "--out", str(out), "--tracking-uri", uri]) == 0
    run = client.get_run(run_id)
    assert run.data.tags["export.path"] == str(out.resolve()) and run.data.tags["export.step"] == "2"
    logged = {a.path for a in client.list_artifacts(run_id, "exports/hf")}
    assert {"exports/hf/README.md", "exports/hf/config.json"} <= logged and "exports/hf/model.safetensors" not in logged
    assert client.search_model_versions("name = 'gpt-small'") == []
    # --register: the whole export goes to the run's artifacts and becomes a model version
    assert export_cli.main([str(tag), "--out", str(out), "--overwrite", "--tracking-uri", uri,
                            "--register", "gpt-small"]) == 0
    (version,) = client.search_model_versions("name = 'gpt-small'")
    assert version.run_id == run_id and version.source == f"{run.info.artifact_uri}/exports/hf"
    assert "exports/hf/model.safetensors" in {a.path for a in client.list_artifacts(run_id, "exports/hf")}
    assert client.get_run(run_id).data.tags["export.registered"] == "gpt-small/1"


def test_checkpoint_without_a_run_registers_the_directory(checkpoints, tmp_path, store):
    uri, client = store
    out = tmp_path / "hf"  # tracking was off in training: no run to record on
    assert export_cli.main([str(checkpoints[run_name("gpt", 1, 1)]), "--out", str(out), "--tracking-uri", uri,
                            "--register", "plain"]) == 0
    (version,) = client.search_model_versions("name = 'plain'")
    assert version.source == str(out.resolve()) and not version.run_id


def test_unknown_run_warns_and_failed_registration_fails_the_command(checkpoints, tmp_path, store, capsys):
    uri, client = store
    tag = _checkpoint_of_run(checkpoints, tmp_path, "0" * 32)
    out = tmp_path / "hf"
    assert export_cli.main([str(tag), "--out", str(out), "--tracking-uri", uri]) == 0
    assert "export not recorded" in capsys.readouterr().err and (out / "model.safetensors").is_file()
    assert export_cli.main([str(tag), "--out", str(out), "--overwrite", "--tracking-uri", uri,
                            "--register", "x"]) == 1
    assert "export not recorded" in capsys.readouterr().err and (out / "model.safetensors").is_file()
    assert export_cli.main([str(tag), "--out", str(out), "--overwrite", "--no-tracking"]) == 0
    assert "MLflow" not in capsys.readouterr().err
