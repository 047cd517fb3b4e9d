"""Feature histograms filled with :mod:`hist` and drawn with :mod:`mplhep`, one histogram per sample.

:func:`plot_feature_histograms` draws each feature's raw and normalized values
as a physicist reads them: the samples by name, the fraction of each sample's
events per bin, under- and overflow shown, a log y axis for skewed
distributions (pt, MET, multiplicities), booleans and small integers as bars.
:func:`mlaas4hep.workflow.plots.plot_sequence_features` feeds it from a sequence.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ._figures import figure, require

__all__ = ["MAX_BARS", "SKEWED", "plot_feature_histograms"]

log = logging.getLogger(__name__)

MAX_BARS = 20
"""Features with at most this many distinct values (booleans, small integers) are drawn as bars."""

SKEWED = 1.0
"""Features whose skewness exceeds this in size (pt, MET, multiplicities) get a log y axis."""


def plot_feature_histograms(
    raw: np.ndarray,
    normalized: np.ndarray,
    labels: np.ndarray | None,
    names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    mask: np.ndarray | None = None,
    bins: int = 50,
    sample_names: Mapping[float, str] | None = None,
) -> Path:
    """Histograms of each feature's raw and normalized values, one page (or image) per feature, one per sample.

    Each sample's histogram is filled with :mod:`hist` and drawn with
    :func:`mplhep.histplot`, as the fraction of the sample's events per bin.
    A feature with at most :data:`MAX_BARS` distinct values (a boolean, a
    small integer) is drawn as bars, one per value; an integer one with more
    values gets one bin per integer; any other ``bins`` bins. The range holds
    every value unless a tail reaches far out (beyond 5 % of the range past
    the 0.1 % and 99.9 % quantiles): then it stops at those quantiles and the
    under- and overflow bins are drawn beside it. A skewed feature (skewness
    beyond :data:`SKEWED` in size: pt, MET, multiplicities) gets a log y axis.

    Parameters
    ----------
    raw, normalized : array of shape (n_events, n_features)
        Values before and after normalization.
    labels : array of shape (n_events,), optional
        Event labels; one histogram per distinct label (all events together if None).
    names : sequence of str
        Feature names, one per column.
    path : path
        A ``.pdf`` file gets one page per feature; any other suffix (``.png``)
        gives one image per feature beside it, ``<stem>_<feature><suffix>`` (characters other
        than letters, digits, ``_``, ``.`` and ``-`` in the feature name become ``_``).
    mask : bool array like ``raw``, optional
        Where values are real (padded slots are left out).
    bins : int
        Bins of a continuous feature.
    sample_names : mapping of label to str, optional
        The legend's name of each label's sample (e.g. ``{1: "GluGluToHToTauTau"}``);
        default ``"label 1"``.

    Returns
    -------
    pathlib.Path
        ``path`` (for a PDF) or the directory holding the images.

    Raises
    ------
    ImportError
        If matplotlib, hist or mplhep is missing (the message says what to install).
    ParameterError
        If the arrays' shapes do not match ``names``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> raw = np.c_[rng.exponential(30, 1000), rng.random(1000) < 0.5]
    >>> plot_feature_histograms(raw, raw / raw.max(0), rng.integers(0, 2, 1000), ["MET_pt", "HLT_IsoMu24"],
    ...                         "features.pdf", sample_names={1: "signal", 0: "background"})  # doctest: +SKIP
    PosixPath('features.pdf')
    """
    require("matplotlib", "hist", "mplhep")
    raw = np.asarray(raw, dtype=np.float64)
    normalized = np.asarray(normalized, dtype=np.float64)
    if raw.shape != normalized.shape or raw.ndim != 2 or raw.shape[1] != len(names):
        msg = f"raw {raw.shape} and normalized {normalized.shape} must both be (n_events, {len(names)})"
        raise ParameterError(msg)
    keep = np.ones(raw.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    keep = keep & np.isfinite(raw) & np.isfinite(normalized)
    groups = _groups(labels, raw.shape[0], sample_names or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf: Any = None  # a PdfPages, whose methods have no type annotations
    if path.suffix.lower() == ".pdf":
        from matplotlib.backends.backend_pdf import PdfPages

        pdf = PdfPages(path)
    try:
        for j, name in enumerate(names):
            fig = _feature_figure(name, raw[:, j], normalized[:, j], keep[:, j], groups, bins)
            if pdf is not None:
                pdf.savefig(fig)
            else:
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
                fig.savefig(path.with_name(f"{path.stem}_{safe}{path.suffix}"))
    finally:
        if pdf is not None:
            pdf.close()
    log.debug("wrote histograms of %d features to %s", len(names), path)
    return path if pdf is not None else path.parent


def _groups(labels: np.ndarray | None, n: int, sample_names: Mapping[float, str]) -> list[tuple[str, np.ndarray]]:
    """(legend name, rows) of each sample: each distinct label, the highest (the signal) first, or all events."""
    if labels is None:
        return [("all events", np.ones(n, dtype=bool))]
    labels = np.asarray(labels).ravel()
    named = {float(k): v for k, v in sample_names.items()}
    return [(named.get(float(v), f"label {v:g}"), labels == v) for v in np.unique(labels)[::-1]]


def _feature_figure(
    name: str,
    raw: np.ndarray,
    normalized: np.ndarray,
    keep: np.ndarray,
    groups: list[tuple[str, np.ndarray]],
    bins: int,
) -> Any:
    """One feature's page: its raw and its normalized values, a histogram per sample in each panel.

    Both panels share the binning (the normalized one's edges are the raw
    ones mapped as the normalization maps the values) and the y scale.
    """
    fig = figure(figsize=(10, 4), layout="constrained")
    values, scaled = raw[keep], normalized[keep]
    distinct = np.unique(values)
    log_y = distinct.size > 2 and abs(_skewness(values)) > SKEWED
    scale, shift = _affine(values, scaled)
    for k, (column, what) in enumerate(((raw, "raw"), (normalized, "normalized"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.set_xlabel(f"{name} ({what})")
        if not values.size:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            continue
        if distinct.size <= MAX_BARS:
            index = np.searchsorted(distinct, np.where(keep, raw, distinct[0]))  # each value's bar
            ticks = distinct if k == 0 else np.array([scaled[values == v][0] for v in distinct])
            _draw_bars(ax, [(label, index[rows & keep]) for label, rows in groups], ticks)
        else:
            edges = _edges(values, bins)
            mapped = edges if k == 0 else edges * scale + shift
            _draw_steps(ax, [(label, column[rows & keep]) for label, rows in groups], mapped)
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel("fraction of events")
        ax.legend(fontsize="small")
    fig.suptitle(name)
    return fig


def _skewness(values: np.ndarray) -> float:
    """The sample skewness (0 for a constant)."""
    std = float(values.std())
    return float(np.mean(((values - values.mean()) / std) ** 3)) if std > 0 else 0.0


def _affine(raw: np.ndarray, normalized: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` with ``normalized = a * raw + b`` (the normalization maps smallest to smallest, largest to largest).

    Examples
    --------
    >>> _affine(np.array([2.0, 4.0, 6.0]), np.array([0.0, 0.5, 1.0]))
    (0.25, -0.5)
    """
    if not raw.size:
        return 1.0, 0.0
    low, high = float(raw.min()), float(raw.max())
    a = (float(normalized.max()) - float(normalized.min())) / (high - low) if high > low else 1.0
    return a, float(normalized.min()) - a * low


