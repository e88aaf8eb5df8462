"""DeepSpeed's runner with a hostfile, for real: sshd on this machine (``tests.engines``), pdsh
over ssh to ``localhost``, ``deepspeed.launcher.launch`` there starting 2 ranks."""

from __future__ import annotations

import pytest

from tests.engines import sshd  # noqa: F401 -- the module's sshd
from tests.launch.helpers import CONFIG, assert_same_losses, launch, train_overrides

pytestmark = pytest.mark.slow


def test_hostfile_runner_trains_like_the_local_launcher(sshd, reference, tmp_path):  # noqa: F811
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    run_dir = tmp_path / "run"
    out = launch(CONFIG, *train_overrides(run_dir), "--launcher=deepspeed", f"--hostfile={hostfile}",
                 f"--ssh-port={sshd.port}", "--master-addr=127.0.0.1", env=sshd.env, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert "pdsh" in text and "world 2 = data 2 x tensor 1" in text, text[-3000:]  # through ssh, one world
    assert_same_losses(run_dir, reference[1])
