"""No silent wrong data: every case ends in the correct result or a clear error, raised early.

The classes of docs/pages/reliability.md: non-finite labels, targets and
weights; the same file twice; leaks between the parts of a split; no feature
left; stale or edited specs; files that change after construction; the user's
specs file never overwritten; weak answers made clear; errors inside ``fit``.
Precision lives in transform/test_flatten.py, remote waits in inputs/test_remote.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

keras = pytest.importorskip("keras")

from mlaas4hep import (  # noqa: E402
    BranchError,
    DataWarning,
    FileAccessError,
    MLaaS4HEPError,
    ParameterError,
    RootSequence,
    SpecBuilder,
    Specs,
    SpecsError,
    SpecsMismatchWarning,
)
from mlaas4hep.errors import reraise  # noqa: E402


def _write(path: Path, data: dict[str, Any], tree: str = "Events") -> Path:
    with uproot.recreate(path) as f:
        f.mktree(tree, {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f[tree].extend(data)
    return path


def _events(n: int, seed: int, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {
        "uid": np.arange(n, dtype=np.int64) + 1000 * seed,
        "x": rng.normal(10, 2, n),
        "w": rng.random(n) + 0.5,
        "lab": (rng.random(n) < 0.5).astype(np.int32),
        "target": np.ones(n),
        "Jet_pt": ak.unflatten(rng.exponential(30, 2 * n), np.full(n, 2)),
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("reliable")
    _write(d / "a.root", _events(200, 1))
    _write(d / "b.root", _events(300, 2))
    bad = _events(100, 3)
    bad["lab"] = bad["lab"].astype(np.float64)
    bad["lab"][[5, 17]] = np.nan
    bad["w"][[7]] = np.inf
    bad["target"] = np.where(np.arange(100) == 9, -np.inf, 1.0)
    _write(d / "nan.root", bad)
    _write(d / "empty_jets.root", _events(50, 4, empty=ak.Array([[] for _ in range(50)], with_name=None)))
    return d


def _seq(d: Path, files: list[str] | None = None, **kw: Any) -> RootSequence:
    files = files or ["a.root", "b.root"]
    kw = {"labels": [1, 0][: len(files)], "batch_size": 20, "chunk_size": 100, **kw}
    return RootSequence([str(d / f) for f in files], **kw)


# (id, call, error, what the message must say)
CASES: list[tuple[str, Callable[[Path], Any], type[Exception], str]] = [
    # non-finite labels, targets and weights
    ("labels NaN", lambda d: _seq(d, labels=[float("nan"), 0]), ParameterError, "labels must be finite"),
    ("labels inf", lambda d: _seq(d, labels=[1, float("inf")]), ParameterError, "labels must be finite"),
    (
        "label branch NaN",
        lambda d: _seq(d, ["a.root", "nan.root"], labels="lab"),
        ParameterError,
        r"label branch 'lab' .* 2 of the events of .*nan\.root.* entry 5.*drop_nonfinite",
    ),
    (
        "weight branch inf",
        lambda d: _seq(d, ["a.root", "nan.root"], weights="w"),
        ParameterError,
        r"weights branch 'w' .* 1 of the events .*nan\.root.* entry 7",
    ),
    (
        "target branch -inf",
        lambda d: _seq(d, ["nan.root"], labels=None, targets="target"),
        ParameterError,
        r"targets branch 'target' .* entry 9",
    ),
    (
        "weight alias inf",
        lambda d: _seq(d, ["a.root", "b.root"], weights="iw", aliases={"iw": "1 / (uid - 1000)"}, exclude=["uid"]),
        ParameterError,
        r"weights branch 'iw' .*a\.root.* entry 0",
    ),
    # the same file twice
    ("same path twice", lambda d: _seq(d, ["a.root", "a.root"]), ParameterError, r"files 0 and 1 .*a\.root"),
    (
        "file and file:Events",
        lambda d: RootSequence([str(d / "a.root"), f"{d / 'a.root'}:Events"], labels=[1, 0]),
        ParameterError,
        "same file and tree",
    ),
    (
        "relative and absolute path",
        lambda d: RootSequence([str(d / "a.root"), os.path.relpath(d / "a.root")], labels=[1, 0]),
        ParameterError,
        "same file and tree",
    ),
    # no feature left
    (
        "only an always-empty jagged branch",
        lambda d: _seq(d, ["empty_jets.root"], branches=["empty"]),
        BranchError,
        r"no feature left.*'empty'",
    ),
    ("max_lengths 0", lambda d: _seq(d, branches=["Jet_pt"], max_lengths=0), BranchError, r"'Jet_pt'.*width 0"),
    # weak answers made clear
    ("string labels", lambda d: _seq(d, labels=["sig", "bkg"]), ParameterError, "give each class a number"),
    ("workers 0", lambda d: _seq(d, workers=0), ParameterError, "workers must be a positive integer"),
    ("workers -1", lambda d: _seq(d, workers=-1), ParameterError, "workers"),
    ("workers 1.5", lambda d: _seq(d, workers=1.5), ParameterError, "workers"),
    ("seed 1.7", lambda d: _seq(d, seed=1.7), ParameterError, "seed must be a non-negative integer"),
    ("seed negative", lambda d: _seq(d, seed=-3), ParameterError, "seed"),
    (
        "validation_split a string",
        lambda d: _seq(d, validation_split="0.2", subset="training"),
        ParameterError,
        "validation_split must be a number",
    ),
    ("shuffle a string", lambda d: _seq(d, shuffle="yes"), ParameterError, "shuffle must be True"),
    # the order that pairs files with labels
    (
        "a set of files",
        lambda d: RootSequence({str(d / "a.root"), str(d / "b.root")}, labels=[1, 0]),
        ParameterError,
        r"files must be in an order .* got a set",
    ),
    ("a set of labels", lambda d: _seq(d, labels={1, 0}), ParameterError, r"labels must be in an order .* got a set"),
    ("a tab-separated file", lambda d: RootSequence([str(d / "x.tsv")]), ParameterError, r"x\.tsv' is a tab-separated"),
    ("a gzip-compressed CSV", lambda d: RootSequence([str(d / "x.csv.gz")]), ParameterError, "gzip-compressed file"),
    (
        "files a mapping, labels too",
        lambda d: RootSequence({str(d / "a.root"): 1, str(d / "b.root"): 0}, labels=[1, 0]),
        ParameterError,
        "files is a mapping of file to label",
    ),
    ("timeout zero", lambda d: _seq(d, timeout=0), ParameterError, "timeout"),
    ("prefetch negative", lambda d: _seq(d, prefetch=-1), ParameterError, "prefetch"),
    (
        "a cut that removes every event",
        lambda d: _seq(d, cut="x > 1e9"),
        ParameterError,
        r"the cut 'x > 1e9' keeps 0 events",
    ),
]


@pytest.mark.parametrize(("call", "error", "culprit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(d: Path, call: Callable[[Path], Any], error: type[Exception], culprit: str) -> None:
    with pytest.raises(error, match=culprit) as info:
        call(d)
    assert isinstance(info.value, MLaaS4HEPError)


def test_drop_nonfinite_leaves_those_events_out(d: Path) -> None:
    seq = _seq(d, ["a.root", "nan.root"], labels="lab", weights="w", drop_nonfinite=True, normalization=None)
    assert seq.n_events == 200 + 100 - 3  # entries 5 and 17 (label) and 7 (weight) of nan.root
    col = seq.feature_names.index("uid")
    uids = []
    for i in range(len(seq)):
        x, y, w = seq[i]
        assert np.isfinite(y).all() and np.isfinite(w).all()
        uids.append(x[:, col])
    served = set(np.concatenate(uids).astype(int).tolist())
    assert served == set(range(1000, 1200)) | set(range(3000, 3100)) - {3005, 3007, 3017}


def test_a_nonfinite_label_that_the_cut_removes_is_no_error(d: Path) -> None:
    seq = _seq(d, ["a.root", "nan.root"], labels="lab", cut="(uid != 3005) & (uid != 3017)")
    assert seq.n_events == 298


def test_a_symbolic_link_to_a_listed_file_is_the_same_file(d: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.root"
    link.symlink_to(d / "a.root")
    with pytest.raises(ParameterError, match=r"link\.root"):
        RootSequence([str(d / "a.root"), str(link)], labels=[1, 0])


# -- the parts of one split ------------------------------------------------------------------------------
SPLIT = {"batch_size": 20, "chunk_size": 100, "validation_split": 0.2, "seed": 1}


@pytest.mark.parametrize(
    ("other", "name"),
    [({"validation_split": 0.3}, "validation_split"), ({"nevts": 300}, "nevts"), ({"cut": "x > 9"}, "cut")],
)
def test_a_validation_part_split_otherwise_than_its_training_part_is_refused(
    d: Path, other: dict[str, Any], name: str
) -> None:
    train = _seq(d, subset="training", **SPLIT)
    with pytest.raises(ParameterError, match=rf"{name}=.*could overlap"):
        _seq(d, subset="validation", specs=train.specs, **{**SPLIT, **other})
    val = _seq(d, subset="validation", specs=train.specs, **SPLIT)  # the same split: accepted, disjoint
    col = train.feature_names.index("uid")
    ids = [set(np.concatenate([s[i][0][:, col] for i in range(len(s))]).tolist()) for s in (train, val)]
    assert not ids[0] & ids[1]


def test_the_split_is_recorded_in_a_specs_file_too(d: Path, tmp_path: Path) -> None:
    cache = tmp_path / "specs.json"
    _seq(d, subset="training", specs=cache, **SPLIT)
    assert json.loads(cache.read_text())["split"]["validation_split"] == 0.2
    with pytest.raises(ParameterError, match=r"validation_split=0\.5"):
        _seq(d, subset="validation", specs=cache, **{**SPLIT, "validation_split": 0.5})
    test = {**SPLIT, "test_split": 0.1}
    with pytest.raises(ParameterError, match=r"test_split=0\.1"):
        _seq(d, subset="test", specs=cache, **test)


# -- stale or edited specs, files that change ------------------------------------------------------------
def test_a_file_rewritten_in_place_is_not_described_by_old_specs(d: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "f.root", _events(100, 5))
    cache = tmp_path / "specs.json"
    SpecBuilder([path]).build(cache)
    data = _events(100, 5)
    data["x"] = data["x"] * 50  # same size, new values
    before = path.stat()
    _write(path, data)
    os.utime(path, (before.st_atime + 10, before.st_mtime + 10))
    with pytest.warns(SpecsMismatchWarning, match="rebuilding specs"):
        seq = RootSequence([str(path)], labels=[1], specs=cache, batch_size=20, chunk_size=100)
    x = np.concatenate([seq[i][0] for i in range(len(seq))])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_a_file_with_the_same_size_and_uuid_but_a_newer_time_is_another_file() -> None:
    """A file rewritten in place by a tool that keeps its size and ROOT UUID: the modification time tells."""
    from mlaas4hep.specs.values import FileSpec

    before = FileSpec("/data/f.root", "Events", 100, size=5000, mtime=1.0, uuid="u-1")
    now = FileSpec("/data/f.root", "Events", 100, size=5000, mtime=2.0, uuid="u-1")
    assert before.mismatch(now) == "/data/f.root was modified after the specs were made"
    assert before.mismatch(before) is None


@pytest.mark.parametrize(("field", "value", "error", "match"), [
    ("kind", "jagged", BranchError, "'x' is flat, unlike in the specs"),
    ("dtype", "float32", SpecsError, r"'x' is float64 in the file, float32 in the specs"),
])  # fmt: skip
def test_edited_specs_are_refused(
    d: Path, tmp_path: Path, field: str, value: str, error: type[Exception], match: str
) -> None:
    cache = tmp_path / "specs.json"
    SpecBuilder([d / "a.root"]).build(cache)
    data = json.loads(cache.read_text())
    data["branches"]["x"][field] = value
    cache.write_text(json.dumps(data))
    with pytest.raises(error, match=match):
        RootSequence([str(d / "a.root")], labels=[1], specs=cache)


@pytest.mark.parametrize("change", ["more entries", "other values"])
def test_a_file_rewritten_after_construction_is_noticed_at_the_next_read(tmp_path: Path, change: str) -> None:
    path = _write(tmp_path / "g.root", _events(400, 6))
    seq = RootSequence([str(path)], labels=[1], batch_size=50, chunk_size=100, shuffle=False, prefetch=0)
    seq[0]
    seq.close()  # the file is reopened for the next read
    data = _events(500 if change == "more entries" else 400, 7)
    _write(path, data)
    os.utime(path, (1e9, 1e9 + (1 if change == "other values" else 0)))
    with pytest.raises(FileAccessError, match=r"g\.root.*(500 entries|modified after the sequence was made)"):
        for i in range(len(seq)):
            seq[i]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_removed_mid_epoch_is_named_as_removed(tmp_path: Path, workers: int) -> None:
    """Not uproot's own failure on it ("'FileNotFoundError' object is not subscriptable")."""
    from conftest import write_tree

    paths = [write_tree(tmp_path / f"{n}.root", 3000, seed=i, file_id=i, basket=500) for i, n in enumerate("rs")]
    kw = {"batch_size": 100, "chunk_size": 1000, "shuffle": False, "prefetch": 0, "cache_chunks": 1}
    seq = RootSequence([str(p) for p in paths], labels=[1, 0], workers=workers, **kw)
    try:
        seq[0]
        paths[0].unlink()
        with pytest.raises(FileAccessError, match=r"r\.root:Events was removed or moved after the sequence was made"):
            for i in range(len(seq)):
                seq[i]
    finally:
        seq.close()


