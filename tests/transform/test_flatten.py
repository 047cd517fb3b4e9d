from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep import BranchSpec, JaggedFlattener, ParameterError, Specs
from mlaas4hep._arrays import record_parts, row_range


def _specs(**arrays: ak.Array) -> Specs:
    branches = {}
    for name, array in arrays.items():
        if array.ndim == 1:
            branches[name] = BranchSpec.from_values(name, "flat", "float32", ak.to_numpy(array))
        else:
            branches[name] = BranchSpec.from_values(
                name, "jagged", "float32", ak.to_numpy(ak.flatten(array)), ak.to_numpy(ak.num(array))
            )
    return Specs(branches)


@pytest.fixture
def events() -> ak.Array:
    return ak.Array(
        {
            "met": np.array([10.0, 20.0, 30.0, np.nan], np.float32),
            "jet": ak.Array([[1.0, 2.0, 3.0], [], [4.0], [5.0, np.inf]]),
        }
    )


def test_flat_and_jagged_padding_mask_and_minmax(events):
    flattener = JaggedFlattener(_specs(met=events["met"], jet=events["jet"]))
    assert flattener.feature_names == ["met", "jet_0", "jet_1", "jet_2"]
    X, M = flattener.transform(events)
    assert X.dtype == np.float32 and M.dtype == np.bool_ and X.shape == (4, 4)
    expected = np.array(
        [
            [0.0, 0.0, 0.25, 0.5],
            [0.5, 0, 0, 0],
            [1.0, 0.75, 0, 0],
            [0.0, 1.0, 0, 0],  # NaN met and inf jet -> pad value, mask 0
        ],
        np.float32,
    )
    np.testing.assert_allclose(X, expected, atol=1e-6)
    assert M.tolist() == [
        [True, True, True, True],
        [True, False, False, False],
        [True, True, False, False],
        [False, True, False, False],
    ]
    assert not np.isnan(X).any()


def test_clipping_pad_value_and_quantile(events):
    specs = _specs(met=events["met"], jet=events["jet"])
    clipped = JaggedFlattener(specs, max_lengths={"jet": 1}, pad_value=-1, normalization=None)
    X, _ = clipped.transform(events)
    assert clipped.feature_names == ["met", "jet_0"]
    np.testing.assert_array_equal(X, [[10, 1], [20, -1], [30, 4], [-1, 5]])
    assert JaggedFlattener(specs, length_quantile=0.5).num_features == 1 + specs["jet"].length_quantile(0.5)
    with pytest.raises(ParameterError, match="not jagged"):
        JaggedFlattener(specs, max_lengths={"met": 2})
    with pytest.raises(ParameterError, match="normalization"):
        JaggedFlattener(specs, normalization="zscore")


def test_standard_normalization_and_inverse(events):
    specs = _specs(met=events["met"], jet=events["jet"])
    flattener = JaggedFlattener(specs, normalization="standard")
    X, M = flattener.transform(events)
    assert X[:3, 0].mean() == pytest.approx(0, abs=1e-6)
    raw = flattener.inverse_transform(X, M)
    np.testing.assert_allclose(raw[:3, 0], [10, 20, 30], rtol=1e-5)
    np.testing.assert_allclose(raw[0, 1:], [1, 2, 3], rtol=1e-5)
    assert np.isnan(raw[1, 1:]).all() and np.isnan(raw[3, 0])


def test_constant_branch_and_bool(events):
    arrays = ak.Array({"c": np.full(4, 7.0), "b": np.array([True, False, True, True])})
    flattener = JaggedFlattener(_specs(c=arrays["c"], b=ak.values_astype(arrays["b"], np.float32)))
    X, M = flattener.transform(arrays)
    np.testing.assert_array_equal(X[:, flattener.columns("c")].ravel(), 0)
    np.testing.assert_array_equal(X[:, flattener.columns("b")].ravel(), [1, 0, 1, 1])
    assert M.all()


def test_list_of_pieces_is_stacked(events):
    flattener = JaggedFlattener(_specs(met=events["met"], jet=events["jet"]))
    whole, _ = flattener.transform(events)
    parts, _ = flattener.transform([events[:1], events[1:]])
    np.testing.assert_array_equal(whole, parts)


