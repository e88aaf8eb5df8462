"""The distributed dedup keeps what today's single-process dedup kept, for any number of partitions.

Two references: ``golden_dedup.json``, the drops commit 970e726 made on fixed inputs (recorded by
running that commit), and ``reference_dedup.find_duplicates``, that commit's function, run here
on the same stage-1 output. The shuffle steps run as plain functions here (they are Ray tasks in
the pipeline); the pipeline-level tests run them on Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipeline.text import shuffle
from data_pipeline.text.config import TextOptions
from data_pipeline.text.generated import generate_wet
from data_pipeline.text.process import process_file
from tests.data_pipeline.reference_dedup import find_duplicates

GOLDEN = json.loads((Path(__file__).parent / "golden_dedup.json").read_text())
BANDS, ROWS = 14, 8


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Stage 1 of the golden's generated input (600 documents, 10% exact and 15% near copies)."""
    root = tmp_path_factory.mktemp("dedup")
    truth = generate_wet(root / "in", 600, 3, exact_share=0.1, near_share=0.15, near_edit=(0.0, 0.08), seed=1)
    opts = TextOptions(vocab_size=600, val_fraction=0.0)
    counts = [process_file(f, Path(f).name, f"{i:06d}", opts, str(root / "stage1")) for i, f in
              enumerate(truth["files"])]
    return root, counts


def distributed_drops(root: Path, files: int, partitions: int, exact=True, near=True) -> dict[str, tuple[str, str]]:
    work = root / f"p{partitions}-{exact}-{near}"
    prefixes = []
    for i in range(files):
        prefix = str(work / "scatter" / f"{i:06d}")
        shuffle.scatter(str(root / "stage1" / f"{i:06d}.kept.parquet"), i, partitions, BANDS, ROWS, prefix)
        prefixes.append(prefix)
    pairs = [str(work / "pairs" / f"{p}.parquet") for p in range(partitions)]
    for p, path in enumerate(pairs):
        shuffle.find_pairs(prefixes, p, ROWS, exact, near, path)
    shuffle.resolve(pairs, files, partitions, str(work / "drops"))
    out = {}
    for i in range(files):
        for record, (reason, keeper) in shuffle.file_drops(str(work / "drops"), i, files, partitions).items():
            out[f"{i:06d}-{record:07d}"] = (reason, shuffle.id_of(keeper))
    return out


def single_process_drops(root: Path, files: int, exact=True, near=True) -> dict[str, tuple[str, str]]:
    tables = [pq.read_table(root / "stage1" / f"{i:06d}.kept.parquet", columns=["id", "hash", "minhash"])
              for i in range(files)]
    ids = [x for t in tables for x in t.column("id").to_pylist()]
    hashes = np.concatenate([t.column("hash").to_numpy() for t in tables])
    sig = np.frombuffer(b"".join(x for t in tables for x in t.column("minhash").to_pylist()),
                        dtype=np.uint32).reshape(len(ids), BANDS * ROWS)
    drops = find_duplicates(ids, hashes, sig, BANDS, ROWS, exact, near)
    return {ids[i]: (reason, ids[k]) for i, (reason, k) in drops.items()}


def test_generated_input_drops_equal_the_golden_of_todays_code_for_any_partition_count(stage1):
    root, counts = stage1
    golden = {i: (reason, detail.split()[-1]) for i, reason, detail in GOLDEN["generated"]["dedup"]}
    assert sum(c["documents"] for c in counts) == GOLDEN["generated"]["documents"]
    assert len(golden) == 110 and sum(r == "near" for r, _ in golden.values()) == 45
    for partitions in (1, 3, 8):
        assert distributed_drops(root, len(counts), partitions) == golden, partitions


@pytest.mark.parametrize("exact, near", [(True, False), (False, True)])
def test_one_kind_alone_equals_todays_function(stage1, exact, near):
    root, counts = stage1
    assert distributed_drops(root, len(counts), 4, exact, near) == single_process_drops(root, len(counts), exact, near)


def test_clusters_join_transitively_and_keep_the_smallest_id(tmp_path):
    """A chain a ~ b ~ c where a and c share no band: one cluster, b and c both dropped for a (c
    only through b), in whichever file and partition they land; the same as today's union-find."""
    from data_pipeline.text.process import KEPT_SCHEMA, write_table

    rng = np.random.default_rng(5)
    a = rng.integers(0, 2 ** 32, BANDS * ROWS, dtype=np.uint64).astype(np.uint32)
    b, c = a.copy(), a.copy()
    b[ROWS:] = rng.integers(0, 2 ** 32, BANDS * ROWS - ROWS, dtype=np.uint64)  # b shares band 0 with a
    c[:ROWS] = rng.integers(0, 2 ** 32, ROWS, dtype=np.uint64)  # c shares band 1.. with b, nothing with a
    c[ROWS:2 * ROWS] = b[ROWS:2 * ROWS]
    c[2 * ROWS:] = rng.integers(0, 2 ** 32, BANDS * ROWS - 2 * ROWS, dtype=np.uint64)
    docs = {1: [("0000009", c, 7)], 0: [("0000003", a, 8), ("0000004", b, 9)]}  # c in a later file
    (tmp_path / "stage1").mkdir()
    for f, rows in docs.items():
        cols = {n: [] for n in KEPT_SCHEMA.names}
        for rec, sig, h in rows:
            for name, v in zip(KEPT_SCHEMA.names, (f"{f:06d}-{rec}", "", "", 0, "en", 1.0, "{}", "x", 1, h,
                                                   sig.tobytes())):
                cols[name].append(v)
        write_table(str(tmp_path / "stage1" / f"{f:06d}.kept.parquet"), cols, KEPT_SCHEMA)
    want = {"000000-0000004": ("near", "000000-0000003"), "000001-0000009": ("near", "000000-0000003")}
    assert shuffle.id_of(int(shuffle.uid_of(1, np.array([9]))[0])) == "000001-0000009"
    assert single_process_drops(tmp_path, 2) == want
    for partitions in (1, 2, 5):
        assert distributed_drops(tmp_path, 2, partitions) == want
