"""Resume and worker sharding skip decoding: only samples of owned batches are decoded."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.config import config_from_dict
from pretrain.data import build_spec
from pretrain.data.loader import batch_stream
from pretrain.data.sources import SyntheticImage, SyntheticText
from tests.data.fixtures import make_text_shards


class CountingText(SyntheticText):
    def __init__(self, *a):
        super().__init__(*a)
        self.decoded: list[int] = []

    def tokens_range(self, shard, index, lo, hi, total):
        self.decoded.append(index)
        return super().tokens_range(shard, index, lo, hi, total)


class CountingImage(SyntheticImage):
    def __init__(self, *a):
        super().__init__(*a)
        self.decoded = 0

    def image(self, shard, index):
        self.decoded += 1
        return super().image(shard, index)


def spec_for(family, counting):
    cfg = config_from_dict({"model": {"family": family, "vocab_size": 64, "image_size": 16, "patch_size": 8,
                                      "num_classes": 4},
                            "data": {"seq_len": 16, "synthetic_samples": 200}, "train": {"micro_batch_size": 2}})
    spec = build_spec(cfg, "train", 0, 1, True)
    if family == "vit":
        src = counting(spec.seed, "train", spec.synthetic_samples, spec.num_classes, spec.image_size)
    else:
        src = counting(spec.seed, "train", spec.synthetic_samples, spec.vocab_size, spec.seq_len)
    spec.open_source = lambda: src  # the real synthetic source, instrumented
    return spec, src


def take(gen, n):
    return [next(gen) for _ in range(n)]


def test_text_resume_decodes_only_from_the_resume_point():
    spec, src = spec_for("gpt", CountingText)
    full = take(batch_stream(spec, {"batches": 0, "pos": None}), 41)
    decoded_full = len(src.decoded)
    state = {"batches": 40, "pos": full[39]["_pos"]}
    src.decoded.clear()
    resumed = take(batch_stream(spec, state), 1)[0]
    assert np.array_equal(resumed["input_ids"], full[40]["input_ids"])
    assert 0 < len(src.decoded) <= 4 < decoded_full  # a couple of samples, not the 40 batches before


@pytest.mark.parametrize("workers", [2, 3])
def test_text_workers_decode_a_share(workers):
    spec, src = spec_for("gpt", CountingText)
    take(batch_stream(spec, {"batches": 0, "pos": None}, worker=0, workers=1), 60)
    alone = len(src.decoded)
    src.decoded.clear()
    take(batch_stream(spec, {"batches": 0, "pos": None}, worker=1, workers=workers), 60 // workers)
    assert len(src.decoded) < alone * 0.85  # shares only the samples that straddle batch edges


def test_image_resume_and_workers_decode_only_their_batches():
    spec, src = spec_for("vit", CountingImage)
    take(batch_stream(spec, {"batches": 50, "pos": None}), 3)
    assert src.decoded == 3 * 2
    src.decoded = 0
    take(batch_stream(spec, {"batches": 0, "pos": None}, worker=1, workers=2), 5)
    assert src.decoded == 5 * 2


def test_family_and_shard_kind_must_match(tmp_path):
    make_text_shards(tmp_path, {"train": [2]})
    cfg = config_from_dict({"model": {"family": "vit"}, "data": {"source": "shards", "path": str(tmp_path)}})
    with pytest.raises(ValueError, match="holds text shards but model.family=vit"):
        build_spec(cfg, "train", 0, 1, True)
    cfg = config_from_dict({"model": {"family": "gpt", "vocab_size": 100},
                            "data": {"source": "shards", "path": str(tmp_path), "seq_len": 16},
                            "train": {"micro_batch_size": 1}})
    with pytest.raises(ValueError, match="model.vocab_size=100"):
        build_spec(cfg, "train", 0, 1, True)
