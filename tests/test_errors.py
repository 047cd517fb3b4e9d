"""Bad input: every case ends in an error (or warning) that names what to fix, raised when the sequence is built."""

from __future__ import annotations

import json
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
    FileAccessError,
    JaggedFlattener,
    MLaaS4HEPError,
    ParameterError,
    RootSequence,
    SkippedBranchWarning,
    SpecBuilder,
    Specs,
    SpecsError,
    SpecsMismatchWarning,
    TreeError,
)

BUILTIN = {
    FileAccessError: FileNotFoundError,
    TreeError: KeyError,
    BranchError: KeyError,
    ParameterError: ValueError,
    SpecsError: ValueError,
}


def _write(path: Path, data: dict[str, Any], tree: str = "Events") -> Path:
    """A TTree holding ``data`` (numpy or awkward arrays)."""
    with uproot.recreate(path) as f:
        f.mktree(tree, {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
        f[tree].extend(data)
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, make_tree) -> Path:
    """One directory with a good file and every kind of bad one."""
    d = tmp_path_factory.mktemp("bad")
    make_tree(d / "a.root", 200, seed=1, file_id=0)
    make_tree(d / "b.root", 300, seed=2, file_id=1)
    (d / "text.root").write_text("this is not a ROOT file\n" * 20)
    full = make_tree(d / "full.root", 300, seed=3).read_bytes()
    (d / "half.root").write_bytes(full[: len(full) // 2])
    (d / "folder.root").mkdir()
    with uproot.recreate(d / "hist.root") as f:
        f["h"] = np.histogram(np.random.default_rng(0).normal(size=100), bins=10)
    with uproot.recreate(d / "empty.root") as f:
        f.mktree("Events", {"uid": np.int64, "MET_pt": np.float32})
    rng = np.random.default_rng(4)
    # lacks the jets and nPV
    _write(d / "nojets.root", {"uid": np.arange(50, dtype=np.int64), "MET_pt": rng.random(50).astype(np.float32)})
    # an RNTuple with a string, a record (object) and a doubly-jagged field
    with uproot.recreate(d / "odd.root") as f:
        f["Events"] = {
            "x": np.arange(6.0),
            "lab": np.arange(6) % 2,
            "name": ak.Array(["a", "b", "c", "d", "e", "f"]),
            "rec": ak.zip({"p": np.arange(6.0), "q": np.arange(6.0)}),
            "dj": ak.Array([[[1.0]], [[2.0, 3.0]], [], [[4.0], []], [[5.0]], []]),
        }
    met = rng.exponential(30.0, 100)
    met[[3, 10, 50]] = [np.nan, np.inf, -np.inf]
    jets = ak.Array([[1.0, np.nan], [np.inf], [], [2.0, 3.0]] * 25)
    _write(
        d / "nan.root",
        {"uid": np.arange(100, dtype=np.int64), "MET_pt": met, "Jet_pt": jets, "const": np.full(100, 7.5)},
    )
    (d / "corrupt.json").write_text('{"format": "mlaas4hep-specs", "branches": {')
    return d


def _seq(d: Path, files: list[str] | None = None, **kw: Any) -> RootSequence:
    files = ["a.root", "b.root"] if files is None else files
    kw = {"labels": [1, 0][: len(files)] if len(files) <= 2 else None, "batch_size": 20, "chunk_size": 100, **kw}
    return RootSequence([str(d / f) for f in files], **kw)


def _other_specs(d: Path) -> Specs:
    return SpecBuilder([d / "a.root", d / "b.root"], branches=["uid", "MET_pt"]).build()


# (id, call, expected error, what the message must name)
CASES: list[tuple[str, Callable[[Path], Any], type[Exception], str]] = [
    # files
    ("missing file", lambda d: _seq(d, ["a.root", "nope.root"]), FileAccessError, "nope.root"),
    (
        "missing file, specs given",
        lambda d: _seq(d, ["a.root", "nope.root"], specs=_other_specs(d)),
        FileAccessError,
        "nope.root",
    ),
    ("not ROOT", lambda d: _seq(d, ["a.root", "text.root"]), FileAccessError, "text.root"),
    ("truncated", lambda d: _seq(d, ["a.root", "half.root"]), FileAccessError, "half.root"),
    (
        "truncated, specs given",
        lambda d: _seq(d, ["a.root", "half.root"], specs=_other_specs(d)),
        FileAccessError,
        "half.root",
    ),
    ("directory", lambda d: _seq(d, ["a.root", "folder.root"]), FileAccessError, "folder.root"),
    # trees
    ("missing tree", lambda d: _seq(d, tree="Tree"), TreeError, "'Tree'"),
    ("missing tree, specs given", lambda d: _seq(d, tree="Tree", specs=_other_specs(d)), TreeError, "'Tree'"),
    ("histogram, not a tree", lambda d: _seq(d, ["a.root", "hist.root:h"]), TreeError, "hist.root"),
    ("empty tree", lambda d: _seq(d, ["a.root", "empty.root"]), TreeError, "empty.root"),
    (
        "empty tree, specs given",
        lambda d: _seq(d, ["a.root", "empty.root"], specs=_other_specs(d)),
        TreeError,
        "empty.root",
    ),
    # branches
    (
        "selected branch missing",
        lambda d: _seq(d, ["a.root", "nojets.root"], branches=["uid", "Jet_pt"]),
        BranchError,
        "nojets.root",
    ),
    (
        "selected branch missing (name)",
        lambda d: _seq(d, ["a.root", "nojets.root"], branches=["uid", "Jet_pt"]),
        BranchError,
        "Jet_pt",
    ),
    (
        "branch sets differ",
        lambda d: _seq(d, ["a.root", "b.root", "nojets.root"]),
        BranchError,
        r"nojets\.root.*lacks.*Jet_pt",
    ),
    (
        "branch from specs missing",
        lambda d: _seq(d, ["a.root", "nojets.root"], specs=SpecBuilder(d / "a.root").build()),
        BranchError,
        r"nojets\.root.*Jet_eta",
    ),
    ("every branch excluded", lambda d: _seq(d, exclude=["*"]), BranchError, "exclude"),
    ("pattern matches nothing", lambda d: _seq(d, branches=["Muon_*"]), BranchError, "Muon_"),
    ("exclude matches nothing", lambda d: _seq(d, exclude=["Muon_*"]), BranchError, r"exclude 'Muon_\*' matches no"),
    ("exclude misspelt", lambda d: _seq(d, exclude=["met_pt"]), BranchError, "exclude 'met_pt'.*did you mean 'MET_pt'"),
    ("allow_leaks names nothing", lambda d: _seq(d, allow_leaks=["Nmuon"]), BranchError, "allow_leaks 'Nmuon'"),
    # labels, targets and weights computed from a feature
    (
        "target computed from a feature",
        lambda d: _seq(d, labels=None, targets="hi", aliases={"hi": "MET_pt > 30"}),
        BranchError,
        r"targets 'hi' is computed from 'MET_pt', which is also a feature.*allow_leaks=\['MET_pt'\]",
    ),
    (
        "label alias computed from a feature",
        lambda d: _seq(d, labels="busy", aliases={"busy": "nPV > 20"}),
        BranchError,
        r"label 'busy' is computed from 'nPV', which is also a feature",
    ),
    (
        "weights computed from a feature",
        lambda d: _seq(d, weights="w", aliases={"w": "1 + 0 * nPV"}),
        BranchError,
        r"weights 'w' is computed from 'nPV', which is also a feature",
    ),
    (
        "label alias gives a list per event",
        lambda d: _seq(d, labels="hard", aliases={"hard": "Jet_pt > 30"}, exclude=["Jet_pt"]),
        BranchError,
        r"label 'hard' = 'Jet_pt > 30' gives a list per event",
    ),
    (
        "string selected",
        lambda d: _seq(d, ["odd.root"], labels=None, branches=["x", "name"]),
        BranchError,
        r"'name' \(string\)",
    ),
    (
        "object selected",
        lambda d: _seq(d, ["odd.root"], labels=None, branches=["x", "rec"]),
        BranchError,
        r"'rec' \(object\)",
    ),
    (
        "doubly-jagged selected",
        lambda d: _seq(d, ["odd.root"], labels=None, branches=["dj"]),
        BranchError,
        r"'dj' \(doubly-jagged\)",
    ),
    # labels
    ("too few labels", lambda d: _seq(d, labels=[1]), ParameterError, "labels"),
    ("too many labels", lambda d: _seq(d, labels=[1, 0, 1]), ParameterError, "3 labels for 2 files"),
    ("label branch missing", lambda d: _seq(d, labels="isSignal"), BranchError, "isSignal"),
    (
        "label branch missing in one file",
        lambda d: _seq(d, ["a.root", "nojets.root"], labels="nPV", branches=["uid"]),
        BranchError,
        r"'nPV'.*nojets\.root",
    ),
    ("label branch jagged", lambda d: _seq(d, labels="Jet_pt"), BranchError, "'Jet_pt'.*jagged"),
    (
        "label branch string",
        lambda d: _seq(d, ["odd.root"], labels="name", branches=["x"]),
        BranchError,
        "'name'.*string",
    ),
    # sizes and split
    ("batch_size > chunk_size", lambda d: _seq(d, batch_size=200, chunk_size=100), ParameterError, "batch_size=200"),
    ("batch_size zero", lambda d: _seq(d, batch_size=0), ParameterError, "batch_size"),
    ("batch_size negative", lambda d: _seq(d, batch_size=-3), ParameterError, "batch_size"),
    ("batch_size float", lambda d: _seq(d, batch_size=2.5), ParameterError, "batch_size"),
    ("chunk_size zero", lambda d: _seq(d, chunk_size=0), ParameterError, "chunk_size"),
    ("chunk_size negative", lambda d: _seq(d, chunk_size=-5), ParameterError, "chunk_size"),
    ("nevts zero", lambda d: _seq(d, nevts=0), ParameterError, "nevts"),
    ("nevts negative", lambda d: _seq(d, nevts=-7), ParameterError, "nevts"),
    ("cache_chunks zero", lambda d: _seq(d, cache_chunks=0), ParameterError, "cache_chunks"),
    (
        "validation_split 1",
        lambda d: _seq(d, validation_split=1.0, subset="training"),
        ParameterError,
        "validation_split",
    ),
    (
        "validation_split negative",
        lambda d: _seq(d, validation_split=-0.1, subset="training"),
        ParameterError,
        "validation_split",
    ),
    (
        "validation_split NaN",
        lambda d: _seq(d, validation_split=float("nan"), subset="training"),
        ParameterError,
        "validation_split",
    ),
    ("unknown subset", lambda d: _seq(d, validation_split=0.2, subset="testing"), ParameterError, "'testing'"),
    ("subset without split", lambda d: _seq(d, subset="validation"), ParameterError, "validation_split"),
    ("split without subset", lambda d: _seq(d, validation_split=0.2), ParameterError, "subset"),
    ("empty validation", lambda d: _seq(d, validation_split=0.001, subset="validation"), ParameterError, "validation"),
    ("unknown normalization", lambda d: _seq(d, normalization="zscore"), ParameterError, "'zscore'"),
    ("no files", lambda d: RootSequence([], labels=[]), ParameterError, "no input files"),
    # specs
    ("corrupt specs JSON", lambda d: _seq(d, specs=d / "corrupt.json"), SpecsError, "corrupt.json"),
    (
        "specs lack selected branches",
        lambda d: _seq(d, branches=["uid", "Jet_pt"], specs=_other_specs(d)),
        SpecsError,
        "Jet_pt",
    ),
    (
        "label branch missing, specs given",
        lambda d: _seq(d, labels="isSignal", specs=_other_specs(d)),
        BranchError,
        "isSignal",
    ),
    (
        "specs with only the label",
        lambda d: _seq(d, labels="MET_pt", specs=_other_specs(d), branches=["MET_pt"]),
        SpecsError,
        "MET_pt",
    ),
]


@pytest.mark.parametrize(("call", "error", "culprit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(d, call, error, culprit):
    with pytest.raises(error, match=culprit) as info:
        call(d)
    assert isinstance(info.value, MLaaS4HEPError)
    assert isinstance(info.value, BUILTIN[error])


def test_truncated_file_found_by_specs_builder_too(d):
    with pytest.raises(FileAccessError, match=r"half\.root.*truncated"):
        SpecBuilder([d / "half.root"]).build()


def test_branch_sets_differ_names_every_file(d):
    with pytest.raises(BranchError) as info:
        SpecBuilder([d / "a.root", d / "nojets.root", d / "b.root", d / "nojets.root"]).build()
    message = str(info.value)
    assert message.count("nojets.root") >= 1 and "a.root" not in message.split("lack")[0].replace("nojets.root", "")
    for name in ("Jet_eta", "Jet_pt", "nJet", "nPV"):
        assert name in message
    assert "common_branches=True" in message


def test_common_branches(d):
    files = [d / "a.root", d / "nojets.root", d / "b.root"]
    specs = SpecBuilder(files, common_branches=True).build()
    assert specs.names == ["MET_pt", "uid"]
    assert specs.n_events == 550
    seq = RootSequence(files, labels=[1, 0, 0], common_branches=True, batch_size=50, chunk_size=100, normalization=None)
    assert seq.feature_names == ["MET_pt", "uid"]
    assert sum(len(seq[i][1]) for i in range(len(seq))) == 550
    with pytest.raises(BranchError, match="no branch common"):
        SpecBuilder([d / "a.root", d / "odd.root"], common_branches=True).build()


def test_unusable_branches_are_skipped_with_a_warning(d):
    with pytest.warns(SkippedBranchWarning, match=r"dj \(doubly-jagged\), name \(string\), rec \(object\)"):
        seq = _seq(d, ["odd.root"], labels="lab", batch_size=3, chunk_size=6, normalization=None, shuffle=False)
    assert seq.feature_names == ["x"]
    x, y = seq[0]
    np.testing.assert_array_equal(x[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(y, [0, 1, 0])
    # a glob that takes in unusable branches skips them too
    with pytest.warns(SkippedBranchWarning, match="name"):
        assert _seq(d, ["odd.root"], labels=None, branches=["*a*"], batch_size=3, chunk_size=6).feature_names == ["lab"]


@pytest.mark.parametrize("normalization", ["minmax", "standard", None])
def test_nan_and_inf_never_reach_the_model(d, normalization):
    files = [d / "nan.root"]
    specs = SpecBuilder(files).build()
    met = specs["MET_pt"]
    assert met.nonfinite == 3 and met.count == 97
    assert np.isfinite([met.min, met.max, met.mean, met.std]).all()
    assert specs["Jet_pt"].nonfinite == 50 and specs["Jet_pt"].max == 3.0
    seq = RootSequence(
        files, labels=[1], specs=specs, batch_size=25, chunk_size=50, normalization=normalization, pad_value=-1.0
    )
    for i in range(len(seq)):
        x, y = seq[i]
        assert np.isfinite(x).all() and np.isfinite(y).all()
    arrays = uproot.open(files[0])["Events"].arrays()
    X, M = seq.flattener.transform(arrays)
    col = seq.flattener.columns("MET_pt").start
    assert not M[[3, 10, 50], col].any() and M[[0, 1, 2], col].all()
    assert (X[[3, 10, 50], col] == -1.0).all()
    jet = seq.flattener.columns("Jet_pt")
    np.testing.assert_array_equal(M[:4, jet], [[True, False], [False, False], [False, False], [True, True]])
    np.testing.assert_array_equal(X[1, jet], [-1.0, -1.0])
    # a constant branch becomes 0 (no division by zero: warnings are errors here)
    const = seq.flattener.columns("const").start
    expected = 7.5 if normalization is None else 0.0
    assert (X[:, const] == expected).all() and M[:, const].all()


def test_flattener_masks_nonfinite_values_in_memory():
    arrays = ak.Array({"a": [1.0, np.nan, 3.0], "j": [[np.inf, 1.0], [], [2.0]]})
    specs = Specs.from_dict(
        {
            "format": "mlaas4hep-specs",
            "branches": {
                "a": {"kind": "flat", "count": 2, "min": 1.0, "max": 3.0},
                "j": {"kind": "jagged", "count": 2, "min": 1.0, "max": 2.0, "length_hist": [1, 1, 1]},
            },
        }
    )
    X, M = JaggedFlattener(specs, pad_value=9.0).transform(arrays)
    assert np.isfinite(X).all()
    np.testing.assert_array_equal(M, [[True, False, True], [False, False, False], [True, True, False]])
    np.testing.assert_array_equal(X, [[0.0, 9.0, 0.0], [9.0, 9.0, 9.0], [1.0, 1.0, 9.0]])


def test_nevts_larger_than_the_data_warns_and_uses_all(d):
    with pytest.warns(UserWarning, match=r"nevts=10000 .* 500 events"):
        seq = _seq(d, nevts=10_000)
    assert seq.n_events == 500


def test_specs_file_from_other_files_is_rebuilt_with_a_warning(d, tmp_path):
    cache = tmp_path / "specs.json"
    SpecBuilder([d / "a.root"]).build(cache=cache)
    with pytest.warns(SpecsMismatchWarning, match=r"specs\.json"):
        seq = _seq(d, specs=cache)
    assert [Path(f.path).name for f in seq.specs.files] == ["a.root", "b.root"]
    assert [Path(f["path"]).name for f in json.loads(cache.read_text())["files"]] == ["a.root", "b.root"]
    # and one made with another selection, too
    with pytest.warns(SpecsMismatchWarning, match="selection"):
        _seq(d, specs=cache, branches=["uid"])


def test_specs_object_from_other_files_is_accepted_when_it_fits(d):
    """Training specs reused for other files (e.g. a test sample): allowed, the files are checked."""
    seq = _seq(d, ["b.root"], specs=SpecBuilder(d / "a.root").build())
    assert seq.n_events == 300


def test_file_broken_after_construction_names_the_file(d, tmp_path):
    """A file that breaks after the sequence is built: the read error names the file."""
    broken = tmp_path / "broken.root"
    broken.write_bytes((d / "b.root").read_bytes())
    seq = _seq(d, ["a.root", str(broken)], shuffle=False)
    broken.write_bytes((d / "b.root").read_bytes()[:2000])
    with pytest.raises(FileAccessError, match=r"broken\.root"):
        for i in range(len(seq)):
            seq[i]


def test_label_branch_is_never_a_feature_even_from_given_specs(d):
    specs = SpecBuilder([d / "a.root", d / "b.root"], branches=["uid", "nPV"]).build()
    seq = _seq(d, labels="nPV", specs=specs)
    assert seq.feature_names == ["uid"]
