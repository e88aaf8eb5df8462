"""A streaming safetensors writer: tensors are appended one at a time, never all in memory.

``safetensors.torch.save_file`` needs the whole state dict at once; an export of a large model
must not hold it. Each shard's tensor bytes go to a spill file as they come, and when the shard
is full its header (the safetensors layout: 8-byte little-endian header length, JSON header with
``dtype``/``shape``/``data_offsets``, then the raw little-endian bytes) is written in front of them.
Shards above ``max_shard_bytes`` are named ``model-0000i-of-0000n.safetensors`` and listed in
``model.safetensors.index.json``, as ``transformers``' ``save_pretrained`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"10KB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
                         ("KB", 10**3), ("B", 1)):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


class ShardedSafetensorsWriter:
    """``add(key, tensor)`` in any order, then ``close()`` -> the file names written under ``out_dir``."""

    def __init__(self, out_dir: str | Path, max_shard_bytes: int, prefix: str = "model",
                 metadata: dict[str, str] | None = None):
        self.out = Path(out_dir)
        self.max = max_shard_bytes
        self.prefix = prefix
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards: list[tuple[Path, dict]] = []  # (spill file, header) per finished shard
        self.total = 0
        self._spill = None
        self._header: dict = {}
        self._pos = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in DTYPES:
            raise ValueError(f"{key}: dtype {t.dtype} cannot be stored in safetensors")
        nbytes = t.numel() * t.element_size()
        if self._spill is not None and self._pos and self._pos + nbytes > self.max:
            self._finish_shard()
        if self._spill is None:
            self._spill = open(self.out / f".{self.prefix}-{len(self.shards):05d}.spill", "wb")  # noqa: SIM115
            self._header, self._pos = {}, 0
        if nbytes:
            self._spill.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                             "data_offsets": [self._pos, self._pos + nbytes]}
        self._pos += nbytes
        self.total += nbytes

    def _finish_shard(self) -> None:
        self._spill.close()
        self.shards.append((Path(self._spill.name), self._header))
        self._spill = None

    def close(self) -> list[str]:
        """Write the shards (and the index when there are several); returns their file names."""
        if self._spill is not None or not self.shards:
            if self._spill is None:  # no tensors at all: one empty file
                self._spill = open(self.out / f".{self.prefix}-00000.spill", "wb")  # noqa: SIM115
                self._header = {}
            self._finish_shard()
        n = len(self.shards)
        names = [f"{self.prefix}.safetensors"] if n == 1 else \
            [f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for (spill, header), name in zip(self.shards, names):
            _assemble(self.out / name, spill, {"__metadata__": self.metadata, **header})
        if n > 1:
            weight_map = {k: name for (_, header), name in zip(self.shards, names) for k in header}
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            names.append(f"{self.prefix}.safetensors.index.json")
        return names


def _assemble(path: Path, spill: Path, header: dict) -> None:
    """Header in front of the spilled bytes: a rename when the header fits nowhere else, so copy."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        with open(spill, "rb") as src:
            shutil.copyfileobj(src, f, 16 << 20)
    os.unlink(spill)
