"""The collections layout: per-collection (batch, L, F) tensors with masks, the same numbers as the flat layout."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from nanoaod import ID, write_nanoaod  # noqa: E402

from mlaas4hep import (  # noqa: E402
    BranchError,
    BranchSpec,
    JaggedFlattener,
    ParameterError,
    RootSequence,
    SpecBuilder,
    Specs,
)
from mlaas4hep.transform.tensors import (  # noqa: E402
    CollectionsFlattener,
    collection_name,
    collection_widths,
    find_collections,
)

SIZES = (700, 1000)


def _spec(name: str, counts: list[int] | None, values: np.ndarray | None = None) -> BranchSpec:
    """The spec of a flat branch (counts None) or of a jagged one with these list lengths."""
    if counts is None:
        return BranchSpec.from_values(name, "flat", "float32", np.arange(4.0) if values is None else values)
    total = int(np.sum(counts))
    return BranchSpec.from_values(
        name, "jagged", "float32", np.arange(total, dtype=np.float32) if values is None else values, np.array(counts)
    )


def _specs(**branches: list[int] | None) -> Specs:
    return Specs({name: _spec(name, counts) for name, counts in branches.items()})


# -- which branches make a collection, and how wide -------------------------------------------------------


def test_collection_names_follow_nanoaod():
    assert collection_name("Jet_pt") == "Jet"
    assert collection_name("Jet_pt", {"nJet"}) == "Jet"
    assert collection_name("Proton_multiRP_xi", {"nProton_multiRP", "nProton_singleRP"}) == "Proton_multiRP"
    assert collection_name("Proton_singleRP_xi", {"nProton_multiRP"}) == "Proton"
    assert collection_name("px") is None and collection_name("_x") is None


def test_collections_by_prefix_counts_and_lengths():
    jets, muons, other = [2, 0, 1], [1, 1, 0], [0, 3, 3]
    specs = _specs(
        MET_pt=None,
        nJet=None,
        Jet_pt=jets,
        Jet_eta=jets,
        Muon_pt=muons,
        Proton_multiRP_xi=other,
        Proton_multiRP_t=other,
        Proton_singleRP_xi=jets,
        px=muons,
        py=muons,
        hits=jets,
    )
    names = {"nJet", "nProton_multiRP", "nProton_singleRP"}
    assert find_collections(specs, names) == {
        "Jet": ["Jet_eta", "Jet_pt"],
        "Muon": ["Muon_pt"],
        "Proton_multiRP": ["Proton_multiRP_t", "Proton_multiRP_xi"],
        "Proton_singleRP": ["Proton_singleRP_xi"],
        "hits": ["hits"],  # no underscore: grouped by identical lengths, named after the first
        "px": ["px", "py"],
    }
    # without the counts branches, Proton_* is one collection whose branches differ in length: named in the error
    with pytest.raises(BranchError, match=r"collection 'Proton'.*Proton_singleRP_xi.*layout='flat'"):
        find_collections(specs)


def test_a_jagged_alias_joins_the_collection_it_is_computed_from():
    jets, fewer = [2, 0, 1], [1, 0, 1]
    specs = _specs(Jet_pt=jets, Jet_eta=jets, log_Jet_pt=jets, hard_Jet_pt=fewer, HT=None)
    sources = {"log_Jet_pt": ["Jet_pt"], "hard_Jet_pt": ["Jet_pt"], "HT": ["Jet_pt"]}
    groups = find_collections(specs, {"nJet"}, sources)
    assert groups["Jet"] == ["Jet_eta", "Jet_pt", "log_Jet_pt"]
    assert groups["hard"] == ["hard_Jet_pt"]  # other lengths: a collection of its own, by its name
    # an alias of an excluded branch joins its collection all the same
    assert find_collections(_specs(log_Jet_pt=jets), {"nJet"}, {"log_Jet_pt": ["Jet_pt"]}) == {"Jet": ["log_Jet_pt"]}


def test_widths_per_collection():
    specs = _specs(Jet_pt=[4, 0, 1, 1], Jet_eta=[4, 0, 1, 1], Muon_pt=[2, 1, 0, 0])
    groups = find_collections(specs)
    assert collection_widths(specs, groups) == {"Jet": 4, "Muon": 2}
    assert collection_widths(specs, groups, max_lengths=3) == {"Jet": 3, "Muon": 3}
    assert collection_widths(specs, groups, max_lengths={"Jet": 2}) == {"Jet": 2, "Muon": 2}
    assert collection_widths(specs, groups, max_lengths={"Jet_pt": 1}) == {"Jet": 1, "Muon": 2}
    assert collection_widths(specs, groups, max_lengths={"Jet": 0, "Jet_pt": 1, "Jet_eta": 3})["Jet"] == 0
    assert collection_widths(specs, groups, length_quantile=0.75) == {"Jet": 1, "Muon": 1}
    with pytest.raises(ParameterError, match=r"collection 'Jet' different caps.*\{'Jet': 1\}"):
        collection_widths(specs, groups, max_lengths={"Jet_pt": 1, "Jet_eta": 3})
    with pytest.raises(ParameterError, match=r"\['Tau'\].*neither collections"):
        collection_widths(specs, groups, max_lengths={"Tau": 1})
    with pytest.raises(ParameterError, match="max_lengths for 'Jet' must be a non-negative integer"):
        collection_widths(specs, groups, max_lengths=-1)
    with pytest.raises(ParameterError, match="either max_lengths or length_quantile"):
        collection_widths(specs, groups, max_lengths=2, length_quantile=0.5)


def test_names_that_would_clash_and_nothing_to_serve():
    with pytest.raises(ParameterError, match=r"\['event'\] would clash"):
        CollectionsFlattener(_specs(event_x=[1, 2]))
    with pytest.raises(BranchError, match="no feature left"):
        CollectionsFlattener(_specs(Tau_pt=[0, 0, 0]))


# -- the tensors: the flat layout's numbers, arranged per collection ---------------------------------------


def _events(rng: np.random.Generator, n: int, dtype: str) -> dict[str, ak.Array]:
    counts = rng.integers(0, 5, n)
    jets = {
        f"Jet_{f}": ak.unflatten(rng.normal(1e3, 50, int(counts.sum())).astype(dtype), counts) for f in ("pt", "eta")
    }
    big = ak.unflatten((2**60 + rng.integers(0, 10, int(counts.sum()))).astype(np.int64), counts)
    return {"MET_pt": rng.exponential(30, n).astype(dtype), **jets, "Jet_id": big, "Tau_pt": jets["Jet_pt"][:, :1]}


def _flat_columns(flattener: JaggedFlattener, X: np.ndarray, branch: str, width: int) -> np.ndarray:
    """The flat layout's columns ``branch_0 .. branch_{width-1}``, shape (n, width)."""
    names = flattener.feature_names
    return np.stack([X[:, names.index(f"{branch}_{j}")] for j in range(width)], axis=1)


