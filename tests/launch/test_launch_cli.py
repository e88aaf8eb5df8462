"""``pretrain launch`` without engines: ``--dry-run`` output of every launcher against golden files,
impossible worlds refused before anything starts, the rendered files valid for their engines
(KubeRay's CRD schema, Ray's cluster schema, bash), and SLURM/torch world detection.

Regenerate the goldens after a deliberate change: ``PRETRAIN_REGEN_GOLDEN=1 pytest tests/launch/test_launch_cli.py``
(then read the diff). They are machine-independent: the repo, the working directory, the Python
executable and the Ray version are replaced by ``<repo>``, ``<cwd>``, ``<python>``, ``<bin>``, ``<ray-version>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from pretrain import distributed as D
from tests.conftest import shared_data_dir
from tests.dist.helpers import REPO

GOLDEN = Path(__file__).parent / "golden"
CONFIG = "configs/gpt/debug.yaml"
CASES = {
    "local": ["--launcher=local", "--nproc-per-node=2"],
    "torchrun": ["--launcher=torchrun", "--nnodes=2:4", "--gpus-per-node=8", "--node-rank=0",
                 "--rdzv-endpoint=node001:29400", "--max-restarts=3"],
    "deepspeed": ["--launcher=deepspeed", "--hostfile=cluster/hostfile.example", "--exclude=gpu-node-02:6,7",
                  "--master-port=29600"],
    "slurm": ["--launcher=slurm", "--nnodes=4", "--gpus-per-node=8", "--partition=gpu", "--account=proj",
              "--time=48:00:00", "--env=NCCL_SOCKET_IFNAME=ib0", "--sbatch-arg=--qos=high"],
    "ray": ["--launcher=ray", "--ray-address=head-node:6379", "--nnodes=2", "--gpus-per-node=8", "--max-restarts=2"],
    "k8s": ["--launcher=k8s", "--nnodes=2", "--gpus-per-node=8", "--cpus-per-worker=6", "--max-restarts=1",
            "--image=registry.example.com/pretrain:1.0", "--pvc=pretrain-shared", "--namespace=ml"],
}


def _normalised(text: str, cwd: Path) -> str:
    import ray

    for real, mark in [(sys.executable, "<python>"), (str(Path(sys.executable).parent), "<bin>"),
                       (str(REPO), "<repo>"), (str(cwd), "<cwd>"), (ray.__version__, "<ray-version>")]:
        text = text.replace(real, mark)
    return text


def _launch(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["launch", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The repo's config and hostfile example under a temp working directory (``<cwd>`` in goldens)."""
    (tmp_path / "configs" / "gpt").mkdir(parents=True)
    (tmp_path / CONFIG).write_text((REPO / CONFIG).read_text())
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "hostfile.example").write_text((REPO / "cluster" / "hostfile.example").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("launcher", sorted(CASES))
def test_dry_run_prints_what_would_run(launcher, in_tmp, capsys):
    code, out, err = _launch([CONFIG, "train.steps=100", *CASES[launcher], "--dry-run"], capsys)
    assert code == 0, err
    text = _normalised(out, in_tmp)
    golden = GOLDEN / f"{launcher}.txt"
    if os.environ.get("PRETRAIN_REGEN_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"dry-run output of {launcher} changed; see the module docstring"
    assert sorted(p.name for p in in_tmp.iterdir()) == ["cluster", "configs"]  # nothing written, nothing run


IMPOSSIBLE = {  # tensor size 2 on 3 ranks
    "local": ["--nproc-per-node=3"],
    "torchrun": ["--nnodes=2:3", "--rdzv-endpoint=127.0.0.1:1"],
    "deepspeed": ["--hostfile=hosts"],
    "slurm": ["--nnodes=3"],
    "ray": ["--nnodes=3", "--ray-address=127.0.0.1:1"],
    "k8s": ["--nnodes=3", "--image=i", "--pvc=p"],
}


@pytest.mark.parametrize("launcher", sorted(IMPOSSIBLE))
def test_an_impossible_world_is_refused_before_anything_starts(launcher, in_tmp, capsys):
    (in_tmp / "hosts").write_text("a slots=2\nb slots=1\n")
    code, out, err = _launch([CONFIG, "parallel.tensor_size=2", f"--launcher={launcher}", *IMPOSSIBLE[launcher]],
                             capsys)
    assert code == 2 and out == ""
    assert "parallel.tensor_size: got 2; must divide the world size 3" in err, err
    if launcher == "torchrun":
        assert "(this launch may start 3 ranks)" in err  # 2 nodes would do, 3 would not
    assert sorted(p.name for p in in_tmp.iterdir()) == ["cluster", "configs", "hosts"]


def test_launch_options_that_cannot_work_exit_2_with_the_reason(in_tmp, capsys):
    for args, reason in [(["--launcher=deepspeed"], "--hostfile FILE is needed"),
                         (["--launcher=deepspeed", "--hostfile=missing"], "--hostfile missing: no such file"),
                         (["--launcher=torchrun", "--nnodes=2"], "--rdzv-endpoint HOST:PORT is needed"),
                         (["--launcher=torchrun", "--nnodes=3:2"], "--nnodes 3:2: need 1 <= MIN <= MAX"),
                         (["--launcher=slurm", "--nnodes=1:2"], "SLURM allocates a fixed number of nodes"),
                         (["--launcher=k8s", "--pvc=p"], "--image IMAGE is needed"),
                         (["--launcher=local", "--nnodes=2"], "runs on this one machine")]:
        code, _, err = _launch([CONFIG, *args], capsys)
        assert code == 2 and reason in err, (args, err)


def test_rendered_rayjob_validates_against_kuberays_crd(in_tmp, capsys):
    import jsonschema

    crd = yaml.safe_load(shared_data_dir("kuberay", "ray.io_rayjobs.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    code, out, err = _launch([CONFIG, *CASES["k8s"], "--dry-run"], capsys)
    assert code == 0, err
    manifest = yaml.safe_load(out)
    jsonschema.validate(manifest, schema)
    assert manifest["kind"] == "RayJob" and manifest["apiVersion"] == "ray.io/v1"
    workers = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 2
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "--launcher=ray" in manifest["spec"]["entrypoint"] and "checkpoint.resume=auto" in manifest["spec"]["entrypoint"]
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):  # the schema does check what we render
        jsonschema.validate(broken, schema)


def test_ray_cluster_yamls_validate_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    for name in ("onprem.yaml", "aws.yaml"):
        jsonschema.validate(yaml.safe_load((REPO / "cluster" / "ray" / name).read_text()), schema)


def test_shell_templates_parse(in_tmp, capsys):
    code, out, _ = _launch([CONFIG, *CASES["slurm"], "--dry-run"], capsys)
    script = out.split("\n", 2)[2]
    assert code == 0 and script.startswith("#!/bin/bash")
    scripts = [("train.sbatch", script), *[(p.name, p.read_text()) for p in
               [REPO / "cluster" / "slurm" / "data.sbatch", REPO / "cluster" / "mlflow" / "server.sh"]]]
    for name, text in scripts:
        proc = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert proc.returncode == 0, (name, proc.stderr)


# ----------------------------------------------------------------------------------------------
# world detection (pretrain/distributed.py)
# ----------------------------------------------------------------------------------------------
SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
             "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}


def test_srun_tasks_are_ranks_and_the_batch_script_is_not():
    assert D.launcher_world(SRUN_TASK) == D.LauncherWorld(5, 8, 1, "slurm")
    batch = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_ID"}  # sbatch's own shell: PROCID 0 too
    assert D.launcher_world(batch) is None
    torch_env = {**SRUN_TASK, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}  # srun torchrun ...: torch wins
    assert D.launcher_world(torch_env) == D.LauncherWorld(3, 4, 3, "env")
    assert D.launcher_world({}) is None


def test_srun_tasks_meet_at_the_first_node_on_a_port_from_the_job_id(monkeypatch):
    env = dict(SRUN_TASK)
    monkeypatch.setattr(os, "environ", env)
    D._slurm_env()
    D._fill_single_process_env()
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(D.slurm_master_port("4242"))
    explicit = {**SRUN_TASK, "MASTER_ADDR": "head", "MASTER_PORT": "1234"}
    monkeypatch.setattr(os, "environ", explicit)
    D._slurm_env()
    assert (explicit["MASTER_ADDR"], explicit["MASTER_PORT"]) == ("head", "1234")


def test_only_a_world_of_one_picks_its_own_port(monkeypatch):
    monkeypatch.setattr(os, "environ", {"RANK": "1", "WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT not set"):
        D._fill_single_process_env()
    alone: dict = {}
    monkeypatch.setattr(os, "environ", alone)
    D._fill_single_process_env()
    assert alone["WORLD_SIZE"] == "1" and alone["MASTER_ADDR"] == "127.0.0.1" and int(alone["MASTER_PORT"]) > 0


def test_a_rank_drives_local_rank_modulo_the_visible_devices():
    assert [D.device_index(r, 8) for r in (0, 7, 9)] == [0, 7, 1]
    assert [D.device_index(r, 1) for r in range(4)] == [0, 0, 0, 0]  # srun --gpus-per-task=1


def test_one_visible_gpu_with_a_nonzero_local_rank_trains(tmp_path):
    """srun --gpus-per-task=1: local rank 1 sees one GPU, ordinal 0 (needs a GPU)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from launch.local import free_port
    from tests.dist.helpers import env as run_env

    e = run_env({"CUDA_VISIBLE_DEVICES": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    proc = subprocess.run([sys.executable, "-m", "launch.train_cli", str(REPO / CONFIG), "train.steps=2",
                           f"train.run_dir={tmp_path}", "tracking.enabled=false"], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
