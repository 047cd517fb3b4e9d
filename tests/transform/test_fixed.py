"""Fixed-size array branches (``double[3]``) in both layouts: ``N`` columns, normalized per branch, never padded."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas4hep import BranchError, BranchSpec, JaggedFlattener, ParameterError, Specs
from mlaas4hep.transform.tensors import CollectionsFlattener


def _events() -> ak.Array:
    """Five events: a flat ``met``, a fixed ``p3`` of 3 numbers (a NaN and an inf), a 2x2 ``m``, a jagged ``Jet_pt``."""
    p3 = np.array([[1, 2, 3], [4, np.nan, 6], [7, 8, 9], [10, 11, np.inf], [13, 14, 15]], np.float64)
    m = np.arange(20, dtype=np.int32).reshape(5, 2, 2) - 3
    return ak.Array(
        {
            "met": np.array([5.0, 6.0, 7.0, 8.0, 9.0], np.float32),
            "p3": p3,
            "m": m,
            "Jet_pt": ak.Array([[1.0, 2.0], [], [3.0], [4.0, 5.0], [6.0]]),
        }
    )


def _specs(events: ak.Array) -> Specs:
    jets = events["Jet_pt"]
    return Specs(
        {
            "met": BranchSpec.from_values("met", "flat", "float32", ak.to_numpy(events["met"])),
            "p3": BranchSpec.from_values("p3", "fixed[3]", "float64", ak.to_numpy(events["p3"])),
            "m": BranchSpec.from_values("m", "fixed[2][2]", "int32", ak.to_numpy(events["m"])),
            "Jet_pt": BranchSpec.from_values(
                "Jet_pt", "jagged", "float64", ak.to_numpy(ak.flatten(jets)), ak.to_numpy(ak.num(jets))
            ),
        }
    )


def test_a_fixed_array_is_n_columns_normalized_per_branch_with_non_finite_values_masked():
    events = _events()
    flattener = JaggedFlattener(_specs(events))
    names = flattener.feature_names
    assert names == ["m_0", "m_1", "m_2", "m_3", "met", "p3_0", "p3_1", "p3_2", "Jet_pt_0", "Jet_pt_1"]
    assert flattener.num_features == 10 and flattener.widths == {"m": 4, "met": 1, "p3": 3, "Jet_pt": 2}
    assert flattener.columns("p3") == slice(5, 8)
    X, M = flattener.transform(events)
    p3 = np.array([[1, 2, 3], [4, np.nan, 6], [7, 8, 9], [10, 11, np.inf], [13, 14, 15]])
    expected = (p3 - 1.0) / 14.0  # min and max over every finite number of the branch: 1 and 15
    finite = np.isfinite(expected)
    for j in range(3):
        column = X[:, names.index(f"p3_{j}")]
        np.testing.assert_allclose(column[finite[:, j]], expected[finite[:, j], j], rtol=1e-6)
        assert (column[~finite[:, j]] == 0).all()  # the pad value, as a flat branch's NaN
        assert M[:, names.index(f"p3_{j}")].tolist() == finite[:, j].tolist()
    assert X[1, names.index("p3_1")] == 0 and not M[1, names.index("p3_1")] and not M[3, names.index("p3_2")]
    # the 2x2 array in C order: m_1 is m[:, 0, 1], m_2 is m[:, 1, 0]
    m = ak.to_numpy(events["m"]).astype(np.float64)
    np.testing.assert_allclose(X[:, 1], (m[:, 0, 1] + 3) / 19, rtol=1e-6)
    np.testing.assert_allclose(X[:, 2], (m[:, 1, 0] + 3) / 19, rtol=1e-6)
    assert M[:, :8].sum() == 5 * 8 - 2  # nothing of a fixed array is padding: only its NaN and inf
    # undone exactly, NaN where masked
    raw = flattener.inverse_transform(X, M)
    np.testing.assert_allclose(raw[:, 5:8][finite], p3[finite], rtol=1e-6)
    assert np.isnan(raw[:, 5:8][~finite]).all()


def test_standard_normalization_of_a_fixed_array_and_a_pad_value():
    events = _events()
    specs = _specs(events)
    flattener = JaggedFlattener(specs, normalization="standard", pad_value=-9.0)
    X, _ = flattener.transform(events)
    spec = specs["p3"]
    p3 = ak.to_numpy(events["p3"])
    np.testing.assert_allclose(X[:, 6][[0, 2, 3, 4]], (p3[[0, 2, 3, 4], 1] - spec.mean) / spec.std, rtol=1e-6)
    assert X[1, 6] == -9.0 and X[3, 7] == -9.0


def test_shuffled_rows_pieces_and_a_reused_buffer_keep_the_arrays_together():
    events = _events()
    flattener = JaggedFlattener(_specs(events))
    X, _ = flattener.transform(events)
    order = np.array([3, 0, 4, 1, 2])
    Xs, _ = flattener.transform([events[:2], events[2:]], order)
    np.testing.assert_array_equal(Xs, X[order])
    buffer = np.full((5, 10), 7.0, np.float32)
    flattener.transform(events, out=buffer)
    np.testing.assert_array_equal(buffer, X)


def test_an_array_of_another_size_is_refused_by_name():
    events = _events()
    flattener = JaggedFlattener(_specs(events), branches=["p3", "met"])
    wider = {"met": events["met"], "p3": ak.Array(np.zeros((5, 4)))}
    with pytest.raises(BranchError, match=r"'p3' holds 4 numbers per event, the specs say 3"):
        flattener.transform(wider)
    ragged = {"met": events["met"], "p3": ak.Array([[1.0, 2.0, 3.0], [1.0]] + [[1.0, 2.0, 3.0]] * 3)}
    with pytest.raises(BranchError, match=r"'p3' does not hold 3 number\(s\) per event"):
        flattener.transform(ragged)
    with pytest.raises(ParameterError, match="not jagged branches"):  # a fixed array is never capped
        JaggedFlattener(_specs(events), max_lengths={"p3": 2})


def test_in_the_collections_layout_a_fixed_array_is_event_features():
    events = _events()
    specs = _specs(events)
    flat = JaggedFlattener(specs, normalization="standard")
    collections = CollectionsFlattener(specs, normalization="standard", file_branches=["nJet"])
    assert collections.input_spec == {
        "event": ((8,), "float32"),
        "Jet": ((2, 1), "float32"),
        "Jet_mask": ((2,), "float32"),
    }
    order = collections.feature_order
    assert order["event"] == ["m_0", "m_1", "m_2", "m_3", "met", "p3_0", "p3_1", "p3_2"] and order["Jet"] == ["Jet_pt"]
    x = collections.tensors(events)
    X, _ = flat.transform(events)
    names = flat.feature_names
    np.testing.assert_array_equal(x["event"], X[:, [names.index(b) for b in order["event"]]])
    np.testing.assert_array_equal(x["Jet"][:, :, 0], X[:, [names.index("Jet_pt_0"), names.index("Jet_pt_1")]])
    assert x["Jet_mask"].tolist() == [[1, 1], [0, 0], [1, 0], [1, 1], [1, 0]]
    only_fixed = CollectionsFlattener(specs, ["p3"])  # no collection at all: the event input alone
    assert only_fixed.input_spec == {"event": ((3,), "float32")}
