"""The session's reference run for every launcher test (see ``tests.launch.helpers``)."""

from __future__ import annotations

import pytest

from tests.dist.helpers import losses, run_train
from tests.launch.helpers import CONFIG, train_overrides


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """(run dir, step -> loss, completed process) of ``pretrain train --nproc 2``, run once."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_train(CONFIG, train_overrides(run_dir), nproc=2)
    return run_dir, losses(run_dir), proc
