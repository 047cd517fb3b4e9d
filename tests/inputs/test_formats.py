"""Parquet, CSV, JSON lines and Avro inputs (mlaas4hep.inputs.formats): the same events give the same features as ROOT.

Each format's copies of a ROOT file are written here, with awkward (Parquet, JSON lines),
pyarrow (CSV) and fastavro (Avro), and served through the whole pipeline.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import write_tree

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")
fastavro = pytest.importorskip("fastavro")
keras = pytest.importorskip("keras")

import mlaas4hep.inputs.formats.convert  # noqa: E402
import mlaas4hep.inputs.formats.lines  # noqa: E402
from mlaas4hep import (  # noqa: E402
    BranchError,
    FileAccessError,
    FileSource,
    MLaaS4HEPError,
    ParameterError,
    RootSequence,
    SkippedBranchWarning,
    SpecBuilder,
    TreeError,
)
from mlaas4hep.inputs.contents import inspect_file  # noqa: E402
from mlaas4hep.inputs.formats import open_table  # noqa: E402
from mlaas4hep.inputs.sources import parse_sources  # noqa: E402

ID = 1_000_000  # uid = file_id * ID + entry
JETS = ["Jet_pt", "Jet_eta"]
FLAT = ["uid", "MET_pt", "nPV", "flag", "nJet"]
AVRO_TYPES = {"int64": "long", "int32": "int", "float32": "float", "float64": "double", "bool": "boolean"}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Parquet copies of CSV, JSON lines and Avro files go to a directory of this module's own."""
    directory = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(mlaas4hep.inputs.formats.convert.CACHE_ENV, str(directory))
        yield directory


def events(path: Path) -> ak.Array:
    return uproot.open(path)["Events"].arrays()


def write_copy(array: ak.Array, path: Path, row_group: int = 500) -> Path:
    """``array`` (fields of numbers and lists of numbers) written in the format that ``path``'s extension names."""
    fmt = path.suffix
    if fmt == ".parquet":
        ak.to_parquet(array, path, row_group_size=row_group)
    elif fmt == ".jsonl":  # floats as the shortest text that reads back as the same float64: exact
        ak.to_json(array, path, line_delimited=True)
    elif fmt == ".csv":  # flat columns only; float32 values written as float64, exactly
        columns = {f: ak.to_numpy(array[f]) for f in array.fields if array[f].ndim == 1}
        table = pa.table({f: v.astype(np.float64) if v.dtype.kind == "f" else v for f, v in columns.items()})
        pcsv.write_csv(table, path)
    elif fmt == ".avro":

        def avro_type(values: ak.Array) -> Any:
            if values.ndim == 1:
                return AVRO_TYPES[str(values.type.content)]
            return {"type": "array", "items": AVRO_TYPES[str(values.type.content.content)]}

        fields = [{"name": f, "type": avro_type(array[f])} for f in array.fields]
        schema = fastavro.parse_schema({"type": "record", "name": "Event", "fields": fields})
        with path.open("wb") as f:
            fastavro.writer(f, schema, ak.to_list(array))
    else:
        raise AssertionError(fmt)
    return path


@pytest.fixture(scope="module")
def root_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("root") / "sig.root", 1500, seed=1, file_id=0, basket=400)