def _specs_of(arrays: dict[str, ak.Array]) -> Specs:
    out = {}
    for name, array in arrays.items():
        dtype = str(ak.type(array).content).split(" * ")[-1]
        if array.ndim == 1:
            out[name] = BranchSpec.from_values(name, "flat", dtype, ak.to_numpy(array))
        else:
            values, counts = ak.to_numpy(ak.flatten(array)), ak.to_numpy(ak.num(array))
            out[name] = BranchSpec.from_values(name, "jagged", dtype, values, counts)
    return Specs(out)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 40),
    dtype=st.sampled_from(["float32", "float64"]),
    normalization=st.sampled_from(["minmax", "standard", None]),
    cap=st.one_of(st.none(), st.integers(0, 5)),
    shuffle=st.booleans(),
    pad_value=st.sampled_from([0.0, -1.0]),
)
def test_tensors_hold_exactly_the_flat_layouts_numbers(seed, n, dtype, normalization, cap, shuffle, pad_value):
    rng = np.random.default_rng(seed)
    arrays = _events(rng, n, dtype)
    specs = _specs_of(arrays)
    order = rng.permutation(n) if shuffle else None
    kw = {"normalization": normalization, "pad_value": pad_value, "max_lengths": cap}
    flat = JaggedFlattener(specs, **kw)
    X, _ = flat.transform(arrays, order)
    collections = CollectionsFlattener(specs, file_branches={"nJet"}, **kw)
    x = collections.tensors(arrays, order)
    placed = {g.name: list(g.branches) for g in collections.collections}
    assert placed == {"Jet": ["Jet_eta", "Jet_id", "Jet_pt"], "Tau": ["Tau_pt"]}
    assert collections.feature_order == {"event": ["MET_pt"], **{c: b for c, b in placed.items() if c in x}}
    np.testing.assert_array_equal(x["event"], X[:, [flat.feature_names.index("MET_pt")]])
    for name, branches in collections.feature_order.items():
        if name == "event" or name not in x:
            continue
        width = x[name].shape[1]
        assert x[name].shape == (n, width, len(branches)) and x[name].dtype == np.float32
        for k, branch in enumerate(branches):  # bitwise: the same arithmetic
            np.testing.assert_array_equal(x[name][:, :, k], _flat_columns(flat, X, branch, width))
        lengths = ak.to_numpy(ak.num(arrays[branches[0]]))[order if shuffle else slice(None)]
        np.testing.assert_array_equal(x[f"{name}_mask"], np.arange(width) < lengths[:, None])
    for g in collections.collections:  # a collection of width 0 is left out
        assert (g.name in x) == (g.width > 0) and (f"{g.name}_mask" in x) == (g.width > 0)