def _draw_bars(ax: Any, samples: list[tuple[str, np.ndarray]], ticks: np.ndarray) -> None:
    """Bars side by side, one group per distinct value (``samples`` hold each event's value index)."""
    import hist
    import mplhep  # type: ignore[import-untyped]  # mplhep ships no type information

    present = [(label, v) for label, v in samples if v.size]
    axis = hist.axis.Integer(0, ticks.size, underflow=False, overflow=False)
    hists: list[Any] = [hist.Hist(axis).fill(v, weight=1.0 / v.size) for _, v in present]
    mplhep.histplot(hists, ax=ax, label=[label for label, _ in present], histtype="bar", flow="none")
    ax.set_xticks(np.arange(ticks.size) + 0.5, [f"{t:.3g}" for t in ticks], rotation=90 if ticks.size > 8 else 0)


def _draw_steps(ax: Any, samples: list[tuple[str, np.ndarray]], edges: np.ndarray) -> None:
    """A step histogram per sample over ``edges``, with its under- and overflow bins beside the range."""
    import hist
    import mplhep

    present = [(label, v) for label, v in samples if v.size]
    axis = hist.axis.Variable(edges)
    hists: list[Any] = [hist.Hist(axis).fill(v, weight=1.0 / v.size) for _, v in present]
    mplhep.histplot(hists, ax=ax, label=[label for label, _ in present], histtype="step", flow="show")
    _tidy_flow_ticks(ax)


def _tidy_flow_ticks(ax: Any) -> None:
    """Under- and overflow ticks with three digits, and no other tick close enough to overlap them (or off the axis)."""
    ticks = ax.get_xticks()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    flows = [x for x, text in zip(ticks, labels, strict=True) if text.startswith(("<", ">"))]
    if not flows:
        return
    low, high = ax.get_xlim()
    kept_x, kept_text = [], []
    for x, text in zip(ticks, labels, strict=True):
        if text.startswith(("<", ">")):
            kept_x.append(x)
            kept_text.append(f"{text[0]}{float(text[1:]):.3g}")
        elif low <= x <= high and all(abs(x - f) > 0.1 * (high - low) for f in flows):
            kept_x.append(x)
            kept_text.append(text)
    ax.set_xticks(kept_x, kept_text)


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges: one bin per integer for integers, else ``bins`` bins, over :func:`_range`.

    Examples
    --------
    >>> _edges(np.arange(100.0), 50)[:3].tolist()  # integers: one bin per value
    [-0.5, 0.5, 1.5]
    >>> _edges(np.linspace(0.0, 1.0, 101), 4).round(3).tolist()  # the last edge a hair above the largest value
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    lo, hi = _range(values)
    if np.all(values == np.round(values)) and hi - lo < 4 * bins:
        return np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0)
    if hi == float(values.max()):
        hi += 1e-6 * (hi - lo)  # the largest value in the last bin, not in the overflow
    return np.linspace(lo, hi, bins + 1)


def _range(values: np.ndarray) -> tuple[float, float]:
    """From the smallest to the largest value, or to the 0.1 % (99.9 %) quantile past which a far tail reaches."""
    low, high = (float(q) for q in np.quantile(values, [0.001, 0.999]))
    smallest, largest = float(values.min()), float(values.max())
    if high <= low:
        return smallest, max(largest, smallest + 1)
    reach = 0.05 * (high - low)
    return (smallest if smallest >= low - reach else low), (largest if largest <= high + reach else high)
