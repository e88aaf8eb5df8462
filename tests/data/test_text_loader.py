"""GPT/BERT loaders over real tar shards: packing, labels, masking, DP split, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.config import config_from_dict
from pretrain.data import build_loader
from pretrain.data.order import EpochOrder
from tests.data.fixtures import TOKENIZER, make_text_shards

EOS = TOKENIZER["eos_id"]
SPECIALS = {TOKENIZER[k] for k in ("pad_id", "bos_id", "eos_id", "cls_id", "sep_id", "mask_id")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    content = make_text_shards(root, {"train": [5, 7, 4, 6], "val": [4, 3]})
    return root, content


def cfg_for(root, family="gpt", seq_len=16, batch=2, workers=0, buffer=4, seed=1234):
    return config_from_dict({
        "model": {"family": family, "vocab_size": 512},
        "data": {"source": "shards", "path": str(root), "seq_len": seq_len, "num_workers": workers,
                 "shuffle_buffer": buffer},
        "train": {"micro_batch_size": batch, "seed": seed},
    })


def stream_of(samples) -> np.ndarray:
    """The documents of ``samples`` (lists of docs) concatenated, each followed by EOS."""
    parts = [np.append(doc.astype(np.int64), EOS) for docs in samples for doc in docs]
    return np.concatenate(parts)


def global_stream(content, cfg, epochs) -> np.ndarray:
    """The layout-independent token stream: globally ordered samples of ``epochs`` epochs."""
    counts = [len(s) for s in content["train"]]
    order = EpochOrder(counts, cfg.train.seed, True, cfg.data.shuffle_buffer)
    samples = [content["train"][s][i] for e in range(epochs) for s, i in order.refs(e)]
    return stream_of(samples)


def rank_windows(content, cfg, dp_rank, dp_size, epochs, window) -> np.ndarray:
    """Rank ``dp_rank``'s windows: global windows ``dp_rank, dp_rank + dp_size, ...``."""
    stream = global_stream(content, cfg, epochs)
    n = len(stream) // window
    return stream[: n * window].reshape(n, window)[dp_rank::dp_size]


def gpt_windows(batches) -> np.ndarray:
    """Rebuild the ``T+1`` windows from (input_ids, labels) and check the label shift on the way."""
    rows = []
    for b in batches:
        x, y = b["input_ids"], b["labels"]
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # labels are the next token
        rows.append(torch.cat([x, y[:, -1:]], dim=1).numpy())
    return np.concatenate(rows)


