"""Plots: numpy ROC against scikit-learn, real PDF/PNG files on disk, and feature histograms a physicist reads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlaas4hep.errors import ParameterError
from mlaas4hep.workflow.histograms import plot_feature_histograms
from mlaas4hep.workflow.plots import (
    auc_score,
    feature_sample,
    plot_history,
    plot_roc,
    plot_sequence_features,
    roc_curve,
)

HISTORY = {
    "loss": [0.7, 0.6, 0.55],
    "val_loss": [0.65, 0.6, 0.58],
    "auc": [0.6, 0.7, 0.75],
    "val_auc": [0.62, 0.7, 0.72],
}


def _is_pdf(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]


def _scores(n: int = 2000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    s = np.round(rng.normal(y * 0.8, 1.0), 2)  # rounded: many ties
    return y.astype(np.float32), s


def test_roc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    y, s = _scores()
    fpr, tpr, thresholds = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    assert auc_score(fpr, tpr) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    ref_fpr, ref_tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_roc_needs_two_classes_and_equal_lengths() -> None:
    with pytest.raises(ParameterError, match="both classes"):
        roc_curve(np.ones(5), np.arange(5))
    with pytest.raises(ParameterError, match="must match"):
        roc_curve(np.array([0, 1]), np.arange(3))


def test_history_and_roc_files(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    plot_history(HISTORY, tmp_path / "history.png")
    plot_history(HISTORY, tmp_path / "history.pdf")
    y, s = _scores()
    fig = plot_roc(y, s, tmp_path / "roc.png")
    plot_roc(y, s, tmp_path / "roc.pdf")
    assert "AUC" in fig.axes[0].get_legend().get_texts()[0].get_text()
    for name in ("history.png", "roc.png"):
        pixels = image.imread(tmp_path / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0  # not a blank image
    assert _is_pdf(tmp_path / "history.pdf") and _is_pdf(tmp_path / "roc.pdf")


def test_history_needs_data() -> None:
    with pytest.raises(ParameterError, match="history"):
        plot_history({})


def test_feature_histograms_pdf_and_png(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(500, 3)) * [1, 10, 100]
    normalized = (raw - raw.min(axis=0)) / np.ptp(raw, axis=0)
    labels = (rng.random(500) < 0.5).astype(np.float32)
    mask = np.ones_like(raw, dtype=bool)
    mask[:100, 2] = False  # padded slots are left out
    names = ["a", "b", "Jet_pt[0]"]
    out = plot_feature_histograms(raw, normalized, labels, names, tmp_path / "features.pdf", mask=mask)
    assert out == tmp_path / "features.pdf" and _is_pdf(out)
    assert out.read_bytes().count(b"/Type /Page\n") + out.read_bytes().count(b"/Type /Page ") >= 1
    plot_feature_histograms(raw, normalized, labels, names, tmp_path / "png" / "feature.png", mask=mask)
    pngs = sorted((tmp_path / "png").glob("feature_*.png"))
    assert len(pngs) == 3
    assert image.imread(pngs[0]).size > 0
    with pytest.raises(ParameterError, match="n_events"):
        plot_feature_histograms(raw, normalized[:, :2], labels, names, tmp_path / "bad.pdf")


def test_missing_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'mlaas4hep\[plot\]'"):
        plot_history(HISTORY)


@pytest.mark.parametrize("missing", ["hist", "mplhep"])
def test_missing_hist_or_mplhep_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(sys.modules, missing, None)
    raw = np.ones((10, 1))
    with pytest.raises(ImportError, match=rf"pip install 'mlaas4hep\[plot\]' \({missing} is missing\)"):
        plot_feature_histograms(raw, raw, None, ["a"], tmp_path / "features.pdf")
    assert not (tmp_path / "features.pdf").exists()


def test_feature_plots_of_a_sequence_with_an_alias(two_files: list[Path], tmp_path: Path) -> None:
    """A feature that is an alias used to make the feature plots fail with BranchError."""
    pytest.importorskip("keras")
    from mlaas4hep import RootSequence

    seq = RootSequence(
        two_files, labels=[1, 0], branches=["MET_pt", "HT"], aliases={"HT": "sum(Jet_pt)"}, chunk_size=500
    )
    sample = feature_sample(seq, max_events=300)
    assert sample["names"] == ["HT", "MET_pt"]
    assert sample["raw"].shape == (300, 2) and np.all(sample["raw"][:, 0] >= 0)  # HT: a sum of jet pts
    np.testing.assert_allclose(sample["normalized"].min(axis=0) >= 0, True)
    assert _is_pdf(plot_sequence_features(seq, tmp_path / "features.pdf"))
    seq.close()


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures saved from now on (PDF pages and images alike), to look at their axes."""
    figure = pytest.importorskip("matplotlib.figure")
    saved: list[Any] = []
    savefig = figure.Figure.savefig

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(figure.Figure, "savefig", recording)
    return saved


