"""No label leaks: what a model learns from must not hold its answer, and a name that names nothing is an error.

* an ``exclude`` name or pattern that matches no branch nor alias is a
  BranchError naming it (``exclude=["Nmuon"]`` for ``NMuon`` left ``NMuon`` a
  feature, silently), on every path: the first pass, ready specs, a specs
  file, :class:`SpecBuilder` and the ``specs`` command;
* a label, target or weight computed through ``aliases`` from a branch that
  is also a feature (itself, or through an alias) is a BranchError naming the
  branch and the output, unless ``allow_leaks`` names that branch;
* an alias may be the label branch: never a feature, its branches leak as any.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep import BranchError, ParameterError, SpecBuilder
from mlaas4hep.inputs.selection import Selection
from mlaas4hep.options import Options
from mlaas4hep.stream.safeguards import check_leaks
from mlaas4hep.transform.outputs import Outputs

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence  # noqa: E402

N = (300, 200)
TWO_MU = {"two_mu": "NMuon >= 2"}


def _events(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.5, n)
    return {
        "uid": np.arange(n, dtype=np.int64) + 10_000 * seed,
        "NMuon": rng.poisson(1.5, n).astype(np.int32),
        "MET_pt": rng.exponential(30.0, n),
        "isSig": (rng.random(n) < 0.5).astype(np.int32),
        "Muon_pt": ak.unflatten(rng.exponential(20.0, int(counts.sum())), counts),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("leaks")
    out = []
    for seed, n in enumerate(N, start=1):
        data = _events(n, seed)
        path = d / f"m{seed}.root"
        with uproot.recreate(path) as f:
            f.mktree("Events", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
            f["Events"].extend(data)
        out.append(str(path))
    return out


def _truth(files: list[str]) -> dict[int, dict[str, float]]:
    """Each event's branches, by its uid."""
    out: dict[int, dict[str, float]] = {}
    for file in files:
        arrays = uproot.open(file)["Events"].arrays(["uid", "NMuon", "MET_pt", "isSig"], library="np")
        for i, uid in enumerate(arrays["uid"]):
            out[int(uid)] = {k: float(v[i]) for k, v in arrays.items()}
    return out


def _seq(files: list[str], labels: Any = (1, 0), **kw: Any) -> RootSequence:
    kw = {"batch_size": 50, "chunk_size": 100, "retries": 0, "seed": 1, **kw}
    return RootSequence(files, None if labels is None else labels if isinstance(labels, str) else list(labels), **kw)


def _served(seq: RootSequence) -> tuple[np.ndarray, np.ndarray]:
    """The uid and ``y`` of every event of one pass over ``seq`` (whose features hold ``uid`` unscaled)."""
    col = seq.feature_names.index("uid")
    batches = [seq[i] for i in range(len(seq))]
    uid = np.concatenate([b[0][:, col] for b in batches]).astype(np.int64)
    return uid, np.concatenate([b[1] for b in batches])


# -- 1. an exclude that matches nothing ---------------------------------------------------------------


def test_the_issue_s_typo_in_exclude_is_an_error_naming_it(files: list[str]) -> None:
    """The user's call: ``Nmuon`` for ``NMuon``; it used to train with ``NMuon`` a feature, silently."""
    with pytest.raises(BranchError, match=r"exclude 'Nmuon' matches no branch .* did you mean 'NMuon'\?"):
        _seq(files, None, exclude=["Nmuon", "Muon_*"], targets="two_mu", aliases=TWO_MU)


@pytest.mark.parametrize("pattern", ["Electron_*", "met_pt", "Muon_pt_[0-9]"])
def test_an_exclude_that_matches_nothing_is_an_error_on_every_path(
    files: list[str], tmp_path: Path, pattern: str
) -> None:
    specs = SpecBuilder(files).build()
    specs.save(tmp_path / "specs.json")
    culprit = re.escape(f"exclude {pattern!r}")
    for ready in (None, specs, tmp_path / "specs.json"):
        with pytest.raises(BranchError, match=culprit):
            _seq(files, specs=ready, exclude=["MET_pt", pattern])
    with pytest.raises(BranchError, match=culprit):
        SpecBuilder(files, exclude=[pattern]).build()
    if pattern == "met_pt":  # the same name but for case is suggested
        with pytest.raises(BranchError, match="did you mean 'MET_pt'"):
            _seq(files, exclude=[pattern])


def test_exclude_may_name_an_alias_a_skipped_kind_or_the_default_identifiers(files: list[str]) -> None:
    """``run``, ``event`` and ``luminosityBlock`` are excluded by default (and by params.json): many files lack them."""
    seq = _seq(
        files,
        exclude=["run", "event", "luminosityBlock", "twice", "Muon_*", "nMuon*"],
        aliases={"twice": "2 * MET_pt"},
    )
    assert seq.specs.names == ["MET_pt", "NMuon", "isSig", "uid"]
    assert SpecBuilder(files, exclude=["run", "twice"], aliases={"twice": "2 * MET_pt"}).build().names[0] == "MET_pt"


