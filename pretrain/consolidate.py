"""Full fp32 weights from a training checkpoint of any layout, on CPU, without the original world.

    cfg, sd = load_full_state_dict("runs/x/checkpoints/step00000020")   # Config, {plain key: fp32}
    model = from_checkpoint("runs/x")                                     # the trained plain model
    sd = load_init_weights(path, cfg.model)                     # for checkpoint.init_from (fitted, checked)

``CheckpointReader`` yields one full tensor at a time, so an exporter can write tensor by tensor
and never hold two copies of the model. Layouts (``<dp>``/``<tp>`` = data/tensor rank):

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

DeepSpeed's ``zero_to_fp32`` reads only ``mp_rank_00``; here each tensor rank is consolidated on its
own and the ranks are then merged along the parallel plan's splits (``param_split``; the same
layout ``pretrain.parallel.merge_tp_state_dicts`` merges, filled in place one shard at a time). DeepSpeed's
files are pickles: they are read with ``torch.load(weights_only=True, mmap=True)``, allow-listing
only the few DeepSpeed classes they contain as inert stand-ins (so DeepSpeed need not even be
imported), and memory-mapped so that only the fp32 master weights are paged in.

An ``pretrain import-hf`` directory (``config.yaml`` + ``model.safetensors`` in our key names) is
read the same way.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from pretrain.checkpoint import COMPLETE, DEEPSPEED_PICKLED_CLASSES, LATEST, CheckpointError, verify

PREFIX = "model."  # DeepSpeed wraps our model in train_setup.LossModule


class _Inert:
    """Stand-in for an allow-listed DeepSpeed class: keeps its arguments and state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def torch_load(path: Path) -> dict:
    """``torch.load`` a DeepSpeed file safely (weights only, memory-mapped); errors name the file."""
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in DEEPSPEED_PICKLED_CLASSES]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from checkpoint") from None
    except Exception as e:  # truncated zip, unknown pickled class, ...
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A tag dir as given; a run dir or ``checkpoints/`` root -> the tag named by its ``latest``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    for root in (path, path / "checkpoints"):
        if not (root / COMPLETE).exists() and (root / LATEST).is_file():
            return root / (root / LATEST).read_text().strip()
    return path


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


class _RankWeights:
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
        self.shared = {_plain(k): _plain(v) for k, v in (states.get("shared_params") or {}).items()}
        self.module = states["module"] if stage == 0 else {}
        self.buffers = {_plain(k): states["module"][k] for k in states.get("buffer_names") or []}
        if stage == 0:  # ZeRO 0 records no shapes: the module's own tensors are the weights
            states["param_shapes"] = [{k: v.shape for k, v in states["module"].items()
                                       if _plain(k) not in self.buffers and _plain(k) not in self.shared}]
        self.groups = [{_plain(k): torch.Size(v) for k, v in g.items()} for g in states["param_shapes"]]
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


