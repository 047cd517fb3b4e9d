from __future__ import annotations

import json
import os

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import BranchError, SkippedBranchWarning, SpecBuilder, Specs, SpecsError, SpecsMismatchWarning


def test_statistics_match_numpy(two_files):
    specs = SpecBuilder(two_files, step_size=300).build()
    met = np.concatenate([uproot.open(f)["Events"]["MET_pt"].array(library="np") for f in two_files]).astype(np.float64)
    spec = specs["MET_pt"]
    assert spec.kind == "flat" and spec.dtype == "float32"
    assert spec.count == 3000 and spec.nonfinite == 0
    assert spec.min == pytest.approx(met.min()) and spec.max == pytest.approx(met.max())
    assert spec.mean == pytest.approx(met.mean()) and spec.std == pytest.approx(met.std())
    jets = ak.concatenate([uproot.open(f)["Events"]["Jet_pt"].array() for f in two_files])
    jet = specs["Jet_pt"]
    counts = ak.to_numpy(ak.num(jets))
    assert jet.kind == "jagged"
    assert jet.max_length == counts.max()
    assert jet.count == counts.sum()
    assert jet.length_quantile(0.5) == int(np.quantile(counts, 0.5, method="inverted_cdf"))
    assert jet.length_quantile(1.0) == counts.max()
    assert list(specs.length_hist for specs in [jet]) == [tuple(np.bincount(counts).tolist())]
    assert [f.entries for f in specs.files] == [1200, 1800]
    assert specs.n_events == 3000
    # the default exclude drops run; flat sorted, then jagged sorted
    assert "run" not in specs.branches
    assert specs.names == ["MET_pt", "flag", "nJet", "nPV", "uid", "Jet_eta", "Jet_pt"]


def test_step_size_does_not_change_the_result(two_files):
    a = SpecBuilder(two_files, step_size=100).build()
    b = SpecBuilder(two_files, step_size=5000).build()
    for name in a.names:
        assert a[name].count == b[name].count
        assert a[name].mean == pytest.approx(b[name].mean)
        assert a[name].m2 == pytest.approx(b[name].m2)
        assert a[name].length_hist == b[name].length_hist


def test_include_globs_and_exclude(two_files):
    specs = SpecBuilder(two_files, branches=["Jet_*", "MET_pt"], exclude=["Jet_eta"]).build()
    assert specs.names == ["MET_pt", "Jet_pt"]
    with pytest.raises(BranchError, match="nope"):
        SpecBuilder(two_files, branches=["nope"]).build()
    with pytest.raises(BranchError, match="no numeric branch left"):
        SpecBuilder(two_files, exclude=["*"]).build()


def test_an_exclude_that_matches_no_branch_nor_alias_is_an_error(two_files):
    """A typo in ``exclude`` left the branch a feature, silently; the default identifiers may be missing."""
    with pytest.raises(BranchError, match=r"exclude 'met_pt' matches no branch of any of the 2 files .*'MET_pt'"):
        SpecBuilder(two_files, exclude=["met_pt"]).build()
    with pytest.raises(BranchError, match=r"exclude 'Muon_\*' \(and 1 more: \['nope'\]\) matches no branch"):
        SpecBuilder(two_files, exclude=["Jet_eta", "Muon_*", "nope"]).build()
    specs = SpecBuilder(two_files, exclude=["event", "luminosityBlock", "Jet_*", "HT"], aliases={"HT": "sum(Jet_pt)"})
    assert specs.build().names == ["MET_pt", "flag", "nJet", "nPV", "run", "uid"]


def test_json_round_trip(two_files, tmp_path):
    specs = SpecBuilder(two_files).build()
    specs.save(tmp_path / "specs.json")
    again = Specs.load(tmp_path / "specs.json")
    assert again.names == specs.names
    assert again.files == specs.files
    for name in specs.names:
        assert again[name] == specs[name]
    assert again.summary() == specs.summary()