def test_the_specs_command_refuses_an_exclude_that_matches_nothing(
    files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlaas4hep.workflow.cli import main

    assert main(["-v", "0", "specs", files[0]]) == 0  # the default --exclude run,event,luminosityBlock: none is here
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["-v", "0", "specs", files[0], "--exclude", "run,Nmuon"])
    assert info.value.code == 2
    assert "exclude 'Nmuon'" in capsys.readouterr().err


# -- 2. labels, targets and weights computed from a feature ---------------------------------------------


def test_a_target_computed_from_a_feature_is_an_error_naming_both(files: list[str]) -> None:
    with pytest.raises(BranchError) as info:
        _seq(files, None, exclude=["Muon_*"], targets="two_mu", aliases=TWO_MU)
    text = str(info.value)
    assert "targets 'two_mu' is computed from 'NMuon', which is also a feature" in text
    assert "exclude=['NMuon']" in text and "allow_leaks=['NMuon']" in text
    # excluded: served, and NMuon is no feature; each event's y is its own (the uid says whose)
    seq = _seq(files, None, exclude=["NMuon"], targets="two_mu", aliases=TWO_MU, normalization=None)
    assert "NMuon" not in seq.specs.names and "two_mu" not in seq.specs.names
    uid, y = _served(seq)
    truth = _truth(files)
    assert sorted(uid.tolist()) == sorted(truth)
    np.testing.assert_array_equal(y, [truth[int(u)]["NMuon"] >= 2 for u in uid])


def test_allow_leaks_allows_the_branches_it_names_and_no_other(files: list[str]) -> None:
    aliases = {"t": "NMuon * MET_pt"}
    with pytest.raises(BranchError) as info:
        _seq(files, None, targets="t", aliases=aliases, allow_leaks=["NMuon"])
    text = str(info.value)
    assert "computed from 'MET_pt'" in text and "'NMuon'" not in text
    seq = _seq(files, None, targets="t", aliases=aliases, allow_leaks=["NMuon", "MET_*"])
    assert {"NMuon", "MET_pt"} <= set(seq.specs.names)
    assert seq.options.allow_leaks == ("NMuon", "MET_*")


def test_a_leak_through_an_alias_that_is_a_feature(files: list[str]) -> None:
    """An alias can refer to other aliases: ``nmu`` is a feature and ``two_mu`` reads it."""
    aliases = {"nmu": "NMuon", "two_mu": "nmu >= 2"}
    with pytest.raises(
        BranchError, match=r"'two_mu' is computed from 'NMuon', .* through the alias 'nmu'.*exclude=\['nmu'\]"
    ):
        _seq(files, None, exclude=["NMuon"], targets="two_mu", aliases=aliases)
    seq = _seq(files, None, exclude=["NMuon", "nmu"], targets="two_mu", aliases=aliases)
    assert not {"NMuon", "nmu", "two_mu"} & set(seq.specs.names)


def test_a_label_branch_that_an_alias_feature_reads_is_a_leak(files: list[str]) -> None:
    with pytest.raises(BranchError, match=r"label branch 'isSig' is also a feature through the alias 'sig2'"):
        _seq(files, "isSig", aliases={"sig2": "isSig * 2"})
    assert "sig2" not in _seq(files, "isSig", aliases={"sig2": "isSig * 2"}, exclude=["sig2"]).specs.names


def test_weights_computed_from_a_feature_are_a_leak(files: list[str]) -> None:
    with pytest.raises(BranchError, match=r"weights 'w' is computed from 'MET_pt', which is also a feature"):
        _seq(files, weights="w", aliases={"w": "1 / MET_pt"})
    seq = _seq(files, weights="w", aliases={"w": "1 / MET_pt"}, allow_leaks=["MET_pt"])
    _, y, w = seq[0]
    assert "MET_pt" in seq.specs.names and w.shape == y.shape


def test_a_cut_is_no_leak(files: list[str]) -> None:
    seq = _seq(files, None, cut="NMuon >= 1", targets="hi_met", aliases={"hi_met": "MET_pt > 30"}, exclude=["MET_pt"])
    assert "NMuon" in seq.specs.names


def test_allow_leaks_that_names_nothing_is_an_error(files: list[str]) -> None:
    with pytest.raises(BranchError, match=r"allow_leaks 'Nmuon' matches no branch .* did you mean 'NMuon'"):
        _seq(files, None, targets="two_mu", aliases=TWO_MU, allow_leaks=["Nmuon"])
    with pytest.raises(ParameterError, match="allow_leaks"):
        Options(allow_leaks=[3])
    assert Options(allow_leaks="NMuon").allow_leaks == ("NMuon",)
    assert "allow_leaks" in Options.names("RootSequence") and "allow_leaks" in Options.names("RootDataset")


