"""The torch floor in pyproject.toml is at least what the code calls: every API below, found in
the sources, names the torch release that introduced it."""

from __future__ import annotations

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pretrain", "launch", "data_pipeline"]

# regex over the sources -> (first torch release with it, what)
API_FLOORS = {
    r"get_total_norm\(": ((2, 6), "torch.nn.utils.get_total_norm"),
    r"safe_globals\(\[\(": ((2, 6), "safe_globals with (global, 'module.name') tuples"),
    r"safe_globals\(": ((2, 5), "the torch.serialization.safe_globals context manager"),
    r"enable_gqa=": ((2, 5), "scaled_dot_product_attention(enable_gqa=...)"),
    r"nn\.RMSNorm": ((2, 4), "torch.nn.RMSNorm"),
    r"\"fused\": True": ((2, 4), "AdamW(fused=True) on CPU"),
    r"torch\.compiler\.disable": ((2, 2), "torch.compiler.disable"),
    r"mmap=True": ((2, 1), "torch.load(mmap=True)"),
}


def _floor() -> tuple[int, int]:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'"torch>=(\d+)\.(\d+)', text)
    assert match, "pyproject.toml must pin a torch floor (torch>=X.Y)"
    return int(match.group(1)), int(match.group(2))


def _used() -> dict[str, tuple[tuple[int, int], str, str]]:
    found = {}
    for root in SOURCES:
        for path in sorted((REPO / root).rglob("*.py")):
            text = path.read_text()
            for pattern, (version, what) in API_FLOORS.items():
                if pattern not in found and re.search(pattern, text):
                    found[pattern] = (version, what, str(path.relative_to(REPO)))
    return found


def test_torch_floor_covers_every_api_the_code_calls():
    floor = _floor()
    too_new = [f"{what} (torch {v[0]}.{v[1]}, {where})" for v, what, where in _used().values() if v > floor]
    assert not too_new, f"pyproject.toml says torch>={floor[0]}.{floor[1]}, but the code calls " + "; ".join(too_new)


def test_the_table_is_live_and_the_installed_torch_meets_the_floor():
    assert len(_used()) >= 6  # the scan finds the calls (a renamed folder would make the check vacuous)
    installed = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= _floor()
