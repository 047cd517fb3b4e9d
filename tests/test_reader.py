from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep import ChunkPlan, ChunkReader, FileSource, ParameterError
from mlaas4hep.reader import apportion
from mlaas4hep.sources import parse_sources


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


def test_parse_sources_tree_suffix_and_redirector(tmp_path):
    local = tmp_path / "a.root"
    local.touch()
    sources = parse_sources(
        [str(local), "b.root:tree", "root://host:1094//store/c.root:Events"], redirector="root://redir/"
    )
    assert sources[0] == FileSource(str(local), "Events")
    assert sources[1] == FileSource("root://redir/b.root", "tree")
    assert sources[2] == FileSource("root://host:1094//store/c.root", "Events")
    assert sources[2].is_remote and not sources[0].is_remote


def test_reader_reads_each_entry_once_with_labels(two_files):
    sources = parse_sources(two_files)
    reader = ChunkReader(sources, ["uid", "Jet_pt"], chunk_size=700, labels=[1, 0])
    seen = []
    for k in range(len(reader)):
        chunk = reader.read(k)
        uid = np.concatenate([ak.to_numpy(p["uid"]) for p in chunk.pieces])
        assert np.array_equal(uid, chunk.file_index * 1_000_000 + chunk.entry)
        assert np.array_equal(chunk.labels, np.where(chunk.file_index == 0, 1.0, 0.0))
        assert set(chunk.pieces[0].fields) == {"uid", "Jet_pt"}
        seen.append(uid)
    seen = np.concatenate(seen)
    assert len(seen) == 3000 and len(np.unique(seen)) == 3000
    assert reader.reads == len(reader)
    reader.close()


def test_reader_reads_rntuple_and_ttree_alike(tmp_path):
    n = 50
    data = {"x": np.arange(n, dtype=np.float32), "j": ak.unflatten(np.arange(2 * n, dtype=np.float32), np.full(n, 2))}
    with uproot.recreate(tmp_path / "rn.root") as f:
        f["Events"] = data  # an RNTuple since uproot 5.7
        f.mktree("tree", {"x": np.float32, "j": data["j"].type}).extend(data)
    with uproot.open(tmp_path / "rn.root") as f:
        assert f.classnames()["Events;1"] == "ROOT::RNTuple"
    for tree in ("Events", "tree"):
        reader = ChunkReader([FileSource(str(tmp_path / "rn.root"), tree)], ["x", "j"], chunk_size=20)
        xs = np.concatenate([ak.to_numpy(reader.read(k).pieces[0]["x"]) for k in range(len(reader))])
        assert xs.tolist() == list(range(n))


@pytest.mark.parametrize("direction", ["forward", "backward", "rotated"])
def test_reader_decompresses_each_cluster_once_and_reads_ahead(make_tree, tmp_path, direction):
    """Chunks read in order, either way, read every cluster once, in fewer calls than chunks x files."""
    files = [
        make_tree(tmp_path / "a.root", 2000, seed=1, file_id=0, basket=300),
        make_tree(tmp_path / "b.root", 1300, seed=2, file_id=1, basket=200),
    ]
    reader = ChunkReader(parse_sources(files), ["uid", "Jet_pt"], chunk_size=400)
    calls: list[tuple[str, int, int]] = []
    read = reader._arrays

    def spy(tree, names, start, stop):
        calls.append((tree.file.file_path, start, stop))
        return read(tree, names, start, stop)

    reader._arrays = spy
    n = len(reader)
    order = {"forward": range(n), "backward": range(n - 1, -1, -1), "rotated": [(7 + s) % n for s in range(n)]}
    seen = []
    for k in order[direction]:
        chunk = reader.read(k)
        uid = np.concatenate([ak.to_numpy(p["uid"]) for p in chunk.pieces])
        np.testing.assert_array_equal(uid, chunk.file_index * 1_000_000 + chunk.entry)
        seen.append(uid)
    seen = np.concatenate(seen)
    assert len(seen) == 3300 and len(np.unique(seen)) == 3300
    for path, entries, basket in ((files[0], 2000, 300), (files[1], 1300, 200)):
        ranges = sorted((a, b) for p, a, b in calls if p == str(path))
        covered = np.concatenate([np.arange(a, b) for a, b in ranges])
        np.testing.assert_array_equal(covered, np.arange(entries))  # each entry (and cluster) read once
        assert all(a % basket == 0 for a, _ in ranges)  # whole clusters
    # 9 chunks over 7 + 7 clusters: clusters that the next chunks need are read along, a few per call
    assert len(calls) <= 8
    assert len(reader._segments) <= reader.max_kept_clusters
    reader.close()
