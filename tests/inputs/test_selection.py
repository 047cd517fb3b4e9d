"""Cuts and derived branches: the evaluator, the first pass, and the events served, checked against uproot."""

from __future__ import annotations

import json
import warnings

import awkward as ak
import numpy as np
import pytest
import uproot
import uproot.language.python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlaas4hep import BranchError, ParameterError, SpecBuilder, Specs, SpecsMismatchWarning
from mlaas4hep.inputs.selection import Selection, decode_mask, encode_mask

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence  # noqa: E402

ID = 1_000_000
CUT = "(nPV >= 18) & (MET_pt > 20) & any(Jet_pt > 50)"
ALIASES = {"log_Jet_pt": "log(Jet_pt)", "HT": "sum(Jet_pt)", "MET2": "MET_pt**2"}

# uproot's own evaluator, with any/all added, as the reference for the events a cut keeps
UPROOT = uproot.language.python.PythonLanguage(
    functions={
        **uproot.language.python.PythonLanguage.default_functions,
        "any": lambda x: ak.any(x, axis=1),
        "all": lambda x: ak.all(x, axis=1),
        "sum": lambda x: ak.sum(x, axis=1),
    }
)


def uproot_arrays(path, expressions: list[str], cut: str, aliases: dict[str, str] | None = None) -> ak.Array:
    with uproot.open(path) as f:
        return f["Events"].arrays(expressions, cut=cut, aliases=aliases, language=UPROOT)


def uproot_uids(path, cut: str) -> np.ndarray:
    return ak.to_numpy(uproot_arrays(path, ["uid"], cut)["uid"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_tree):
    d = tmp_path_factory.mktemp("cut")
    return [make_tree(d / f"f{i}.root", n, seed=10 + i, file_id=i, basket=250) for i, n in enumerate((900, 1300, 700))]


# -- the evaluator --------------------------------------------------------------------------


def test_expressions_on_awkward_arrays():
    arrays = ak.Array({"n": np.array([0, 1, 2, 5]), "pt": ak.Array([[40.0], [10.0, 50.0], [], [31.0]])})
    s = Selection("(n >= 1) & any(pt > 30) and 1 <= n <= 3", {"lpt": "log(pt)", "ht": "sum(pt)", "two": "ht * 2"})
    assert s.branches() == ["n", "pt"]
    assert s.branches(["two"], cut=False) == ["pt"]
    np.testing.assert_array_equal(s.mask(arrays, 4), [False, True, False, False])
    derived = s.derive(arrays, ["lpt", "two", "n"], 4)
    assert set(derived) == {"lpt", "two"}
    np.testing.assert_allclose(derived["two"], [80, 120, 0, 62])
    assert ak.all(abs(derived["lpt"] - np.log(arrays["pt"])) < 1e-12)
    assert Selection("all(pt > 30)").mask(arrays, 4).tolist() == [True, False, True, True]  # all of nothing
    assert Selection("count(pt) == 0").mask(arrays, 4).tolist() == [False, False, True, False]
    assert np.isnan(Selection(None, {"m": "max(pt)"}).derive(arrays, ["m"], 4)["m"][2])
    assert Selection("not (n > 1)").mask(arrays, 4).tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    ("cut", "aliases", "match"),
    [
        ("any(pt > 3", {}, "not a valid expression"),
        ("foo(pt) > 1", {}, "calls 'foo'"),
        ("pt[0] > 1", {}, "Subscript"),
        ('n == "a"', {}, "only numbers"),
        (None, {"a": "b + 1", "b": "a * 2"}, "cycle"),
        (None, {"log": "pt"}, "alias name 'log'"),
    ],
)
def test_bad_expressions_raise_parameter_error(cut, aliases, match):
    with pytest.raises(ParameterError, match=match):
        Selection(cut, aliases)


def test_jagged_or_numeric_cut_is_an_error():
    arrays = ak.Array({"n": np.array([0, 1]), "pt": ak.Array([[40.0], []])})
    with pytest.raises(ParameterError, match=r"any\(\.\.\.\) or all"):
        Selection("pt > 30").mask(arrays, 2)
    with pytest.raises(ParameterError, match="not true/false"):
        Selection("n + 1").mask(arrays, 2)


def test_mask_round_trip():
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 9, 1000):
        mask = rng.random(size) < 0.3
        np.testing.assert_array_equal(decode_mask(encode_mask(mask), size), mask)


# -- the first pass -------------------------------------------------------------------------


