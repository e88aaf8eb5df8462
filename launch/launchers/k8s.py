"""``--launcher k8s``: a KubeRay ``RayJob`` manifest (``cluster/k8s/rayjob.yaml``) for the same job.

KubeRay brings up a Ray cluster of ``--nnodes`` worker pods (``--gpus-per-node`` GPUs each) and
runs ``pretrain launch ... --launcher ray`` in it: Ray Train's TorchTrainer, one worker per rank.
Paths (config, data, ``train.run_dir``) are as the pods see them: on the shared volume ``--pvc``,
mounted at ``--mount-path``. ``--dry-run`` prints the manifest; otherwise it is written to
``--manifest`` and created with ``kubectl``.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import yaml

from launch.launchers import ray_train
from launch.launchers.common import CLUSTER, Job, LaunchError, Plan, quote, render_template, write_file

TEMPLATE = CLUSTER / "k8s" / "rayjob.yaml"


def worlds(args) -> list[int]:
    return ray_train.worlds(args)


def overrides(args, given: list[str]) -> list[str]:
    return ray_train.overrides(args, given)


def entrypoint(job: Job, args) -> str:
    cmd = ["pretrain", "launch", job.config, *job.overrides, "--launcher=ray", f"--nnodes={args.nnodes}",
           f"--nproc-per-node={args.nproc_per_node}", f"--cpus-per-worker={args.cpus_per_worker}",
           f"--max-restarts={args.max_restarts}"]
    if args.gpus_per_node:
        cmd.append(f"--gpus-per-node={args.gpus_per_node}")
    if args.job_name:
        cmd.append(f"--job-name={args.job_name}")
    return quote(cmd)


def render(job: Job, args) -> str:
    import ray

    if not args.image:
        raise LaunchError("--image IMAGE is needed: a container image with this project installed")
    if not args.pvc:
        raise LaunchError("--pvc CLAIM is needed: a ReadWriteMany volume claim for the config, data and run dir")
    name = (args.job_name or job.job_id()).lower()
    s = json.dumps  # YAML reads JSON strings as they are: safe for any value
    values = {
        "name": s(name), "namespace": s(args.namespace), "entrypoint": s(entrypoint(job, args)),
        "backoff_limit": args.max_restarts, "ray_version": ray.__version__, "image": s(args.image),
        "workdir": s(args.mount_path), "mount_path": s(args.mount_path), "pvc": s(args.pvc),
        "mlflow_uri": s(job.cfg.tracking.uri or "sqlite:///mlflow.db"), "nodes": int(args.nnodes),
        "cpus_per_node": args.cpus_per_worker * args.nproc_per_node, "gpus_per_node": args.gpus_per_node,
        "memory_per_node": s(args.memory_per_node),
    }
    text = render_template(args.template or TEMPLATE, values)
    yaml.safe_load(text)  # a template edit that breaks the YAML fails here, not in kubectl
    return text


def plan(job: Job, args) -> Plan:
    manifest = render(job, args)
    path = args.manifest or f"{(args.job_name or job.job_id()).lower()}-rayjob.yaml"

    def execute() -> int:
        write_file(path, manifest)
        if shutil.which("kubectl") is None:
            raise LaunchError(f"kubectl not found; the manifest is at {path}: `kubectl create -f {path}`")
        out = subprocess.run(["kubectl", "create", "-f", path])
        return out.returncode

    return Plan(text=f"{job.summary('k8s')}\n# kubectl create -f {path}\n{manifest}", execute=execute)
