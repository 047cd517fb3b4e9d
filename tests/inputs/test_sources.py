"""Input files (mlaas4hep.inputs.sources): naming them, opening them once, and what their branches hold."""

from __future__ import annotations

import os

import awkward as ak
import numpy as np
import uproot

from mlaas4hep import FileSource
from mlaas4hep.inputs.contents import inspect_file
from mlaas4hep.inputs.formats.root import opened_tree
from mlaas4hep.inputs.sources import parse_sources


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