def test_a_read_error_is_tried_again_once_the_file_is_back(d: Path, tmp_path: Path) -> None:
    path = tmp_path / "back.root"
    shutil.copy2(d / "b.root", path)
    seq = RootSequence([str(path)], labels=[1], batch_size=50, chunk_size=100, shuffle=False, prefetch=0)
    seq[0]
    seq.close()
    path.rename(tmp_path / "away.root")
    with pytest.raises(FileAccessError, match=r"back\.root"):
        seq[2]
    (tmp_path / "away.root").rename(path)  # back, unchanged (a move keeps its modification time)
    assert len(seq[2][0]) == 50
    assert len(np.concatenate([seq[i][0] for i in range(len(seq))])) == 300


# -- the user's files are never overwritten -------------------------------------------------------------
def test_the_original_specs_file_is_left_as_it_is(d: Path, tmp_path: Path) -> None:
    original = tmp_path / "global-specs.json"
    text = json.dumps({"jdim": {"Jet_pt": 2}, "minv": {"x": 0.0, "Jet_pt": 0.0}, "maxv": {"x": 20.0, "Jet_pt": 99.0},
                       "fkeys": ["x"], "jkeys": ["Jet_pt"], "nans": {}})  # fmt: skip
    original.write_text(text)
    with pytest.warns(SpecsMismatchWarning, match=r"global-specs\.mlaas4hep\.json"):
        seq = _seq(d, specs=original)
    assert original.read_text() == text
    beside = Specs.load(tmp_path / "global-specs.mlaas4hep.json")
    assert beside.files and beside.names == seq.specs.names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _seq(d, specs=original)  # the second time: the specs beside it are reused, silently


