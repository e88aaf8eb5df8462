"""DeepSpeed's checkpoint files of one tensor rank, consolidated over the ZeRO data ranks.

Layouts (``<dp>``/``<tp>`` = data/tensor rank):

- ZeRO 0: ``mp_rank_<tp>_model_states.pt`` hold each tensor rank's module weights (``module``).
- ZeRO 1/2: ``zero_pp_rank_<dp>_mp_rank_<tp>_optim_states.pt`` hold each data rank's slice of the
  flat fp32 master weights per parameter group (``single_partition_of_fp32_groups``); the order,
  shapes and alignment paddings of the parameters in a group come from ``param_shapes`` in
  ``mp_rank_<tp>_model_states.pt`` and ``param_alignment_paddings`` (as DeepSpeed's zero_to_fp32).
- ZeRO 3: the same files' ``fp32_flat_groups``: every parameter is padded to a multiple of the data
  size and each data rank holds one equal slice of it, parameters in ``param_shapes`` order.
- bf16/fp16: the fp32 masters above are read; at ZeRO 0 they are DeepSpeed's FP16/BF16
  optimizer's ``fp32_groups`` in the model states (matched to names by rebuilding our AdamW
  groups). Offloaded runs write the same files.

Files are read with ``safe_load.torch_load`` (weights only, memory-mapped), so that only the fp32
master weights are paged in, and consumed pages are dropped again (``_release``).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
from pathlib import Path

import torch

from pretrain.checkpoint.safe_load import torch_load
from pretrain.checkpoint.store import CheckpointError

PREFIX = "model."  # DeepSpeed wraps our model in train_setup.LossModule

_MADV_DONTNEED = 4


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _release(views: list[torch.Tensor]) -> None:
    """Drop the pages of memory-mapped checkpoint slices already consumed from this process's
    resident set (``madvise(MADV_DONTNEED)``; Linux). The mapping is a private, never-written file
    mapping, so a page touched again is simply re-read from the file: without this, every page of
    the fp32 masters read so far would stay resident and the export would peak at one extra copy
    of the model."""
    if _LIBC is None:
        return
    for v in views:
        start = v.data_ptr()
        lo = start - start % mmap.PAGESIZE
        _LIBC.madvise(lo, start - lo + v.numel() * v.element_size(), _MADV_DONTNEED)


def _gather(chunks: list[torch.Tensor], start: int, length: int) -> list[torch.Tensor]:
    """Slices ``[start, start + length)`` of the virtual concatenation of 1-D ``chunks`` (no copy)."""
    out, pos = [], 0
    for c in chunks:
        n = c.numel()
        lo, hi = max(start, pos), min(start + length, pos + n)
        if lo < hi:
            out.append(c.narrow(0, lo - pos, hi - lo))
        pos += n
        if pos >= start + length:
            break
    if sum(t.numel() for t in out) != length:
        raise CheckpointError(f"flat partitions hold fewer elements than the parameter shapes need ({start}+{length})")
    return out


# What a reader can consolidate: the fp32 (master) weights, or one of AdamW's moments, which lie in
# DeepSpeed's files exactly as the weights do (same flat partitions, same parameter order).
FIELDS = ("fp32", "exp_avg", "exp_avg_sq")
# DeepSpeed's engine counters and LR scheduler state in the model states (what a resume carries over)
ENGINE_KEYS = ("lr_scheduler", "global_steps", "global_samples", "skipped_steps")


class RankWeights:
    """One tensor rank's consolidated (over ZeRO data ranks) fp32 weights -- or AdamW moments
    (``field``) -- by plain key."""

    def __init__(self, tag_dir: Path, tp_rank: int, stage: int, dp_size: int, config=None, field: str = "fp32"):
        if field not in FIELDS:
            raise ValueError(f"field {field!r} is not one of {FIELDS}")
        self.tag_dir, self.stage, self.field = tag_dir, stage, field
        self.masters: dict[str, torch.Tensor] = {}  # ZeRO 0 bf16/fp16: fp32 masters by key
        self.adam_steps: list[float] = []  # AdamW's step counts, read with the moments
        mp = f"mp_rank_{tp_rank:02d}"
        if stage == 3:
            states = torch_load(self._one(f"zero_pp_rank_0_{mp}_model_states.pt"))
        else:
            states = torch_load(self._one(f"{mp}_model_states.pt"))
        if "module" not in states or (stage > 0 and not states.get("param_shapes")):
            raise CheckpointError(f"{tag_dir}: {mp} model states lack param_shapes/module (not a DeepSpeed file)")
        self.engine_state = {k: states[k] for k in ENGINE_KEYS if states.get(k) is not None}
        self.shared = {plain_key(k): plain_key(v) for k, v in (states.get("shared_params") or {}).items()}
        self.module = states["module"] if stage == 0 else {}
        self.buffers = {plain_key(k): states["module"][k] for k in states.get("buffer_names") or []}
        if stage == 0:  # ZeRO 0 records no shapes: the module's own tensors are the weights
            states["param_shapes"] = [{k: v.shape for k, v in states["module"].items()
                                       if plain_key(k) not in self.buffers and plain_key(k) not in self.shared}]
        self.groups = [{plain_key(k): torch.Size(v) for k, v in g.items()} for g in states["param_shapes"]]
        if stage == 0 and field != "fp32":
            if config is None:
                raise ValueError("reading optimizer moments of a ZeRO 0 checkpoint needs its config")
            self.masters, self.adam_steps = _zero0_moments(states, config, field, tag_dir / f"{mp}_model_states.pt")
        elif stage == 0 and config is not None:
            self.masters = _zero0_masters(states, config, tag_dir / f"{mp}_model_states.pt")
        self.flat: list[list[torch.Tensor]] = []
        self.index: dict[str, tuple[int, int, int]] = {}  # key -> (group, offset, numel)
        if stage > 0:
            self._read_partitions(mp, dp_size)

    def _one(self, name: str) -> Path:
        p = self.tag_dir / name
        if not p.is_file():
            raise CheckpointError(f"{p}: missing from checkpoint (a shard of this layout)")
        return p

    def _read_partitions(self, mp: str, dp_size: int) -> None:
        key = "fp32_flat_groups" if self.stage == 3 else "single_partition_of_fp32_groups"
        inner = "optimizer_state_dict" if self.stage == 3 else "base_optimizer_state"
        paddings = None
        for d in range(dp_size):
            files = sorted(self.tag_dir.glob(f"*zero_pp_rank_{d}_{mp}_optim_states.pt"))
            if not files:
                raise CheckpointError(f"{self.tag_dir / f'zero_pp_rank_{d}_{mp}_optim_states.pt'}: missing from "
                                      f"checkpoint (ZeRO {self.stage} shard of data rank {d})")
            osd = torch_load(files[0]).get("optimizer_state_dict", {})
            if key not in osd:
                raise CheckpointError(f"{files[0]}: no {key} (ZeRO stage {self.stage} expected)")
            if self.field == "fp32":
                self.flat.append([t.detach() for t in osd[key]])  # saved as Parameters (requires_grad)
            else:  # the inner AdamW's state: one entry per flat group, shaped as that group's partition
                state = (osd.get(inner) or {}).get("state") or {}
                if len(state) != len(osd[key]) or any(self.field not in v for v in state.values()):
                    raise CheckpointError(f"{files[0]}: no AdamW {self.field} for every parameter group")
                self.flat.append([state[g][self.field].detach() for g in sorted(state)])
                self.adam_steps += [float(v["step"]) for v in state.values() if "step" in v]
            paddings = osd.get("param_alignment_paddings")
        if self.stage == 3:
            self._index_zero3(dp_size)
        else:
            self._index_zero12(paddings)

    def _index_zero12(self, paddings) -> None:
        """Per group, parameters lie back to back (plus alignment padding) in the concatenation of
        all data ranks' partitions of that group."""
        for g, shapes in enumerate(self.groups):
            offset = 0
            for i, (name, shape) in enumerate(shapes.items()):
                self.index[name] = (g, offset, shape.numel())
                offset += shape.numel() + (paddings[g][i] if paddings else 0)
            avail = sum(r[g].numel() for r in self.flat)
            if offset > avail:
                raise CheckpointError(f"{self.tag_dir}: group {g} needs {offset} elements, partitions hold {avail}")

    def _index_zero3(self, dp_size: int) -> None:
        offset = 0
        for shapes in self.groups:
            for name, shape in shapes.items():
                part = math.ceil(shape.numel() / dp_size)
                self.index[name] = (-1, offset, part)
                offset += part
        avail = sum(t.numel() for t in self.flat[0])
        if offset != avail:
            raise CheckpointError(f"{self.tag_dir}: ZeRO 3 partitions hold {avail} elements per rank, shapes need {offset}")

    def keys(self) -> list[str]:
        """Stored tensors (tied aliases excluded: DeepSpeed lists them in ``shared_params`` on some
        tensor ranks only, so they are added from the model config, see ``_with_tied``)."""
        names = [n for g in self.groups for n in g]
        return names + [k for k in self.buffers if k not in names]

    def shape(self, key: str) -> torch.Size:
        key = self.shared.get(key, key)
        for g in self.groups:
            if key in g:
                return g[key]
        return self.buffers[key].shape

    def get(self, key: str) -> torch.Tensor:
        """The full (for this tensor rank) fp32 tensor: a fresh copy, never a view of a mapped file."""
        key = self.shared.get(key, key)
        if key in self.buffers and self.field == "fp32":
            b = self.buffers[key].detach()
            return b.float().clone() if b.is_floating_point() else b.clone()
        shape = self.shape(key)
        if self.stage == 0:
            if self.field != "fp32" and key not in self.masters:
                raise CheckpointError(f"{self.tag_dir}: no AdamW {self.field} for {key}")
            src = (self.masters[key] if key in self.masters else self.module[PREFIX + key]).detach()
            out = src.to(torch.float32, copy=True).reshape(shape)
            _release([src])
            return out
        g, offset, n = self.index[key]
        if self.stage == 3:
            pieces = [p for rank in self.flat for p in _gather(rank, offset, n)]
        else:
            pieces = _gather([rank[g] for rank in self.flat], offset, n)
        out = torch.empty(shape.numel(), dtype=torch.float32)
        at = 0
        for piece in pieces:  # copy, then drop that piece's file pages: one piece resident at a time
            n = min(piece.numel(), shape.numel() - at)
            if n > 0:
                out[at:at + n].copy_(piece[:n])
            at += n
            _release([piece])
        return out.reshape(shape)


