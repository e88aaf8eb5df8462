"""Each rank's Python, NumPy, torch (and accelerator) RNG states, as JSON-able lists."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    acc = _accelerator()
    if acc is not None:  # GPU dropout draws from the device generator, not the CPU one
        state["accelerator"] = acc.get_rng_state().tolist()
    return state


def _accelerator():
    """DeepSpeed's accelerator when it is a device (not the CPU), else None."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return None if acc.device_name() == "cpu" else acc


def set_rng_state(state: dict) -> None:
    v, inner, gauss = state["python"]
    random.setstate((v, tuple(inner), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    acc = _accelerator() if "accelerator" in state else None
    if acc is not None:
        acc.set_rng_state(torch.tensor(state["accelerator"], dtype=torch.uint8))
