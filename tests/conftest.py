"""Shared fixtures. Real components only: no mocks of DeepSpeed, Ray, MLflow or tar shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRETRAIN_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_dir(*parts: str) -> Path:
    """A path under ../shared/data. Skips when absent; fails when PRETRAIN_REQUIRE_SHARED_DATA=1 (CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("PRETRAIN_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared data {path} is missing and PRETRAIN_REQUIRE_SHARED_DATA=1")
        pytest.skip(f"shared data {path} not present")
    return path


@pytest.fixture
def shared_data():
    return shared_data_dir
