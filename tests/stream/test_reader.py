from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import ChunkReader, FileSource
from mlaas4hep.inputs.sources import parse_sources


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

    def spy(table, names, start, stop):
        calls.append((table.source.path, start, stop))
        return read(table, names, start, stop)

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