def _plain(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


class CheckpointReader:
    """Full fp32 tensors of a checkpoint (any ZeRO stage and tensor size) or an import-hf dir, one
    at a time: ``for key in reader.keys(): t = reader.tensor(key)``. ``config`` is the run's Config."""

    def __init__(self, path: str | Path, check: bool = True, field: str = "fp32"):
        from pretrain.config import load_config

        self.dir = resolve_checkpoint_dir(path)
        self.info = verify(self.dir, checksums=check)
        self.config = load_config(self.dir / "config.yaml")
        self.model_config = self.config.model
        self._files: dict[str, object] = {}  # key -> safe_open handle (import-hf directories)
        self.ranks: list[_RankWeights] = []
        if (self.dir / "model.safetensors").is_file() or (self.dir / "model.safetensors.index.json").is_file():
            if field != "fp32":
                raise CheckpointError(f"{self.dir}: an imported weights directory holds no optimizer state")
            self._open_safetensors()
            stored = list(self._files)
        else:
            self.ranks = [_RankWeights(self.dir, t, *self._layout(), self.config, field=field)
                          for t in range(self._tensor_size())]
            stored = self.ranks[0].keys()
        self._stored = set(stored)
        self._keys = _with_tied(stored, self.model_config)

    def _open_safetensors(self) -> None:
        from safetensors import safe_open

        index = self.dir / "model.safetensors.index.json"
        names = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
            else ["model.safetensors"]
        for name in names:
            try:
                handle = safe_open(str(self.dir / name), framework="pt")
            except Exception as e:
                raise CheckpointError(f"{self.dir / name}: cannot be read ({e})") from None
            self._files.update({k: handle for k in handle.keys()})  # noqa: SIM118 - safe_open has no __iter__

    def state(self, name: str) -> dict:
        p = self.dir / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def _tensor_size(self) -> int:
        size = self.state("trainer_state.json").get("tensor_parallel_size")
        if size is None:
            size = len({m for p in self.dir.glob("*mp_rank_*") for m in re.findall(r"mp_rank_(\d+)", p.name)})
        return max(1, int(size))

    def _layout(self) -> tuple[int, int]:
        """(ZeRO stage, data size) from trainer_state.json, else from the files present."""
        st = self.state("trainer_state.json")
        if "zero_stage" in st:
            return int(st["zero_stage"]), int(st.get("data_parallel_size", 1))
        optim = list(self.dir.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))
        if not optim:
            return 0, 1
        stage = 3 if (self.dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file() else 2
        return stage, len(optim)

    def keys(self) -> list[str]:
        return list(self._keys)

    def adam_step(self) -> float:
        """AdamW's step count (optimizer steps taken; skipped ones not counted). Moments readers only."""
        steps = [s for rank in self.ranks for s in rank.adam_steps]
        if not steps:
            raise CheckpointError(f"{self.dir}: no AdamW step count in the optimizer state")
        return max(steps)

    def engine_state(self) -> dict:
        """DeepSpeed's counters and LR scheduler state (those of ``ENGINE_KEYS`` the checkpoint has)."""
        if not self.ranks:
            raise CheckpointError(f"{self.dir}: an imported weights directory holds no training state")
        return self.ranks[0].engine_state

    @torch.no_grad()
    def tensor(self, key: str) -> torch.Tensor:
        """The full, tensor-parallel-merged fp32 tensor for our plain ``key``."""
        if key not in self._keys:
            raise KeyError(key)
        source = key if key in self._stored else _tied_source(key, self.model_config)
        if self._files:
            return self._files[source].get_tensor(source).float()
        return self._merge(key, source)

    def _merge(self, key: str, source: str) -> torch.Tensor:
        """Tensor ranks' shards of ``key`` written one by one into the full tensor, along the split
        of ``pretrain.parallel.param_split`` (the layout ``merge_tp_state_dicts`` inverts): rank
        ``r`` holds slice ``r`` of every fused block. Filling in place keeps one shard, not all,
        next to the result (the merged embedding is often the largest tensor of an export)."""
        from pretrain.parallel import param_split

        split = param_split(key, self.model_config)
        size = len(self.ranks)
        if size == 1 or split is None:
            return self.ranks[0].get(source)
        dim, parts = split
        shape = list(self.ranks[0].shape(source))
        shape[dim] *= size
        out = torch.empty(shape, dtype=torch.float32)
        for r, rank in enumerate(self.ranks):
            shard = rank.get(source)
            full_at = local_at = 0
            for block in parts:
                n = block // size
                out.narrow(dim, full_at + r * n, n).copy_(shard.narrow(dim, local_at, n))
                full_at, local_at = full_at + block, local_at + n
            del shard
        return out

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self._keys:
            yield key, self.tensor(key)

    def num_parameters(self) -> int:
        """Parameters of the model, tied ones counted once."""
        from pretrain.models import build_model, count_parameters

        return count_parameters(build_model(self.model_config, device="meta"))


_TIED = {"lm_head.weight": "tok_embed.weight", "mlm.decoder.weight": "tok_embed.weight"}


def _tied_source(key: str, model_config) -> str:
    return _TIED[key] if model_config.tie_embeddings and key in _TIED else key


def _with_tied(keys: list[str], model_config) -> list[str]:
    """Add tied aliases (a tied head) that ZeRO 3 does not list, so the state dict fits the model."""
    from pretrain.models import build_model

    expected = build_model(model_config, device="meta").state_dict().keys()
    extra = [k for k in expected if k not in keys and _tied_source(k, model_config) in keys and k in _TIED]
    return list(keys) + extra


def load_full_state_dict(path: str | Path, check: bool = True):
    """``(Config, {plain key: full fp32 tensor})`` of a checkpoint (any layout) or import-hf dir.
    Tied tensors share storage, as in the model."""
    reader = CheckpointReader(path, check=check)
    out: dict[str, torch.Tensor] = {}
    for key in reader.keys():
        src = _tied_source(key, reader.model_config)
        out[key] = out[src] if src != key and src in out else reader.tensor(key)
    return reader.config, out


_ARCH_FIELDS = ("family", "position", "norm", "norm_position", "activation", "bias", "tie_embeddings", "vocab_size")
_VOCAB_KEYS = ("tok_embed.weight", "lm_head.weight", "mlm.decoder.weight", "mlm.decoder.bias")


def load_init_weights(path: str | Path, model_config) -> dict:
    """For ``checkpoint.init_from``: the full state dict of ``path`` (checkpoint of any layout or
    import-hf dir) fitted to ``model_config``. The architectures must agree (CheckpointError naming
    the differing fields or tensors); only the vocabulary padding may differ (``pad_vocab_multiple``,
    e.g. for a larger tensor size), and padding rows are then cut or added as zeros."""
    from pretrain.models import build_model

    cfg, sd = load_full_state_dict(path, check=True)
    diff = [f"model.{f}: checkpoint {getattr(cfg.model, f)!r}, config {getattr(model_config, f)!r}"
            for f in _ARCH_FIELDS if getattr(cfg.model, f) != getattr(model_config, f)]
    expected = build_model(model_config, device="meta").state_dict()
    for key in [k for k in _VOCAB_KEYS if k in sd and k in expected]:
        sd[key] = _fit_rows(sd[key], expected[key].shape[0])
    if cfg.model.tie_embeddings and "tok_embed.weight" in sd:
        for key in ("lm_head.weight", "mlm.decoder.weight"):
            if key in sd:
                sd[key] = sd["tok_embed.weight"]
    diff += [f"{k}: checkpoint {tuple(sd[k].shape)}, config {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    missing = [k for k in expected if k not in sd]
    if diff or missing:
        raise CheckpointError(f"{path}: weights do not fit this model; " + "; ".join(diff[:8])
                              + (f"; missing {missing[:8]}" if missing else ""))
    return sd


def _fit_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    if t.shape[0] > rows:
        return t[:rows].clone()
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu", check: bool = True) -> torch.nn.Module:
    """The trained plain model (``pretrain.models.build_model``) with the checkpoint's weights, in
    eval mode. ``path``: a tag dir, a run dir or ``checkpoints/`` (latest), or an import-hf dir."""
    from pretrain.models import build_model

    cfg, sd = load_full_state_dict(path, check=check)
    kwargs = {"pooler": "pooler.dense.weight" in sd} if cfg.model.family == "bert" else {}
    model = build_model(cfg.model, device="meta", **kwargs)
    model.load_state_dict(sd, strict=True, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: checkpoint does not set {left[:5]}")
    return model.to(device).eval()
