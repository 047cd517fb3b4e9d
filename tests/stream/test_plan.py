"""The arithmetic of the data path (mlaas4hep.stream.plan): no files, only counts, ranges and permutations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep import ChunkPlan, ParameterError
from mlaas4hep.stream.plan import (
    EpochPlan,
    apportion,
    balance,
    chunk_permutation,
    shard_bounds,
    split_entries,
    subset_ranges,
)


def test_apportion_matches_the_original_example():
    # the seed's two files: 476963 and 491653 events, 10k-event chunks -> 4924 + 5076
    assert apportion(10_000, [476_963, 491_653]).tolist() == [4924, 5076]


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=6), st.integers(0, 100_000))
def test_apportion_sums_exactly_and_is_fair(weights, total):
    if sum(weights) == 0:
        return
    total = min(total, sum(weights))
    parts = apportion(total, weights)
    assert parts.sum() == total
    exact = np.asarray(weights) * total / sum(weights)
    assert np.all(np.abs(parts - exact) < 1)
    assert np.all(parts <= np.asarray(weights))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=5).filter(lambda w: sum(w) > 0), st.integers(1, 4000))
def test_plan_reads_every_entry_once_in_full_chunks(entries, chunk_size):
    plan = ChunkPlan.build([(0, n) for n in entries], chunk_size)
    sizes = plan.sizes
    assert plan.n_events == sum(entries)
    assert np.all(sizes[:-1] == chunk_size)
    assert 0 < sizes[-1] <= chunk_size
    for i, n in enumerate(entries):
        # contiguous, in order, covering [0, n) exactly once
        nonzero = plan.counts[:, i] > 0
        starts, counts = plan.starts[nonzero, i], plan.counts[nonzero, i]
        assert counts.sum() == n
        if n == 0:
            continue
        assert np.array_equal(starts, np.concatenate([[0], np.cumsum(counts)[:-1]]))
        # proportional within one event of the exact share
        share = sizes * n / sum(entries)
        assert np.all(np.abs(plan.counts[:, i] - share) < 2)


def test_plan_respects_entry_ranges_and_one_chunk_mode():
    plan = ChunkPlan.build([(100, 200), (0, 300)], -1)
    assert plan.n_chunks == 1
    assert plan.starts.tolist() == [[100, 0]]
    assert plan.counts.tolist() == [[100, 300]]
    with pytest.raises(ParameterError, match="chunk_size"):
        ChunkPlan.build([(0, 10)], 0)


@given(n=st.integers(1, 5000), shards=st.integers(1, 16), batch=st.integers(1, 300))
def test_layout_covers_the_stream_in_equal_numbers_of_batches(n, shards, batch):
    if n < shards:
        with pytest.raises(ParameterError, match="num_shards"):
            shard_bounds(n, shards, 0, batch)
        return
    layouts = [shard_bounds(n, shards, s, batch) for s in range(shards)]
    batches = {b for _, b in layouts}
    assert len(batches) == 1  # in step
    (b,) = batches
    assert layouts[0][0][0] == 0 and layouts[-1][0][1] == n
    for ((_, stop), _), ((start, _), _) in itertools.pairwise(layouts):
        assert stop == start  # consecutive, disjoint
    for (start, stop), _ in layouts:
        size = stop - start
        last = size - (b - 1) * batch
        assert 1 <= last <= batch + 1  # no empty batch, at most one extra event


def test_groups_keep_the_plan_exact():
    ranges = [(0, n) for n in (7, 0, 13, 5, 9, 11, 3)]
    for per in (1, 2, 3, 7, 100):
        plan = ChunkPlan.build(ranges, 6, files_per_chunk=per)
        assert plan.n_events == 48 and (plan.sizes[:-1] == 6).all()
        np.testing.assert_array_equal(plan.counts.sum(axis=0), [7, 0, 13, 5, 9, 11, 3])
        groups = -(-len(ranges) // per)
        for k in range(plan.n_chunks):  # a chunk reads at most two groups
            assert len({i % groups for i in np.flatnonzero(plan.counts[k])}) <= 2
    whole = ChunkPlan.build(ranges, 6)
    np.testing.assert_array_equal(ChunkPlan.build(ranges, 6, files_per_chunk=7).counts, whole.counts)


def test_files_are_dealt_by_events():
    assert balance([700, 1100, 500], 2) == [[1], [0, 2]]
    assert balance([5, 0, 5], 4) == [[0], [2]]  # no worker for an empty file, none left idle
    assert balance([1, 2, 3, 4], 1) == [[0, 1, 2, 3]]


@given(
    st.lists(st.integers(0, 500), min_size=1, max_size=5),
    st.one_of(st.just(-1), st.integers(1, 2000)),
    st.one_of(st.none(), st.floats(0.05, 0.45)),
    st.one_of(st.none(), st.floats(0.05, 0.45)),
)
def test_subsets_cut_each_file_in_order_without_overlap(events, nevts, validation, test):
    if sum(events) == 0:
        return
    parts = {s: subset_ranges(events, nevts, validation, test, s) for s in ("training", "validation", "test", None)}
    for i in range(len(events)):
        whole = parts[None][i]
        assert whole[0] == 0 and whole[1] <= events[i]
        t, v, x = parts["training"][i], parts["validation"][i], parts["test"][i]
        assert t[0] == 0 and t[1] == v[0] and v[1] == x[0] and x[1] == whole[1]  # consecutive: no overlap
    used = sum(r[1] for r in parts[None])
    assert used == (sum(events) if nevts == -1 or nevts >= sum(events) else nevts)
    assert split_entries(100, 0.2, 0.1) == {
        None: (0, 100),
        "training": (0, 70),
        "validation": (70, 90),
        "test": (90, 100),
    }


def test_chunk_permutation_is_drawn_once_per_seed_epoch_and_chunk():
    a = chunk_permutation(3, 1, 4, 50)
    np.testing.assert_array_equal(a, chunk_permutation(3, 1, 4, 50))
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, chunk_permutation(3, 2, 4, 50))  # another epoch
    assert not np.array_equal(a, chunk_permutation(3, 1, 5, 50))  # another chunk


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 90), min_size=1, max_size=8),
    batch=st.integers(1, 40),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    shards=st.integers(1, 4),
    epoch=st.integers(0, 5),
)
def test_epoch_layout_cuts_each_shard_into_its_batches(sizes, batch, shuffle, seed, shards, epoch):
    n = sum(sizes)
    if n < shards:
        return
    layouts = [
        EpochPlan(np.array(sizes), batch_size=batch, shuffle=shuffle, seed=seed, num_shards=shards, shard_index=s)
        for s in range(shards)
    ]
    order, ends = layouts[0].order(epoch)
    assert sorted(order.tolist()) == list(range(len(sizes)))  # each chunk once
    if shuffle and len(sizes) > 1:  # a rotation, forwards or backwards: neighbours stay neighbours
        assert len(set(np.diff(order) % len(sizes))) == 1
    elif not shuffle:
        assert order.tolist() == list(range(len(sizes)))
    stream = []
    for layout in layouts:
        assert layout.batches == layouts[0].batches  # in step
        for slot in range(layout.batches):
            pieces = layout.pieces(epoch, slot)
            start, stop = layout.bounds(slot)
            assert sum(b - a for _, _, a, b in pieces) == stop - start > 0
            for position, k, a, b in pieces:
                assert order[position] == k and 0 <= a < b <= sizes[k]
                first = int(ends[position - 1]) if position else 0
                stream.extend(range(first + a, first + b))
            assert layout.position(epoch, slot) == pieces[0][0]
    assert stream == list(range(n))  # every event of the stream once, in order, over all shards


def test_epoch_layout_reads_ahead_into_the_next_epoch_but_never_into_another_shard():
    sizes = np.array([10] * 6)
    first, second = (EpochPlan(sizes, batch_size=5, shuffle=False, seed=0, num_shards=2, shard_index=s) for s in (0, 1))
    assert first.following(0, 1, 3) == [(0, 2), (1, 0), (1, 1)]  # chunks 0-2 are shard 0's
    assert second.following(0, 4, 3) == [(0, 5), (1, 3), (1, 4)]  # chunks 3-5 are shard 1's
    shuffled = EpochPlan(sizes, batch_size=5, shuffle=True, seed=4)
    assert shuffled.key(3, 2) == (3, 2) and first.key(3, 2) == (0, 2)  # in order, chunks are the same each epoch
    order = shuffled.order(0)[0]
    assert shuffled.following(0, 5, 2) == [(1, int(shuffled.order(1)[0][0])), (1, int(shuffled.order(1)[0][1]))]
    assert [k for _, k in shuffled.following(0, 0, 3)] == order[1:4].tolist()


def test_epoch_layout_of_a_known_number_of_epochs_reads_nothing_past_the_last():
    sizes = np.array([10] * 4)
    once = EpochPlan(sizes, batch_size=5, shuffle=False, seed=0, epochs=1)
    assert once.following(0, 1, 3) == [(0, 2), (0, 3)]
    assert once.following(0, 3, 2) == []
    twice = EpochPlan(sizes, batch_size=5, shuffle=True, seed=1, epochs=2)
    assert [e for e, _ in twice.following(0, 3, 2)] == [1, 1] and twice.following(1, 3, 2) == []
    with pytest.raises(ParameterError, match="epochs must be a positive integer or None"):
        EpochPlan(sizes, batch_size=5, shuffle=False, seed=0, epochs=0)


def test_layout_of_an_empty_or_tiny_stream():
    with pytest.raises(ParameterError, match="num_shards"):
        EpochPlan(np.array([2]), batch_size=1, shuffle=False, seed=0, num_shards=3)
    layout = EpochPlan(np.array([1]), batch_size=4, shuffle=True, seed=0)
    assert layout.batches == 1 and layout.pieces(7, 0) == [(0, 0, 0, 1)]