def test_branches_of_a_collection_whose_lists_differ_on_a_chunk_are_named():
    a = ak.Array([[1.0, 2.0], [], [3.0]])
    b = ak.Array([[], [1.0, 2.0], [3.0]])  # the same length histogram as a, other lists
    flattener = CollectionsFlattener(_specs_of({"Jet_pt": a, "Jet_eta": b}))
    with pytest.raises(BranchError, match=r"'Jet_eta' and 'Jet_pt' of collection 'Jet'.*0 and 2 entries in event 0"):
        flattener.tensors({"Jet_pt": a, "Jet_eta": b})


@pytest.mark.parametrize("pad_value", [0.0, -2.0])
def test_a_reused_buffer_holds_only_the_new_chunk(pad_value):
    rng = np.random.default_rng(5)
    big, small, other = _events(rng, 30, "float32"), _events(rng, 20, "float32"), _events(rng, 25, "float32")
    small["Jet_pt"] = small["Jet_eta"] = small["Jet_id"] = ak.Array([[]] * 20)  # nothing in the jets
    small["Tau_pt"] = small["Jet_pt"]
    flattener = CollectionsFlattener(_specs_of(big), pad_value=pad_value)
    buffer = np.empty((30, flattener.num_features), np.float32)
    written = None
    for chunk in (big, small, other, big):  # each into the memory of the one before
        order = rng.permutation(len(chunk["MET_pt"]))
        X, _, written = flattener.transform_into(chunk, order, mask=False, buffer=buffer, written=written)
        np.testing.assert_array_equal(X, flattener.transform(chunk, order, mask=False)[0])
        if chunk is small:
            assert (flattener.inputs(X)["Jet"] == pad_value).all() and not flattener.inputs(X)["Jet_mask"].any()


# -- RootSequence(layout="collections") on NanoAOD-like files ------------------------------------------------


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("nano")
    return [write_nanoaod(d / f"f{i}.root", n, seed=i, file_id=i, basket=300) for i, n in enumerate(SIZES)]


@pytest.fixture(scope="module")
def nano_specs(nano: list[Path]) -> Specs:
    specs = SpecBuilder(nano).build()  # PSWeight, a float[4], is no longer skipped: 4 event features
    assert specs["PSWeight"].kind == "fixed[4]" and not specs.skipped
    return specs