def test_the_original_specs_min_max_normalize_a_ready_specs_object() -> None:
    from mlaas4hep import JaggedFlattener

    specs = Specs.from_dict({"jdim": {}, "minv": {"x": 10.0}, "maxv": {"x": 20.0}, "fkeys": ["x"], "jkeys": []})
    X, _ = JaggedFlattener(specs).transform({"x": np.array([10.0, 15.0, 20.0])})
    np.testing.assert_allclose(X[:, 0], [0.0, 0.5, 1.0])
    with pytest.raises(SpecsError, match="normalization='minmax'"):
        JaggedFlattener(specs, normalization="standard")


# -- data that trains, but not as meant -----------------------------------------------------------------
def test_a_branch_with_no_finite_value_is_warned_about(tmp_path: Path) -> None:
    path = _write(tmp_path / "nan_only.root", _events(50, 8, dead=np.full(50, np.nan)))
    with pytest.warns(DataWarning, match=r"'dead' holds no finite value \(50 NaN"):
        RootSequence([str(path)], labels=[1], batch_size=10, chunk_size=50)


def test_a_very_long_list_that_sets_every_event_s_width_is_warned_about(tmp_path: Path) -> None:
    lengths = np.full(20_000, 2)
    lengths[7] = 100_000  # one event with a 100,000-long list
    data = {"x": np.arange(20_000.0), "J_pt": ak.unflatten(np.ones(int(lengths.sum())), lengths)}
    path = _write(tmp_path / "long.root", data)
    with pytest.warns(DataWarning, match=r"'J_pt' padded to 100000 .* at most 2.*length_quantile"):
        seq = RootSequence([str(path)], labels=[1], batch_size=100, chunk_size=10_000)
    seq.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capped = RootSequence([str(path)], labels=[1], batch_size=100, chunk_size=10_000, length_quantile=0.999)
    assert capped.feature_names[-2:] == ["J_pt_0", "J_pt_1"]


