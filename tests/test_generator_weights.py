"""Generator weights: cross section x luminosity x genWeight / the sample's sum of generator weights, per event.

NanoAOD-like files hold ``Events`` (``uid``, ``genWeight`` with negative values, a
feature) and ``Runs`` (``genEventSumw``, one entry per run). The sum of a sample
comes from ``Runs`` over all the files of its entry (a pattern), or from the
``genWeight`` branch where a file has no ``Runs``; each event's weight is
checked by its ``uid``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep import BranchError, ParameterError
from mlaas4hep.options import Options

keras = pytest.importorskip("keras")

from mlaas4hep import RootSequence  # noqa: E402

ID = 1_000_000  # uid = file_id * ID + entry
LUMI = 59.7
XS = {"DY": 6000.0, "tt": 830.0}
# per file: (file id, events, the Runs tree's genEventSumw entries or None for no Runs tree)
FILES = {
    "DY_1.root": (1, 300, [1.5e4, 2.5e4, 1.0e4]),
    "DY_2.root": (2, 200, [3.0e4, 0.5e4]),
    "tt.root": (3, 250, [7.0e3, 4.0e3]),
    "plain_1.root": (4, 150, None),
    "plain_2.root": (5, 120, None),
}
KW: dict[str, Any] = {"normalization": None, "batch_size": 50, "chunk_size": 200, "seed": 3}
LOGGER = "mlaas4hep.inputs.generator"


def write_nano(path: Path, file_id: int, n: int, runs: list[float] | None) -> Path:
    """``Events`` with ``uid``, ``genWeight`` (about 1 in 5 negative) and ``MET_pt``; ``Runs`` unless None."""
    rng = np.random.default_rng(file_id)
    sign = np.where(rng.random(n) < 0.2, -1.0, 1.0)
    events = {
        "uid": (file_id * ID + np.arange(n)).astype(np.int64),
        "genWeight": (sign * rng.uniform(50.0, 150.0, n)).astype(np.float32),
        "MET_pt": rng.exponential(30.0, n).astype(np.float32),
    }
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: v.dtype for k, v in events.items()})
        f["Events"].extend(events)
        if runs is not None:
            table = {"run": np.arange(1, len(runs) + 1, dtype=np.uint32), "genEventSumw": np.asarray(runs)}
            f.mktree("Runs", {k: v.dtype for k, v in table.items()})
            f["Runs"].extend(table)
    return path


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nano")
    for name, (file_id, n, runs) in FILES.items():
        write_nano(d / name, file_id, n, runs)
    return d


def gen_weights(paths: list[Path]) -> dict[int, float]:
    """Each event's genWeight, by uid."""
    out: dict[int, float] = {}
    for p in paths:
        a = uproot.open(p)["Events"].arrays(["uid", "genWeight"])
        out.update(zip(ak.to_numpy(a["uid"]).tolist(), ak.to_numpy(a["genWeight"]).astype(np.float64), strict=True))
    return out


def branch_sum(paths: list[Path]) -> float:
    return math.fsum(
        float(uproot.open(p)["Events"]["genWeight"].array(library="np").sum(dtype=np.float64)) for p in paths
    )


def runs_sum(names: list[str]) -> float:
    return math.fsum(math.fsum(FILES[n][2] or []) for n in names)


