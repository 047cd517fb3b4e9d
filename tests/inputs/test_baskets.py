"""BasketReader: the numeric branches of a local TTree, read basket by basket, equal uproot's arrays exactly."""

from __future__ import annotations

import gc
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import SHARED_DATA, write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uproot.interpretation.numerical import AsDtype

from mlaas4hep import RootSequence
from mlaas4hep.errors import ParameterError
from mlaas4hep.inputs.formats.baskets import BasketReader, Unsupported
from mlaas4hep.inputs.formats.root import READER, RootTable
from mlaas4hep.inputs.sources import FileSource

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"]


def _table(path: Path | str, tree: str = "Events") -> RootTable:
    return RootTable.open(FileSource(str(path), tree=tree))


def _same(table: RootTable, names: list[str], start: int, stop: int) -> None:
    """RootTable.arrays (baskets read here) against uproot's own reading: fields, forms and values."""
    ours = table.arrays(names, start, stop)
    wanted = frozenset(names)  # as RootTable asks uproot: fields in the tree's order
    theirs = table.tree.arrays(filter_name=wanted.__contains__, entry_start=start, entry_stop=stop, library="ak")
    assert ours.fields == theirs.fields
    assert ours.layout.form == theirs.layout.form
    assert ak.array_equal(ours, theirs, equal_nan=True, dtype_exact=True)
    for field in ours.fields:  # bit for bit, NaN payloads and -0.0 included
        a, b = ak.flatten(ours[field], axis=None), ak.flatten(theirs[field], axis=None)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize(("name", "tree"), [("uproot-HZZ.root", "events"), ("uproot-Zmumu.root", "events")])
