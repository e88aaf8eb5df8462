"""Real file-system failures for tests, confined to one child process: a read-only directory, a full
disk (a small tmpfs), and a file this process may not read -- each in a private mount or user
namespace (``unshare``), so nothing outside the test's command sees them.

A full or read-only file system exists only inside its namespace, so the command runs in a shell
there and ``after`` (shell lines, run in the same namespace) can report what it left behind.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess

import pytest

UNMAPPED_UID = 12345  # owner of a file a user namespace's root may not read (not mapped into it)


@functools.cache
def _works(*args: str) -> bool:
    try:
        return subprocess.run(["unshare", *args, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _need(*args: str) -> None:
    if not _works(*args):
        pytest.skip(f"unshare {' '.join(args)} is not permitted here")


def _mount_ns() -> list[str]:
    # as root a mount namespace is enough; otherwise a user namespace makes us root inside it
    return ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]


def _shell(setup: str, cmd: list[str], after: str) -> str:
    return f"set -u; {setup}; {shlex.join(cmd)}; rc=$?; {after}; exit $rc"


def read_only(path, cmd: list[str], after: str = "true") -> list[str]:
    """``cmd`` run where directory ``path`` is mounted read-only (EROFS on any write below it)."""
    _need(*_mount_ns())
    p = shlex.quote(str(path))
    setup = f"mount --bind {p} {p} && mount -o remount,bind,ro {p}"
    return ["unshare", *_mount_ns(), "--propagation", "private", "sh", "-c", _shell(setup, cmd, after)]


def small_disk(path, size: str, cmd: list[str], after: str = "true") -> list[str]:
    """``cmd`` run where directory ``path`` is a fresh tmpfs of ``size`` (e.g. ``400k``): ENOSPC
    once it is full. Its contents vanish with the namespace: report them in ``after``."""
    _need(*_mount_ns())
    setup = f"mount -t tmpfs -o size={size} pretrain-test {shlex.quote(str(path))}"
    return ["unshare", *_mount_ns(), "--propagation", "private", "sh", "-c", _shell(setup, cmd, after)]


def without_read_access(path) -> None:
    """Make file ``path`` unreadable even to root inside ``as_namespace_root``: owned by a uid
    that namespace does not map, mode 000."""
    os.chown(path, UNMAPPED_UID, UNMAPPED_UID)
    os.chmod(path, 0)


def as_namespace_root(cmd: list[str]) -> list[str]:
    """``cmd`` run as root of a new user namespace: files of unmapped owners obey their mode bits."""
    _need("--user", "--map-root-user")
    return ["unshare", "--user", "--map-root-user", *cmd]