def test_a_tree_in_a_directory(tmp_path: Path) -> None:
    path = _write(tmp_path / "dir.root", _events(60, 9), tree="sub/Events")
    seq = RootSequence([f"{path}:sub/Events"], labels=[1], batch_size=20, chunk_size=60)
    assert seq.n_events == 60


# -- the command line -------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from mlaas4hep.workflow.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_specs_written_to_a_missing_directory_is_a_clear_error(d: Path) -> None:
    result = _cli("specs", str(d / "a.root"), "-o", "/nonexistent/dir/s.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write the specs to '/nonexistent/dir/s.json'" in result.stderr


def test_a_model_file_with_a_syntax_error_names_the_file_and_line(d: Path, tmp_path: Path) -> None:
    model = tmp_path / "broken_model.py"
    model.write_text("import keras\n\ndef model(idim)\n    return None\n")
    code = "import sys; from mlaas4hep.workflow.cli import workflow_main; sys.exit(workflow_main())"
    files = f"{d / 'a.root'},{d / 'b.root'}"
    args = ["--files", files, "--labels", "1,0", "--model", str(model)]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "broken_model.py' line 3" in result.stderr


# -- errors inside fit -----------------------------------------------------------------------------------
def _breaking(d: Path, tmp_path: Path) -> tuple[RootSequence, Path]:
    """Two files, only one open at a time: every chunk opens each again, so one moved away fails the next read."""
    tmp_path.mkdir(exist_ok=True)
    paths = [tmp_path / "breaks.root", tmp_path / "other.root"]
    shutil.copy2(d / "b.root", paths[0])
    shutil.copy2(d / "a.root", paths[1])
    seq = RootSequence(
        [str(p) for p in paths], labels=[1, 0], batch_size=20, chunk_size=100, prefetch=0, max_open_files=1, seed=2
    )
    return seq, paths[0]


def _model(idim: int) -> Any:
    model = keras.Sequential([keras.Input((idim,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")
    return model


class _Break(keras.callbacks.Callback):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if batch == 1:
            self.path.rename(self.path.with_suffix(".away"))


def test_a_read_error_inside_fit_is_raised_as_the_library_s(d: Path, tmp_path: Path) -> None:
    seq, path = _breaking(d, tmp_path)
    with pytest.raises(FileAccessError, match=r"breaks\.root") as info, reraise(seq):
        _model(seq.num_features).fit(seq, epochs=1, verbose=0, callbacks=[_Break(path)])
    assert seq.last_error is info.value
    seq2, path2 = _breaking(d, tmp_path / "second")
    with pytest.raises(FileAccessError, match=r"breaks\.root"), seq2:
        _model(seq2.num_features).fit(seq2, epochs=1, verbose=0, callbacks=[_Break(path2)])


def test_files_given_as_a_mapping_to_their_labels_are_paired_in_order(d: Path) -> None:
    seq = RootSequence({str(d / "b.root"): 1, str(d / "a.root"): 0}, batch_size=20, chunk_size=100, normalization=None)
    assert seq.shuffle  # labelled: a training set, shuffled by default
    col = seq.feature_names.index("uid")
    for i in range(len(seq)):
        x, y = seq[i]
        np.testing.assert_array_equal(y, np.where(x[:, col] >= 2000, 1, 0))  # b.root's uids are 2000...


def test_a_copy_of_a_root_file_under_another_name_is_refused(d: Path, tmp_path: Path) -> None:
    """The same events under another name: a copy keeps the file's UUID, which names it as the same file."""
    copy = shutil.copy(d / "a.root", tmp_path / "a_copy.root")
    with pytest.raises(ParameterError, match=r"copies of one ROOT file .*a\.root.*a_copy\.root"):
        RootSequence([str(d / "a.root"), str(copy)], labels=[1, 0])


def test_a_copy_of_a_parquet_file_is_refused_and_a_file_of_the_same_size_is_not(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    for name, shift in (("a", 0.0), ("b", 1.0)):  # the same size, other numbers
        table = pa.table({"x": np.arange(100, dtype=np.float64) + shift})
        pq.write_table(
            table, tmp_path / f"{name}.parquet", compression="none", use_dictionary=False, write_statistics=False
        )
    assert (tmp_path / "a.parquet").stat().st_size == (tmp_path / "b.parquet").stat().st_size
    copy = shutil.copy(tmp_path / "a.parquet", tmp_path / "c.parquet")
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert RootSequence(files, labels=[1, 0], batch_size=20, chunk_size=100).n_events == 200
    with pytest.raises(ParameterError, match=r"copies of one file \(the same bytes\).*a\.parquet.*c\.parquet"):
        RootSequence([files[0], str(copy)], labels=[1, 0], batch_size=20, chunk_size=100)


def test_a_sequence_without_labels_serves_the_files_in_order(d: Path) -> None:
    """Made for predict: model.predict(seq) lines up with the entries, file after file."""
    seq = RootSequence([str(d / "a.root"), str(d / "b.root")], batch_size=30, chunk_size=100, normalization=None)
    assert seq.shuffle is False
    col = seq.feature_names.index("uid")
    uids = np.concatenate([seq[i][0][:, col] for i in range(len(seq))]).astype(int)
    chunks = [range(1000, 1200), range(2000, 2300)]  # each chunk holds 40 of a.root's then 60 of b.root's
    expected = [
        u for k in range(5) for part in chunks for u in list(part)[k * len(part) // 5 : (k + 1) * len(part) // 5]
    ]
    np.testing.assert_array_equal(uids, expected)
    assert (
        _seq(d).shuffle and RootSequence([str(d / "a.root")], targets="x", batch_size=20, chunk_size=100).shuffle
    )  # labels or targets: trained on, shuffled by default
    assert RootSequence([str(d / "a.root")], shuffle=True, batch_size=20, chunk_size=100).shuffle


def test_the_keys_of_a_dict_are_files_in_an_order(d: Path) -> None:
    labels = {str(d / "a.root"): 1, str(d / "b.root"): 0}
    assert RootSequence(labels.keys(), list(labels.values()), batch_size=20, chunk_size=100).n_events == 500


def test_distinct_root_files_with_a_null_uuid_are_no_copies(tmp_path: Path) -> None:
    """ROOT writes a null UUID for reproducible files (``?reproducible=``): no identity there."""
    import uuid

    for name, seed in (("a", 1), ("b", 2)):
        with uproot.recreate(tmp_path / f"{name}.root", uuid_function=lambda: uuid.UUID(int=0)) as f:
            f.mktree("Events", {"x": np.float64})
            f["Events"].extend({"x": np.random.default_rng(seed).normal(size=50)})
    files = [str(tmp_path / "a.root"), str(tmp_path / "b.root")]
    assert RootSequence(files, labels=[1, 0], batch_size=10, chunk_size=50).n_events == 100


def test_shuffle_none_is_the_default_with_or_without_labels(d: Path) -> None:
    files = [str(d / "a.root"), str(d / "b.root")]
    assert RootSequence(files, shuffle=None, batch_size=20, chunk_size=100).shuffle is False
    assert RootSequence(files, [1, 0], shuffle=None, batch_size=20, chunk_size=100).shuffle is True


def test_bytes_paths_and_boolean_labels(d: Path) -> None:
    seq = RootSequence([bytes(d / "a.root"), bytes(d / "b.root")], labels=[True, False], batch_size=20, chunk_size=100)
    assert seq.n_events == 500 and seq.prepared.labels == (1.0, 0.0)


def test_an_unwritable_cache_is_named_with_the_variable_that_moves_it(tmp_path: Path, monkeypatch) -> None:
    from mlaas4hep.inputs.formats import convert

    csv = tmp_path / "e.csv"
    csv.write_text("x,y\n1,2\n3,4\n")
    monkeypatch.setenv(convert.CACHE_ENV, str(tmp_path / "cache"))

    def denied(*args: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(convert, "_convert", denied)
    with pytest.raises(FileAccessError, match=r"cannot write the Parquet copy of .*e\.csv.* set MLAAS4HEP_CACHE"):
        RootSequence([str(csv)], batch_size=1, chunk_size=2)


def test_the_index_pandas_stores_in_a_parquet_file_is_no_feature(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"x": np.arange(10.0), "__index_level_0__": np.arange(100, 110)})
    meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": []}
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()}), tmp_path / "df.parquet")
    seq = RootSequence([str(tmp_path / "df.parquet")], batch_size=5, chunk_size=10)
    assert seq.feature_names == ["x"]


def test_a_validation_part_whose_branches_name_the_weights_branch_takes_the_training_specs(d: Path) -> None:
    """As documented: the same arguments and specs=train.specs, with branches naming the weights branch."""
    kw = {"labels": [1, 0], "branches": ["x", "w"], "weights": "w", "validation_split": 0.2, "seed": 1}
    kw.update(batch_size=20, chunk_size=100)
    files = [str(d / "a.root"), str(d / "b.root")]
    train = RootSequence(files, subset="training", **kw)
    val = RootSequence(files, subset="validation", specs=train.specs, **kw)
    assert train.feature_names == val.feature_names == ["x"]
