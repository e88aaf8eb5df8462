"""Deterministic, shard-aware weight initialisation and meta-device materialisation.

Every parameter is drawn from its own generator seeded by ``crc32(f"{seed}:{name}")``, as the
*full* (unsharded) tensor, and then sliced with the parameter's tensor-parallel spec. So a model
built at TP=2 holds exactly the TP=1 weights sliced, independent of build order, and building on
the meta device and materialising only allocates each rank's own shard (plus one full
parameter at a time, transiently, on CPU for the draw).

Rules: norm weights 1, all biases 0, everything else N(0, init_std); with
``scaled_residual_init`` the residual-stream projections (``attn.out``, ``mlp.fc_out``) use
``init_std / sqrt(2 * num_layers)`` (GPT-2).
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from pretrain.models.core import scaled_std


def _name_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """The unsharded shape of a (possibly tensor-parallel) parameter."""
    spec = getattr(p, "tp_shard", None)
    shape = list(p.shape)
    if spec is not None:
        shape[spec.dim] *= spec.size
    return tuple(shape)


def initial_value(model: nn.Module, name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The full fp32 initial value of parameter ``name`` (see the module docstring for the rules)."""
    cfg = model.config
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if isinstance(owner, (nn.LayerNorm, nn.RMSNorm)):
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    std = cfg.init_std
    if cfg.scaled_residual_init and name.endswith(model.residual_projections()):
        std = scaled_std(cfg)
    return torch.randn(shape, generator=_name_generator(seed, name)) * std


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> None:
    """(Re)initialise every parameter in place, each rank writing only its own shard."""
    from pretrain.parallel.sharding import shard_tensor

    for name, p in model.named_parameters():
        full = initial_value(model, name, full_shape(p), seed)
        spec = getattr(p, "tp_shard", None)
        if spec is not None:
            full = shard_tensor(full, spec.dim, spec.parts, spec.rank, spec.size)
        p.copy_(full)


def materialize(model: nn.Module, device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """Give every meta parameter real storage on ``device`` and initialise it.

    Replaces parameters object by object (keeping their attributes such as ``tp_shard``, and
    keeping tied parameters tied), which ``Module.to_empty`` does not promise.
    """
    new_params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for pname, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in new_params:
                data = torch.empty(p.shape, dtype=p.dtype, device=device)
                new = nn.Parameter(data, requires_grad=p.requires_grad)
                new.__dict__.update(p.__dict__)
                new_params[id(p)] = new
            module._parameters[pname] = new_params[id(p)]
        for bname, b in list(module._buffers.items()):
            if b is not None and b.is_meta:
                module._buffers[bname] = torch.zeros(b.shape, dtype=b.dtype, device=device)
    init_weights(model, seed)
    return model