def served(seq: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uid, y and w of every event of one epoch."""
    uid, ys, ws = [], [], []
    for i in range(len(seq)):
        x, y, w = seq[i]
        uid.append(x[:, seq.feature_names.index("uid")].astype(np.int64))
        ys.append(y)
        ws.append(w)
    seq.on_epoch_end()
    return np.concatenate(uid), np.concatenate(ys), np.concatenate(ws)


def test_each_event_weighs_xsec_lumi_genweight_over_its_samples_runs_sum(nano: Path) -> None:
    """DY in two files (a pattern) is normalized by genEventSumw summed over both files' Runs trees."""
    seq = RootSequence(
        [f"{nano}/DY_*.root", nano / "tt.root"],
        labels=[0, 1],
        weights="genWeight",
        cross_sections=[XS["DY"], XS["tt"]],
        luminosity=LUMI,
        **KW,
    )
    s_dy, s_tt = runs_sum(["DY_1.root", "DY_2.root"]), runs_sum(["tt.root"])
    assert s_dy != pytest.approx(branch_sum([nano / "DY_1.root", nano / "DY_2.root"]))  # the test can tell them apart
    gen = gen_weights([nano / "DY_1.root", nano / "DY_2.root", nano / "tt.root"])
    uid, y, w = served(seq)
    assert sorted(uid.tolist()) == sorted(gen)  # every event once
    sample = uid // ID == 3  # tt
    factor = np.where(sample, XS["tt"] * LUMI / s_tt, XS["DY"] * LUMI / s_dy)
    expected = factor * np.array([gen[u] for u in uid.tolist()])
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    np.testing.assert_array_equal(y, sample.astype(y.dtype))
    assert (w < 0).any()  # negative generator weights stay negative
    assert seq.prepared.outputs.file_weights is not None
    assert seq.prepared.outputs.file_weights.tolist() == [XS["DY"] * LUMI / s_dy] * 2 + [XS["tt"] * LUMI / s_tt]


def test_the_same_as_file_weights_given_by_hand(nano: Path) -> None:
    files = [f"{nano}/DY_*.root", str(nano / "tt.root")]
    hand = [XS["DY"] * LUMI / runs_sum(["DY_1.root", "DY_2.root"]), XS["tt"] * LUMI / runs_sum(["tt.root"])]
    auto = RootSequence(
        files, labels=[0, 1], weights="genWeight", cross_sections=list(XS.values()), luminosity=LUMI, **KW
    )
    by_hand = RootSequence(files, labels=[0, 1], weights="genWeight", file_weights=hand, **KW)
    assert auto.prepared.outputs.file_weights is not None and by_hand.prepared.outputs.file_weights is not None
    np.testing.assert_array_equal(auto.prepared.outputs.file_weights, by_hand.prepared.outputs.file_weights)
    for a, b in zip(served(auto), served(by_hand), strict=True):
        np.testing.assert_array_equal(a, b)


def test_files_without_runs_sum_the_branch_over_all_entries_before_the_cut(
    nano: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    paths = [nano / "plain_1.root", nano / "plain_2.root"]
    seq = RootSequence(
        [f"{nano}/plain_*.root"], labels=[1], weights="genWeight", cross_sections=[2.0], luminosity=10.0,
        cut="MET_pt > 20", **KW,
    )  # fmt: skip
    total = branch_sum(paths)
    gen = gen_weights(paths)
    uid, _, w = served(seq)
    assert 0 < len(uid) < len(gen)  # the cut served some, the sum counted all
    np.testing.assert_allclose(w, [2.0 * 10.0 * gen[u] / total for u in uid.tolist()], rtol=1e-6)
    message = next(r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert "summed from the branch 'genWeight'" in message
    assert all(str(p) in message for p in paths)


def test_an_entry_with_a_file_without_runs_sums_the_branch_of_all_its_files(
    nano: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    files = [str(nano / "DY_1.root"), str(nano / "plain_1.root")]
    seq = RootSequence(
        {f: "Events" for f in files}, labels=[0, 0], weights="genWeight", cross_sections=[1.0, 1.0],
        luminosity=1.0, **KW,
    )  # fmt: skip
    assert seq.prepared.outputs.file_weights is not None
    np.testing.assert_allclose(
        seq.prepared.outputs.file_weights, [1 / runs_sum(["DY_1.root"]), 1 / branch_sum([nano / "plain_1.root"])]
    )
    messages = " ".join(r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert "from the Runs tree's genEventSumw" in messages and "summed from the branch" in messages


def test_a_pattern_mixing_files_with_and_without_runs_sums_the_branch(
    nano: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    mixed = nano / "mixed"
    mixed.mkdir(exist_ok=True)
    write_nano(mixed / "s_1.root", 1, 300, [1.5e4, 2.5e4, 1.0e4])
    write_nano(mixed / "s_2.root", 4, 150, None)
    seq = RootSequence(
        [f"{mixed}/s_*.root"], labels=[1], weights="genWeight", cross_sections=[3.0], luminosity=2.0, **KW
    )
    total = branch_sum([mixed / "s_1.root", mixed / "s_2.root"])
    assert seq.prepared.outputs.file_weights is not None
    assert seq.prepared.outputs.file_weights.tolist() == [3.0 * 2.0 / total] * 2
    message = next(r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert "summed from the branch" in message and f"in ['{mixed / 's_2.root'}" in message


def test_parquet_files_sum_the_branch(nano: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    events = uproot.open(nano / "tt.root")["Events"].arrays(library="np")
    pq.write_table(pa.table(events), tmp_path / "tt.parquet")
    seq = RootSequence(
        [tmp_path / "tt.parquet"], labels=[1], weights="genWeight", cross_sections=[5.0], luminosity=3.0, **KW
    )
    gen = gen_weights([nano / "tt.root"])
    uid, _, w = served(seq)
    np.testing.assert_allclose(w, [15.0 * gen[u] / branch_sum([nano / "tt.root"]) for u in uid.tolist()], rtol=1e-6)


def test_class_balancing_applies_on_top(nano: Path) -> None:
    seq = RootSequence(
        [f"{nano}/DY_*.root", nano / "tt.root"], labels=[0, 1], weights="genWeight",
        cross_sections=[XS["DY"], XS["tt"]], luminosity=LUMI, balance_classes=True, **KW,
    )  # fmt: skip
    gen = gen_weights([nano / "DY_1.root", nano / "DY_2.root", nano / "tt.root"])
    uid, y, w = served(seq)
    totals = np.bincount(y.astype(int), weights=w.astype(np.float64))
    np.testing.assert_allclose(totals, totals.mean(), rtol=1e-5)
    s = {0: runs_sum(["DY_1.root", "DY_2.root"]), 1: runs_sum(["tt.root"])}
    xs = {0: XS["DY"], 1: XS["tt"]}
    unbalanced = np.array([xs[int(c)] * LUMI * gen[u] / s[int(c)] for u, c in zip(uid.tolist(), y, strict=True)])
    for c in (0, 1):  # one balancing factor per class, on top of the generator weights
        ratio = w[y == c] / unbalanced[y == c]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cross_sections": [1.0, 2.0]}, "cross_sections needs luminosity"),
        ({"luminosity": 10.0}, "luminosity=10.0 needs cross_sections"),
        ({"cross_sections": [1.0, 2.0], "luminosity": 10.0, "weights": None}, "cross_sections needs weights"),
        ({"cross_sections": [1.0, 2.0], "luminosity": 10.0, "file_weights": [1, 1]}, "cross_sections and file_weights"),
        ({"cross_sections": [1.0, -2.0], "luminosity": 10.0}, r"cross_sections\[1\] must be a finite positive"),
        ({"cross_sections": [1.0, math.nan], "luminosity": 10.0}, r"cross_sections\[1\] must be a finite positive"),
        ({"cross_sections": "1, 2", "luminosity": 10.0}, "cross_sections must be finite positive numbers"),
        ({"cross_sections": [1.0, 2.0], "luminosity": 0}, "luminosity must be a finite positive number"),
        ({"cross_sections": [1.0, 2.0], "luminosity": math.inf}, "luminosity must be a finite positive number"),
    ],
)
def test_bad_generator_options_are_refused_before_any_file_is_opened(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    given = {"weights": "genWeight", **kwargs}
    with pytest.raises(ParameterError, match=match):
        RootSequence([tmp_path / "missing_a.root", tmp_path / "missing_b.root"], labels=[1, 0], **given)
    with pytest.raises(ParameterError, match=match):
        Options(**given)


def test_not_one_cross_section_per_entry(nano: Path) -> None:
    with pytest.raises(ParameterError, match="got 3 cross_sections for 2 entries of files"):
        RootSequence(
            [f"{nano}/DY_*.root", nano / "tt.root"], labels=[0, 1], weights="genWeight",
            cross_sections=[1.0, 2.0, 3.0], luminosity=1.0,
        )  # fmt: skip


def test_a_sum_that_is_not_positive_is_refused_naming_the_files(tmp_path: Path) -> None:
    path = write_nano(tmp_path / "zero.root", 7, 10, [0.0, 0.0])
    with pytest.raises(ParameterError, match=r"generator weights of \[.*zero.root.*\] sum to 0.0"):
        RootSequence(
            [path], labels=[1], weights="genWeight", cross_sections=[1.0], luminosity=1.0, batch_size=5, chunk_size=5
        )


def test_a_weights_branch_missing_from_a_file_without_runs_names_the_file(nano: Path) -> None:
    with pytest.raises(BranchError, match=r"weights 'LHEWeight' needs \['LHEWeight'\], not a branch of .*plain_1.root"):
        RootSequence([nano / "plain_1.root"], labels=[1], weights="LHEWeight", cross_sections=[1.0], luminosity=1.0)


def test_an_alias_as_the_weight_is_summed_as_computed(nano: Path) -> None:
    path = nano / "plain_1.root"
    seq = RootSequence(
        [path], labels=[1], weights="w2", aliases={"w2": "2 * genWeight"}, exclude=["genWeight"],
        cross_sections=[1.0], luminosity=1.0, **KW,
    )  # fmt: skip
    assert seq.prepared.outputs.file_weights is not None
    np.testing.assert_allclose(seq.prepared.outputs.file_weights, [1 / (2 * branch_sum([path]))], rtol=1e-12)
    gen = gen_weights([path])
    uid, _, w = served(seq)
    np.testing.assert_allclose(w, [gen[u] / branch_sum([path]) for u in uid.tolist()], rtol=1e-6)
