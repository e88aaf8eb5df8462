"""Streaming, resumable data loaders for GPT, BERT and ViT (see ``loader.py`` for the design).

Entry points:

- ``build_loader(cfg, split, dp_rank, dp_size, train)`` -> ``Loader``: an iterator of batch dicts
  with ``state_dict()`` / ``load_state_dict()``. Train loaders are infinite; eval loaders
  (``train=False``) make one pass over the split without shuffling, restarting on every ``iter()``.
- ``data_info(cfg)`` -> what the trainer records with checkpoints: the tokenizer record (text) or
  the image normalisation (ViT), plus the manifest path.

Batches: GPT ``{"input_ids", "labels"}`` ``[B, T]`` int64 (labels = next token); BERT adds
``"attention_mask"`` and ``"token_type_ids"`` (labels -100 where not masked; rows are
``[CLS] ... [SEP]`` when the tokenizer has both ids); ViT ``{"pixel_values": [B, 3, S, S] float32,
"labels": [B] int64}``. ``B`` is ``train.micro_batch_size``.

Data-parallel split: each split is ONE global stream (text: packed windows; ViT: samples) that runs
on across epochs, independent of the layout; item ``g`` goes to DP rank ``g % dp_size`` and each
rank batches its items in order. With the same seed and the same global batch
(micro x grad-accum x dp), optimizer step ``k`` therefore sees the same items -- BERT masks and ViT
augmentations included, as they are seeded by the global index -- for every dp size and
micro-batch size. Eval passes cover epoch 0 cut to a multiple of ``dp_size`` items, so every rank
gets the same number of batches.
"""

from __future__ import annotations

from pretrain.config import Config
from pretrain.data.image import normalization
from pretrain.data.loader import Loader, StreamSpec, text_specials
from pretrain.data.shard_store import ShardError, ShardStore
from pretrain.data.sources import SYNTHETIC_SPECIALS, read_manifest

__all__ = ["Loader", "ShardError", "StreamSpec", "build_loader", "build_spec", "check_shards", "data_info",
           "image_size", "manifest_sha256", "text_specials"]


def manifest_sha256(path: str) -> str:
    """sha256 of ``<path>/manifest.json``, for a local or a remote (s3://, gs://, https://) shard directory."""
    from data_pipeline import storage

    return storage.sha256(storage.join(path, "manifest.json"))


def check_shards(cfg: Config, manifest: dict | None = None) -> None:
    """Before any rank starts: ``data.path`` has a manifest (``manifest``, when the caller read it
    already) and every shard it lists is there with its listed size (sha256s are checked by the
    loaders, see ``shard_store.py``). Raises FileNotFoundError or ShardError naming what is wrong."""
    if cfg.data.source != "shards":
        return
    manifest = manifest if manifest is not None else read_manifest(cfg.data.path)
    for split in manifest.get("splits", {}).values():
        store = ShardStore(cfg.data.path, split.get("shards", []), cfg.data.verify, cfg.data.cache_dir,
                           cfg.data.cache_gb)
        store.check_sizes()


def image_size(cfg: Config) -> int:
    return cfg.data.image_size or cfg.model.image_size


def _tokenizer(cfg: Config, manifest: dict | None) -> dict:
    if manifest is not None:
        return dict(manifest.get("tokenizer") or {})
    return {**SYNTHETIC_SPECIALS, "vocab_size": cfg.model.vocab_size}


def _check_kind(cfg: Config, manifest: dict) -> None:
    want = "image" if cfg.model.family == "vit" else "text"
    have = manifest.get("kind", "text")
    if have != want:
        raise ValueError(f"data.path={cfg.data.path} holds {have} shards but model.family={cfg.model.family} "
                         f"needs {want} shards")
    if want == "text":
        vocab = int(manifest.get("tokenizer", {}).get("vocab_size", 0))
        if vocab > cfg.model.vocab_size:
            raise ValueError(f"the shards' tokenizer has {vocab} tokens but model.vocab_size={cfg.model.vocab_size}")


def build_spec(cfg: Config, split: str, dp_rank: int, dp_size: int, train: bool) -> StreamSpec:
    d = cfg.data
    manifest = None
    if d.source == "shards":
        manifest = read_manifest(d.path)
        _check_kind(cfg, manifest)
        if d.verify == "full" and split in manifest.get("splits", {}):  # once here; forked workers inherit it
            ShardStore(d.path, manifest["splits"][split]["shards"], d.verify, d.cache_dir, d.cache_gb).open_check()
    return StreamSpec(
        family=cfg.model.family, split=split, source=d.source, path=d.path, seed=cfg.train.seed,
        dp_rank=dp_rank, dp_size=dp_size, batch_size=cfg.train.micro_batch_size, train=train,
        seq_len=d.seq_len, shuffle_buffer=d.shuffle_buffer, mlm_probability=d.mlm_probability,
        image_size=image_size(cfg), crop_scale_min=d.crop_scale_min, hflip=d.hflip,
        synthetic_samples=d.synthetic_samples, vocab_size=cfg.model.vocab_size,
        num_classes=cfg.model.num_classes, tokenizer=_tokenizer(cfg, manifest),
        verify=d.verify, cache_dir=d.cache_dir, cache_gb=d.cache_gb,
    )


def build_loader(cfg: Config, split: str, dp_rank: int, dp_size: int, train: bool) -> Loader:
    """The batch stream of data-parallel rank ``dp_rank`` of ``dp_size`` over ``split``.

    Pass the *data-parallel* rank: ranks of one tensor-parallel group must get the same stream.
    """
    return Loader(build_spec(cfg, split, dp_rank, dp_size, train), num_workers=cfg.data.num_workers)


def data_info(cfg: Config) -> dict:
    """The data record for checkpoints and exports: tokenizer ids or image normalisation."""
    manifest = read_manifest(cfg.data.path) if cfg.data.source == "shards" else None
    info: dict = {"source": cfg.data.source, "path": cfg.data.path}
    if cfg.model.family == "vit":
        info["normalization"] = normalization(image_size(cfg))
        if manifest is not None:
            info["classes"] = manifest.get("classes")
    else:
        info["tokenizer"] = _tokenizer(cfg, manifest)
    return info
