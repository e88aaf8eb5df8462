"""Today's (commit 970e726) single-process deduplication, kept as the oracle the distributed
shuffle (``data_pipeline/text/shuffle.py``) is compared with: every id, hash and signature in one
process, exact first, then union-find over the survivors' LSH bands. Not used by the pipeline."""

from __future__ import annotations

import numpy as np


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:  # the smaller index (= smaller document id) becomes the root
            self.parent[max(rx, ry)] = min(rx, ry)


def find_duplicates(ids: list[str], hashes: np.ndarray, signatures: np.ndarray | None, bands: int, rows: int,
                    exact: bool = True, near: bool = True) -> dict[int, tuple[str, int]]:
    """Documents to drop: {index: (reason, index of the kept copy)}. ``ids`` must be sorted, so
    index order is id order and the smallest id of every group is kept."""
    assert all(ids[i] < ids[i + 1] for i in range(len(ids) - 1)), "ids must be sorted and unique"
    drop: dict[int, tuple[str, int]] = {}
    alive = np.arange(len(ids))
    if exact and len(ids):
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        keeper = first[inverse.ravel()]
        for i in np.nonzero(keeper != alive)[0]:
            drop[int(i)] = ("exact", int(keeper[i]))
        alive = np.nonzero(keeper == alive)[0]
    if near and signatures is not None and len(alive) > 1:
        uf = _UnionFind(len(ids))
        sig = np.ascontiguousarray(signatures[alive])
        for band in range(bands):
            chunk = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows]).view(np.dtype((np.void, rows * 4)))
            _, first, inverse = np.unique(chunk.ravel(), return_index=True, return_inverse=True)
            rep = first[inverse.ravel()]
            for j in np.nonzero(rep != np.arange(len(alive)))[0]:
                uf.union(int(alive[rep[j]]), int(alive[j]))
        for i in alive:
            root = uf.find(int(i))
            if root != i:
                drop[int(i)] = ("near", root)
    return drop