@pytest.fixture(scope="module")
def copies(root_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The events of ``root_file`` in every other format."""
    d = tmp_path_factory.mktemp("copies")
    array = events(root_file)
    return {ext: write_copy(array, d / f"sig.{ext}") for ext in ("parquet", "jsonl", "csv", "avro")}


def sequence(files: list[Path | str | FileSource], **kw: Any) -> RootSequence:
    kw = {
        "labels": [1, 0][: len(files)],
        "batch_size": 100,
        "chunk_size": 400,
        "seed": 3,
        "normalization": None,
        "prefetch": 0,
        **kw,
    }
    return RootSequence([f if isinstance(f, FileSource) else str(f) for f in files], **kw)


def epoch(seq: RootSequence) -> np.ndarray:
    """Every feature row of one epoch, in the order served."""
    seq.on_epoch_begin()
    rows = [np.array(seq[i][0]) for i in range(len(seq))]
    seq.on_epoch_end()
    return np.concatenate(rows)


def uids(seq: RootSequence) -> np.ndarray:
    return epoch(seq)[:, seq.feature_names.index("uid")].astype(np.int64)


# -- formats and kinds ----------------------------------------------------------------------------
def test_the_format_comes_from_the_name_or_is_given(tmp_path: Path) -> None:
    assert [FileSource(n).format for n in ("a.root", "a.parquet", "a.pq", "a.csv", "a.jsonl", "a.json", "a.avro")] == [
        "root", "parquet", "parquet", "csv", "jsonl", "jsonl", "avro",
    ]  # fmt: skip
    assert FileSource("https://host/data/f.parquet?version=2").format == "parquet"
    assert FileSource("events.dat").format == "root"  # any other name: ROOT, as before
    assert FileSource("events.dat", format="CSV") == FileSource("events.dat", "Events", "csv")
    assert FileSource("events.txt", format="json").format == "jsonl"
    assert [s.format for s in parse_sources(["a.txt", FileSource("b.txt", format="avro")], format="csv")] == [
        "csv",
        "avro",
    ]
    assert [s.format for s in SpecBuilder(["a.txt"], format="parquet").sources] == ["parquet"]
    assert str(FileSource("a.parquet")) == "a.parquet" and str(FileSource("a.root")) == "a.root:Events"
    with pytest.raises(ParameterError, match=r"format 'xml' of 'a\.xml' is none of"):
        FileSource("a.xml", format="xml")


def test_each_format_has_the_branches_of_the_root_file(root_file: Path, copies: dict[str, Path]) -> None:
    """A list field is a jagged branch, exactly as the ROOT file's; CSV holds the flat ones."""
    kinds = inspect_file(FileSource(str(root_file))).kinds
    for ext, path in copies.items():
        info = inspect_file(FileSource(str(path)))
        assert info.entries == 1500 and info.uuid is None
        expected = {n: k for n, k in kinds.items() if ext != "csv" or k == "flat"}
        assert info.kinds == expected, ext
        assert (info.size, info.mtime) == (path.stat().st_size, path.stat().st_mtime)  # the file's own fingerprint


@pytest.mark.parametrize("ext", ["parquet", "jsonl", "csv", "avro"])
@pytest.mark.parametrize("normalization", [None, "standard"])
def test_a_copy_gives_the_features_of_the_root_file(
    root_file: Path, copies: dict[str, Path], ext: str, normalization: str | None
) -> None:
    branches = FLAT if ext == "csv" else FLAT + JETS
    kw = {"labels": [1], "branches": branches, "normalization": normalization, "shuffle": False}
    root, copy = sequence([root_file], **kw), sequence([copies[ext]], **kw)
    try:
        assert copy.feature_names == root.feature_names and copy.n_events == root.n_events == 1500
        expected, got = epoch(root), epoch(copy)
        if normalization is None:  # the same numbers, every event once
            np.testing.assert_array_equal(got, expected)
            assert np.array_equal(np.sort(got[:, copy.feature_names.index("uid")]), np.arange(1500))
        else:  # statistics summed in other steps (row groups): equal to float32 precision
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    finally:
        root.close()
        copy.close()


def test_cuts_aliases_and_splits_work_alike(root_file: Path, copies: dict[str, Path]) -> None:
    kw: dict[str, Any] = {
        "labels": [1],
        "branches": ["uid", "MET_pt", "HT", "Jet_pt"],
        "cut": "(nJet >= 1) & (MET_pt > 10)",
        "aliases": {"HT": "sum(Jet_pt)"},
        "normalization": None,
        "shuffle": False,
    }
    for split in ("training", "validation"):
        root = sequence([root_file], validation_split=0.3, subset=split, **kw)
        for ext in ("parquet", "jsonl", "avro"):
            copy = sequence([copies[ext]], validation_split=0.3, subset=split, **kw)
            np.testing.assert_allclose(epoch(copy), epoch(root), rtol=1e-6)
            copy.close()
        root.close()


@pytest.mark.parametrize("ext", ["parquet", "jsonl", "avro"])
def test_the_collections_layout_reads_a_copy_like_the_root_file(
    root_file: Path, copies: dict[str, Path], ext: str
) -> None:
    """Per-collection tensors and masks of a copy are those of the ROOT file, event for event."""
    kw = {"labels": [1], "branches": FLAT + JETS, "layout": "collections", "shuffle": False}
    root, copy = sequence([root_file], **kw), sequence([copies[ext]], **kw)
    try:
        assert copy.input_spec == root.input_spec and "Jet_mask" in root.input_spec
        for i in range(len(root)):
            expected, got = root[i][0], copy[i][0]
            assert set(got) == set(expected)
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6, err_msg=name)
    finally:
        root.close()
        copy.close()


