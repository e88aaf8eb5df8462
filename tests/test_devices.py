"""Peak FLOP/s by exact device name (MFU), the two FLOP counts, deterministic mode. (The next-step
prefetcher and the step loop's MFU window: ``tests/test_prefetch.py``.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.devices import PEAK_FLOPS_16BIT, peak_flops

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5), ("NVIDIA A100-SXM4-40GB", 312),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L40S", 362.05), ("NVIDIA L40", 181.05), ("NVIDIA L4", 121), ("NVIDIA B200", 2250),
])
def test_peak_by_exact_device_name(name, tflops):
    assert peak_flops(name) == pytest.approx(tflops * 1e12)


def test_substrings_and_unknown_devices_get_no_peak():
    """The old substring table called an H100 PCIe 989 TFLOP/s and an L40S an L4; now a name
    matches exactly or not at all (MIG slices, new devices: MFU n/a unless PRETRAIN_PEAK_FLOPS)."""
    assert peak_flops("NVIDIA H100 PCIe") != peak_flops("NVIDIA H100 80GB HBM3")
    assert peak_flops("NVIDIA L40S") != peak_flops("NVIDIA L4")
    for unknown in ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "H100", "NVIDIA GeForce RTX 4090", "cpu"):
        assert peak_flops(unknown) is None
    assert all(v >= 1e14 for v in PEAK_FLOPS_16BIT.values())


def test_peak_override_and_cpu(monkeypatch):
    from pretrain.devices import peak_description, peak_flops_per_rank

    monkeypatch.delenv("PRETRAIN_PEAK_FLOPS", raising=False)
    assert peak_flops_per_rank() == 0.0 and "n/a" in peak_description()  # this machine: CPU
    monkeypatch.setenv("PRETRAIN_PEAK_FLOPS", "2.5e14")
    assert peak_flops_per_rank() == 2.5e14 and "250 TFLOP/s" in peak_description()


def test_both_flop_counts_and_the_anchor_formula():
    """MFU's two counts: the published 6N + 12 L H T (N = matmul weights, head included) and the
    exact causal count, which is smaller by the masked half of attention."""
    from pretrain.config import load_config
    from pretrain.train_setup import _items_and_flops, anchor_flops_per_item

    cfg = load_config(REPO / "configs/gpt/gpt2-124m.yaml", ["data.source=synthetic"])
    L, h, V, T = 12, 768, 50304, 1024
    n_matmul = L * 12 * h * h + h * V
    assert anchor_flops_per_item(cfg) == 6 * n_matmul + 12 * L * h * T
    _, exact = _items_and_flops(cfg, 1)
    assert exact == anchor_flops_per_item(cfg) - 12 * L * h * T + 12 * L * h * (T + 1) / 2
    vit = load_config(REPO / "configs/vit/vit-b16.yaml", ["data.source=synthetic"])
    assert anchor_flops_per_item(vit) == _items_and_flops(vit, 1)[1]  # no causal mask: one count


def test_deterministic_mode_sets_torch_and_cublas():
    """In a fresh interpreter (the flag is process-wide): off changes nothing, on sets both."""
    code = ("import os, torch; from pretrain.devices import use_deterministic_algorithms as u; u(False); "
            "a = (torch.are_deterministic_algorithms_enabled(), 'CUBLAS_WORKSPACE_CONFIG' in os.environ); u(True); "
            "print(a, torch.are_deterministic_algorithms_enabled(), os.environ['CUBLAS_WORKSPACE_CONFIG'], "
            "torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["(False,", "False)", "True", ":4096:8", "True", "False"]
