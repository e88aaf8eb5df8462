"""`pretrain data imagenet` as a command: SIGKILL mid-run then rerun gives byte-identical output
(finished shards are not redone), bad input exits 2 naming the bad thing, inputs that cannot be
read fail the run (exit 1, summarised, reported as I/O or permission errors) unless allowed, and a
write that fails (read-only, disk full) names the path and leaves nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from launch.cli import main
from tests.data_pipeline.test_imagenet_pipeline import all_files
from tests.data_pipeline.test_imagenet_process import make_tar_of_tars, make_tree
from tests.fs_faults import as_namespace_root, read_only, small_disk, without_read_access

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster():
    from data_pipeline.ray_runtime import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


def cli_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "imagenet", "--input", str(root), "--out", str(out), "--split", "train,val", "--max-size", "48",
            "--quality", "90", "--shard-size", "4", "--seed", "3", "--no-progress", *extra]


def _wait_for_shards(out: Path, proc: subprocess.Popen, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "_state" / "train").glob("shard-*.json"))) >= n or proc.poll() is not None:
            return
        time.sleep(0.02)
    raise AssertionError("the pipeline wrote no shard in time")


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid``: the CLI started with start_new_session and everything it
    spawned (Ray puts its workers in their own process groups, but they stay in this session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the run, as an OOM killer or a node loss would, and wait for them."""
    deadline = time.monotonic() + 30
    while (pids := _session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not _session_pids(sid), "processes of the killed run survived"


def test_sigkill_mid_run_then_rerun_gives_identical_output(ray_cluster, tmp_path, capsys):
    root = tmp_path / "in"
    make_tree(root)
    assert main([a for a in cli_args(root, tmp_path / "ref", "--num-cpus", "2") if a != "--no-progress"]) == 0
    assert "train: 10 shards: 100%" in capsys.readouterr().err  # the progress bar ran to the end
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", *cli_args(root, out, "--num-cpus", "1",
                                                                            "--debug-shard-delay", "0.4")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_shards(out, proc, 2)
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_session(proc.pid)  # and the embedded Ray it started, workers included
    assert not (out / "manifest.json").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "_state" / "train").glob("*.json")}
    shards_before = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}
    assert 2 <= len(done_before) < 10  # 39 train files / 4 per shard = 10 train shards

    assert main(cli_args(root, out, "--num-cpus", "2")) == 0
    assert all_files(out) == all_files(tmp_path / "ref")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "_state" / "train").glob("*.json")}
    assert {k: after[k] for k in done_before} == done_before  # finished shards were skipped, not redone
    for name in done_before:
        tar = name.replace(".json", ".tar")
        assert (out / "train" / tar).stat().st_mtime_ns == shards_before[tar]
    assert "train: " in capsys.readouterr().out


@pytest.mark.parametrize("extra,needle", [
    (["--input", "/nonexistent/imagenet"], "--input /nonexistent/imagenet"),
    (["--input", "/nonexistent/*.tar"], "--input /nonexistent/*.tar: does not exist (globs are not expanded"),
    (["--max-failed-inputs", "-1"], "--max-failed-inputs -1"),
    (["--quality", "0"], "--quality 0"),
    (["--shard-size", "0"], "--shard-size 0"),
    (["--max-size", "-1"], "--max-size -1"),
    (["--num-cpus", "0"], "--num-cpus 0"),
    (["--classes", "/nonexistent/classes.txt"], "--classes /nonexistent/classes.txt"),
    (["--max-pixels", "0"], "--max-pixels 0"),
    (["--split", ","], "--split"),
])
def test_bad_input_exits_2_and_names_it(tmp_path, capsys, extra, needle):
    root = tmp_path / "in"
    (root / "train" / "n0").mkdir(parents=True)
    (root / "train" / "n0" / "a.JPEG").write_bytes(b"x")
    assert main(cli_args(root, tmp_path / "out", *extra)) == 2  # argparse: the last --flag wins
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_classes_file_missing_a_folder_exits_2(tmp_path, capsys):
    root = tmp_path / "in"
    make_tree(root, with_val=False)
    (tmp_path / "classes.txt").write_text("n01440764\nn01443537\n")
    assert main(cli_args(root, tmp_path / "out", "--split", "train", "--classes", str(tmp_path / "classes.txt"))) == 2
    assert "n09999999" in capsys.readouterr().err


def test_rerun_repairs_damaged_shards_and_removes_stale_temps(ray_cluster, tmp_path):
    root = tmp_path / "in"
    make_tree(root, with_val=False)
    out = tmp_path / "out"
    args = cli_args(root, out, "--split", "train", "--num-cpus", "2")
    assert main(args) == 0
    ref = all_files(out)
    shard = out / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])  # a torn shard under its final name
    (out / "train" / "shard-000003.tar").unlink()
    (out / "_state" / "train" / "shard-000004.json").unlink()  # killed between rename and state write
    (out / "train" / "shard-000005.tar.tmp-999999").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    assert main(args) == 0
    assert all_files(out) == ref


HEAD_SCRIPT = """
import time, ray
ctx = ray.init(num_cpus=2, include_dashboard=False)
print(ctx.address_info["gcs_address"], flush=True)
time.sleep(600)
"""