def test_specs_see_the_events_after_the_cut(files):
    specs = SpecBuilder(files, cut=CUT, aliases=ALIASES, exclude=["run"]).build()
    expected = [uproot_uids(p, CUT) for p in files]
    assert [f.selected for f in specs.files] == [len(u) for u in expected]
    assert specs.n_events == sum(len(u) for u in expected)
    for f, uids in zip(specs.files, expected, strict=True):
        kept = np.flatnonzero(decode_mask(f.mask, f.entries))
        np.testing.assert_array_equal(kept, uids % ID)
    # statistics of the surviving events, derived branches included, flat or jagged
    assert specs["HT"].kind == "flat" and specs["log_Jet_pt"].kind == "jagged" and specs["MET2"].kind == "flat"
    met = np.concatenate([ak.to_numpy(uproot_arrays(p, ["MET_pt"], CUT)["MET_pt"]) for p in files])
    assert specs["MET_pt"].min == pytest.approx(float(met.min())) and specs["MET_pt"].count == met.size
    assert specs["MET2"].max == pytest.approx(float(met.max()) ** 2, rel=1e-6)
    assert specs.selection["cut"] == CUT and specs.selection["aliases"] == ALIASES


def test_specs_cache_is_not_reused_across_cuts(files, tmp_path):
    cache = tmp_path / "specs.json"
    plain = SpecBuilder(files, exclude=["run"]).build(cache=cache)
    assert plain.files[0].selected is None
    with pytest.warns(SpecsMismatchWarning, match="another branch selection"):
        cut = SpecBuilder(files, exclude=["run"], cut=CUT).build(cache=cache)
    assert cut.n_events < plain.n_events
    assert Specs.load(cache).files[0].mask == cut.files[0].mask  # the mask round-trips through JSON
    assert json.loads(cache.read_text())["selection"]["cut"] == CUT


def test_cut_naming_a_missing_branch_is_a_branch_error(files):
    with pytest.raises(BranchError, match="nMuon"):
        SpecBuilder(files, cut="nMuon >= 1").build()
    with pytest.raises(BranchError, match="alias 'x'"):
        RootSequence(files, labels=[0, 1, 2], aliases={"x": "log(Muon_pt)"})
    with pytest.raises(BranchError, match="names of branches"):
        RootSequence(files, labels=[0, 1, 2], aliases={"nPV": "MET_pt * 2"})


# -- the events served ----------------------------------------------------------------------


def _serve(seq) -> tuple[np.ndarray, list[int]]:
    col = seq.feature_names.index("uid")
    uids, sizes = [], []
    for i in range(len(seq)):
        x = seq[i][0]
        uids.append(x[:, col].astype(np.int64))
        sizes.append(len(x))
    seq.on_epoch_end()
    return np.concatenate(uids), sizes