def test_the_real_files_read_as_uproot_reads_them(name: str, tree: str) -> None:
    table = _table(SHARED_DATA / name, tree)
    try:
        assert table.baskets is not None
        names = list(table.tree.keys(recursive=False))
        n = table.entries
        for start, stop in [(0, n), (3, 7), (n // 3, n // 3 + 17), (n - 5, n), (n - 1, n)]:
            _same(table, names, start, stop)
        read_here = [name for name in names if table.baskets.supports(name)]
        assert len(read_here) == len(names) - (name == "uproot-Zmumu.root")  # its string branch is uproot's
    finally:
        table.close()


def _write(
    path: Path, columns: dict[str, np.ndarray], counts: np.ndarray, *, steps: list[int], compression: Any
) -> None:
    """A tree of flat branches and one collection ``c`` (``nc``, ``c_<dtype>``), in baskets of ``steps`` entries."""
    n = len(counts)
    jagged = {f"c_{k}": ak.unflatten(v[: int(counts.sum())], counts) for k, v in columns.items()}
    data: dict[str, Any] = {f"f_{k}": v[:n] for k, v in columns.items()}
    data["c"] = ak.zip({k[2:]: v for k, v in jagged.items()})
    with uproot.recreate(path, compression=compression) as f:
        t = f.mktree("Events", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        start = 0
        for step in steps:
            if start < n:
                t.extend({k: v[start : start + step] for k, v in data.items()})
            start += step
        if start < n:
            t.extend({k: v[start:] for k, v in data.items()})


def _values(rng: np.random.Generator, dtype: str, size: int) -> np.ndarray:
    if dtype == "bool":
        return rng.random(size) < 0.5
    info = np.iinfo(dtype) if dtype[0] in "iu" else None
    if info is not None:
        return rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
    values = rng.normal(0, 1e3, size).astype(dtype)
    values[rng.random(size) < 0.05] = np.nan
    values[rng.random(size) < 0.02] = -np.inf
    values[rng.random(size) < 0.02] = -0.0
    return values


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    steps=st.lists(st.integers(1, 120), min_size=1, max_size=5),
    compression=st.sampled_from(["zlib1", "zlib9", "none", "lz4", "zstd"]),
    ranges=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=4),
)
def test_any_tree_uproot_writes_reads_the_same(
    tmp_path: Path, seed: int, n: int, steps: list[int], compression: str, ranges: list[tuple[float, float]]
) -> None:
    """Every dtype, flat and jagged, NaN, inf and -0.0, in baskets of any sizes, compressed any way, any range."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0, 4), n).astype(np.int64)
    columns = {d: _values(rng, d, max(n, int(counts.sum()))) for d in DTYPES}
    codec = {
        "zlib1": uproot.ZLIB(1),
        "zlib9": uproot.ZLIB(9),
        "none": None,
        "lz4": uproot.LZ4(1),
        "zstd": uproot.ZSTD(1),
    }[compression]
    path = tmp_path / f"t{seed}.root"
    _write(path, columns, counts, steps=steps, compression=codec)
    table = _table(path)
    try:
        names = list(table.tree.keys(recursive=False))
        for a, b in ranges:
            start, stop = sorted((int(a * n), int(b * n)))
            _same(table, names, start, max(stop, start + 1) if start < n else n)
            _same(table, names[::2], start, max(stop, start + 1) if start < n else n)
        if compression in ("zlib1", "zlib9", "none"):  # read here, every one: nothing was left to uproot
            assert table.baskets is not None and all(table.baskets.supports(name) for name in names)
    finally:
        table.close()


def _refused(table: RootTable, name: str, stop: int, why: str) -> BasketReader:
    """The table's reader, which takes branch ``name`` and then refuses its entries ``[0, stop)`` for ``why``."""
    reader = table.baskets
    assert reader is not None and reader.supports(name)
    with pytest.raises(Unsupported, match=why):
        reader.read(name, 0, stop)
    return reader


def test_lz4_baskets_are_left_to_uproot(tmp_path: Path) -> None:
    big = tmp_path / "big.root"
    _write(
        big,
        {"float32": np.repeat(np.arange(50, dtype=np.float32), 100)},  # compresses
        np.ones(2500, np.int64),
        steps=[5000],
        compression=uproot.LZ4(1),
    )
    table = _table(big)
    try:
        reader = _refused(table, "f_float32", 10, "'L4'")
        _same(table, ["f_float32", "c_float32"], 0, 2500)
        assert not reader.supports("f_float32")  # once seen, left to uproot
    finally:
        table.close()


def _first_basket(path: Path, branch: str) -> int:
    with uproot.open(path)["Events"] as tree:
        return int(tree[branch].member("fBasketSeek")[0])


def test_a_basket_whose_key_disagrees_is_read_by_uproot(tmp_path: Path) -> None:
    """A basket saying it holds other entries than the tree says: uproot reads it and says what is wrong."""
    path = write_tree(tmp_path / "a.root", 40, seed=2)
    bad = tmp_path / "bad.root"
    shutil.copy(path, bad)
    seek = _first_basket(bad, "MET_pt")
    with open(bad, "r+b") as f:
        f.seek(seek)
        key = f.read(64)
        keylen = struct.unpack_from(">h", key, 14)[0]
        f.seek(seek + keylen - 19 + 10)  # fNevBuf: fVersion (2), fBufferSize (4), fNevBufSize (4)
        f.write(struct.pack(">i", 39))
    table = _table(bad)
    try:
        reader = _refused(table, "MET_pt", 40, "holds 39 entries, not 40")
        with pytest.raises(ValueError, match="MET_pt has the wrong number of entries"):
            table.arrays(["MET_pt", "nPV"], 0, 40)
        assert not reader.supports("MET_pt") and reader.supports("nPV")
        _same(table, ["nPV", "uid"], 0, 40)
    finally:
        table.close()


def test_what_the_reader_leaves_to_uproot() -> None:
    with uproot.open(SHARED_DATA / "uproot-Zmumu.root")["events"] as tree:
        reader = BasketReader(str(SHARED_DATA / "uproot-Zmumu.root"), tree)
        assert not reader.supports("Type")  # strings
        assert not reader.supports("no such branch")
        assert reader.supports("E1")
        with pytest.raises(Unsupported, match="not read here"):
            reader.read("E1", 5, 5)  # an empty range
        with pytest.raises(Unsupported, match="not read here"):
            reader.read("E1", 0, tree.num_entries + 1)
        assert reader.read("E1", 0, 2).to_list() == tree["E1"].array(entry_stop=2, library="np").tolist()
        reader.close()
        with pytest.raises(Unsupported, match="closed"):  # uproot's to answer
            reader.read("E1", 0, 2)
        reader.close()


def test_a_leaf_list_is_left_to_uproot(tmp_path: Path) -> None:
    """A branch of several leaves ("a/I:b/I"): uproot reads it as numbers of a structured dtype, records."""
    path = tmp_path / "leaves.root"
    with uproot.recreate(path) as f:
        f.mktree("T", {"x": "i8"}).extend({"x": np.arange(10, dtype="i8")})
    with uproot.open(path)["T"] as tree:
        tree["x"]._interpretation = AsDtype(np.dtype([("a", ">i4"), ("b", ">i4")]))  # as uproot makes for leaf lists
        reader = BasketReader(str(path), tree)
        assert not reader.supports("x")
        reader.close()


def test_the_file_is_the_one_uproot_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path and a change of directory before the first read: still the file uproot opened."""
    for name, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        with uproot.recreate(tmp_path / name / "data.root", compression=None) as f:
            f.mktree("Events", {"x": "f8"}).extend({"x": np.full(5, value)})
    monkeypatch.chdir(tmp_path / "a")
    table = _table("data.root")
    try:
        monkeypatch.chdir(tmp_path / "b")
        assert table.arrays(["x"], 0, 5)["x"].to_list() == [1.0] * 5
    finally:
        table.close()


def test_a_dropped_reader_closes_its_file() -> None:
    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = descriptors()
    for _ in range(20):
        table = _table(SHARED_DATA / "uproot-HZZ.root", "events")
        table.arrays(["NMuon"], 0, 10)
        del table
    gc.collect()
    assert descriptors() <= before + 2


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(READER, "BASKETS ")
    table = _table(SHARED_DATA / "uproot-HZZ.root", "events")
    assert table.baskets is not None
    table.close()
    monkeypatch.setenv(READER, "uprot")
    opened: list[object] = []
    monkeypatch.setattr(uproot, "open", lambda *args, **kw: opened.append(args))
    with pytest.raises(ParameterError, match="MLAAS4HEP_READER='uprot': must be 'baskets'"):
        _table(SHARED_DATA / "uproot-HZZ.root", "events")
    assert not opened  # refused before the file is opened
    monkeypatch.undo()
    monkeypatch.setenv(READER, "uproot")
    table = _table(SHARED_DATA / "uproot-HZZ.root", "events")
    try:
        assert table.baskets is None
        assert len(table.arrays(["NJet"], 0, 10)) == 10
    finally:
        table.close()


def test_a_sequence_serves_the_same_batches_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [str(write_tree(tmp_path / f"f{i}.root", 700 + 300 * i, seed=i, file_id=i, basket=97)) for i in range(2)]

    def batches() -> list[tuple[np.ndarray, np.ndarray]]:
        seq = RootSequence(files, labels=[1, 0], chunk_size=256, batch_size=64, seed=3, workers=2)
        try:
            return [(x.copy(), y.copy()) for x, y in (seq[i][:2] for i in range(len(seq)))]
        finally:
            seq.close()

    ours = batches()
    monkeypatch.setenv(READER, "uproot")
    theirs = batches()
    assert len(ours) == len(theirs)
    for (x1, y1), (x2, y2) in zip(ours, theirs, strict=True):
        assert x1.tobytes() == x2.tobytes() and y1.tobytes() == y2.tobytes()


def test_the_seconds_spent_inflating_are_counted(tmp_path: Path) -> None:
    """LoaderStats' decompress seconds still count the ZLIB blocks inflated here, in the reading thread."""
    path = write_tree(tmp_path / "z.root", 3000, seed=4, basket=700)
    table = _table(path)
    try:
        assert table.decompressed_seconds == 0.0
        table.arrays(["MET_pt", "Jet_pt", "nJet"], 0, 3000)
        assert table.decompressed_seconds > 0.0
    finally:
        table.close()
    seq = RootSequence([str(path)], labels=[1], chunk_size=1000, batch_size=500)
    try:
        chunk = seq.pipeline.reader.read(0)
        assert chunk.decompress_s > 0.0
    finally:
        seq.close()
