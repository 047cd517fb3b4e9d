"""Input files (mlaas4hep.inputs.sources): naming them (patterns too), opening them once, what their branches hold."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import tempfile
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep import FileAccessError, FileSource, ParameterError
from mlaas4hep.inputs.contents import inspect_file
from mlaas4hep.inputs.formats.root import opened_tree
from mlaas4hep.inputs.sources import expand_sources, names_trees, parse_sources, per_entry


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


def test_inspect_file_describes_a_file_without_reading_data(two_files):
    (source,) = parse_sources(two_files[:1])
    info = inspect_file(source)
    stat = os.stat(two_files[0])
    assert info.source == source and info.entries == 1200
    assert (info.size, info.mtime) == (stat.st_size, stat.st_mtime) and info.uuid
    assert info.kinds == {"uid": "flat", "run": "flat", "MET_pt": "flat", "nPV": "flat", "flag": "flat",
                          "nJet": "flat", "Jet_pt": "jagged", "Jet_eta": "jagged"}  # fmt: skip


def test_branch_kinds_say_why_a_branch_is_unusable(tmp_path):
    path = tmp_path / "kinds.root"
    with uproot.recreate(path) as f:  # an RNTuple: uproot writes lists of lists there, not in a TTree
        f["Events"] = {"s": ak.Array(["a", "bc"]), "dj": ak.Array([[[1.0]], [[2.0, 3.0], []]]), "x": np.arange(2.0)}
    kinds = inspect_file(FileSource(str(path))).kinds
    assert kinds == {"s": "string", "dj": "doubly-jagged", "x": "flat"}
    with opened_tree(FileSource(str(path))) as tree:
        assert tree.num_entries == 2


# -- wildcards -------------------------------------------------------------------------------------


def _touch(directory, *names):
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_a_pattern_names_its_files_sorted_each_a_source(tmp_path):
    _touch(tmp_path, "sig_2.root", "sig_10.root", "sig_1.root", "bkg_1.root", "sub/sig_3.root")
    (tmp_path / "sig_dir.root").mkdir()  # a folder is no file
    sources = parse_sources(f"{tmp_path}/sig_*.root:events")
    assert [os.path.basename(s.path) for s in sources] == ["sig_1.root", "sig_10.root", "sig_2.root"]  # by character
    assert {s.tree for s in sources} == {"events"}
    assert [os.path.basename(s.path) for s in parse_sources(tmp_path / "sig_?.root")] == ["sig_1.root", "sig_2.root"]
    deep = parse_sources(f"{tmp_path}/**/sig_[13].root", tree="t")
    assert [s.path for s in deep] == [f"{tmp_path}/sig_1.root", f"{tmp_path}/sub/sig_3.root"]
    assert {s.tree for s in deep} == {"t"}
    groups = expand_sources([f"{tmp_path}/bkg_*.root", f"{tmp_path}/sig_1*.root"])  # the entries keep their order
    assert [[os.path.basename(s.path) for s in g] for g in groups] == [["bkg_1.root"], ["sig_1.root", "sig_10.root"]]


def test_a_pattern_that_matches_nothing_is_an_error_naming_it(tmp_path):
    _touch(tmp_path, "a.root")
    (tmp_path / "b_dir.root").mkdir()
    for pattern in (f"{tmp_path}/x*.root:events", f"{tmp_path}/b*.root"):
        with pytest.raises(FileAccessError, match=re.escape(pattern.removesuffix(":events"))):
            parse_sources(pattern)


def test_a_path_that_exists_is_that_file_brackets_and_all(tmp_path):
    _touch(tmp_path, "run[1].root", "run1.root", "x*.root", "xa.root")
    (literal,) = parse_sources(f"{tmp_path}/run[1].root:events")
    assert literal == FileSource(f"{tmp_path}/run[1].root", "events")
    (star,) = parse_sources(f"{tmp_path}/x*.root")
    assert star.path == f"{tmp_path}/x*.root"
    (pattern,) = parse_sources(f"{tmp_path}/run[0-9].root")  # no such file: a pattern
    assert pattern.path == f"{tmp_path}/run1.root"


def test_relative_patterns_stay_local_or_take_the_redirector(tmp_path, monkeypatch):
    _touch(tmp_path, "a1.root", "a2.root")
    monkeypatch.chdir(tmp_path)
    assert [s.path for s in parse_sources("a*.root", redirector="root://redir/")] == ["a1.root", "a2.root"]
    assert [s.path for s in parse_sources("file://a*.root")] == ["file://a1.root", "file://a2.root"]
    with pytest.raises(FileAccessError, match=re.escape(f"{tmp_path}/store/b*.root")):
        parse_sources("b*.root", redirector=f"{tmp_path}/store")  # a local prefix: patterns there too


def test_uproots_dict_of_trees_and_the_dict_of_labels(tmp_path):
    _touch(tmp_path, "a.root", "b1.root", "b2.root")
    a, b = str(tmp_path / "a.root"), str(tmp_path / "b*.root")
    sources = parse_sources({a: "events", b: "tree", f"{a}:x": None}, tree="Default")
    assert [(os.path.basename(s.path), s.tree) for s in sources] == [
        ("a.root", "events"), ("b1.root", "tree"), ("b2.root", "tree"), ("a.root", "x")]  # fmt: skip
    assert names_trees({a: "events"}) and not names_trees({a: 1, b: np.float32(0.5)}) and not names_trees({a: True})
    assert [s.tree for s in parse_sources({a: 1, b: 0}, tree="t")] == ["t"] * 3  # labels: the caller's
    for mixed in ({a: "events", b: 1}, {a: ["events"]}, {a: 1, b: None}):
        with pytest.raises(ParameterError, match="mapping whose values are"):
            parse_sources(mixed)
    with pytest.raises(ParameterError, match="'x', and its mapping the tree 'events'"):
        parse_sources({f"{a}:x": "events"})
    with pytest.raises(ParameterError, match="names its own tree"):
        parse_sources({FileSource(a): "events"})


def test_a_file_two_patterns_name_is_refused_naming_both(tmp_path):
    _touch(tmp_path, "sig_1.root", "sig_2.root")
    first, second = f"{tmp_path}/sig_*.root", f"{tmp_path}/*_2.root"
    with pytest.raises(ParameterError, match=re.escape(f"files[0] {first!r} and by files[1] {second!r}")):
        parse_sources([first, second])
    with pytest.raises(ParameterError, match=r"files\[0\] .*sig_2.root.* and by files\[1\] .*sig_\*"):
        parse_sources([f"{tmp_path}/sig_2.root", first])
    assert len(parse_sources([first, f"{tmp_path}/sig_*.root:other"])) == 4  # other trees: other events


def test_per_entry_repeats_each_value_for_the_files_of_its_entry():
    assert per_entry([1.0, 0.0], [3, 1], "labels") == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ParameterError, match="got 2 labels for 3 files; give one per file"):
        per_entry([1, 0], [1, 1, 1], "labels")
    with pytest.raises(ParameterError, match="got 4 weights for 2 entries of files, which name 4 files"):
        per_entry([1, 0, 1, 0], [3, 1], "weights")


NAMES = st.text(alphabet="ab1", min_size=1, max_size=3).map(lambda s: s + ".root")


@settings(max_examples=60, deadline=None)
@given(names=st.sets(NAMES, min_size=1, max_size=6), stem=st.text(alphabet="ab1*?", min_size=1, max_size=4))
def test_a_pattern_names_exactly_the_files_that_match_sorted(names, stem):
    pattern = stem + ".root"
    with tempfile.TemporaryDirectory() as d:
        _touch(Path(d), *names)
        expected = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern)) if glob.has_magic(pattern) else [pattern]
        if not expected:
            with pytest.raises(FileAccessError, match=re.escape(pattern)):
                parse_sources(f"{d}/{pattern}")
            return
        assert [os.path.basename(s.path) for s in parse_sources(f"{d}/{pattern}")] == expected