def test_eval_packing_is_documents_plus_eos_in_manifest_order(shards):
    root, content = shards
    cfg = cfg_for(root, seq_len=16, batch=3)
    batches = list(build_loader(cfg, "val", 0, 1, train=False))
    windows = gpt_windows(batches)
    expected = stream_of([s for shard in content["val"] for s in shard])
    n_windows = len(expected) // 17
    assert windows.shape == (n_windows, 17)  # the last partial window is dropped, partial batch kept
    assert np.array_equal(windows.reshape(-1), expected[: n_windows * 17])
    assert list(build_loader(cfg, "val", 0, 1, train=False)) != [] and len(batches) == -(-n_windows // 3)


def test_train_packing_crosses_documents_and_epochs(shards):
    root, content = shards
    cfg = cfg_for(root, seq_len=16, batch=2)
    loader = build_loader(cfg, "train", 0, 1, train=True)
    expected = global_stream(content, cfg, epochs=3)
    n_batches = len(expected) // (17 * 2) - 1  # well past the end of epoch 0
    assert n_batches * 34 > len(global_stream(content, cfg, epochs=1))
    windows = gpt_windows([next(loader) for _ in range(n_batches)])
    assert np.array_equal(windows.reshape(-1), expected[: n_batches * 34])


def test_epochs_are_reshuffled(shards):
    root, content = shards
    cfg = cfg_for(root)
    order = EpochOrder([len(s) for s in content["train"]], cfg.train.seed, True, 4)
    e0, e1 = order.refs(0), order.refs(1)
    assert sorted(map(tuple, e0)) == sorted(map(tuple, e1)) and not np.array_equal(e0, e1)


def test_dp_ranks_take_global_windows_round_robin(shards):
    root, content = shards
    cfg = cfg_for(root)
    for dp in (2, 3):
        for r in range(dp):  # across the epoch boundary: 6 batches of 2 x 17 tokens per rank
            loader = build_loader(cfg, "train", r, dp, train=True)
            got = gpt_windows([next(loader) for _ in range(6)])
            assert np.array_equal(got, rank_windows(content, cfg, r, dp, epochs=3, window=17)[:12])


def test_eval_pass_splits_whole_windows_equally(shards):
    root, content = shards
    cfg = cfg_for(root, batch=3)
    expected = stream_of([s for shard in content["val"] for s in shard])
    n = len(expected) // 17
    windows = expected[: n * 17].reshape(n, 17)
    got = [gpt_windows(list(build_loader(cfg, "val", r, 4, train=False))) for r in range(4)]
    for r in range(4):  # n - n % 4 windows, dealt round-robin: equal counts per rank
        assert np.array_equal(got[r], windows[: n - n % 4][r::4])


def test_same_dp_rank_gives_identical_batches(shards):
    root, _ = shards  # two tensor-parallel ranks build their loader with the same dp_rank
    a = build_loader(cfg_for(root, family="bert"), "train", 1, 2, True)
    b = build_loader(cfg_for(root, family="bert"), "train", 1, 2, True)
    for _ in range(5):
        x, y = next(a), next(b)
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_bert_masking_rate_and_specials(shards):
    root, content = shards
    cfg = cfg_for(root, family="bert", seq_len=18, batch=4)
    loader = build_loader(cfg, "train", 0, 1, train=True)
    batches = [next(loader) for _ in range(60)]
    ids = torch.cat([b["input_ids"] for b in batches]).numpy()
    labels = torch.cat([b["labels"] for b in batches]).numpy()
    assert {"attention_mask", "token_type_ids"} <= set(batches[0])
    assert (ids[:, 0] == TOKENIZER["cls_id"]).all() and (ids[:, -1] == TOKENIZER["sep_id"]).all()
    original = np.where(labels != -100, labels, ids)
    # rows are [CLS] + 16 stream tokens + [SEP], in stream order
    expected = global_stream(content, cfg, epochs=40)[: ids.shape[0] * 16].reshape(-1, 16)
    assert np.array_equal(original[:, 1:-1], expected)
    masked = labels != -100
    special = np.isin(original, list(SPECIALS))
    assert not (masked & special).any()  # never a special token
    rate = masked.sum() / (~special).sum()
    assert 0.13 < rate < 0.17
    as_mask = (ids == TOKENIZER["mask_id"]) & masked
    unchanged = (ids == labels) & masked
    changed = masked & ~as_mask & ~unchanged
    n = masked.sum()
    assert 0.76 < as_mask.sum() / n < 0.84
    assert 0.07 < changed.sum() / n < 0.13 and 0.07 < unchanged.sum() / n < 0.13
    assert not np.isin(ids[changed], list(SPECIALS)).any()


def test_bert_masking_differs_between_batches_and_epochs(shards):
    root, _ = shards
    loader = build_loader(cfg_for(root, family="bert", seq_len=18, batch=2), "train", 0, 1, True)
    a, b = next(loader)["labels"], next(loader)["labels"]
    assert not torch.equal(a != -100, b != -100)


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(shards, family, workers):
    root, _ = shards
    cfg = cfg_for(root, family=family, workers=workers)
    straight = build_loader(cfg, "train", 1, 2, True)
    reference = [next(straight) for _ in range(14)]
    first = build_loader(cfg, "train", 1, 2, True)
    for _ in range(9):
        next(first)
    state = first.state_dict()
    first.close()
    resumed = build_loader(cfg, "train", 1, 2, True)
    resumed.load_state_dict(state)
    for want in reference[9:]:
        got = next(resumed)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert resumed.state_dict()["batches"] == 14


def test_worker_count_does_not_change_the_stream(shards):
    root, _ = shards
    a = build_loader(cfg_for(root, workers=0), "train", 0, 1, True)
    b = build_loader(cfg_for(root, workers=2), "train", 0, 1, True)
    for _ in range(7):
        assert torch.equal(next(a)["input_ids"], next(b)["input_ids"])


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_leave_torchs_global_rng_alone(shards, workers):
    """Starting a train stream (as a resumed run does) or an eval pass draws nothing from torch's
    global RNG: the model's dropout masks after a resume or an eval are those of the straight run."""
    root, _ = shards
    cfg = cfg_for(root, workers=workers)
    torch.manual_seed(7)
    want = torch.rand(4)
    torch.manual_seed(7)
    train = build_loader(cfg, "train", 0, 1, True)
    next(train)
    list(build_loader(cfg, "val", 0, 1, False))
    train.close()
    assert torch.equal(torch.rand(4), want)


def test_resume_state_mismatch_is_refused(shards):
    root, _ = shards
    state = build_loader(cfg_for(root), "train", 0, 2, True).state_dict()
    with pytest.raises(ValueError, match="dp_size"):
        build_loader(cfg_for(root), "train", 0, 4, True).load_state_dict(state)