def _zero0_masters(states: dict, config, path: Path) -> dict[str, torch.Tensor]:
    """ZeRO 0 in bf16/fp16: DeepSpeed's FP16/BF16 optimizer keeps fp32 copies of the parameters in
    ``optimizer.fp32_groups`` (one list per AdamW group, in parameter order, no names). The names
    come from rebuilding our groups (``pretrain.schedules.param_groups``) on a meta model; every
    shape must match this tensor rank's module weights, else the module weights are used."""
    groups = (states.get("optimizer") or {}).get("fp32_groups") if isinstance(states.get("optimizer"), dict) else None
    named = _name_zero0_groups(states, groups, config) if groups else None
    if groups and named is None:
        import warnings

        warnings.warn(f"{path}: fp32 master copies do not line up with the parameters; "
                      "using the module weights (training precision)", stacklevel=3)
    return named or {}


def _zero0_moments(states: dict, config, field: str, path: Path) -> tuple[dict[str, torch.Tensor], list[float]]:
    """ZeRO 0: AdamW's ``field`` per parameter from the torch optimizer state in the model states
    (``optimizer``, or ``optimizer.optimizer_state_dict`` under DeepSpeed's FP16/BF16 wrapper),
    numbered in our parameter-group order; and the state's step counts."""
    opt = states.get("optimizer") if isinstance(states.get("optimizer"), dict) else {}
    opt = opt.get("optimizer_state_dict", opt)
    state, groups = opt.get("state") or {}, opt.get("param_groups") or []
    try:
        tensors = [[state[i][field] for i in g["params"]] for g in groups]
    except (KeyError, TypeError):
        tensors = None
    named = _name_zero0_groups(states, tensors, config) if tensors else None
    if named is None:
        raise CheckpointError(f"{path}: no AdamW {field} that lines up with the parameters "
                              "(a checkpoint saved before the first optimizer step, or another optimizer)")
    return named, [float(v["step"]) for v in state.values() if "step" in v]


def _name_zero0_groups(states: dict, groups: list, config) -> dict[str, torch.Tensor] | None:
    """Per-group tensor lists (our AdamW groups' order) -> {plain name: tensor}, or None when the
    groups or shapes do not match this tensor rank's module weights."""
    from pretrain.models import build_model
    from pretrain.schedules import param_groups

    model = build_model(config.model, device="meta")
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [[names[id(p)] for p in g["params"]] for g in param_groups(model, config.optim)]
    if [len(g) for g in ours] != [len(g) for g in groups]:
        return None
    out = {}
    for group_names, tensors in zip(ours, groups):
        for name, t in zip(group_names, tensors):
            module_t = states["module"].get(PREFIX + name)
            if module_t is None or tuple(module_t.shape) != tuple(t.shape):
                return None
            out[name] = t
    return out


def plain_key(key: str) -> str:
    """Our model's key for a DeepSpeed module key (without the loss module's ``model.`` prefix)."""
    return key[len(PREFIX):] if key.startswith(PREFIX) else key