def test_a_leak_is_refused_by_the_pytorch_face_too(files: list[str]) -> None:
    pytest.importorskip("torch")
    from mlaas4hep.torch import RootDataset

    with pytest.raises(BranchError, match="'two_mu' is computed from 'NMuon'"):
        RootDataset(files, targets="two_mu", aliases=TWO_MU, batch_size=50, chunk_size=100)


# -- 3. an alias as the label branch -----------------------------------------------------------------


def test_an_alias_label_is_never_a_feature_and_its_branches_leak(files: list[str]) -> None:
    with pytest.raises(BranchError, match=r"label 'is_sig' is computed from 'NMuon', which is also a feature"):
        _seq(files, "is_sig", aliases={"is_sig": "NMuon >= 2"})
    seq = _seq(files, "is_sig", aliases={"is_sig": "NMuon >= 2"}, exclude=["NMuon"])
    assert seq.label_branch == "is_sig"
    assert not {"is_sig", "NMuon"} & set(seq.specs.names)


def test_an_alias_label_that_gives_a_list_per_event_is_an_error(files: list[str]) -> None:
    with pytest.raises(BranchError, match=r"label 'hard' = 'Muon_pt > 30' gives a list per event.*any\(\.\.\.\)"):
        _seq(files, "hard", aliases={"hard": "Muon_pt > 30"}, exclude=["Muon_pt", "nMuon_pt"])


def test_an_alias_label_is_served_event_by_event(files: list[str]) -> None:
    seq = _seq(
        files,
        "is_sig",
        aliases={"is_sig": "NMuon >= 2"},
        branches=["uid", "MET_pt"],
        normalization=None,
        chunk_size=150,
    )
    uid, y = _served(seq)
    truth = _truth(files)
    assert sorted(uid.tolist()) == sorted(truth)
    np.testing.assert_array_equal(y, [float(truth[int(u)]["NMuon"] >= 2) for u in uid])
    assert set(np.unique(y).tolist()) == {0.0, 1.0}


# -- the rule, against perturbing the data -----------------------------------------------------------

BRANCHES = ("b0", "b1", "b2", "b3")


@st.composite
def _setups(draw: st.DrawFn) -> tuple[dict[str, str], list[str], list[tuple[str, str]], list[str]]:
    """Aliases (sums of earlier names, or a constant), the features, the outputs and the allowed branches."""
    aliases: dict[str, str] = {}
    for i in range(draw(st.integers(0, 4))):
        names = draw(st.lists(st.sampled_from([*BRANCHES, *aliases]), max_size=3, unique=True))
        aliases[f"a{i}"] = " + ".join(names) or "1.5"
    pool = [*BRANCHES, *aliases]
    target = draw(st.sampled_from(pool))
    weights = draw(st.none() | st.sampled_from(pool))
    outputs = [("targets", target)] + ([("weights", weights)] if weights else [])
    plain = {name for _, name in outputs}  # outputs are never features themselves
    features = draw(st.lists(st.sampled_from([n for n in pool if n not in plain]), unique=True))
    allowed = draw(st.lists(st.sampled_from(BRANCHES), unique=True))
    return aliases, features, outputs, allowed


def _depends(selection: Selection, name: str, branch: str) -> bool:
    """Whether ``name``'s values change when ``branch``'s do: evaluated, not read off the expressions."""
    base = {b: np.arange(3.0) + i for i, b in enumerate(BRANCHES)}
    moved = {**base, branch: base[branch] + 1.0}
    values = [selection.derive(arrays, [name], 3).get(name, arrays.get(name)) for arrays in (base, moved)]
    return not np.array_equal(*np.broadcast_arrays(*values))


@settings(max_examples=200, deadline=None)
@given(_setups())
def test_a_leak_is_a_branch_that_moves_both_an_output_and_a_feature(
    setup: tuple[dict[str, str], list[str], list[tuple[str, str]], list[str]],
) -> None:
    aliases, features, outputs, allowed = setup
    selection = Selection(None, aliases)
    named = dict(outputs)
    out = Outputs(1, targets=named["targets"], weights=named.get("weights"))
    leaks = {
        b
        for b in BRANCHES
        if b not in allowed
        and any(_depends(selection, name, b) for _, name in outputs)
        and any(_depends(selection, f, b) for f in features)
    }
    if not leaks:
        check_leaks(features, selection, out, allowed)
        return
    with pytest.raises(BranchError) as info:
        check_leaks(features, selection, out, allowed)
    found = re.search(r"allow_leaks=(\[.*?\]) if it is meant$", str(info.value))
    assert found is not None
    assert set(ast.literal_eval(found.group(1))) == leaks
