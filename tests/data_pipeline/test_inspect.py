"""``pretrain data inspect`` on a text and an image shard directory (built here with the shared
shard writer, no Ray), and its refusal of a directory without a manifest."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline.shards import write_json_atomic, write_shard
from launch.cli import main
from tests.data_pipeline.warc_factory import articles


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    import sentencepiece as spm

    from data_pipeline.text.tokenizer import tokenizer_info, train_tokenizer

    out = tmp_path_factory.mktemp("text")
    docs = ["\n".join(a) for a in articles(6)]
    model = train_tokenizer(docs, vocab_size=500, threads=1)
    (out / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    ids = [sp.encode(d) for d in docs[:2]]
    buf = io.BytesIO()
    np.save(buf, np.array(ids[0] + ids[1], dtype=np.uint16))
    meta = {"doc_lengths": [len(ids[0]), len(ids[1])],
            "documents": [{"id": "00000-0000001", "url": "https://x/1"}, {"id": "00000-0000002", "url": "https://x/2"}]}
    info = write_shard(out, "train/shard-000000.tar", [("train-000000-00000", {"tokens.npy": buf.getvalue(),
                                                                                "json": json.dumps(meta).encode()})])
    write_json_atomic(out / "manifest.json", {
        "format": "pretrain-text-shards", "version": 1, "kind": "text",
        "tokenizer": {"path": "tokenizer.model", **tokenizer_info(model)}, "token_dtype": "uint16",
        "splits": {"train": {"samples": 1, "documents": 2, "tokens": sum(map(len, ids)), "bytes": info.bytes,
                             "shards": [info.to_dict()]}},
        "tar_overhead": {"ratio": 0.05}, "counts": {"stages": [{"stage": "read", "in": 3, "dropped": 1, "out": 2}],
                                                    "total": {"files": 1, "files_with_errors": 0,
                                                              "records": {"response": 3}, "skipped": {},
                                                              "documents": 3, "kept": 2,
                                                              "dropped": {"read": {"http_404": 1}}}}})
    return out, docs[0]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("image")
    jpg = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(jpg, format="JPEG")
    info = write_shard(out, "train/shard-000000.tar", [("n01440764_1", {
        "jpg": jpg.getvalue(), "cls": b"1", "json": b'{"wnid": "n01443537"}'})])
    write_json_atomic(out / "manifest.json", {
        "format": "pretrain-image-shards", "version": 1, "kind": "image",
        "classes": [{"index": 0, "wnid": "n01440764", "name": "tench"}, {"index": 1, "wnid": "n01443537",
                                                                          "name": "goldfish"}],
        "splits": {"train": {"samples": 1, "bytes": info.bytes, "class_counts": {"n01443537": 1},
                             "shards": [info.to_dict()]}},
        "counts": {"read": 2, "kept": 1, "rejected": {"corrupt": 1}}})
    return out


def test_text_directory(text_dir, capsys):
    out, first_doc = text_dir
    assert main(["data", "inspect", str(out), "--json", "--chars", "100000"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "text" and report["splits"]["train"]["shards"] == 1
    assert report["sample"]["documents"] == 2 and report["sample"]["first_document"]["url"] == "https://x/1"
    assert report["sample"]["text"] == first_doc and report["tokenizer"]["mask_id"] == 4
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "http_404" in text and first_doc.split("\n")[0][:80] in text and "tar overhead: 5.00%" in text


def test_image_directory(image_dir, capsys):
    assert main(["data", "inspect", str(image_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "image" and report["classes"] == 2 and report["counts"]["rejected"] == {"corrupt": 1}
    s = report["sample"]
    assert (s["width"], s["height"], s["mode"], s["cls"], s["class"]["name"]) == (40, 30, "RGB", 1, "goldfish")
    assert main(["data", "inspect", str(image_dir)]) == 0
    assert "goldfish" in capsys.readouterr().out


def test_missing_manifest_or_split_exits_2(tmp_path, text_dir, capsys):
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["data", "inspect", str(text_dir[0]), "--split", "val"]) == 2
    assert "--split val" in capsys.readouterr().err
