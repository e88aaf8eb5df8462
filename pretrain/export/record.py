"""An export on MLflow: recorded on the training run it came from, optionally registered in the
model registry (``pretrain export --register NAME``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pretrain.tracking import resolve_uri

EXPORT_CARD_FILES = ("README.md", "config.json", "generation_config.json", "preprocessor_config.json",
                     "tokenizer_config.json")


def record_export(tag_dir, out_dir, uri: str | None = None, register: str | None = None) -> dict:
    """Record the export ``out_dir`` of checkpoint ``tag_dir`` on the MLflow run that trained it
    (run id from the checkpoint's ``trainer_state.json``; store: ``uri``, else the run's
    ``tracking.uri``, else the default): tags ``export.path``/``export.step``, and the export's
    card and configs as artifacts under ``exports/<out name>/``. With ``register``, the whole export
    (weights too) goes there and becomes a new version of the registered model ``register`` --
    a version the registry can serve from the store alone. Returns ``{"run_id", "uri",
    "version"}`` (``run_id`` None: the checkpoint has no run). MLflow errors are raised."""
    from mlflow import MlflowClient

    from pretrain.config import load_config

    tag_dir, out = Path(tag_dir), Path(out_dir).resolve()
    state = json.loads((tag_dir / "trainer_state.json").read_text())
    run_id = state.get("mlflow_run_id")
    uri = resolve_uri(uri or load_config(tag_dir / "config.yaml").tracking.uri)
    client = MlflowClient(tracking_uri=uri)
    result: dict = {"run_id": run_id, "uri": uri, "version": None}
    if run_id is None:
        if register:
            result["version"] = _register(client, register, str(out), None, tag_dir)
        return result
    run = client.get_run(run_id)  # a run this store does not hold is an error, not a silent skip
    where = f"exports/{out.name}"
    with tempfile.TemporaryDirectory(prefix="pretrain-export-mlflow-") as tmp:
        staged = Path(tmp) / out.name
        if register:
            shutil.copytree(out, staged)
        else:
            staged.mkdir()
            for name in EXPORT_CARD_FILES:
                if (out / name).is_file():
                    shutil.copy2(out / name, staged / name)
        client.log_artifacts(run_id, str(staged), where)
    client.set_tag(run_id, "export.path", str(out))
    client.set_tag(run_id, "export.step", str(state.get("step")))
    client.set_tag(run_id, "export.artifacts", where)
    if register:
        result["version"] = _register(client, register, f"{run.info.artifact_uri}/{where}", run_id, tag_dir)
    return result


def _register(client, name: str, source: str, run_id: str | None, tag_dir: Path) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if getattr(e, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={"checkpoint": str(tag_dir.resolve())},
                                          description=f"pretrain export of {tag_dir.resolve()}")
    if run_id is not None:
        client.set_tag(run_id, "export.registered", f"{name}/{version.version}")
    return str(version.version)
