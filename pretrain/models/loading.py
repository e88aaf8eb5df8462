"""Weights from training checkpoints, under the names ``pretrain.models`` users import.

Thin, lazy re-exports of ``pretrain.consolidate`` (which owns the checkpoint layouts):

- ``load_full_state_dict(path, model_config)``: the full state dict of a checkpoint (any ZeRO stage
  and tensor size) or an import-hf directory, fitted to ``model_config`` (for ``checkpoint.init_from``);
  = ``pretrain.consolidate.load_init_weights``.
- ``from_checkpoint(path, device="cpu")``: the trained plain model; = ``pretrain.consolidate.from_checkpoint``.
"""

from __future__ import annotations


def load_full_state_dict(path, model_config) -> dict:
    from pretrain.consolidate import load_init_weights

    return load_init_weights(path, model_config)


def from_checkpoint(path, device="cpu", check: bool = True):
    from pretrain.consolidate import from_checkpoint as _from_checkpoint

    return _from_checkpoint(path, device=device, check=check)