def test_matches_a_per_event_reference(hzz):
    import uproot

    from mlaas4hep import SpecBuilder

    specs = SpecBuilder(f"{hzz}:events", branches=["Muon_Px", "Jet_E", "MET_px", "Jet_ID"]).build()
    arrays = uproot.open(hzz)["events"].arrays(filter_name=specs.names)
    flattener = JaggedFlattener(specs)
    X, _ = flattener.transform(arrays)
    # the original algorithm, event by event, on a few events
    for i in range(0, len(arrays), 97):
        row = []
        for name in specs.names:
            s = specs[name]
            norm = lambda v, s=s: (float(v) - s.min) / (s.max - s.min)  # noqa: E731
            if s.is_jagged:
                vals = [norm(v) for v in arrays[name][i]][: s.max_length]
                row += vals + [0.0] * (s.max_length - len(vals))
            else:
                row.append(norm(arrays[name][i]))
        np.testing.assert_allclose(X[i], row, rtol=1e-5, atol=1e-6)


def test_order_shuffles_rows_while_flattening(events):
    flattener = JaggedFlattener(_specs(met=events["met"], jet=events["jet"]), max_lengths=2)
    X, M = flattener.transform(events)
    order = np.array([2, 0, 3, 1])
    Xs, Ms = flattener.transform([events[:3], events[3:]], order=order)
    np.testing.assert_array_equal(Xs, X[order])
    np.testing.assert_array_equal(Ms, M[order])
    with pytest.raises(ParameterError, match="permutation"):
        flattener.transform(events, order=np.arange(3))


def test_record_arrays_and_mappings_flatten_alike(events):
    """The layout shortcut for record arrays gives what the general path (mappings, option types) gives."""
    arrays = ak.Array(
        {
            "met": events["met"],
            "jet": events["jet"],
            "tag": ak.Array([[True, False], [], [True], [False, False, True]]),
        }
    )
    specs = _specs(met=arrays["met"], jet=arrays["jet"], tag=ak.values_astype(arrays["tag"], np.float32))
    order = np.array([3, 1, 0, 2])
    for max_lengths in (None, 1):
        flattener = JaggedFlattener(specs, max_lengths=max_lengths)
        pieces = [arrays[:1], arrays[1:]]  # sliced record arrays: offsets that do not start at 0
        mappings = [{name: piece[name] for name in piece.fields} for piece in pieces]
        optional = [{**m, "jet": ak.mask(m["jet"], np.ones(len(m["jet"]), bool))} for m in mappings]
        X, M = flattener.transform(pieces, order=order)
        ranged = [row_range(arrays, 0, 1), row_range(arrays, 1, 4)]  # rows as an index over the record
        for other in (mappings, optional, ranged):
            Xo, Mo = flattener.transform(other, order=order)
            np.testing.assert_array_equal(X, Xo)
            np.testing.assert_array_equal(M, Mo)
    assert X[order.argsort()[3], flattener.columns("tag")].tolist() == [0.0]


def test_a_reused_buffer_is_padded_again_where_the_chunk_before_wrote():
    """Writing into a used buffer pads only the cells written last time: the result is as if fresh."""
    first = ak.Array(
        {
            "met": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
            "jet_pt": ak.Array([[1.0, 2.0, 3.0], [4.0], [5.0, 6.0, 7.0, 8.0], []]),
            "jet_eta": ak.Array([[0.1, 0.2, 0.3], [0.4], [0.5, 0.6, 0.7, 0.8], []]),
            "mu_pt": ak.Array([[9.0, 9.5], [], [8.0], [7.0, 7.5]]),
        }
    )
    second = ak.Array(  # fewer events, and lists where the first chunk had none
        {
            "met": np.array([5.0, 6.0, 7.0], np.float32),
            "jet_pt": ak.Array([[], [1.5, 2.5], [3.5]]),
            "jet_eta": ak.Array([[], [0.15, 0.25], [0.35]]),
            "mu_pt": ak.Array([[1.0, 2.0, 3.0], [4.0], []]),
        }
    )
    specs = _specs(**{name: ak.concatenate([first[name], second[name]]) for name in first.fields})
    flattener = JaggedFlattener(specs, pad_value=-1.0, max_lengths={"jet_pt": 3, "jet_eta": 3})
    buffer = np.empty((4, flattener.num_features), np.float32)
    order = np.array([2, 0, 3, 1])
    X, _, written = flattener.transform_into([first[:1], first[1:]], order, mask=False, buffer=buffer)
    np.testing.assert_array_equal(X, flattener.transform(first, order=order, mask=False)[0])
    assert written  # the cells of the jagged columns that hold values
    X, M, written = flattener.transform_into(second, None, mask=True, buffer=buffer, written=written)
    expected, expected_mask = flattener.transform(second)
    np.testing.assert_array_equal(X, expected)
    np.testing.assert_array_equal(M, expected_mask)
    assert X.base is buffer or X.base is buffer.base
    X, _, _ = flattener.transform_into(first, None, mask=False, buffer=buffer, written=written)
    np.testing.assert_array_equal(X, flattener.transform(first, mask=False)[0])