def _records_copy(array: ak.Array, path: Path, writer: str) -> Path:
    """``array`` in Parquet with its jets as one column ``Jet`` of lists of records, as awkward or pyarrow write it."""
    flat = {f: array[f] for f in array.fields if not f.startswith("Jet_")}
    if writer == "awkward":
        jets = ak.zip({"pt": array["Jet_pt"], "eta": array["Jet_eta"]})
        ak.to_parquet(ak.zip({**flat, "Jet": jets}, depth_limit=1), path, row_group_size=500)
        return path
    counts = ak.to_numpy(ak.num(array["Jet_pt"]))
    pt, eta = (ak.to_numpy(ak.flatten(array[f"Jet_{f}"])) for f in ("pt", "eta"))
    names = pa.array(np.where(pt > 40, "hard", "soft"))  # a field of strings: no feature
    records = pa.StructArray.from_arrays([pa.array(pt), names, pa.array(eta)], names=["pt", "name", "eta"])
    jets = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32()), records)
    columns = {f: ak.to_numpy(v) for f, v in flat.items()}
    pq.write_table(pa.table({**columns, "Jet": jets}), path, row_group_size=500)
    return path


@pytest.mark.parametrize("writer", ["awkward", "pyarrow"])
def test_a_parquet_column_of_lists_of_records_is_a_jagged_branch_per_field(
    root_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """``Jet: list<struct<pt, eta>>`` reads as ``Jet_pt`` and ``Jet_eta``, as the ROOT file's, in both layouts."""
    path = _records_copy(events(root_file), tmp_path / "records.parquet", writer)
    kinds = {n: k for n, k in inspect_file(FileSource(str(root_file))).kinds.items()}
    if writer == "pyarrow":
        kinds["Jet_name"] = "object"
    assert inspect_file(FileSource(str(path))).kinds == kinds
    reads: list[tuple[str, ...]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self: Any, row_groups: list[int], columns: list[str] | None = None, **kw: Any) -> Any:
        reads.append(tuple(columns or ()))
        return original(self, row_groups, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    for kw in (
        {"branches": FLAT + JETS},
        {"branches": ["uid", "Jet_eta"], "layout": "collections"},
        {"layout": "collections"},  # every branch: the records' strings are skipped
        {},
    ):
        kw = {"labels": [1], "shuffle": False, **kw}
        root = sequence([root_file], **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            copy = sequence([path], **kw)
        skipped = [str(w.message) for w in caught if issubclass(w.category, SkippedBranchWarning)]
        assert skipped == (
            ["skipping branches that cannot become numeric features: Jet_name (object)"]
            if writer == "pyarrow" and "branches" not in kw
            else []
        )
        try:
            assert copy.feature_names == root.feature_names and copy.input_spec == root.input_spec
            for i in range(len(root)):
                expected, got = root[i][0], copy[i][0]
                for name in expected if isinstance(expected, dict) else [None]:
                    e, g = (expected[name], got[name]) if name else (expected, got)
                    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6, err_msg=str(name))
        finally:
            root.close()
            copy.close()
    assert reads and all("Jet" not in c and not any(p.endswith(".name") for p in c) for c in reads)  # fields alone


def test_a_sequence_mixes_root_and_parquet_files_in_every_chunk(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "a.root", 1200, seed=1, file_id=0, basket=300)
    other = write_tree(tmp_path / "b.root", 1800, seed=2, file_id=1, basket=300)
    parquet = write_copy(events(other), tmp_path / "b.parquet", row_group=700)
    seq = sequence([root, parquet], branches=FLAT + JETS, shuffle=True, chunk_size=500)
    try:
        counts = seq.reader.plan.counts
        assert (counts > 0).all() and counts.sum(axis=0).tolist() == [1200, 1800]  # in proportion to entries
        for _ in range(2):
            got = np.sort(uids(seq))
            assert np.array_equal(got, np.concatenate([np.arange(1200), ID + np.arange(1800)]))
    finally:
        seq.close()


def test_worker_processes_serve_every_event_of_mixed_formats_once(tmp_path: Path) -> None:
    paths = [write_tree(tmp_path / f"f{i}.root", 700 + 100 * i, seed=i, file_id=i) for i in range(3)]
    files = [paths[0], write_copy(events(paths[1]), tmp_path / "f1.parquet", 200), paths[2]]
    files[2] = write_copy(events(paths[2]), tmp_path / "f2.jsonl")
    seq = sequence(files, labels=[1, 0, 1], branches=FLAT + JETS, workers=2, chunk_size=300)
    try:
        expected = np.concatenate([i * ID + np.arange(700 + 100 * i) for i in range(3)])
        assert np.array_equal(np.sort(uids(seq)), expected)
        assert seq.pipeline.workers is not None and len(seq.pipeline.workers.groups) == 2
    finally:
        seq.close()


def test_parquet_reads_each_row_group_once_and_only_the_columns_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_copy(events(write_tree(tmp_path / "a.root", 2000, seed=1)), tmp_path / "a.parquet", row_group=300)
    reads: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self: Any, row_groups: list[int], columns: list[str] | None = None, **kw: Any) -> Any:
        reads.append((tuple(row_groups), tuple(columns or ())))
        return original(self, row_groups, columns=columns, **kw)

    seq = sequence([path], labels=[1], branches=["uid", "Jet_pt"], chunk_size=450, shuffle=True)
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    try:
        for _ in range(2):
            reads.clear()
            assert np.array_equal(np.sort(uids(seq)), np.arange(2000))
            groups = sorted(g for r, _ in reads for g in r)
            assert groups == list(range(7))  # each of the 7 row groups once per epoch
            assert {c for _, c in reads} == {("uid", "Jet_pt")}
    finally:
        seq.close()


def test_remote_parquet_over_http(tmp_path: Path) -> None:
    import importlib.util

    from servers import HTTPServer, unavailable

    if importlib.util.find_spec("aiohttp") is None:
        unavailable("aiohttp is not installed: pip install 'mlaas4hep[http]'")
    write_copy(events(write_tree(tmp_path / "a.root", 900, seed=1)), tmp_path / "a.parquet", row_group=200)
    server = HTTPServer(tmp_path)
    server.start()
    try:
        seq = sequence([server.url("a.parquet")], labels=[1], branches=["uid", "Jet_pt"], chunk_size=300)
        try:
            assert seq.specs.files[0].path == server.url("a.parquet")
            assert np.array_equal(np.sort(uids(seq)), np.arange(900))
        finally:
            seq.close()
    finally:
        server.stop()


# -- conversion ------------------------------------------------------------------------------------
def test_a_text_file_is_converted_once_and_again_when_it_changes(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({"x": float(i), "j": [1.0] * (i % 3)}) + "\n" for i in range(50)))
    calls: list[Path] = []
    convert = mlaas4hep.inputs.formats.convert._convert
    monkeypatch.setattr(
        mlaas4hep.inputs.formats.convert, "_convert", lambda s, p, t: (calls.append(t), convert(s, p, t))
    )
    source = FileSource(str(path))
    assert inspect_file(source).entries == 50 and inspect_file(source).entries == 50
    assert len(calls) == 1 and calls[0].parent == cache and calls[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]  # nothing written beside the file
    with path.open("a") as f:
        f.write(json.dumps({"x": 50.0, "j": []}) + "\n")
    assert inspect_file(source).entries == 51 and len(calls) == 2


