"""End-to-end ImageNet pipeline on real Ray (one embedded Ray for the module): accounting of every
file, labels, RGB/size of outputs, WebDataset readability, manifest/_info/rejected contents,
1 vs 2 workers and tar-of-tars vs folders byte-identity, and the real ImageNet sample."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipeline.imagenet.pipeline import BuildConfig, build
from data_pipeline.imagenet.sources import InputError
from tests.conftest import shared_data_dir
from tests.data_pipeline.test_imagenet_process import make_tar_of_tars, make_tree

MAX = 48
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster():
    from data_pipeline.ray_runtime import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, make_tree(root)


def config(input_path, out, **kw) -> BuildConfig:
    base = dict(splits=["train", "val"], max_size=MAX, quality=90, shard_size=4, seed=3, num_cpus=2, progress=False)
    base.update(kw)
    return BuildConfig(input=str(input_path), out=str(out), **base)


@pytest.fixture(scope="module")
def built(ray_cluster, tree, tmp_path_factory):
    root, expected = tree
    out = tmp_path_factory.mktemp("out2")
    return out, build(config(root, out)), expected


def read_samples(out: Path, manifest: dict, split: str) -> list[dict]:
    """Every sample of a split, in shard order, parsed with plain tarfile."""
    samples = []
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(out / shard["path"]) as tf:
            current: dict = {}
            for m in tf.getmembers():
                key, field = m.name.split(".", 1)
                if current and current["key"] != key:
                    samples.append(current)
                    current = {}
                current["key"] = key
                current[field] = tf.extractfile(m).read()
            if current:
                samples.append(current)
    return samples


def all_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_file_is_kept_or_rejected_with_its_reason(built, split):
    out, manifest, expected = built
    kept = {json.loads(s["json"])["source"] for s in read_samples(out, manifest, split)}
    rejected = pq.read_table(out / manifest["splits"][split]["rejected"]).to_pylist()
    reasons = {r["source"]: r["reason"] for r in rejected}
    assert not kept & set(reasons)
    assert kept | set(reasons) == set(expected[split])
    assert reasons == {src: reason for src, (_, reason) in expected[split].items() if reason}
    counts = manifest["splits"][split]["counts"]
    assert counts["read"] == len(expected[split]) == counts["kept"] + sum(counts["rejected"].values())
    assert counts["kept"] == manifest["splits"][split]["samples"] == len(kept)
    assert all(r["split"] == split and r["detail"] for r in rejected)


def test_labels_match_folders_and_images_are_rgb_within_max_size(built):
    out, manifest, expected = built
    classes = manifest["classes"]
    assert [c["wnid"] for c in classes] == sorted({w for w, _ in expected["train"].values()})
    assert [c["index"] for c in classes] == list(range(len(classes)))
    assert all(c["name"] == f"name of {c['wnid']}, alias" for c in classes)  # from LOC_synset_mapping.txt
    for split in ("train", "val"):
        for s in read_samples(out, manifest, split):
            meta = json.loads(s["json"])
            wnid = expected[split][meta["source"]][0]
            assert meta["wnid"] == wnid and int(s["cls"]) == classes[int(s["cls"])]["index"]
            assert classes[int(s["cls"])]["wnid"] == wnid
            im = Image.open(io.BytesIO(s["jpg"]))
            im.load()
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (meta["width"], meta["height"]) and min(im.size) <= MAX
            assert min(im.size) == min(MAX, meta["orig_width"], meta["orig_height"])
            if "rotated" in meta["source"]:
                assert (meta["orig_width"], meta["orig_height"]) == (40, 80)  # EXIF orientation applied


def test_manifest_info_and_shards_agree(built):
    out, manifest, _ = built
    assert (manifest["format"], manifest["version"], manifest["kind"]) == ("pretrain-image-shards", 1, "image")
    info = json.loads((out / "_info.json").read_text())
    for split, entry in manifest["splits"].items():
        names = [s["path"] for s in entry["shards"]]
        assert names == [f"{split}/shard-{i:06d}.tar" for i in range(len(names))]
        for s in entry["shards"]:
            data = (out / s["path"]).read_bytes()
            assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
        assert sum(entry["class_counts"].values()) == entry["samples"] == sum(s["samples"] for s in entry["shards"])
        assert info["splits"][split] == {"name": split, "num_samples": entry["samples"], "filenames": names,
                                         "shard_lengths": [s["samples"] for s in entry["shards"]]}
    total = manifest["counts"]
    assert total["read"] == sum(e["counts"]["read"] for e in manifest["splits"].values())
    assert not list(out.rglob("*.tmp-*"))


def test_shuffle_spreads_classes_across_shards_and_keys_are_positions(built):
    out, manifest, _ = built
    samples = read_samples(out, manifest, "train")
    assert [s["key"] for s in samples] == sorted(s["key"] for s in samples)
    first_shard_classes = {int(s["cls"]) for s in samples[:4]}
    assert len(first_shard_classes) > 1  # sorted input order would put one class per shard


def test_plain_webdataset_reads_image_cls_pairs(built):
    import webdataset as wds

    out, manifest, _ = built
    urls = [str(out / s["path"]) for s in manifest["splits"]["train"]["shards"]]
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls"))
    assert len(pairs) == manifest["splits"]["train"]["samples"]
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and isinstance(c, int) for im, c in pairs)
    assert sorted({c for _, c in pairs}) == [0, 1, 2]


def test_one_and_two_workers_and_a_rerun_give_identical_bytes(ray_cluster, tree, built, tmp_path):
    root, _ = tree
    out2, _, _ = built
    out1 = tmp_path / "one"
    build(config(root, out1, num_cpus=1))
    assert all_files(out1) == all_files(out2)
    before = {p: p.stat().st_mtime_ns for p in (out1 / "train").iterdir()}
    build(config(root, out1, num_cpus=1))  # finished shards are skipped, not rewritten
    assert {p: p.stat().st_mtime_ns for p in (out1 / "train").iterdir()} == before
    assert all_files(out1) == all_files(out2)


def test_rerun_with_other_options_leaves_exactly_a_fresh_runs_files(ray_cluster, tree, tmp_path):
    root, _ = tree
    build(config(root, tmp_path / "reused", shard_size=4))
    build(config(root, tmp_path / "reused", shard_size=16, max_size=40))
    build(config(root, tmp_path / "fresh", shard_size=16, max_size=40))
    assert all_files(tmp_path / "reused") == all_files(tmp_path / "fresh")


def test_other_seed_gives_other_order(ray_cluster, tree, built, tmp_path):
    root, _ = tree
    out2, m2, _ = built
    m = build(config(root, tmp_path / "s", splits=["train"], seed=4))
    assert [s["sha256"] for s in m["splits"]["train"]["shards"]] != [s["sha256"] for s in m2["splits"]["train"]["shards"]]
    assert m["splits"]["train"]["class_counts"] == m2["splits"]["train"]["class_counts"]


def test_tar_of_tars_gives_the_same_shards_as_the_unpacked_tree(ray_cluster, tree, built, tmp_path):
    root, _ = tree
    out2, m2, _ = built
    archive = make_tar_of_tars(root / "train", tmp_path / "ILSVRC2012_img_train.tar")
    m = build(config(archive, tmp_path / "tar", splits=["train"]))
    assert m["splits"]["train"]["shards"] == m2["splits"]["train"]["shards"]
    for s in m["splits"]["train"]["shards"]:
        assert (tmp_path / "tar" / s["path"]).read_bytes() == (out2 / s["path"]).read_bytes()
    assert (tmp_path / "tar/rejected/train.parquet").read_bytes() == (out2 / "rejected/train.parquet").read_bytes()


def test_flat_val_tar_with_csv_gives_the_same_val_shards(ray_cluster, tree, built, tmp_path):
    root, _ = tree
    out2, m2, _ = built
    src = tmp_path / "archive"
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for f in sorted((root / "val").iterdir()):
            tf.add(f, arcname=f.name)
    (src / "LOC_val_solution.csv").write_bytes((root / "LOC_val_solution.csv").read_bytes())
    m = build(config(src, tmp_path / "out", splits=["val"]))
    assert m["classes"] == [{**c, "name": c["wnid"]} for c in m2["classes"]]  # no LOC_synset_mapping.txt here
    assert m["splits"]["val"]["shards"] == m2["splits"]["val"]["shards"]
    assert m["splits"]["val"]["counts"] == m2["splits"]["val"]["counts"]


def test_kaggle_layout_and_a_bare_imagefolder_tree_give_the_same_train_shards(ray_cluster, tree, built, tmp_path):
    root, _ = tree
    _, m2, _ = built
    kaggle = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    kaggle.mkdir(parents=True)
    (kaggle / "train").symlink_to(root / "train")
    (tmp_path / "kaggle" / "LOC_synset_mapping.txt").write_bytes((root / "LOC_synset_mapping.txt").read_bytes())
    m_kaggle = build(config(tmp_path / "kaggle", tmp_path / "o1", splits=["train"]))
    m_bare = build(config(root / "train", tmp_path / "o2", splits=["train"]))
    for m in (m_kaggle, m_bare):
        assert m["classes"] == m2["classes"]
        assert m["splits"]["train"]["shards"] == m2["splits"]["train"]["shards"]


def test_a_later_val_run_reuses_the_train_class_index_and_keeps_train(ray_cluster, tree, built, tmp_path):
    root, _ = tree
    _, m2, _ = built
    out = tmp_path / "out"
    build(config(root, out, splits=["train"]))
    only = tmp_path / "in" / "val" / "n09999999"
    only.mkdir(parents=True)
    for f in sorted((root / "train" / "n09999999").glob("*big*")):
        (only / f.name).write_bytes(f.read_bytes())
    m = build(config(tmp_path / "in", out, splits=["val"]))
    assert m["classes"] == m2["classes"] and sorted(m["splits"]) == ["train", "val"]
    assert m["splits"]["train"] == m2["splits"]["train"]
    assert [int(s["cls"]) for s in read_samples(out, m, "val")] == [2]  # n09999999 is index 2 of 3, not 0 of 1
    assert sorted(json.loads((out / "_info.json").read_text())["splits"]) == ["train", "val"]


def test_bad_input_is_refused_with_the_thing_named(tmp_path):
    with pytest.raises(InputError, match="--input"):
        build(config(tmp_path / "missing", tmp_path / "o"))
    with pytest.raises(InputError, match="--shard-size"):
        build(config(tmp_path, tmp_path / "o", shard_size=0))
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="no files"):
        build(config(tmp_path, tmp_path / "o", splits=["train"]))


def test_real_imagenet_sample_with_the_1000_class_index(ray_cluster, tmp_path):
    root = shared_data_dir("imagenet-sample")
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    m = build(config(root, tmp_path, splits=["train"], max_size=160, shard_size=50,
                     classes_file=str(root / "timm-imagenet_synsets.txt")))
    assert len(m["classes"]) == 1000
    entry = m["splits"]["train"]
    assert entry["samples"] == len(rows) == 137 and entry["counts"]["rejected"] == {}
    assert entry["counts"]["reencoded"] >= sum(r["mode"] == "L" for r in rows) == 23
    by_source = {r["relpath"].removeprefix("train/"): r for r in rows}
    seen = {}
    for s in read_samples(tmp_path, m, "train"):
        meta = json.loads(s["json"])
        row = by_source[meta["source"]]
        im = Image.open(io.BytesIO(s["jpg"]))
        assert im.mode == "RGB" and min(im.size) == min(160, int(row["width"]), int(row["height"]))
        assert (meta["orig_width"], meta["orig_height"]) == (int(row["width"]), int(row["height"]))
        seen[meta["source"]] = int(s["cls"])
    assert seen == {src: int(r["class_index"]) for src, r in by_source.items()}


def test_real_sample_default_index_is_the_sorted_subset_of_timms_order(ray_cluster, tmp_path):
    root = shared_data_dir("imagenet-sample")
    timm_order = (root / "timm-imagenet_synsets.txt").read_text().split()
    m = build(config(root, tmp_path, splits=["train"], max_size=0, shard_size=200))
    wnids = [c["wnid"] for c in m["classes"]]
    assert wnids == [w for w in timm_order if w in set(wnids)] and len(wnids) == 137
    kept = m["splits"]["train"]["counts"]
    assert kept["kept_original"] == 137 - 23 and kept["reencoded"] == 23 and kept["resized"] == 0
    # as a new user would: the 10-class debug ViT on these 137 classes is refused before any rank
    # starts, naming the field and the fix (it used to crash at the first step: Target 87 out of bounds)
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "train", "configs/vit/debug.yaml", "data.source=shards",
                           f"data.path={tmp_path}", f"train.run_dir={tmp_path / 'run'}", "tracking.enabled=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"model.num_classes: got 10; data.path={tmp_path} holds 137 classes (labels 0..136); " \
           "set model.num_classes=137" in proc.stderr
    assert "[pretrain]" not in proc.stdout
