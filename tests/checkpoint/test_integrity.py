"""How the checkpoint's files are dealt to the ranks for hashing (the same deal on every rank)."""

from __future__ import annotations

from pretrain.checkpoint.integrity import shares


def test_every_file_is_hashed_by_exactly_one_rank_and_the_bytes_are_balanced():
    files = [{"path": f"f{i}", "bytes": b} for i, b in enumerate([900, 10, 500, 400, 300, 7, 1, 600])]
    dealt = shares(files, 3)
    assert sorted(f["path"] for part in dealt for f in part) == sorted(f["path"] for f in files)
    loads = [sum(f["bytes"] for f in part) for part in dealt]
    assert max(loads) - min(loads) <= 900 // 2  # largest first to the least loaded: no rank gets two big ones
    assert dealt == shares(list(reversed(files)), 3)  # independent of listing order: every rank agrees
    assert shares(files, 1) == [sorted(files, key=lambda f: (-f["bytes"], f["path"]))]
    assert shares(files[:1], 4)[1:] == [[], [], []]  # more ranks than files: the rest idle
