"""Preparing the data (mlaas4hep.stream.prepare): one pass over the files, one frozen value, and the bugs it fixed."""

from __future__ import annotations

import pickle

import awkward as ak
import numpy as np
import pytest
import uproot

import mlaas4hep.inputs.formats.root
from mlaas4hep import BranchError, SpecBuilder
from mlaas4hep.options import Options
from mlaas4hep.stream.prepare import PreparedData, prepare


def _prepare(files, labels=(1, 0), **options) -> PreparedData:
    return prepare(files, list(labels) if labels is not None else None, Options(**options))


def test_a_dataset_is_frozen_picklable_and_describes_the_subset(two_files):
    dataset = _prepare(two_files, chunk_size=500, validation_split=0.2, subset="validation", seed=1)
    assert dataset.ranges == ((960, 1200), (1440, 1800)) and dataset.n_events == 600
    assert dataset.entries == (1200, 1800) and dataset.plan.n_chunks == 2
    assert dataset.options.shuffle is False  # validation is served in order
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.ranges == dataset.ranges and copy.flattener.feature_names == dataset.flattener.feature_names
    with pytest.raises(AttributeError):
        dataset.ranges = ()  # type: ignore[misc]


def test_with_cached_specs_each_file_is_opened_once(two_files, tmp_path, monkeypatch):
    cache = tmp_path / "specs.json"
    _prepare(two_files, specs=cache)
    opened = []
    original = mlaas4hep.inputs.formats.root.open_tree

    def counting(source, *args):
        opened.append(source.path)
        return original(source, *args)

    monkeypatch.setattr(mlaas4hep.inputs.formats.root, "open_tree", counting)  # every ROOT file is opened there
    _prepare(two_files, specs=cache)
    assert sorted(opened) == sorted(str(f) for f in two_files)


def test_an_alias_named_in_branches_is_the_only_feature(two_files):
    """``branches=["HT"]`` with ``HT`` an alias used to give every branch of the files."""
    aliases = {"HT": "sum(Jet_pt)"}
    dataset = _prepare(two_files, branches=["HT"], aliases=aliases)
    assert dataset.flattener.feature_names == ["HT"]
    both = _prepare(two_files, branches=["MET_pt", "HT"], aliases=aliases)
    assert both.flattener.feature_names == ["HT", "MET_pt"]
    reader = dataset.reader()
    chunk = reader.read(0)
    reader.close()
    piece = chunk.pieces[0]
    expected = ak.to_numpy(ak.sum(uproot.open(two_files[0])["Events"]["Jet_pt"].array(entry_stop=len(piece["HT"])), 1))
    np.testing.assert_allclose(piece["HT"], expected)


def test_balancing_classes_by_a_weight_alias(two_files):
    """``balance_classes=True`` with ``weights=`` an alias used to fail with awkward's FieldNotFoundError."""
    dataset = _prepare(
        two_files,
        weights="w",
        aliases={"w": "MET_pt / 10"},
        balance_classes=True,
        chunk_size=1000,
        allow_leaks=["MET_pt"],
    )
    reader = dataset.reader()
    totals = np.zeros(2)
    for k in range(len(reader)):
        chunk = reader.read(k)
        y, w = dataset.outputs.extract(chunk.pieces, chunk.file_index, chunk.labels)
        totals += np.bincount(y.astype(int), weights=w, minlength=2)
    reader.close()
    np.testing.assert_allclose(totals[0], totals[1], rtol=1e-5)


def test_exclude_applies_to_ready_specs(two_files):
    """``exclude=[...]`` used to be ignored when ``specs=`` was a ready Specs object."""
    specs = SpecBuilder(two_files, exclude=[]).build()
    assert "run" in specs.names and "MET_pt" in specs.names
    kept = _prepare(two_files, specs=specs)  # no exclude given: the specs as they are
    assert kept.specs.names == specs.names
    narrowed = _prepare(two_files, specs=specs, exclude=["MET_pt", "Jet_*"])
    assert "MET_pt" not in narrowed.specs.names and not narrowed.specs.jagged
    assert "run" in narrowed.specs.names


def test_a_tree_of_unusable_branches_names_them_and_why(tmp_path):
    path = tmp_path / "dj.root"
    with uproot.recreate(path) as f:  # an RNTuple: uproot writes lists of lists there
        f["Events"] = {"dj": ak.Array([[[1.0], [2.0, 3.0]], [], [[4.0]]]), "s": ak.Array(["a", "b", "c"])}
    with pytest.raises(BranchError, match=r"'dj' \(doubly-jagged: lists of lists\).*'s' \(string: strings\)"):
        _prepare([path], labels=[1])
