"""The data of a global step does not depend on the data-parallel size or the micro-batch size.

Global step ``k`` with micro-batch ``m``, gradient accumulation ``a`` and ``d`` data-parallel ranks
is the union over ranks of their micro-batches ``k*a .. k*a+a-1``. With ``m*d`` fixed, that union
(a multiset of rows) must be the same for dp 1, 2 and 4 -- GPT, BERT (masks included) and ViT
(augmentations included), over real tar shards and across an epoch boundary. And each rank reads
from disk only the tokens of its own windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.config import config_from_dict
from pretrain.data import build_loader, build_spec
from pretrain.data.loader import batch_stream
from pretrain.data.order import EpochOrder
from pretrain.data.sources import ShardSource
from tests.data.fixtures import TOKENIZER, make_image_shards, make_text_shards

LAYOUTS = [(1, 4), (2, 2), (4, 1)]  # (dp, micro batch): dp * micro = 4
ACCUM, STEPS = 2, 4


@pytest.fixture(scope="module")
def text_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return root, make_text_shards(root, {"train": [5, 7, 4, 6]}, seed=3)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image_shards(root, {"train": [8, 9, 6]}, size=(24, 20), texture=True)
    return root


def cfg_for(root, family, micro, seq_len=32):
    """Shards under ``root``, or the synthetic source (40 samples) when ``root`` is None."""
    model = {"family": family, "vocab_size": 512}
    if family == "vit":
        model = {"family": "vit", "image_size": 16, "patch_size": 8, "num_classes": 23}
    data = {"source": "shards", "path": str(root)} if root else {"source": "synthetic", "synthetic_samples": 40}
    return config_from_dict({"model": model,
                             "data": {**data, "seq_len": seq_len, "shuffle_buffer": 5, "crop_scale_min": 0.3},
                             "train": {"micro_batch_size": micro, "seed": 77}})


def rows_of(batch: dict) -> list[bytes]:
    """One hashable row per sample: its input (ids or pixels) and labels, as bytes."""
    x = batch.get("input_ids", batch.get("pixel_values"))
    y = batch["labels"]
    return [x[j].numpy().tobytes() + b"|" + y[j].numpy().tobytes() for j in range(len(y))]


def global_steps(root, family, dp, micro) -> list[list[bytes]]:
    """Sorted rows of global steps ``0 .. STEPS-1`` under a ``dp`` x ``micro`` layout."""
    cfg = cfg_for(root, family, micro)
    steps: list[list[bytes]] = [[] for _ in range(STEPS)]
    for r in range(dp):
        loader = build_loader(cfg, "train", r, dp, train=True)
        for k in range(STEPS):
            for _ in range(ACCUM):
                steps[k].extend(rows_of(next(loader)))
    return [sorted(s) for s in steps]


@pytest.mark.parametrize("family, source", [("gpt", "shards"), ("bert", "shards"), ("vit", "shards"),
                                            ("gpt", "synthetic"), ("bert", "synthetic")])
def test_global_step_rows_do_not_depend_on_dp_and_micro_batch(text_root, image_root, family, source):
    root = None if source == "synthetic" else image_root if family == "vit" else text_root[0]
    by_layout = {layout: global_steps(root, family, *layout) for layout in LAYOUTS}
    reference = by_layout[LAYOUTS[0]]
    assert all(len(s) == ACCUM * 4 for s in reference)
    assert len({row for s in reference for row in s}) > ACCUM * 4 * (STEPS - 1)  # steps really differ
    for layout in LAYOUTS[1:]:
        for k in range(STEPS):
            assert by_layout[layout][k] == reference[k], (layout, k)


def test_gpt_step_is_the_next_block_of_global_windows(text_root):
    """Step k is global windows [8k, 8k+8) of the one stream (it crosses into epoch 1 here)."""
    root, content = text_root
    cfg = cfg_for(root, "gpt", 1)
    order = EpochOrder([len(s) for s in content["train"]], 77, True, 5)
    eos = TOKENIZER["eos_id"]
    docs = [d for e in range(2) for s, i in order.refs(e) for d in content["train"][s][i]]
    stream = np.concatenate([np.append(d.astype(np.int64), eos) for d in docs])
    epoch0 = sum(len(d) + 1 for s, i in order.refs(0) for d in content["train"][s][i])
    assert epoch0 < STEPS * ACCUM * 4 * 33  # the steps below cross the epoch boundary
    got = global_steps(root, "gpt", 4, 1)
    for k in range(STEPS):
        w = stream[k * 8 * 33:(k + 1) * 8 * 33].reshape(8, 33)
        want = sorted(w[j, :-1].tobytes() + b"|" + w[j, 1:].tobytes() for j in range(8))
        assert got[k] == want and cfg.data.seq_len == 32


class RecordingShards(ShardSource):
    """The real shard source, recording which token positions of which sample it reads."""

    def __init__(self, *a):
        super().__init__(*a)
        self.reads: list[tuple[int, int, int, int]] = []

    def tokens(self, shard, index):  # the whole-sample read must not be used by the loaders
        raise AssertionError("a loader decoded a whole sample")

    def tokens_range(self, shard, index, lo, hi, total):
        self.reads.append((shard, index, lo, hi))
        return super().tokens_range(shard, index, lo, hi, total)


def stream_positions(root, seed, buffer, epochs) -> dict[tuple[int, int, int], list[int]]:
    """(epoch, shard, index) -> global stream position of each of the sample's tokens."""
    src = ShardSource(root, "train")
    order = EpochOrder(src.counts(), seed, True, buffer)
    where, cursor = {}, 0
    for e in range(epochs):
        for s, i in order.refs(e):
            lengths = src.doc_lengths(int(s), int(i))
            pos = [cursor + sum(lengths[:k]) + k + t for k, n in enumerate(lengths) for t in range(n)]
            where[(e, int(s), int(i))] = pos
            cursor += sum(lengths) + len(lengths)
    return where