def _pair(files, specs, **kw) -> tuple[RootSequence, RootSequence]:
    """The same sequence in both layouts."""
    args = {"labels": [1, 0], "batch_size": 64, "chunk_size": 400, "seed": 7, "specs": specs, **kw}
    return RootSequence(files, **args), RootSequence(files, layout="collections", **args)


def _same_numbers(flat_batch, collections_batch, flat: RootSequence, seq: RootSequence) -> None:
    xf, x = flat_batch[0], collections_batch[0]
    names = flat.feature_names
    for name, branches in seq.flattener.feature_order.items():
        if name == "event":
            np.testing.assert_array_equal(x["event"], xf[:, [names.index(b) for b in branches]])
            continue
        for k, branch in enumerate(branches):  # x["Jet"][:, j, k] is the flat column of branch k at position j
            for j in range(x[name].shape[1]):
                np.testing.assert_array_equal(x[name][:, j, k], xf[:, names.index(f"{branch}_{j}")])
    for a, b in zip(flat_batch[1:], collections_batch[1:], strict=True):  # labels and weights
        np.testing.assert_array_equal(a, b)


def test_nanoaod_collections_shapes_and_feature_order(nano, nano_specs, caplog):
    with caplog.at_level(logging.INFO, logger="mlaas4hep.transform.tensors"):
        seq = RootSequence(nano, labels=[1, 0], layout="collections", specs=nano_specs, batch_size=50, chunk_size=500)
    assert "['IsoTrack'] have width 0" in caplog.text
    spec = seq.input_spec
    collections = ["Electron", "FatJet", "GenPart", "Jet", "Muon", "Photon", "Tau", "px"]
    assert list(spec) == ["event"] + [f"{c}{m}" for c in collections for m in ("", "_mask")]
    order = seq.flattener.feature_order
    assert order["Jet"] == ["Jet_btagDeepFlavB", "Jet_eta", "Jet_jetId", "Jet_mass", "Jet_phi", "Jet_pt"]
    assert order["Photon"] == ["Photon_pt"] and order["px"] == ["px", "py"]
    assert "nJet" in order["event"] and "genWeight" in order["event"] and "event" not in order["event"]
    assert [b for b in order["event"] if b.startswith("PSWeight")] == [f"PSWeight_{j}" for j in range(4)]
    for c in collections:
        width = nano_specs[order[c][0]].max_length
        assert spec[c] == ((width, len(order[c])), "float32") and spec[f"{c}_mask"] == ((width,), "float32")
    x, y = seq[0]
    assert set(x) == set(spec) and len(y) == 50
    for name, (shape, dtype) in spec.items():
        assert x[name].shape == (50, *shape) and x[name].dtype == dtype and not x[name].flags.writeable
    assert all(np.shares_memory(x[c], x["event"].base) for c in collections)  # views of the chunk's matrix
    seq.close()


def test_same_numbers_as_the_flat_layout_over_shuffled_epochs(nano, nano_specs):
    caps = {b: 4 if b.startswith("Jet_") else 9 for b in nano_specs.jagged if b.startswith(("Jet_", "GenPart_"))}
    args = {
        "labels": [1, 0],
        "batch_size": 64,
        "chunk_size": 400,
        "seed": 7,
        "specs": nano_specs,
        "weights": "genWeight",
    }
    flat = RootSequence(nano, max_lengths=caps, **args)  # the flat layout caps each branch
    seq = RootSequence(nano, layout="collections", max_lengths={"Jet": 4, "GenPart_pt": 9}, **args)
    assert seq.input_spec["Jet"][0] == (4, 6) and seq.input_spec["GenPart"][0] == (9, 4)
    for _ in range(2):
        for i in range(len(seq)):
            _same_numbers(flat[i], seq[i], flat, seq)
        flat.on_epoch_end()
        seq.on_epoch_end()
    flat.close()
    seq.close()