def test_feature_histograms_read_as_a_physicist_expects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples by name, log y for a long tail with its overflow shown, booleans and small integers as bars."""
    pytest.importorskip("hist")
    pytest.importorskip("mplhep")
    saved = _drawn(monkeypatch)
    rng = np.random.default_rng(1)
    n = 4000
    labels = (rng.random(n) < 0.5).astype(np.float32)
    met = 5 + rng.exponential(25.0, n)
    met[:3] = [900.0, 1200.0, 2000.0]  # a far tail: past the range, in the overflow bin
    trigger = (rng.random(n) < 0.3 + 0.4 * labels).astype(np.float64)
    n_jets = rng.poisson(1.5 + labels, n).astype(np.float64)
    eta = rng.normal(0.0, 1.5, n)
    raw = np.c_[met, trigger, n_jets, eta]
    normalized = (raw - raw.min(axis=0)) / np.ptp(raw, axis=0)
    names = ["MET_pt", "HLT_IsoMu24", "nJet", "Jet_eta[0]"]
    samples = {1: "GluGluToHToTauTau", 0: "VBF_HToTauTau"}
    out = plot_feature_histograms(raw, normalized, labels, names, tmp_path / "features.pdf", sample_names=samples)
    assert _is_pdf(out) and len(saved) == len(names)
    met_page, trigger_page, jets_page, eta_page = saved
    for fig in saved:
        for ax in fig.axes:  # the signal first, by name; no "label 0/label 1"
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GluGluToHToTauTau", "VBF_HToTauTau"]
            assert ax.get_ylabel() == "fraction of events"
    assert [ax.get_yscale() for ax in met_page.axes] == ["log", "log"]  # the tail matters
    assert [ax.get_yscale() for ax in eta_page.axes] == ["linear", "linear"]
    raw_ticks = [t.get_text() for t in met_page.axes[0].get_xticklabels()]
    assert raw_ticks[-1].startswith(">") and float(raw_ticks[-1][1:]) < 900  # the overflow, drawn past the range
    bars = [p for p in trigger_page.axes[0].patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 4  # two values side by side for two samples, not 50 bins of a density
    assert [t.get_text() for t in trigger_page.axes[0].get_xticklabels()] == ["0", "1"]
    jets_ticks = [t.get_text() for t in jets_page.axes[0].get_xticklabels()]
    assert jets_ticks[:3] == ["0", "1", "2"]  # small integers: a bar each


def test_feature_plots_of_a_sequence_name_the_samples(
    two_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("hist")
    pytest.importorskip("mplhep")
    from mlaas4hep import RootSequence

    saved = _drawn(monkeypatch)
    seq = RootSequence(two_files, labels=[1, 0], branches=["MET_pt", "nPV", "flag"], chunk_size=500)
    sample = feature_sample(seq, max_events=400)
    assert sample["sample_names"] == {1.0: "sig", 0.0: "bkg"}
    assert np.array_equal(sample["raw"][:, 1], np.round(sample["raw"][:, 1]))  # nPV: whole numbers
    assert plot_sequence_features(seq, tmp_path / "features.png") == tmp_path
    seq.close()
    assert len(saved) == 3
    legends = {tuple(t.get_text() for t in fig.axes[0].get_legend().get_texts()) for fig in saved}
    assert legends == {("sig", "bkg")}
