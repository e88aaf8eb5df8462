"""`make demo` at its reduced size (``--quick``), run once for the session, and every artefact checked:
shards of both kinds, MLflow runs (two pipelines, three trainings, a sweep parent with six children)
with metrics and linked datasets, checkpoints, the scaling fit and its plots, three exports recorded
and registered, the three pipeline outputs; then a rerun that redoes nothing and one that resumes a
stopped training. The run is the session fixture ``quick_demo`` (tests/conftest.py);
``tests/test_browse.py`` browses the same MLflow store."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tests.conftest import run_quick_demo

# the reduced demo takes about 2 minutes on 2 quiet cores; the limit leaves room for a shared machine
pytestmark = pytest.mark.timeout(1800)
TRAININGS = ("gpt", "bert", "vit")


@pytest.fixture(scope="module")
def demo(quick_demo):
    cwd, stdout = quick_demo
    return {"cwd": cwd, "out": cwd / "out", "stdout": stdout,
            "state": json.loads((cwd / "out" / "demo_state.json").read_text())}


@pytest.fixture(scope="module")
def mlflow_client(demo):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{demo['cwd'] / 'mlflow.db'}")


def _runs(client) -> dict[str, object]:
    exp = client.get_experiment_by_name("demo")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=100)}


def test_shards_of_both_kinds(demo):
    for kind, folder in (("text", "text"), ("image", "images")):
        root = demo["out"] / "data" / folder
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["kind"] == kind and set(manifest["splits"]) == {"train", "val"}
        for split in manifest["splits"].values():
            assert split["samples"] > 0 and all((root / s["path"]).is_file() for s in split["shards"])
    images = json.loads((demo["out"] / "data" / "images" / "manifest.json").read_text())
    assert [c["name"] for c in images["classes"]][:2] == ["circle", "triangle"] and len(images["classes"]) == 10
    assert images["splits"]["train"]["samples"] == 120 and images["splits"]["val"]["samples"] == 40


def test_checkpoints_and_exports(demo):
    expected = {"gpt": {"generation_config.json", "tokenizer.json"}, "bert": {"tokenizer.json"},
                "vit": {"preprocessor_config.json"}}
    for name in TRAININGS:
        ckpts = demo["out"] / "runs" / name / "checkpoints"
        assert (ckpts / "latest").read_text().strip() == "step00000006"
        assert (ckpts / "step00000006" / "complete.json").is_file()
        files = {p.name for p in (demo["out"] / "hf" / name).iterdir()}
        assert {"config.json", "model.safetensors", "README.md"} | expected[name] <= files, name


def test_pipeline_runs_in_mlflow_with_funnel_sample_and_dataset(demo, mlflow_client):
    runs = _runs(mlflow_client)
    text, images = runs["commoncrawl text"], runs["imagenet images"]
    for run, folder in ((text, "text"), (images, "images")):
        raw = (demo["out"] / "data" / folder / "manifest.json").read_bytes()
        assert run.info.status == "FINISHED" and run.data.tags["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.digest == hashlib.sha256(raw).hexdigest()[:36] and inp.dataset.name == folder
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "output"
        arts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
        assert {"manifest.json", "funnel.json", "sample"} <= arts
        assert "sample/sample.json" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "sample")}
    counts = json.loads((demo["out"] / "data" / "text" / "manifest.json").read_text())["counts"]
    assert text.data.metrics["funnel/documents"] == counts["stages"][-1]["out"] == counts["total"]["kept"]
    history = mlflow_client.get_metric_history(text.info.run_id, "funnel/documents")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(len(counts["stages"]) + 1))
    assert text.data.params["vocab_size"] == "1000"  # the demo's --vocab-size
    assert images.data.metrics["funnel/train/images"] == 120 and images.data.metrics["val/samples"] == 40


def test_training_runs_have_metrics_their_dataset_and_their_export(demo, mlflow_client):
    runs = _runs(mlflow_client)
    for name in TRAININGS:
        run = runs[f"demo-{name}"]
        assert run.info.status == "FINISHED" and run.info.run_id == demo["state"][name]["run_id"]
        assert "train/loss" in run.data.metrics and "eval/loss" in run.data.metrics, run.data.metrics.keys()
        folder = "images" if name == "vit" else "text"
        (inp,) = run.inputs.dataset_inputs
        sha = hashlib.sha256((demo["out"] / "data" / folder / "manifest.json").read_bytes()).hexdigest()
        assert (inp.dataset.name, inp.dataset.digest) == (folder, sha[:36])
        assert json.loads(inp.dataset.source)["uri"] == str((demo["out"] / "data" / folder).resolve())
        assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train", "manifest_sha256": sha}
        assert run.data.tags["export.path"] == str((demo["out"] / "hf" / name).resolve())
        assert run.data.tags["export.registered"] == f"demo-{name}/1"
        (version,) = mlflow_client.search_model_versions(f"name = 'demo-{name}'")
        assert version.run_id == run.info.run_id and version.source.endswith(f"/exports/{name}")
        exported = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, f"exports/{name}")}
        assert f"exports/{name}/model.safetensors" in exported


def test_sweep_parent_with_six_children_and_the_fit(demo, mlflow_client):
    sweep = demo["state"]["sweep"]
    parent = mlflow_client.get_run(sweep["parent_run_id"])
    assert (parent.info.run_name, parent.info.status) == ("demo-sweep", "FINISHED")
    assert parent.data.tags["scaling.role"] == "sweep" and parent.data.metrics["trials_finished"] == 6
    children = mlflow_client.search_runs([parent.info.experiment_id],
                                         f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}
    assert len({(c.data.tags["N"], c.data.tags["D"]) for c in children}) == 6  # 3 sizes x 2 budgets
    # the fit's points are the children's final eval losses, and it is logged to the parent
    fit = json.loads((demo["cwd"] / sweep["fit"]).read_text())
    assert {p["label"]: round(p["loss"], 4) for p in fit["points"]} == {
        c.info.run_id: round(c.data.metrics["eval/loss"], 4) for c in children}
    logged = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "scaling_fit")}
    assert {f"scaling_fit/{f}" for f in ("fit.json", "loss_vs_N.png", "isoflop.png", "frontier.png")} <= logged
    assert f"MLflow parent run {parent.info.run_id}" in demo["stdout"] and "sweep 6 trials" in demo["stdout"]


def test_pipeline_outputs(demo):
    use = demo["state"]["use"]
    gen = use["generation"]
    assert gen["text"].startswith(gen["prompt"]) and len(gen["text"]) > len(gen["prompt"]) + 5
    top = use["fill_mask"]["top"]
    assert len(top) == 3 and all(p["token"].strip() and 0 < p["score"] <= 1 for p in top)
    images = use["classification"]["images"]
    manifest = json.loads((demo["out"] / "data" / "images" / "manifest.json").read_text())
    classes = {c["name"] for c in manifest["classes"]}
    assert len(images) == 8 and all(img["predicted"] in classes and img["true"] in classes for img in images)
    for line in ("text-generation", "fill-mask", "image-classification",
                 "mlflow ui --backend-store-uri sqlite:///mlflow.db"):
        assert line in demo["stdout"]


def test_rerun_redoes_nothing(demo, mlflow_client):
    """Every finished step is skipped: no new pipeline, training or registry entry, same results."""
    before = {name: r.info.run_id for name, r in _runs(mlflow_client).items()}
    proc = run_quick_demo(demo["cwd"], timeout=900)
    assert proc.stdout.count("done in an earlier run") == 10
    assert "$ pretrain" not in proc.stdout
    assert {name: r.info.run_id for name, r in _runs(mlflow_client).items()} == before
    assert json.loads((demo["out"] / "demo_state.json").read_text())["use"] == demo["state"]["use"]


def test_rerun_resumes_a_stopped_training(demo, mlflow_client):
    """The ViT training stopped between its step-4 and step-6 checkpoints (what a kill there
    leaves): the rerun skips every step before it, continues the training from step 4 in the same
    MLflow run, then redoes the steps after it (its export, the pipelines)."""
    ckpts = demo["out"] / "runs" / "vit" / "checkpoints"
    shutil.rmtree(ckpts / "step00000006")
    (ckpts / "latest").write_text("step00000004\n")
    state = json.loads((demo["out"] / "demo_state.json").read_text())
    for step in ("vit", "export_vit", "use"):
        del state[step]
    (demo["out"] / "demo_state.json").write_text(json.dumps(state))
    before = {name: r.info.run_id for name, r in _runs(mlflow_client).items()}
    proc = run_quick_demo(demo["cwd"], timeout=900)
    assert proc.stdout.count("done in an earlier run") == 7
    assert "resumed from out/runs/vit/checkpoints/step00000004 at step 4" in proc.stdout, proc.stdout[-3000:]
    assert "fresh start" not in proc.stdout and "$ pretrain train" in proc.stdout
    trainer = json.loads((ckpts / "step00000006" / "trainer_state.json").read_text())
    assert (trainer["started_from_step"], trainer["step"]) == (4, 6)
    assert trainer["mlflow_run_id"] == demo["state"]["vit"]["run_id"]
    assert {name: r.info.run_id for name, r in _runs(mlflow_client).items()} == before  # no new run
    after = json.loads((demo["out"] / "demo_state.json").read_text())
    assert after["vit"]["step"] == 6 and len(after["use"]["classification"]["images"]) == 8