def test_ray_address_joins_a_running_cluster_with_relative_paths(ray_cluster, tmp_path):
    """A separate Ray head (its own working directory) stands in for a cluster; the CLI, run with
    relative --input/--out from a third directory, joins it and writes the same files."""
    root = tmp_path / "data" / "in"
    make_tree(root, with_val=False)
    assert main(cli_args(root, tmp_path / "data" / "ref", "--split", "train")) == 0
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    (tmp_path / "head").mkdir()
    head = subprocess.Popen([sys.executable, "-c", HEAD_SCRIPT], cwd=tmp_path / "head", env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = head.stdout.readline().strip()
        assert ":" in address, "the Ray head did not start"
        args = cli_args(Path("in"), Path("out"), "--split", "train", "--ray-address", address)
        result = subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=tmp_path / "data", env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert all_files(tmp_path / "data" / "out") == all_files(tmp_path / "data" / "ref")
        assert head.poll() is None  # the cluster is left running
    finally:
        os.kill(head.pid, signal.SIGKILL)
        head.wait()
        _kill_session(head.pid)


def _cli(args: list[str], wrap=None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.cli", *args]
    return subprocess.run(wrap(cmd) if wrap else cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_unreadable_inputs_fail_the_run_unless_allowed_and_are_redone(ray_cluster, tmp_path, capsys):
    """A file that vanished (a dangling link: an I/O error, not a corrupt image) makes the run exit 1
    with a summary and no manifest; --max-failed-inputs 1 lets it pass, counted; once the file is
    back, the rerun redoes the shard that missed it -- the file is not lost for good."""
    root, out = tmp_path / "in", tmp_path / "out"
    make_tree(root, with_val=False)
    gone = root / "train" / "n01440764" / "n01440764_gone.JPEG"
    gone.symlink_to(tmp_path / "nowhere.JPEG")
    args = cli_args(root, out, "--split", "train", "--num-cpus", "2")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of " in err and "inputs could not be read ({'io_error': 1})" in err, err
    assert "n01440764/n01440764_gone.JPEG: io_error: FileNotFoundError" in err and "corrupt" not in err
    assert not (out / "manifest.json").exists()

    assert main([*args, "--max-failed-inputs", "1"]) == 0
    assert "1 input(s) could not be read" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["counts"]["failed_inputs"] == 1
    rows = pq.read_table(out / "rejected" / "train.parquet").to_pylist()
    assert [r["reason"] for r in rows if r["source"].endswith("_gone.JPEG")] == ["io_error"]
    kept = manifest["splits"]["train"]["samples"]

    gone.unlink()
    shutil.copyfile(root / "train" / "n01443537" / "n01443537_big_1.JPEG", gone)  # the file is back
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == kept + 1 and manifest["splits"]["train"]["counts"]["failed_inputs"] == 0


def test_a_corrupt_outer_tar_exits_2_and_a_broken_class_tar_is_a_failed_input(ray_cluster, tmp_path, capsys):
    root = tmp_path / "in"
    make_tree(root, with_val=False)
    archive = make_tar_of_tars(root / "train", tmp_path / "ILSVRC2012_img_train.tar")
    data = archive.read_bytes()
    second = data.index(b"n01443537.tar")  # the header of the second class tar
    for name, damaged in (("header", data[:second] + b"\xff" * 20 + data[second + 20:]),
                          ("truncated", data[: len(data) // 2])):
        bad = tmp_path / f"{name}.tar"
        bad.write_bytes(damaged)
        out = tmp_path / f"out-{name}"
        assert main(cli_args(bad, out, "--split", "train")) == 2, name
        err = capsys.readouterr().err
        assert f"--input {bad}: corrupt or truncated tar" in err and "last good member 'n01" in err, err
        assert not out.exists() or not any(out.iterdir())  # nothing written

    inner = data.index(b"n01443537_", second + 512)  # a member header inside the second class tar
    bad = tmp_path / "inner.tar"
    bad.write_bytes(data[:inner] + b"\x07" * 100 + data[inner + 100:])
    assert main(cli_args(bad, tmp_path / "out-inner", "--split", "train", "--num-cpus", "2")) == 1
    err = capsys.readouterr().err
    assert "n01443537.tar: corrupt_archive" in err, err


def test_permission_denied_input_is_reported_as_such(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    make_tree(root, wnids=("n01440764", "n01443537"), with_val=False)
    locked = root / "train" / "n01443537" / "n01443537_big_1.JPEG"
    without_read_access(locked)
    proc = _cli(cli_args(root, out, "--split", "train", "--num-cpus", "1"), wrap=as_namespace_root)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "n01443537/n01443537_big_1.JPEG: permission_denied: PermissionError" in proc.stderr, proc.stderr[-3000:]
    assert "{'permission_denied': 1}" in proc.stderr


def test_read_only_out_and_a_full_disk_name_the_path_and_leave_nothing_torn(tmp_path):
    root = tmp_path / "in"
    make_tree(root, with_val=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = _cli(cli_args(root, ro / "out", "--split", "train"), wrap=lambda cmd: read_only(ro, cmd))
    assert proc.returncode == 2 and f"--out {ro / 'out'}: not writable (Read-only file system)" in proc.stderr, \
        proc.stderr[-3000:]

    out = tmp_path / "full"
    out.mkdir()
    listing = (f"echo FILES; find {out} -type f | sort; echo END; "
               f"for t in $(find {out} -name '*.tar'); do tar -tf $t > /dev/null 2>&1 || echo TORN $t; done")
    proc = _cli(cli_args(root, out, "--split", "train", "--num-cpus", "1"),
                wrap=lambda cmd: small_disk(out, "48k", cmd, after=listing))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"--out {out}: writing {out}/" in proc.stderr and "No space left on device" in proc.stderr, \
        proc.stderr[-3000:]  # the shard (or its state file) that did not fit
    files = proc.stdout.split("FILES\n", 1)[1].split("END", 1)[0].split()
    assert files and not [f for f in files if ".tmp-" in f or f.endswith("manifest.json")], files
    assert [f for f in files if f.endswith(".tar")] and "TORN" not in proc.stdout  # every tar there is whole
