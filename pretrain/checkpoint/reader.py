"""Full fp32 weights from a training checkpoint of any layout, on CPU, without the original world.

    cfg, sd = load_full_state_dict("runs/x/checkpoints/step00000020")   # Config, {plain key: fp32}
    model = from_checkpoint("runs/x")                                     # the trained plain model
    sd = load_init_weights(path, cfg.model)                     # for checkpoint.init_from (fitted, checked)

``CheckpointReader`` yields one full tensor at a time, so an exporter can write tensor by tensor
and never hold two copies of the model. DeepSpeed's files of each layout are read by
``pretrain.checkpoint.deepspeed_files``.

DeepSpeed's ``zero_to_fp32`` reads only ``mp_rank_00``; here each tensor rank is consolidated on its
own and the ranks are then merged along the parallel plan's splits (``param_split``; the same
layout ``pretrain.parallel.merge_tp_state_dicts`` merges, filled in place one shard at a time). DeepSpeed's
files are pickles, read weights-only (``pretrain.checkpoint.safe_load``).

An ``pretrain import-hf`` directory (``config.yaml`` + ``model.safetensors`` in our key names) is
read the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from pretrain.checkpoint.deepspeed_files import RankWeights
from pretrain.checkpoint.store import COMPLETE, LATEST, CheckpointError, verify


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A tag dir as given; a run dir or ``checkpoints/`` root -> the tag named by its ``latest``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    for root in (path, path / "checkpoints"):
        if not (root / COMPLETE).exists() and (root / LATEST).is_file():
            return root / (root / LATEST).read_text().strip()
    return path



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
        self.ranks: list[RankWeights] = []
        if (self.dir / "model.safetensors").is_file() or (self.dir / "model.safetensors.index.json").is_file():
            if field != "fp32":
                raise CheckpointError(f"{self.dir}: an imported weights directory holds no optimizer state")
            self._open_safetensors()
            stored = list(self._files)
        else:
            self.ranks = [RankWeights(self.dir, t, *self._layout(), self.config, field=field)
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
        source = key if key in self._stored else tied_source(key, self.model_config)
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


def tied_source(key: str, model_config) -> str:
    return _TIED[key] if model_config.tie_embeddings and key in _TIED else key


def _with_tied(keys: list[str], model_config) -> list[str]:
    """Add tied aliases (a tied head) that ZeRO 3 does not list, so the state dict fits the model."""
    from pretrain.models import build_model

    expected = build_model(model_config, device="meta").state_dict().keys()
    extra = [k for k in expected if k not in keys and tied_source(k, model_config) in keys and k in _TIED]
    return list(keys) + extra


def load_full_state_dict(path: str | Path, check: bool = True):
    """``(Config, {plain key: full fp32 tensor})`` of a checkpoint (any layout) or import-hf dir.
    Tied tensors share storage, as in the model."""
    reader = CheckpointReader(path, check=check)
    out: dict[str, torch.Tensor] = {}
    for key in reader.keys():
        src = tied_source(key, reader.model_config)
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
