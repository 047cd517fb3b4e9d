"""Tests of mlaas4hep.workflow.demo.make_demo_files (the synthetic NanoAOD-like demo files)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from uproot.interpretation.jagged import AsJagged

from mlaas4hep.workflow.demo import make_demo_files

N = 3_000
COLLECTIONS = ("Muon", "Electron", "Tau", "Jet")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_demo_files(tmp_path_factory.mktemp("demo") / "sub", N, seed=7, step=1_000)


def _read(path: Path) -> ak.Array:
    with uproot.open(path) as f:
        return f["Events"].arrays()


def test_files_and_sizes(demo: list[Path]) -> None:
    assert [p.name for p in demo] == ["GluGluToHToTauTau.root", "VBF_HToTauTau.root"]
    sizes = []
    for p in demo:
        assert p.is_file()
        with uproot.open(p) as f:
            tree = f["Events"]
            assert isinstance(tree, uproot.TTree)
            assert tree.branches
            sizes.append(tree.num_entries)
            assert tree["event"].num_baskets == -(-tree.num_entries // 1_000)  # pieces of `step`
    assert sizes == [N, N + N * 3 // 100]


def test_schema(demo: list[Path]) -> None:
    schemas = []
    for p in demo:
        with uproot.open(p) as f:
            branches = f["Events"].branches
            schemas.append([(b.name, str(b.interpretation)) for b in branches])
            jagged = [b.name for b in branches if isinstance(b.interpretation, AsJagged)]
            flat = [b.name for b in branches if not isinstance(b.interpretation, AsJagged)]
        assert len(branches) == 66
        assert len(flat) == 18
        assert len(jagged) == 48
        for c in COLLECTIONS:
            assert f"n{c}" in flat
            assert sum(name.startswith(f"{c}_") for name in jagged) == 12
            assert {f"{c}_{v}" for v in ("pt", "eta", "phi", "mass")} <= set(jagged)
        assert {"run", "luminosityBlock", "event", "PV_npvs", "MET_pt", "HLT_IsoMu24"} <= set(flat)
    assert schemas[0] == schemas[1]  # same names, order and dtypes in both files


def test_contents(demo: list[Path]) -> None:
    for p in demo:
        a = _read(p)
        for c in COLLECTIONS:
            assert np.array_equal(ak.to_numpy(a[f"n{c}"]), ak.to_numpy(ak.num(a[f"{c}_pt"])))
            pt = a[f"{c}_pt"]
            assert ak.all(pt > 0)
            assert ak.all(pt[:, :-1] >= pt[:, 1:])  # pt-descending like NanoAOD
            assert ak.all(abs(a[f"{c}_phi"]) <= np.pi)
        assert ak.all(abs(a.Jet_eta) <= 4.7)
        assert ak.all(abs(a.Muon_eta) <= 2.5)
        event = ak.to_numpy(a.event)
        assert len(np.unique(event)) == len(event)
        # a long tail: few objects on average, a few busy events
        assert ak.mean(a.nJet) < 3
        assert ak.max(a.nJet) > 15
    # identifiers come from the same range in both files
    e0, e1 = (ak.to_numpy(_read(p).event) for p in demo)
    assert abs(np.median(e0.astype(float)) / np.median(e1.astype(float)) - 1) < 0.2


def test_vbf_has_more_forward_jets(demo: list[Path]) -> None:
    def forward_pairs(a: ak.Array) -> float:
        two = a[a.nJet >= 2]
        deta = abs(two.Jet_eta[:, 0] - two.Jet_eta[:, 1])
        return float(ak.sum(deta > 3.5)) / len(a)

    ggh, vbf = (_read(p) for p in demo)
    assert forward_pairs(vbf) > 1.5 * forward_pairs(ggh)
    assert ak.mean(vbf.nJet) > ak.mean(ggh.nJet)


def test_deterministic(tmp_path: Path, demo: list[Path]) -> None:
    again = make_demo_files(tmp_path / "again", N, seed=7, step=500)
    other = make_demo_files(tmp_path / "other", N, seed=8)
    for p, q, r in zip(demo, again, other, strict=True):
        a, b, c = _read(p), _read(q), _read(r)
        for name in ("event", "Jet_pt", "Muon_eta", "Tau_decayMode", "MET_pt"):
            assert ak.array_equal(a[name], b[name])
        assert not ak.array_equal(a.Jet_pt, c.Jet_pt)
        assert not ak.array_equal(a.event, c.event)


def test_overwrite_false_keeps_files(tmp_path: Path) -> None:
    paths = make_demo_files(tmp_path, 200, seed=1)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = make_demo_files(tmp_path, 500, seed=2, overwrite=False)
    assert again == paths
    assert [p.stat().st_mtime_ns for p in again] == mtimes
    with uproot.open(paths[0]) as f:
        assert f["Events"].num_entries == 200
    rewritten = make_demo_files(tmp_path, 500, seed=2)
    with uproot.open(rewritten[0]) as f:
        assert f["Events"].num_entries == 500
    assert not list(tmp_path.glob("*.tmp"))


def test_tiny_file(tmp_path: Path) -> None:
    paths = make_demo_files(str(tmp_path), 1)
    assert [_read(p).layout.length for p in paths] == [1, 1]


@pytest.mark.parametrize("n_events", [0, -5, 2.5, True])
def test_bad_n_events(tmp_path: Path, n_events: object) -> None:
    with pytest.raises(ValueError, match="n_events"):
        make_demo_files(tmp_path, n_events)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_bad_step(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="step"):
        make_demo_files(tmp_path, 10, step=0)