def test_regression_targets_are_the_flat_layouts(nano, nano_specs):
    flat, seq = _pair(nano, nano_specs, labels=None, targets=["MET_pt", "PV_npvs"], weights="genWeight")
    assert "MET_pt" not in seq.flattener.feature_order["event"]  # targets are never features
    for i in range(len(seq)):
        batch = seq[i]
        assert batch[1].shape == (len(batch[2]), 2)
        _same_numbers(flat[i], batch, flat, seq)
    flat.close()
    seq.close()


def test_masks_count_min_n_and_l_entries(nano, nano_specs):
    seq = RootSequence(
        nano, labels=[1, 0], layout="collections", specs=nano_specs, normalization=None, length_quantile=0.9
    )
    order = seq.flattener.feature_order["event"]
    for i in range(len(seq)):
        x, _ = seq[i]
        for c in ("Jet", "GenPart", "Photon"):
            n = x["event"][:, order.index(f"n{c}")]
            width = x[f"{c}_mask"].shape[1]
            assert width == nano_specs[f"{c}_pt"].length_quantile(0.9)
            np.testing.assert_array_equal(x[f"{c}_mask"].sum(axis=1), np.minimum(n, width))
            np.testing.assert_array_equal(x[f"{c}_mask"], np.arange(width) < n[:, None])  # the first min(n, L)
            assert (x[c][x[f"{c}_mask"] == 0] == 0).all()  # padding
    seq.close()


def _uids(seq: RootSequence) -> np.ndarray:
    column = seq.flattener.feature_order["event"].index("uid")
    out = [seq[i][0]["event"][:, column].astype(np.int64) for i in range(len(seq))]
    seq.on_epoch_end()
    return np.concatenate(out)


def _passing(files: list[Path], cut) -> set[int]:
    out = set()
    for path in files:
        arrays = uproot.open(path)["Events"].arrays(["uid", "nJet", "MET_pt"], library="np")
        out.update(arrays["uid"][cut(arrays)].tolist())
    return out


def test_splits_cut_and_a_jagged_alias(nano):
    kw = {
        "labels": [1, 0],
        "normalization": None,
        "cut": "(nJet >= 1) & (MET_pt > 10)",
        "aliases": {"log_Jet_pt": "log(Jet_pt)"},
        "exclude": ["run", "event", "luminosityBlock", "Jet_eta"],
        "validation_split": 0.3,
        "batch_size": 32,
        "chunk_size": 300,
        "seed": 2,
    }
    train = RootSequence(nano, subset="training", layout="collections", **kw)
    val = RootSequence(nano, subset="validation", layout="collections", specs=train.specs, **kw)
    assert train.flattener.feature_order["Jet"] == [
        "Jet_btagDeepFlavB",
        "Jet_jetId",
        "Jet_mass",
        "Jet_phi",
        "Jet_pt",
        "log_Jet_pt",
    ]
    a, b = _uids(train), _uids(val)
    assert len(set(a)) == len(a) and len(set(b)) == len(b) and not set(a) & set(b)
    assert set(a) | set(b) == _passing(nano, lambda t: (t["nJet"] >= 1) & (t["MET_pt"] > 10))
    x, _ = val[0]
    jets = x["Jet"]
    order = val.flattener.feature_order["Jet"]
    real = x["Jet_mask"] == 1
    np.testing.assert_allclose(
        jets[..., order.index("log_Jet_pt")][real], np.log(jets[..., order.index("Jet_pt")][real]), rtol=1e-6
    )
    flat = RootSequence(nano, subset="validation", specs=train.specs, **kw)
    _same_numbers(flat[0], val[0], flat, val)
    for s in (train, val, flat):
        s.close()


def test_shards_serve_every_event_once_with_the_flat_layouts_numbers(nano, nano_specs):
    everything = {f * ID + e for f, n in enumerate(SIZES) for e in range(n)}
    seen: list[int] = []
    for shard in range(2):
        flat, seq = _pair(nano, nano_specs, num_shards=2, shard_index=shard, normalization=None)
        for i in range(len(seq)):
            _same_numbers(flat[i], seq[i], flat, seq)
        seq.on_epoch_end()
        seen.extend(_uids(seq).tolist())
        flat.close()
        seq.close()
    assert len(seen) == len(everything) and set(seen) == everything


