"""Sharding: over all shards every selected event is served exactly once per epoch, in step.

Property tests (hypothesis) over files, chunk and batch sizes, nevts, splits,
shuffling and numbers of shards: the shards are disjoint, together they serve
each selected event once, with its label, and all have the same number of
non-empty batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("keras")

from conftest import shared_tree

from mlaas4hep import ParameterError, RootSequence

ID = 1_000_000  # uid = file_id * ID + entry


@st.composite
def setups(draw):
    entries = draw(st.lists(st.integers(1, 200), min_size=1, max_size=4))
    total = sum(entries)
    chunk_size = draw(st.one_of(st.just(-1), st.integers(1, 300)))
    batch_size = draw(st.integers(1, min(chunk_size if chunk_size > 0 else total, 48)))
    return {
        "entries": entries,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "nevts": draw(st.one_of(st.just(-1), st.integers(1, total))),
        "validation_split": draw(st.one_of(st.none(), st.floats(0.05, 0.5))),
        "shuffle": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "num_shards": draw(st.integers(1, 5)),
        "files_per_chunk": draw(st.one_of(st.none(), st.integers(1, 3))),
    }


def _make(setup: dict, shard: int, subset: str | None) -> RootSequence:
    files = [shared_tree(i, n) for i, n in enumerate(setup["entries"])]
    args = {k: v for k, v in setup.items() if k != "entries"}
    return RootSequence(
        files,
        labels=[float(i) for i in range(len(files))],
        branches=["uid", "MET_pt"],
        normalization=None,
        subset=subset if setup["validation_split"] else None,
        shard_index=shard,
        **args,
    )


def _epoch(seq: RootSequence, order) -> list[tuple[np.ndarray, np.ndarray]]:
    col = seq.feature_names.index("uid")
    out = []
    for i in order:
        x, y = seq[int(i)]
        out.append((x[:, col].astype(np.int64), y))
    seq.on_epoch_end()
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups(), order_seed=st.integers(0, 1000))
def test_shards_serve_each_event_exactly_once_per_epoch(setup, order_seed):
    subset = "training" if setup["validation_split"] else None
    whole = _make({**setup, "num_shards": 1}, 0, subset)
    n = whole.total_events
    expected = np.sort(np.concatenate([ids for ids, _ in _epoch(whole, range(len(whole)))]))
    if n < setup["num_shards"]:
        with pytest.raises(ParameterError, match="num_shards"):
            _make(setup, 0, subset)
        return
    rng = np.random.default_rng(order_seed)
    shards = [_make(setup, s, subset) for s in range(setup["num_shards"])]
    assert len({len(s) for s in shards}) == 1  # every worker takes the same number of steps
    assert sum(s.n_events for s in shards) == n and all(s.total_events == n for s in shards)
    for _ in range(2):  # two epochs: another shuffle, the same guarantee
        served = []
        for seq in shards:
            order = rng.permutation(len(seq))
            batches = _epoch(seq, order)  # Keras' order does not matter
            if not seq.shuffle:  # index i is batch i of the stream; shuffled, the i-th index asked for is
                batches = [batches[j] for j in np.argsort(order)]
            sizes = [len(ids) for ids, _ in batches]
            assert all(size == seq.batch_size for size in sizes[:-1]) and 1 <= sizes[-1] <= seq.batch_size + 1
            assert sum(sizes) == seq.n_events
            for ids, labels in batches:
                np.testing.assert_array_equal(labels, (ids // ID).astype(np.float32))
            served.append(np.concatenate([ids for ids, _ in batches]))
        everything = np.concatenate(served)
        np.testing.assert_array_equal(np.sort(everything), expected)  # exactly once over all shards


def test_a_shard_reads_only_its_chunks(two_files):
    kw = {"labels": [1, 0], "branches": ["MET_pt"], "batch_size": 50, "chunk_size": 300, "seed": 3}
    whole = RootSequence(two_files, **kw)
    shards = [RootSequence(two_files, shard_index=s, num_shards=4, **kw) for s in range(4)]
    for seq in [whole, *shards]:
        for i in range(len(seq)):
            seq[i]
        seq.close()
    # each sequence also reads ahead the first chunks (prefetch of them) of its next epoch
    ahead = whole.prefetch
    assert whole.chunk_reads == whole.reader.plan.n_chunks + ahead == 10 + ahead
    # 10 chunks of 300 over 4 shards of 750 events: each shard touches at most 4 chunks
    # (the chunks at its edges are shared with its neighbours), never all 10
    assert all(s.chunk_reads <= 4 + ahead for s in shards)
    assert sum(s.chunk_reads for s in shards) <= 10 + 3 + 4 * ahead


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"shard_index": 2, "num_shards": 2}, "shard_index"),
        ({"shard_index": -1, "num_shards": 2}, "shard_index"),
        ({"shard_index": 0, "num_shards": 0}, "num_shards"),
        ({"shard_index": 0, "num_shards": 2, "seed": None}, "seed is required"),
        ({"shard_index": 0, "num_shards": 5000}, "num_shards=5000 is more than"),
    ],
)
def test_bad_shards_are_parameter_errors(two_files, kw, match):
    args = {"labels": [1, 0], "branches": ["MET_pt"], "seed": 1, **kw}
    with pytest.raises(ParameterError, match=match):
        RootSequence(two_files, **args)


def test_unshuffled_shards_need_no_seed(two_files):
    seqs = [
        RootSequence(two_files, labels=[1, 0], branches=["uid"], shuffle=False, num_shards=2, shard_index=s)
        for s in (0, 1)
    ]
    assert [s.n_events for s in seqs] == [1500, 1500] and "shard 1 of 2" in repr(seqs[1])
