"""Shards are checked against manifest.json before use (data.verify), and read from an HTTP server
through a bounded local cache with the same checks."""

from __future__ import annotations

import shutil

import pytest
import torch

from pretrain.config import config_from_dict
from pretrain.data import ShardError, build_loader, check_shards
from pretrain.data.sources import ShardSource
from tests.data.fixtures import make_text_shards
from tests.data_pipeline.range_server import RangeServer


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_text_shards(root, {"train": [5, 7, 4], "val": [3]})
    return root


@pytest.fixture
def shards(pristine, tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(pristine, root)
    return root


def cfg_for(root, verify="open", **data):
    return config_from_dict({"model": {"family": "gpt", "vocab_size": 512},
                             "data": {"source": "shards", "path": str(root), "seq_len": 16, "verify": verify, **data},
                             "train": {"micro_batch_size": 2, "seed": 3}})


def batches(cfg, n=12):
    loader = build_loader(cfg, "train", 0, 1, train=True)
    return [next(loader)["input_ids"] for _ in range(n)]


def edit_one_byte(path):
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # inside the first sample's tokens: same size, other bytes
    path.write_bytes(bytes(data))


def test_truncated_shard_is_refused_at_start_naming_it(shards):
    shard = shards / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    for verify in ("size", "open", "full"):
        with pytest.raises(ShardError, match=r"shard-000001\.tar has \d+ bytes but manifest\.json lists"):
            ShardSource(shards, "train", verify=verify)
    with pytest.raises(ShardError, match=r"shard-000001\.tar has \d+ bytes"):
        batches(cfg_for(shards, "size"))


def test_edited_shard_is_refused_on_first_open_or_at_start_with_verify_full(shards):
    edit_one_byte(shards / "train" / "shard-000001.tar")
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 differs from manifest\.json"):
        build_loader(cfg_for(shards, "full"), "train", 0, 1, train=True)
    source = ShardSource(shards, "train", verify="open")  # sizes match: opens
    source.read(0, 0, "json")  # shard 0 is intact
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 differs"):
        source.read(1, 0, "json")
    with pytest.raises(ShardError, match="shard-000001.tar: sha256 differs"):
        batches(cfg_for(shards, "open"))
    ShardSource(shards, "train", verify="size").read(1, 0, "json")  # size only: not noticed, as documented


def test_shard_deleted_before_training_is_named_before_any_rank_starts(shards, capsys):
    from launch.train_cli import main

    (shards / "train" / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"shard .*train/shard-000002\.tar listed in manifest\.json is missing"):
        check_shards(cfg_for(shards))
    assert main(["default", "data.source=shards", f"data.path={shards}", "model.vocab_size=512"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "shard-000002.tar listed in manifest.json is missing" in err


def test_http_shards_through_a_bounded_cache_give_the_same_batches(pristine, tmp_path):
    local = batches(cfg_for(pristine))
    cache = tmp_path / "cache"
    shard_bytes = max(p.stat().st_size for p in pristine.glob("train/*.tar"))
    with RangeServer(pristine) as server:
        cfg = cfg_for(server.url, cache_dir=str(cache), cache_gb=1.5 * shard_bytes / (1 << 30))
        remote = batches(cfg)
        fetched = [p for p, _ in server.requests if p.endswith(".tar")]
    assert all(torch.equal(a, b) for a, b in zip(local, remote))
    assert len(fetched) >= 3 and len(list(cache.glob("*.tar"))) == 1  # one shard fits the bound: older ones went
    entries = {e["sha256"] for e in __import__("json").loads((pristine / "manifest.json").read_text())["splits"][
        "train"]["shards"]}
    assert {p.stem for p in cache.glob("*.tar")} <= entries


def test_http_shard_that_differs_from_the_manifest_is_refused(shards, tmp_path):
    edit_one_byte(shards / "train" / "shard-000000.tar")
    with RangeServer(shards) as server:
        source = ShardSource(server.url, "train", cache_dir=str(tmp_path / "cache"))
        with pytest.raises(ShardError, match=r"shard http://127\.0\.0\.1:\d+/train/shard-000000\.tar: sha256 differs"):
            source.read(0, 0, "json")
    assert not list((tmp_path / "cache").glob("*.tar"))  # the bad copy is not kept
