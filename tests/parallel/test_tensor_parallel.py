"""Tensor parallel 2 (two gloo ranks) against tensor parallel 1: one spawned job per family."""

from __future__ import annotations

import socket

import pytest
import torch.multiprocessing as mp

from tests.parallel import tp_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("presets", [["gpt2-debug", "llama-debug"], ["bert-debug"], ["vit-debug"]],
                         ids=["gpt", "bert", "vit"])
def test_tp2_matches_tp1(presets):
    """Same loss, logits and gathered gradients within 1e-5 relative; sharded build = sliced weights,
    about half the bytes per rank; shard/merge of state dicts round-trips."""
    mp.spawn(tp_worker.run, args=(free_port(), presets), nprocs=tp_worker.TP, join=True)