def test_loads_the_original_global_specs(tmp_path):
    original = {
        "jdim": {"Jet_pt": 12},
        "minv": {"Jet_pt": 0.0, "MET_pt": 1.5},
        "maxv": {"Jet_pt": 900.0, "MET_pt": 300.0},
        "fkeys": ["MET_pt"],
        "jkeys": ["Jet_pt"],
        "nans": {"Jet_pt": 0.0, "MET_pt": -0.005},
        "events": {"a.root": 100},
    }
    path = tmp_path / "global-specs.json"
    path.write_text(json.dumps(original))
    specs = Specs.load(path)
    assert specs.flat == ["MET_pt"] and specs.jagged == ["Jet_pt"]
    assert specs["Jet_pt"].max_length == 12
    assert specs["MET_pt"].min == 1.5 and specs["MET_pt"].max == 300.0
    assert specs.num_features == 13


def test_cache_is_reused_and_rebuilt_when_files_change(tmp_path, make_tree):
    files = [make_tree(tmp_path / "a.root", 100, seed=1), make_tree(tmp_path / "b.root", 100, seed=2)]
    cache = tmp_path / "specs.json"
    first = SpecBuilder(files).build(cache=cache)
    assert cache.exists()
    mtime = os.stat(cache).st_mtime_ns
    second = SpecBuilder(files).build(cache=cache)
    assert os.stat(cache).st_mtime_ns == mtime  # reused, not rewritten
    assert second.names == first.names
    make_tree(files[1], 150, seed=3)  # the file changes
    with pytest.warns(SpecsMismatchWarning, match="b.root"):
        third = SpecBuilder(files).build(cache=cache)
    assert third.n_events == 250
    with pytest.warns(SpecsMismatchWarning, match="selection"):
        SpecBuilder(files, branches=["MET_pt"]).build(cache=cache)


def test_corrupt_specs_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(SpecsError, match=r"bad\.json"):
        Specs.load(path)


def test_hzz_jagged_and_bool_branches(hzz):
    specs = SpecBuilder(f"{hzz}:events").build()
    assert specs["Jet_ID"].kind == "jagged" and specs["Jet_ID"].dtype == "bool"
    assert specs["NJet"].kind == "flat"
    assert len(specs.jagged) == 23 and len(specs.flat) == 28
    assert specs.n_events == 2421


def test_zmumu_string_branch_is_skipped_with_one_warning(zmumu):
    with pytest.warns(SkippedBranchWarning, match=r"Type \(string\)") as record:
        specs = SpecBuilder(f"{zmumu}:events").build()
    assert len([w for w in record if issubclass(w.category, SkippedBranchWarning)]) == 1
    assert "Type" not in specs.branches and specs.skipped == {"Type": "string"}
    with pytest.raises(BranchError, match="Type"):
        SpecBuilder(f"{zmumu}:events", branches=["Type", "M"]).build()


def test_doubly_jagged_and_string_in_rntuple_are_skipped(tmp_path):
    with uproot.recreate(tmp_path / "rn.root") as f:
        f["Events"] = {
            "x": np.array([1.0, 2.0, np.nan], np.float32),
            "dj": ak.Array([[[1.0], [2.0, 3.0]], [], [[4.0]]]),
            "s": ak.Array(["a", "bb", "c"]),
        }
    with pytest.warns(SkippedBranchWarning, match=r"dj \(doubly-jagged\), s \(string\)"):
        specs = SpecBuilder(tmp_path / "rn.root").build()
    assert specs.names == ["x"]
    assert specs["x"].nonfinite == 1 and specs["x"].count == 2 and specs["x"].max == 2.0


def test_second_build_in_a_session_reuses_the_first_pass(tmp_path, make_tree, monkeypatch):
    files = [make_tree(tmp_path / "m1.root", 80, seed=11), make_tree(tmp_path / "m2.root", 90, seed=12)]
    first = SpecBuilder(files).build()
    scans = []
    monkeypatch.setattr(SpecBuilder, "_scan", lambda self, infos: scans.append(self) or first)
    again = SpecBuilder(files).build()
    assert again is first and scans == []
    SpecBuilder(files, branches=["MET_pt"]).build()  # another selection: a new first pass
    assert len(scans) == 1