def test_a_csv_rewritten_with_the_same_size_and_time_is_converted_again(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(100)))
    before = path.stat()

    def first(path: Path) -> list[float]:
        return RootSequence([str(path)], branches=["x"], normalization=None, batch_size=10, chunk_size=100)[0][0][
            :3, 0
        ].tolist()

    assert first(path) == [0, 1, 2]
    path.write_text("x,y\n" + "".join(f"{(i + 3) % 10 + 10 * (i // 10)},{i % 2}\n" for i in range(100)))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert first(path) == [3, 4, 5]


def test_a_csv_edited_during_training_is_noticed_at_the_next_read(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(1000)))
    seq = RootSequence([str(path)], labels="y", batch_size=100, chunk_size=200, shuffle=False, prefetch=0)
    seq[0]
    path.write_text("x,y\n" + "".join(f"{i + 5000},{i % 2}\n" for i in range(1000)))
    with pytest.raises(FileAccessError, match=r"e\.csv was modified after the sequence was made"):
        for i in range(len(seq)):
            seq[i]
    seq.close()


def test_blocks_widen_integers_to_floats_and_keep_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines parsed in many small blocks: a column of integers that later holds floats becomes float64."""
    monkeypatch.setattr(mlaas4hep.inputs.formats.lines, "BLOCK_BYTES", 120)
    rows = [{"x": i, "j": [] if i < 30 else [i, i + 0.5]} for i in range(40)] + [{"x": 40.25, "j": [1]}]
    path = tmp_path / "w.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open_table(FileSource(str(path))) as table:
        assert table.entries == 41 and {b.name: (b.kind, b.dtype) for b in table.branches()} == {
            "x": ("flat", "float64"),
            "j": ("jagged", "float64"),
        }
        assert len(table.blocks(["x"])) - 1 > 5  # a row group per block
        arrays = table.arrays(["x", "j"], 0, 41)
    assert ak.to_list(arrays["x"]) == [r["x"] for r in rows] and ak.to_list(arrays["j"]) == [r["j"] for r in rows]
    csv = tmp_path / "w.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{i % 2 == 0}\n".lower() for i in range(40)) + "0.5,true\n")
    with open_table(FileSource(str(csv))) as table:
        assert table.arrays(["a"], 0, 41)["a"].tolist() == [*range(40), 0.5]


def test_an_empty_csv_column_is_not_read_when_excluded_and_skipped_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column with no value on any line (a CSV's empty fields, a JSON field null everywhere) is an "empty" branch."""
    monkeypatch.setattr(mlaas4hep.inputs.formats.lines, "BLOCK_BYTES", 64)  # the column is empty in every block
    csv = tmp_path / "e.csv"
    _lines(csv, ["x,e,y", *(f"{i},,{i % 2}" for i in range(200))])
    jsonl = tmp_path / "e.jsonl"
    _lines(jsonl, [json.dumps({"x": i, "e": None, "y": i % 2}) for i in range(200)])
    kw: dict[str, Any] = {"labels": "y", "normalization": None, "batch_size": 200, "chunk_size": 200, "shuffle": False}
    for path in (csv, jsonl):
        assert inspect_file(FileSource(str(path))).kinds == {"x": "flat", "e": "empty", "y": "flat"}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # excluded: not even a warning
            seq = RootSequence([str(path)], exclude=["e"], **kw)
        assert seq.feature_names == ["x"] and np.array_equal(np.asarray(seq[0][0])[:, 0], np.arange(200))
        seq.close()
        with pytest.warns(SkippedBranchWarning, match=r"\be \(empty\)"):
            seq = RootSequence([str(path)], **kw)
        assert seq.feature_names == ["x"]
        seq.close()
    _lines(jsonl, [json.dumps({"x": i, "e": None if i < 150 else i}) for i in range(200)])  # null on some lines only
    with pytest.raises(BranchError, match=r"'e' is null on line 1 of .*e\.jsonl'"):
        inspect_file(FileSource(str(jsonl)))


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_integers_beyond_int64_keep_every_level(tmp_path: Path, ext: str) -> None:
    """1,000 distinct integers around 2**63 (as a uint64 ROOT branch holds them) give 1,000 distinct features."""
    values = [2**63 + int(k) for k in np.random.default_rng(1).permutation(1000)]
    path = tmp_path / f"big.{ext}"
    if ext == "csv":
        _lines(path, ["x,y", *(f"{v},{i % 2}" for i, v in enumerate(values))])
    else:
        _lines(path, [json.dumps({"x": v, "j": [v, v - 500], "y": i % 2}) for i, v in enumerate(values)])
    with open_table(FileSource(str(path))) as table:
        assert {b.name: b.dtype for b in table.branches()}["x"] == "uint64"
        assert table.arrays(["x"], 0, 1000)["x"].tolist() == values  # every value exact
    seq = RootSequence([str(path)], labels="y", normalization="minmax", batch_size=1000, chunk_size=1000, shuffle=False)
    try:
        x = np.asarray(seq[0][0])
        assert seq.specs["x"].dtype == "uint64" and x.shape == (1000, 1 if ext == "csv" else 3)
        for column in range(x.shape[1]):  # x, and the jagged j_0, j_1 of JSON lines
            assert len(np.unique(x[:, column])) == 1000, seq.feature_names[column]
        assert x[:, 0].min() == 0.0 and x[:, 0].max() == 1.0
    finally:
        seq.close()


