"""Reading DeepSpeed's ``.pt`` files without unpickling arbitrary objects.

DeepSpeed's files are pickles. Our own readers (``torch_load``) load them with
``weights_only=True``, mapping the few DeepSpeed classes they hold to inert stand-ins, so DeepSpeed
need not even be imported; a resume through DeepSpeed's own loader, which asks for full
unpickling, runs inside ``weights_only_loads``, which forces weights-only unpickling and allows
those same classes only.
"""

from __future__ import annotations

import importlib
import os
import pickle
from contextlib import contextmanager
from pathlib import Path

import torch

from pretrain.checkpoint.store import CheckpointError

# The classes DeepSpeed puts in its checkpoint pickles besides tensors and builtins: the whole
# allow-list of every weights-only read.
DEEPSPEED_PICKLED_CLASSES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.checkpoint.utils.clone_tensors_for_torch_save")


def _deepspeed_pickled_classes() -> list:
    """``DEEPSPEED_PICKLED_CLASSES``, imported."""
    out = []
    for qualified in DEEPSPEED_PICKLED_CLASSES:
        module, name = qualified.rsplit(".", 1)
        out.append(getattr(importlib.import_module(module), name))
    return out


@contextmanager
def weights_only_loads(what: str | Path):
    """Inside, every ``torch.load`` -- DeepSpeed's, which passes ``weights_only=False``, included --
    unpickles tensors, containers and the few DeepSpeed classes of its checkpoints only, never
    arbitrary objects (``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` + ``safe_globals``). A file that needs
    anything else is refused with a ``CheckpointError`` naming ``what``."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_pickled_classes()):
            yield
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what}: refused to load a file that is not plain tensors and known DeepSpeed "
                              f"state (weights-only unpickling): {first}") from None
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


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
