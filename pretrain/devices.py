"""Accelerator facts the trainer needs: peak FLOP/s for MFU, and deterministic execution.

Peak FLOP/s are dense (no 2:4 sparsity) 16-bit tensor-core figures from the vendors' datasheets,
looked up by the exact name ``torch.cuda.get_device_name()`` reports: an H100 PCIe is not an SXM
H100, an L4 is not an L40S, and a MIG slice or an unlisted device gets no MFU ("n/a") rather than a
wrong one. ``PRETRAIN_PEAK_FLOPS`` (FLOP/s per rank) overrides the table, e.g. for a MIG slice or a
new device. MFU is always relative to the 16-bit peak, also for fp32 runs.
"""

from __future__ import annotations

import os

# torch.cuda.get_device_name() -> dense bf16/fp16 tensor FLOP/s per device
PEAK_FLOPS_16BIT: dict[str, float] = {
    "NVIDIA B200": 2.25e15,
    "NVIDIA GB200": 2.5e15,
    "NVIDIA H200": 989.4e12,  # SXM
    "NVIDIA H200 NVL": 835.5e12,
    "NVIDIA GH200 480GB": 989.4e12,
    "NVIDIA H100 80GB HBM3": 989.4e12,  # SXM5
    "NVIDIA H100 NVL": 835.5e12,
    "NVIDIA H100 PCIe": 756.5e12,
    "NVIDIA H800": 989.4e12,  # SXM
    "NVIDIA H800 PCIe": 756.5e12,
    "NVIDIA H20": 148e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM-80GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A800-SXM4-80GB": 312e12,
    "NVIDIA A800 80GB PCIe": 312e12,
    "NVIDIA L40S": 362.05e12,
    "NVIDIA L40": 181.05e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10": 125e12,
    "Tesla V100-SXM2-16GB": 125e12,  # fp16 only (no bf16 on V100)
    "Tesla V100-SXM2-32GB": 125e12,
    "Tesla V100-PCIE-16GB": 112e12,
    "Tesla V100-PCIE-32GB": 112e12,
    "AMD Instinct MI300X": 1307.4e12,
    "AMD Instinct MI325X": 1307.4e12,
}

# short names for planning (``pretrain scaling plan --gpu-type``): the SXM part where there are several
SHORT_NAMES: dict[str, str] = {
    "B200": "NVIDIA B200", "H200": "NVIDIA H200", "H100": "NVIDIA H100 80GB HBM3", "H100-PCIE": "NVIDIA H100 PCIe",
    "H100-NVL": "NVIDIA H100 NVL", "A100": "NVIDIA A100-SXM4-80GB", "L40S": "NVIDIA L40S", "L4": "NVIDIA L4",
    "MI300X": "AMD Instinct MI300X",
}


def peak_flops(device_name: str) -> float | None:
    """Dense 16-bit peak FLOP/s of the device called ``device_name`` exactly, or None if unlisted."""
    return PEAK_FLOPS_16BIT.get(device_name.strip())


def device_name() -> str:
    """This rank's accelerator as torch names it ("cpu" without one)."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else get_accelerator().device_name()


def peak_flops_per_rank() -> float:
    """Peak FLOP/s of one rank for MFU: ``$PRETRAIN_PEAK_FLOPS``, else the table; 0.0 = unknown
    (CPU, MIG slices, unlisted devices), which the trainer reports as MFU n/a."""
    if os.environ.get("PRETRAIN_PEAK_FLOPS"):
        return float(os.environ["PRETRAIN_PEAK_FLOPS"])
    name = device_name()
    return 0.0 if name == "cpu" else (peak_flops(name) or 0.0)


def peak_description() -> str:
    """One phrase for the start line: where the MFU denominator comes from."""
    if os.environ.get("PRETRAIN_PEAK_FLOPS"):
        return f"peak {float(os.environ['PRETRAIN_PEAK_FLOPS']) / 1e12:g} TFLOP/s per rank (PRETRAIN_PEAK_FLOPS)"
    name = device_name()
    if name == "cpu":
        return "MFU n/a on CPU"
    peak = peak_flops(name)
    if peak:
        return f"peak {peak / 1e12:g} TFLOP/s per rank ({name})"
    return f"MFU n/a: no peak for {name!r} (set PRETRAIN_PEAK_FLOPS, FLOP/s per rank)"


def use_deterministic_algorithms(enabled: bool) -> None:
    """``train.deterministic``: deterministic kernels or an error where torch has none, cuBLAS with
    a fixed workspace (set before its first use in the process), no cuDNN autotuning. Off: torch's
    defaults, which pick the fastest kernels, some of which accumulate in a varying order."""
    import torch

    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