def test_blocks_of_integers_widen_to_uint64_or_name_what_no_type_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small integers in the first blocks and integers beyond int64 further down: uint64, every value exact."""
    monkeypatch.setattr(mlaas4hep.inputs.formats.lines, "BLOCK_BYTES", 100)
    values = [*range(20), *(2**63 + k for k in range(20))]
    path = tmp_path / "late.csv"
    _lines(path, ["x", *map(str, values)])
    with open_table(FileSource(str(path))) as table:
        assert len(table.blocks(["x"])) > 3 and table.branches()[0].dtype == "uint64"
        assert table.arrays(["x"], 0, 40)["x"].tolist() == values
    for name, rows, culprit in [
        ("signed.csv", ["x", *map(str, range(-50, 0)), *(str(2**63 + k) for k in range(20))], r"holds int64 .* uint64"),
        ("halves.jsonl", [*(json.dumps({"x": 2**60 + k}) for k in range(20)), '{"x": 0.5}'], r"holds int64 .* double"),
    ]:
        _lines(tmp_path / name, rows)
        with pytest.raises(BranchError, match=rf"'x' of .*{name}' {culprit}"):
            inspect_file(FileSource(str(tmp_path / name)))


def test_integers_float64_holds_exactly_stay_float64(tmp_path: Path) -> None:
    """Whole numbers beyond int64 that float64 holds exactly (-1 beside 2**63, 1e20) are no error, nor floats."""
    path = tmp_path / "exact.jsonl"
    _lines(path, ['{"x": -1, "f": 0.5}', f'{{"x": {2**63}, "f": 1e20}}', f'{{"x": 1, "f": {2**70}}}'])
    with open_table(FileSource(str(path))) as table:
        assert [b.dtype for b in table.branches()] == ["float64", "float64"]
        assert table.arrays(["x", "f"], 0, 3).tolist() == [
            {"x": -1, "f": 0.5},
            {"x": 2**63, "f": 1e20},
            {"x": 1, "f": 2**70},
        ]


def test_the_first_pass_reads_in_bounded_steps(copies: dict[str, Path]) -> None:
    with open_table(FileSource(str(copies["parquet"]))) as table:
        steps = [len(a) for a in table.iterate(["uid", "Jet_pt"], 250)]
        assert sum(steps) == 1500 and max(steps) <= 250
        assert [len(a) for a in table.iterate([], "1 MB")] and sum(len(a) for a in table.iterate([], "1 MB")) == 1500
    specs = SpecBuilder([copies["parquet"]], branches=["MET_pt"], step_size="1 kB").build()
    reference = SpecBuilder([copies["parquet"]], branches=["MET_pt"]).build()
    assert specs["MET_pt"].count == reference["MET_pt"].count == 1500
    assert specs["MET_pt"].mean == pytest.approx(reference["MET_pt"].mean, rel=1e-12)


# -- missing packages ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "hidden", "extra"),
    [("a.parquet", "pyarrow.parquet", "parquet"), ("a.csv", "pyarrow", "formats"), ("a.avro", "fastavro", "avro")],
)
def test_a_missing_package_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, hidden: str, extra: str
) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, hidden, None)  # importing it now fails, as if it were not installed
    with pytest.raises(FileAccessError, match=rf"pip install 'mlaas4hep\[{extra}\]'"):
        inspect_file(FileSource(str(path)))


# -- bad input -------------------------------------------------------------------------------------
def _lines(path: Path, rows: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in rows))


@pytest.fixture(scope="module")
def bad(root_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of good copies and every kind of bad file in each format."""
    d = tmp_path_factory.mktemp("bad")
    array = events(root_file)
    write_copy(array, d / "a.parquet")
    write_copy(events(write_tree(d / "b.root", 800, seed=2, file_id=1)), d / "b.parquet")
    write_copy(array[["uid", "MET_pt", "nPV"]], d / "nojets.parquet")
    write_copy(ak.with_field(array, ak.Array([str(v) for v in array["MET_pt"]]), "MET_pt"), d / "strings.parquet")
    write_copy(ak.with_field(array, array["Jet_pt"], "MET_pt"), d / "jagged.parquet")
    met = pa.array([*np.arange(700.0), None, *np.arange(799.0)])
    pq.write_table(pa.table({"uid": np.arange(1500), "MET_pt": met}), d / "nulls.parquet", row_group_size=500)
    (d / "text.parquet").write_text("this is not a Parquet file\n" * 10)
    whole = (d / "a.parquet").read_bytes()
    (d / "half.parquet").write_bytes(whole[: len(whole) // 2])
    good = '{"x": 1.5, "j": [1.0, 2.0]}'
    _lines(d / "malformed.jsonl", [good, good, '{"x": 3.5, "j": [1.0', good])
    _lines(d / "lacks.jsonl", [good, '{"x": 2.5}', good])
    _lines(d / "types.jsonl", [good, good, '{"x": "high", "j": []}'])
    _lines(d / "listed.jsonl", [good, '{"x": 2.5, "j": 3.0}'])
    _lines(d / "null.jsonl", [good, good, good, '{"x": null, "j": []}'])
    _lines(d / "array.json", [f"[{good},", f"{good}]"])
    _lines(d / "fields.csv", ["x,y", "1,2", "3,4", "5", "7,8"])
    _lines(d / "novalue.csv", ["x,y", "1,2", ",4", "5,6"])
    _lines(d / "string.csv", ["x,y", "1,2", "3,4", "5,6", "abc,8"])
    (d / "empty.csv").write_text("")
    _lines(d / "header.csv", ["x,y"])
    _lines(d / "twice.csv", ["x,y,x", "1,2,3", "4,5,6"])
    _lines(d / "emptycol.csv", ["x,e,y", "1,,2", "3,,4"])
    _lines(d / "lateempty.csv", ["x,e", "1,", "2,", "3,5"])
    _lines(d / "huge.csv", ["x,y", *(f"{2**64 + k},{k}" for k in range(3))])
    _lines(d / "signed.jsonl", ['{"x": -1}', *(json.dumps({"x": 2**63 + k}) for k in range(1, 4))])
    (d / "text.avro").write_text("not Avro\n")
    nullable = {"name": "x", "type": ["null", "double"]}
    schema = fastavro.parse_schema({"type": "record", "name": "E", "fields": [nullable]})
    with (d / "null.avro").open("wb") as f:
        fastavro.writer(f, schema, [{"x": 1.0}, {"x": 2.0}, {"x": None}, {"x": 4.0}])
    union = {"type": "record", "name": "E", "fields": [{"name": "x", "type": ["int", "string"]}]}
    with (d / "union.avro").open("wb") as f:
        fastavro.writer(f, fastavro.parse_schema(union), [{"x": 1}, {"x": "a"}])
    whole = write_copy(array, d / "full.avro").read_bytes()
    (d / "half.avro").write_bytes(whole[: len(whole) // 2])
    return d


def _bad(d: Path, files: list[str], **kw: Any) -> RootSequence:
    kw = {"labels": [1, 0][: len(files)], "batch_size": 20, "chunk_size": 100, **kw}
    return RootSequence([str(d / f) for f in files], **kw)


# (id, call, expected error, what the message must name)
CASES: list[tuple[str, Callable[[Path], Any], type[Exception], str]] = [
    ("Parquet missing", lambda d: _bad(d, ["a.parquet", "nope.parquet"]), FileAccessError, "nope.parquet"),
    ("not Parquet", lambda d: _bad(d, ["text.parquet"]), FileAccessError, r"text\.parquet.*not a readable Parquet"),
    ("Parquet truncated", lambda d: _bad(d, ["half.parquet"]), FileAccessError, "half.parquet"),
    (
        "column missing in one file",
        lambda d: _bad(d, ["a.parquet", "nojets.parquet"]),
        BranchError,
        r"nojets\.parquet lacks.*Jet_pt",
    ),
    (
        "column of strings in one file",
        lambda d: _bad(d, ["a.parquet", "strings.parquet"]),
        BranchError,
        r"'MET_pt' is flat \(float32\) in .*a\.parquet' but string \(string\) in .*strings\.parquet",
    ),
    (
        "column jagged in one file",
        lambda d: _bad(d, ["b.parquet", "jagged.parquet"]),
        BranchError,
        r"'MET_pt' is flat .*b\.parquet' but jagged .*jagged\.parquet",
    ),
    (
        "Parquet null value",
        lambda d: _bad(d, ["nulls.parquet"], labels=[1]),
        BranchError,
        r"'MET_pt' of .*nulls\.parquet' has a missing value \(null\) at entry 700 \(row group 1\)",
    ),
    ("JSON line malformed", lambda d: _bad(d, ["malformed.jsonl"]), FileAccessError, r"line 3 of .*malformed\.jsonl"),
    (
        "JSON line lacks a field",
        lambda d: _bad(d, ["lacks.jsonl"]),
        BranchError,
        r"line 2 of .*lacks\.jsonl' lacks the fields \['j'\]",
    ),
    (
        "JSON field type differs between lines",
        lambda d: _bad(d, ["types.jsonl"]),
        BranchError,
        r"'x' of .*types\.jsonl' is a string on line 3 and a number on line 1",
    ),
    (
        "JSON list and number",
        lambda d: _bad(d, ["listed.jsonl"]),
        BranchError,
        r"'j' of .*listed\.jsonl' is a number on line 2 and a list of numbers on line 1",
    ),
    ("JSON null", lambda d: _bad(d, ["null.jsonl"]), BranchError, r"'x' is null on line 4 of .*null\.jsonl"),
    ("JSON array, not lines", lambda d: _bad(d, ["array.json"]), FileAccessError, r"line 1 of .*array\.json' is not"),
    (
        "CSV line of other fields",
        lambda d: _bad(d, ["fields.csv"]),
        FileAccessError,
        r"line 4 of .*fields\.csv. has 1 field,",
    ),
    ("CSV value missing", lambda d: _bad(d, ["novalue.csv"]), BranchError, r"'x' has no value on line 3 of"),
    (
        "CSV string among numbers",
        lambda d: _bad(d, ["string.csv"]),
        BranchError,
        r"'x' of .*string\.csv' holds a string on line 5",
    ),
    ("CSV empty", lambda d: _bad(d, ["empty.csv"]), FileAccessError, r"empty\.csv' is empty"),
    (
        "CSV column named twice",
        lambda d: _bad(d, ["twice.csv"]),
        BranchError,
        r"twice\.csv' names the column 'x' twice",
    ),
    ("CSV header only", lambda d: _bad(d, ["header.csv"]), TreeError, r"header\.csv' has 0 entries"),
    (
        "CSV empty column selected",
        lambda d: _bad(d, ["emptycol.csv"], labels="y", branches=["x", "e"]),
        BranchError,
        r"'e' \(empty\) in .*emptycol\.csv",
    ),
    (
        "CSV column empty on its first lines only",
        lambda d: _bad(d, ["lateempty.csv"], labels=[1]),
        BranchError,
        r"'e' has no value on line 2 of .*lateempty\.csv",
    ),
    (
        "CSV integers beyond uint64",
        lambda d: _bad(d, ["huge.csv"], labels=[1]),
        BranchError,
        r"'x' of .*huge\.csv' holds integers from 18446744073709551616 to 18446744073709551618",
    ),
    (
        "JSON negative integers beside integers beyond int64",
        lambda d: _bad(d, ["signed.jsonl"], labels=[1]),
        BranchError,
        r"'x' of .*signed\.jsonl' holds integers from -1 to 9223372036854775811",
    ),
    ("not Avro", lambda d: _bad(d, ["text.avro"]), FileAccessError, r"text\.avro' is not a readable Avro"),
    ("Avro null", lambda d: _bad(d, ["null.avro"]), BranchError, r"'x' is null in record 3 of .*null\.avro"),
    ("Avro union", lambda d: _bad(d, ["union.avro"]), BranchError, r"'x' is a union of \['int', 'string'\]"),
    ("Avro truncated", lambda d: _bad(d, ["half.avro"]), FileAccessError, r"half\.avro' after record"),
    (
        "CSV from a server",
        lambda d: RootSequence(["http://127.0.0.1:9/e.csv"], labels=[1]),
        FileAccessError,
        r"e\.csv'.*local paths only",
    ),
    (
        "unknown format",
        lambda d: RootSequence([FileSource(str(d / "a.parquet"), format="hdf5")], labels=[1]),
        ParameterError,
        "format 'hdf5'",
    ),
]

BUILTIN = {FileAccessError: FileNotFoundError, TreeError: KeyError, BranchError: KeyError, ParameterError: ValueError}


@pytest.mark.parametrize(("call", "error", "culprit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(bad: Path, call: Callable[[Path], Any], error: type[Exception], culprit: str) -> None:
    with pytest.raises(error, match=culprit) as info:
        call(bad)
    assert isinstance(info.value, MLaaS4HEPError) and isinstance(info.value, BUILTIN[error])


def test_a_type_that_differs_between_blocks_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks parse alone: a string far down a column of numbers is found on its own line."""
    monkeypatch.setattr(mlaas4hep.inputs.formats.lines, "BLOCK_BYTES", 64)
    path = tmp_path / "late.csv"
    _lines(path, ["x,y", *(f"{i},{i}" for i in range(60)), "7,seven"])
    with pytest.raises(BranchError, match=r"'y' of .*late\.csv' holds a string on line 62 \('seven'\)"):
        inspect_file(FileSource(str(path)))


def test_a_parquet_fixed_size_list_of_numbers_is_a_fixed_array(tmp_path):
    """A fixed_size_list<double, 3> column is a fixed-size array, as ROOT's double[3]: N columns (nested: C order)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 500
    p3 = np.random.default_rng(1).normal(size=(n, 3))
    m = np.arange(n * 4, dtype=np.int32).reshape(n, 2, 2)
    fixed = pa.FixedSizeListArray.from_arrays
    pq.write_table(
        pa.table({"p3": fixed(pa.array(p3.ravel()), 3), "m": fixed(fixed(pa.array(m.ravel()), 2), 2)}),
        tmp_path / "a.parquet",
    )
    seq = RootSequence([tmp_path / "a.parquet"], labels=[1], normalization=None, shuffle=False, batch_size=100)
    assert seq.feature_names == ["m_0", "m_1", "m_2", "m_3", "p3_0", "p3_1", "p3_2"]
    x = seq[0][0]
    np.testing.assert_allclose(x[:, 4:], p3[:100].astype(np.float32))
    np.testing.assert_array_equal(x[:, :4], m[:100].reshape(100, 4))
    values = pa.array([1.0, None, 3.0, 4.0, 5.0, 6.0])
    pq.write_table(pa.table({"p3": fixed(values, 3)}), tmp_path / "null.parquet")
    with pytest.raises(BranchError, match=r"column 'p3' of .*null.parquet' has a missing value \(null\) at entry 0"):
        RootSequence([tmp_path / "null.parquet"], labels=[1], batch_size=2)
