"""ViT loader over real JPEG tar shards: shapes, normalisation, transforms, DP split, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.config import config_from_dict
from pretrain.data import build_loader, data_info
from pretrain.data.image import IMAGENET_MEAN, IMAGENET_STD, eval_transform, random_resized_crop_box
from tests.data.fixtures import colour_of, make_image_shards

N_TRAIN = 23


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image_shards(root, {"train": [8, 9, 6], "val": [5, 4]})
    return root


def cfg_for(root, workers=0, batch=3, size=32, train_scale=0.08):
    return config_from_dict({
        "model": {"family": "vit", "image_size": size, "patch_size": 8, "num_classes": N_TRAIN},
        "data": {"source": "shards", "path": str(root), "num_workers": workers, "shuffle_buffer": 5,
                 "crop_scale_min": train_scale},
        "train": {"micro_batch_size": batch},
    })


def expected_pixels(colour) -> torch.Tensor:
    c = np.asarray(colour, dtype=np.float32) / 255.0
    return torch.from_numpy((c - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32))


@pytest.mark.parametrize("train", [True, False])
def test_shapes_and_normalisation(root, train):
    loader = build_loader(cfg_for(root), "train" if train else "val", 0, 1, train)
    batch = next(iter(loader))
    x, y = batch["pixel_values"], batch["labels"]
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (3,) and y.dtype == torch.int64
    for img, label in zip(x, y):  # solid colours stay solid through crop/flip/resize; JPEG moves them a little
        mean = img.mean(dim=(1, 2))
        assert torch.allclose(mean, expected_pixels(colour_of(int(label))), atol=0.06)
        assert img.std(dim=(1, 2)).max() < 0.05


def test_eval_pass_is_ordered_and_complete(root):
    batches = list(build_loader(cfg_for(root, batch=4), "val", 0, 1, False))
    labels = torch.cat([b["labels"] for b in batches]).tolist()
    assert labels == list(range(9))  # manifest order, final partial batch kept
    assert [len(b["labels"]) for b in batches] == [4, 4, 1]


def test_dp_ranks_disjoint_and_cover_an_epoch(root):
    per_rank = N_TRAIN // 3
    seen = []
    for r in range(3):
        loader = build_loader(cfg_for(root, batch=per_rank), "train", r, 3, True)
        seen.append(set(next(loader)["labels"].tolist()))
    assert all(len(s) == per_rank for s in seen)
    assert len(set().union(*seen)) == 3 * per_rank  # disjoint; only N % dp samples left out


def test_eval_split_over_ranks_has_equal_lengths(root):
    got = [torch.cat([b["labels"] for b in build_loader(cfg_for(root), "val", r, 2, False)]).tolist() for r in range(2)]
    assert len(got[0]) == len(got[1]) == 4 and not set(got[0]) & set(got[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(root, workers):
    cfg = cfg_for(root, workers=workers)
    straight = build_loader(cfg, "train", 0, 1, True)
    reference = [next(straight) for _ in range(12)]  # crosses into epoch 1 (23 samples / 3 per batch)
    first = build_loader(cfg, "train", 0, 1, True)
    for _ in range(7):
        next(first)
    state = first.state_dict()
    first.close()
    resumed = build_loader(cfg, "train", 0, 1, True)
    resumed.load_state_dict(state)
    for want in reference[7:]:
        got = next(resumed)
        assert torch.equal(got["labels"], want["labels"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])


def test_workers_do_not_change_the_stream(root):
    a = build_loader(cfg_for(root, workers=0), "train", 0, 1, True)
    b = build_loader(cfg_for(root, workers=2), "train", 0, 1, True)
    for _ in range(5):
        x, y = next(a), next(b)
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["labels"], y["labels"])


def test_random_resized_crop_box_respects_bounds_and_scale():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(200, 160, rng, (0.3, 1.0))
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 160
        areas.append(w * h / 32000)
    assert min(areas) >= 0.29 and max(areas) <= 1.0
    assert np.std(areas) > 0.1  # crops really vary


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    img[:, 100:] = 255  # left half black, right half white
    out = eval_transform(Image.fromarray(img), 64)
    assert out.shape == (64, 64, 3)
    # shorter side -> 73, width -> 146; the centre 64 columns straddle the edge at 73
    assert out[:, :5].max() < 10 and out[:, -5:].min() > 245


def test_data_info_records_normalisation(root):
    info = data_info(cfg_for(root))
    norm = info["normalization"]
    assert norm["mean"] == list(IMAGENET_MEAN) and norm["std"] == list(IMAGENET_STD)
    assert norm["image_size"] == 32 and norm["resize_shorter"] == 36
    assert len(info["classes"]) == N_TRAIN


def test_real_imagenet_jpegs(tmp_path):
    """Real ImageNet JPEGs (grayscale ones included) through shards, loader and both transforms."""
    import csv
    import io
    import json

    from data_pipeline.shards import write_shard
    from tests.conftest import shared_data_dir

    base = shared_data_dir("imagenet-sample")
    rows = list(csv.DictReader((base / "manifest.csv").open()))
    rows = [r for r in rows if r["mode"] == "L"][:2] + [r for r in rows if r["mode"] == "RGB"][:6]
    samples = [(f"i{k:04d}", {"jpg": (base / r["relpath"]).read_bytes(), "cls": r["class_index"].encode(),
                              "json": json.dumps({"wnid": r["wnid"]}).encode()}) for k, r in enumerate(rows)]
    info = write_shard(tmp_path, "train/shard-000000.tar", samples)
    manifest = {"format": "pretrain-image-shards", "version": 1, "kind": "image", "classes": [],
                "splits": {"train": {"samples": info.samples, "shards": [{"path": info.path, "samples": info.samples}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cfg = config_from_dict({"model": {"family": "vit", "image_size": 64, "patch_size": 16, "num_classes": 1000},
                            "data": {"source": "shards", "path": str(tmp_path)}, "train": {"micro_batch_size": 4}})
    train = next(build_loader(cfg, "train", 0, 1, True))
    assert train["pixel_values"].shape == (4, 3, 64, 64) and torch.isfinite(train["pixel_values"]).all()
    evals = list(build_loader(cfg, "train", 0, 1, False))
    x = torch.cat([b["pixel_values"] for b in evals])
    assert torch.cat([b["labels"] for b in evals]).tolist() == [int(r["class_index"]) for r in rows]
    for k in range(len(rows)):
        ref = eval_transform(Image.open(io.BytesIO(samples[k][1]["jpg"])).convert("RGB"), 64).astype(np.float32)
        ref = (ref / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        assert torch.allclose(x[k], torch.from_numpy(ref.transpose(2, 0, 1)), atol=1e-5)
    # grayscale inputs come out as three equal channels
    assert torch.allclose(x[0][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], x[0][1] * IMAGENET_STD[1] + IMAGENET_MEAN[1],
                          atol=1e-5)