@pytest.mark.parametrize("family, window", [("gpt", 33), ("bert", 30)])
def test_a_rank_reads_only_its_own_windows_tokens(text_root, family, window):
    root, _ = text_root
    dp, batches = 4, 3
    cfg = cfg_for(root, family, 2)
    where = stream_positions(root, 77, 5, epochs=1)
    per_sample = {(s, i): p for (_, s, i), p in where.items()}  # epoch 0 only: 4 ranks x 3 x 2 windows fit
    assert max(max(p) for p in per_sample.values() if p) >= dp * batches * 2 * window
    read_by_rank = []
    for r in range(dp):
        spec = build_spec(cfg, "train", r, dp, True)
        src = RecordingShards(root, "train")
        spec.open_source = lambda src=src: src
        gen = batch_stream(spec, {"batches": 0, "pos": None})
        for _ in range(batches):
            next(gen)
        positions = [per_sample[(s, i)][t] for s, i, lo, hi in src.reads for t in range(lo, hi)]
        assert positions and all((p // window) % dp == r for p in positions)  # only its own windows
        assert len(positions) == len(set(positions))  # and each token once
        read_by_rank.append(set(positions))
    # together the ranks read exactly the non-EOS tokens of the first dp*batches*2 windows
    wanted = {p for ps in per_sample.values() for p in ps if p < dp * batches * 2 * window}
    assert set().union(*read_by_rank) == wanted


@pytest.mark.parametrize("family", ["gpt", "bert", "vit"])
def test_a_new_batch_geometry_continues_the_stream_where_it_stopped(text_root, image_root, tmp_path, family):
    """Resume with another data size, micro-batch and global batch (2 x 2 -> 3 x 3): rank ``r``'s
    row ``i`` of batch ``j`` must be global item ``offset + (j*B + i)*D + r`` of the one stream, where
    ``offset`` counts every item the old geometry read -- nothing skipped, nothing read twice, masks
    and augmentations those of the item -- also past an epoch end and from a mid-stream scan."""
    import json

    from pretrain.checkpoint.resume import loader_state

    root = image_root if family == "vit" else text_root[0]
    stream = build_loader(cfg_for(root, family, 1), "train", 0, 1, train=True)  # item g = batch g
    reference = [rows_of(next(stream))[0] for _ in range(100)]

    tag = tmp_path / "step"
    (tag / "loader").mkdir(parents=True)
    old_batches = 5
    for r in range(2):
        loader = build_loader(cfg_for(root, family, 2), "train", r, 2, train=True)
        for _ in range(old_batches):
            next(loader)
        (tag / "loader" / f"rank_{r:05d}.json").write_text(json.dumps(loader.state_dict()))
    offset = old_batches * 2 * 2

    state = loader_state(tag, 2)
    assert state["offset"] == offset and state["batches"] == 0
    for r in range(3):
        loader = build_loader(cfg_for(root, family, 3), "train", r, 3, train=True)
        loader.load_state_dict(state)
        for j in range(8):
            for i, row in enumerate(rows_of(next(loader))):
                assert row == reference[offset + (j * 3 + i) * 3 + r], (r, j, i)
        # and a plain resume of the new geometry carries its offset on
        again = build_loader(cfg_for(root, family, 3), "train", r, 3, train=True)
        again.load_state_dict(json.loads(json.dumps(loader.state_dict())))
        assert rows_of(next(again))[0] == reference[offset + (8 * 3) * 3 + r]
