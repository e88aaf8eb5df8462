"""Export a training checkpoint (any ZeRO stage, tensor size, precision) for downstream use.

    from pretrain.export import export_checkpoint
    export_checkpoint("runs/x/checkpoints/step00000100", "out/gpt", dtype="bf16")          # HF directory
    export_checkpoint("runs/x", "out/sd", fmt="safetensors")                               # state dict only

The Hugging Face directory holds ``config.json``, ``model.safetensors`` (or shards + index above
``max_shard_size``), ``generation_config.json`` (GPT) or ``preprocessor_config.json`` (ViT), the
tokenizer converted from the checkpoint's sentencepiece model (text families), and a model card.
Everything is written into a temporary sibling of ``out`` that is renamed into place at the end:
a failure leaves ``out`` as it was. The checkpoint is verified first (``complete.json``: every
file present, with its size and sha256), so a missing shard, truncated file or checksum mismatch
is refused with the file named before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from pretrain.checkpoint import CheckpointError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("hf", "safetensors")
DEFAULT_MAX_SHARD = "5GB"

__all__ = ["DTYPES", "FORMATS", "CheckpointError", "export_checkpoint"]


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "fp32", fmt: str = "hf",
                      max_shard_size: str | int = DEFAULT_MAX_SHARD, overwrite: bool = False,
                      command: str | None = None, check: bool = True, progress: bool = False) -> Path:
    """Write the export of ``ckpt`` to ``out`` (a new directory, or replaced with ``overwrite``)."""
    from pretrain.checkpoint import CheckpointReader
    from pretrain.export.writer import parse_size

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    refuse_nonempty(out, overwrite)
    reader = CheckpointReader(ckpt, check=check)  # a bad checkpoint is refused before anything is made
    with staged_dir(out) as tmp:
        _write(reader, tmp, DTYPES[dtype], fmt, parse_size(max_shard_size),
               command or " ".join(["pretrain", *sys.argv[1:]]), progress)
    return out


def refuse_nonempty(out: Path, overwrite: bool) -> None:
    """Called before any work, so a refused output costs nothing."""
    if out.exists() and not overwrite and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_dir(out: Path):
    """Yield a temp directory beside ``out`` that becomes ``out`` only when the block succeeds; on
    any failure it is removed and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _write(reader, tmp: Path, dtype: torch.dtype, fmt: str, max_shard: int, command: str, progress: bool) -> None:
    from pretrain.export import hf_dir

    bar = _progress_bar(len(reader.keys()), enabled=progress)
    tick = (lambda _key: bar.update(1)) if bar is not None else None
    try:
        if fmt == "safetensors":
            hf_dir.write_state_dict(reader, tmp, dtype, max_shard, tick)
            return
        files = hf_dir.write_hf_weights(reader, tmp, dtype, max_shard, tick)
    finally:
        if bar is not None:
            bar.close()
    files += hf_dir.write_hf_config(reader, tmp, dtype)
    files += _write_tokenizer(reader, tmp)
    (tmp / "README.md").write_text(hf_dir.model_card(reader, files + ["README.md"], dtype, command))


def _write_tokenizer(reader, tmp: Path) -> list[str]:
    """Text families: the checkpoint's tokenizer.model converted; none there (synthetic data) -> none."""
    src = reader.dir / "tokenizer.model"
    if reader.model_config.family == "vit":
        return []
    if not src.is_file():  # an import-hf directory keeps the original HF tokenizer files as they were
        hf_tok = reader.dir / "hf_tokenizer"
        files = sorted(p.name for p in hf_tok.iterdir() if p.is_file()) if hf_tok.is_dir() else []
        for name in files:
            shutil.copyfile(hf_tok / name, tmp / name)
        return files
    from pretrain.export.tokenizer import write_hf_tokenizer

    ids = reader.state("data.json").get("tokenizer") or {}
    return write_hf_tokenizer(src.read_bytes(), tmp, ids, max_length=reader.model_config.max_seq_len,
                              bert=reader.model_config.family == "bert")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="export", unit="tensor", file=sys.stderr)