def test_row_range_is_a_slice_that_record_parts_reads_in_place(events):
    ranged = row_range(events, 1, 3)
    assert ranged.tolist() == events[1:3].tolist()
    parts = record_parts(ranged)
    offsets, content = parts["jet"]
    np.testing.assert_array_equal(np.diff(offsets), [0, 1])
    assert content[offsets[0] : offsets[-1]].tolist() == [4.0]
    np.testing.assert_array_equal(parts["met"][1], [20.0, 30.0])
    # an index that is not a run of rows is left to the general path, which still flattens it right
    shuffled = ak.Array(ak.contents.IndexedArray(ak.index.Index64(np.array([2, 0, 1])), events.layout))
    assert record_parts(shuffled) == {}
    flattener = JaggedFlattener(_specs(met=events["met"], jet=events["jet"]))
    np.testing.assert_array_equal(flattener.transform(shuffled)[0], flattener.transform(events[[2, 0, 1]])[0])


# -- normalization is exact to float32 rounding, whatever the offset ------------------------------
def _exact_normalized(x: int | float, spec: BranchSpec, normalization: str | None) -> float:
    """The normalized value computed exactly (rationals), then rounded once to float32."""
    from fractions import Fraction

    if normalization is None:
        return float(np.float32(x))
    if normalization == "minmax":
        span = Fraction(spec.max) - Fraction(spec.min)
        value = (Fraction(x) - Fraction(spec.min)) / span if span else Fraction(0)
    else:  # the specs' mean, counted from its integer reference, and the scale as the flattener takes it
        offset = Fraction(spec.mean_ref) + Fraction(spec.mean)
        value = (Fraction(x) - offset) * Fraction(1.0 / spec.std) if spec.std else Fraction(0)
    return float(np.float32(float(value)))


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(["float64", "float32", "int64", "uint64", "int32", "int16"]),
    magnitude=st.floats(0, 1),
    spread=st.integers(1, 2000),
    normalization=st.sampled_from(["minmax", "standard", None]),
    seed=st.integers(0, 2**31 - 1),
    jagged=st.booleans(),
)
def test_every_normalization_is_exact_to_float32_rounding_for_any_offset(
    dtype, magnitude, spread, normalization, seed, jagged
):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if dtype[0] in "iu" else np.finfo(dtype)
    top = int(info.max) if dtype[0] in "iu" else (1e15 if dtype == "float64" else 1e7)
    room = top - 2 * spread
    base = min(int(magnitude * room), room)  # from 0 to near the largest value of the type
    steps = rng.integers(0, spread, 40)
    values = (np.uint64(base) + steps.astype(np.uint64)).astype(dtype) if dtype[0] in "iu" else (base + steps * 0.25)
    values = np.asarray(values, dtype=dtype)
    kind = "jagged" if jagged else "flat"
    counts = np.full(20, 2) if jagged else None
    spec = BranchSpec.from_values("x", kind, dtype, values, counts)
    flattener = JaggedFlattener(Specs({"x": spec}), normalization=normalization)
    array = ak.unflatten(values, counts) if jagged else values
    X, M = flattener.transform({"x": array})
    got = X.reshape(-1)
    assert M.all()
    for value, result in zip(values.tolist(), got.tolist(), strict=True):
        want = _exact_normalized(value, spec, normalization)
        assert abs(result - want) <= 2 * np.spacing(np.float32(abs(want))), (value, result, want)


def test_large_offsets_keep_every_level():
    """Timestamps around 1.6e9 (float64) and 64-bit integers near their limits keep their distinct values."""
    rng = np.random.default_rng(1)
    cases = {
        "time": 1.6e9 + rng.permutation(1000).astype(np.float64),
        "big": (2**63 - 2000 + rng.permutation(1000)).astype(np.int64),
        "ubig": (np.uint64(2**64 - 3000) + rng.permutation(1000).astype(np.uint64)),
    }
    for name, values in cases.items():
        spec = BranchSpec.from_values(name, "flat", str(values.dtype), values)
        for normalization in ("minmax", "standard"):
            X, _ = JaggedFlattener(Specs({name: spec}), normalization=normalization).transform({name: values})
            assert len(np.unique(X)) == 1000, (name, normalization)
            if normalization == "minmax":
                assert X.min() == 0.0 and X.max() == 1.0