@pytest.mark.parametrize("chunk_size", [100, 333, -1])
def test_sequence_serves_exactly_the_events_the_cut_selects(files, chunk_size):
    seq = RootSequence(
        files,
        labels=[0, 1, 2],
        cut=CUT,
        aliases=ALIASES,
        normalization=None,
        batch_size=50,
        chunk_size=chunk_size,
        seed=3,
    )
    expected = np.concatenate([uproot_uids(p, CUT) for p in files])
    assert seq.n_events == expected.size and len(seq) == -(-expected.size // 50)
    plan = seq.reader.plan
    assert (plan.sizes[:-1] == (chunk_size if chunk_size > 0 else expected.size)).all()
    # proportional chunks: each file's share of a chunk is within one of its share of survivors
    share = np.array([len(uproot_uids(p, CUT)) for p in files]) / expected.size
    assert (np.abs(plan.counts[:-1] - plan.sizes[:-1, None] * share) < 1).all()
    for _ in range(2):
        uids, sizes = _serve(seq)
        assert sorted(uids.tolist()) == sorted(expected.tolist())  # each surviving event exactly once
        assert all(s == 50 for s in sizes[:-1])
    seq.close()


def test_derived_features_match_uproot_aliases(files):
    seq = RootSequence(
        files[:1],
        labels=[1],
        cut=CUT,
        aliases=ALIASES,
        normalization=None,
        batch_size=64,
        chunk_size=128,
        shuffle=False,
    )
    X = np.concatenate([seq[i][0] for i in range(len(seq))])
    ref = uproot_arrays(files[0], ["HT", "MET2", "log_Jet_pt"], CUT, ALIASES)
    names = seq.feature_names
    np.testing.assert_allclose(X[:, names.index("HT")], ak.to_numpy(ref["HT"]), rtol=1e-6)
    np.testing.assert_allclose(X[:, names.index("MET2")], ak.to_numpy(ref["MET2"]), rtol=1e-6)
    first = ak.to_numpy(ak.fill_none(ak.firsts(ref["log_Jet_pt"]), 0.0))
    np.testing.assert_allclose(X[:, names.index("log_Jet_pt_0")], first, rtol=1e-6)
    seq.close()


def test_validation_split_and_reused_specs_count_survivors(files):
    kw = dict(labels=[0, 1, 2], cut=CUT, normalization=None, batch_size=40, chunk_size=200, validation_split=0.25)
    kw["seed"] = 1
    train = RootSequence(files, subset="training", **kw)
    val = RootSequence(files, subset="validation", specs=train.specs, **kw)
    train_uids, _ = _serve(train)
    val_uids, _ = _serve(val)
    expected = np.concatenate([uproot_uids(p, CUT) for p in files])
    assert not set(train_uids.tolist()) & set(val_uids.tolist())
    assert sorted([*train_uids.tolist(), *val_uids.tolist()]) == sorted(expected.tolist())
    for p, i in zip(files, range(3), strict=True):  # validation holds each file's last surviving events
        survivors = uproot_uids(p, CUT)
        n_val = int(len(survivors) * 0.25)
        assert set(val_uids[val_uids // ID == i].tolist()) == set(survivors[len(survivors) - n_val :].tolist())
    # specs made without the cut: the survivors are found by a pass over the cut's branches
    plain = SpecBuilder(files).build()
    seq = RootSequence(files, specs=plain, **{**kw, "validation_split": None})
    assert sorted(_serve(seq)[0].tolist()) == sorted(expected.tolist())
    for s in (train, val, seq):
        s.close()


# -- property test: exactly once, with a cut ------------------------------------------------

_written: dict[tuple[int, int], object] = {}


def _expected_with_cut(survivors: list[np.ndarray], nevts: int, split: float | None, subset: str | None) -> set[int]:
    """The uids to serve, from the documented rules applied to the surviving events (uproot's cut)."""
    sizes = [len(s) for s in survivors]
    total = sum(sizes)
    n_use = total if nevts == -1 or nevts >= total else nevts
    used = [n_use * e // total for e in sizes] if total else [0] * len(sizes)
    left = n_use - sum(used)
    for i in sorted(range(len(sizes)), key=lambda i: (-(n_use * sizes[i] - used[i] * total), i))[:left]:
        used[i] += 1
    out: set[int] = set()
    for s, n in zip(survivors, used, strict=True):
        n_val = int(n * split) if split else 0
        lo, hi = (n - n_val, n) if subset == "validation" else (0, n - n_val)
        out.update(s[lo:hi].tolist())
    return out


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.lists(st.integers(1, 250), min_size=1, max_size=3),
    met=st.floats(0, 80),
    jet=st.floats(0, 120),
    chunk_size=st.one_of(st.just(-1), st.integers(8, 300)),
    batch_size=st.integers(1, 8),
    nevts=st.one_of(st.just(-1), st.integers(1, 400)),
    split=st.one_of(st.none(), st.floats(0.1, 0.5)),
    shuffle=st.booleans(),
)
def test_every_surviving_event_exactly_once(
    tmp_path_factory, make_tree, entries, met, jet, chunk_size, batch_size, nevts, split, shuffle
):
    files = []
    for i, n in enumerate(entries):
        key = (i, n)
        if key not in _written:
            path = tmp_path_factory.mktemp("prop") / f"p{i}_{n}.root"
            _written[key] = make_tree(path, n, seed=i, file_id=i, basket=37)
        files.append(_written[key])
    cut = f"(MET_pt > {met}) | any(Jet_pt > {jet})"
    survivors = [uproot_uids(p, cut) for p in files]
    for subset in ["training", "validation"] if split else [None]:
        expected = _expected_with_cut(survivors, nevts, split, subset)
        kw = dict(labels=list(range(len(files))), cut=cut, branches=["uid"], normalization=None, chunk_size=chunk_size)
        kw |= dict(batch_size=batch_size, nevts=nevts, shuffle=shuffle, seed=5, validation_split=split, subset=subset)
        if not expected:
            with pytest.raises(ParameterError, match="no events"), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                RootSequence(files, **kw)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nevts above the survivors: all are used, with a warning
            seq = RootSequence(files, **kw)
        assert seq.n_events == len(expected)
        uids, sizes = _serve(seq)
        assert len(uids) == len(expected) and set(uids.tolist()) == expected
        assert all(s == batch_size for s in sizes[:-1])
        if chunk_size > 0:
            assert (seq.reader.plan.sizes[:-1] == chunk_size).all()
        seq.close()