def test_worker_processes_serve_the_same_batches(nano, nano_specs):
    one = RootSequence(nano, labels=[1, 0], layout="collections", specs=nano_specs, chunk_size=500, seed=4)
    two = RootSequence(nano, labels=[1, 0], layout="collections", specs=nano_specs, chunk_size=500, seed=4, workers=2)
    for _ in range(2):
        for i in range(len(one)):
            (x1, y1), (x2, y2) = one[i], two[i]
            assert set(x1) == set(x2)
            for name in x1:
                np.testing.assert_array_equal(x1[name], x2[name])
            np.testing.assert_array_equal(y1, y2)
        one.on_epoch_end()
        two.on_epoch_end()
    assert two.worker_processes == 2
    one.close()
    two.close()


def test_batches_kept_stay_intact_while_buffers_are_reused(nano, nano_specs):
    for workers in (1, 2):
        seq = RootSequence(
            nano, labels=[1, 0], layout="collections", specs=nano_specs, chunk_size=200, batch_size=100, workers=workers
        )
        kept = [seq[i] for i in range(3)]
        copies = [{k: v.copy() for k, v in x.items()} for x, _ in kept]
        for _ in range(2):
            _uids(seq)  # every chunk read again, into reused memory
        for (x, _), copy in zip(kept, copies, strict=True):
            for name in x:
                np.testing.assert_array_equal(x[name], copy[name])
        seq.close()


def test_mask_output_and_unknown_layouts_are_refused(nano, nano_specs):
    with pytest.raises(ParameterError, match="mask_output=True is the flat layout's"):
        RootSequence(nano, labels=[1, 0], specs=nano_specs, layout="collections", mask_output=True)
    with pytest.raises(ParameterError, match=r"layout must be one of \('flat', 'collections'\), got 'sets'"):
        RootSequence(nano, labels=[1, 0], specs=nano_specs, layout="sets")


class _Recorded(RootSequence):
    """Saves the uids and labels of every batch it serves to a file of its own (works across processes)."""

    record_dir: str = ""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        uid = x["event"][:, self.flattener.feature_order["event"].index("uid")].astype(np.int64)
        name = f"{time.monotonic_ns():020d}-{int(index):05d}-{os.getpid()}-{np.random.default_rng().integers(2**62)}"
        np.save(Path(self.record_dir) / f"{name}.npy", np.stack([uid, y.astype(np.int64)]))
        return x, y


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "use_multiprocessing"), [(1, False), (2, False), (2, True)])
def test_fit_serves_each_event_once_per_epoch(nano, nano_specs, tmp_path, workers, use_multiprocessing):
    from mlaas4hep.workflow.models import deep_sets

    epochs = 2
    seq = _Recorded(
        nano,
        labels=[0, 1],
        layout="collections",
        specs=nano_specs,
        normalization=None,
        batch_size=50,
        chunk_size=300,
        seed=5,
        workers=workers,
        use_multiprocessing=use_multiprocessing,
    )
    seq.record_dir = str(tmp_path)
    keras.utils.set_random_seed(2)
    deep_sets(seq, hidden=(4,), head=(4,)).fit(seq, epochs=epochs, verbose=0)  # fit shuffles the indices
    assert seq.worker_processes == (2 if (workers, use_multiprocessing) == (2, False) else 0)
    records = [np.load(p) for p in sorted(tmp_path.glob("*.npy"))]  # in the order they were served
    n = len(seq)
    served = records[2:]  # after Keras' probe of batches 0 and 1
    everything = {f * ID + e for f, size in enumerate(SIZES) for e in range(size)}
    for epoch in range(epochs):
        data = np.concatenate(served[epoch * n : (epoch + 1) * n], axis=1)
        assert len(data[0]) == len(everything) and set(data[0].tolist()) == everything
        np.testing.assert_array_equal(data[1], data[0] // ID)
    seq.close()
