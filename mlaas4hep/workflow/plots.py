"""Plots of the workflow: ROC curve, training history, and the feature histograms of a sequence.

:func:`plot_roc` and :func:`plot_history` draw the results;
:func:`plot_sequence_features` reads a chunk of a sequence (:func:`feature_sample`)
and draws its features with
:func:`~mlaas4hep.workflow.histograms.plot_feature_histograms` (filled with
:mod:`hist`, drawn with :mod:`mplhep`, one histogram per sample named after its
files). Matplotlib, hist and mplhep are optional dependencies
(``pip install 'mlaas4hep[plot]'``), imported only when a plot is made
(:mod:`mlaas4hep.workflow._figures`). Figures are built with
:class:`matplotlib.figure.Figure` and saved with the Agg/PDF renderers, so no
display and no pyplot state are involved; in a notebook the returned figure is
shown as usual.

ROC curves are computed with numpy (:func:`roc_curve`, :func:`auc_score`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import ParameterError
from ._figures import figure, require, save
from .histograms import plot_feature_histograms

__all__ = [
    "auc_score",
    "feature_sample",
    "plot_history",
    "plot_roc",
    "plot_sequence_features",
    "roc_curve",
]

log = logging.getLogger(__name__)

# -- ROC ----------------------------------------------------------------------------------------


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold.

    Parameters
    ----------
    y_true : array of shape (n,)
        Labels; values above 0.5 count as positive.
    scores : array of shape (n,)
        Model outputs; higher means more signal-like.

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray
        ``fpr[i]`` and ``tpr[i]`` are the rates of events with ``score >= thresholds[i]``;
        the curve starts at (0, 0) (threshold ``inf``) and ends at (1, 1).

    Raises
    ------
    ParameterError
        If the arrays differ in length, or the labels hold only one class.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        msg = f"y_true has {y.size} entries and scores {s.size}; they must match"
        raise ParameterError(msg)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        msg = f"ROC needs both classes, got {n_pos} positive and {n_neg} negative labels"
        raise ParameterError(msg)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s[last]]
    return fpr, tpr, thresholds


def auc_score(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve (trapezoidal rule), as ``sklearn.metrics.auc``."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def plot_roc(
    y_true: np.ndarray,
    scores: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str = "ROC curve",
) -> Any:
    """Plot the ROC curve with its AUC.

    Parameters
    ----------
    y_true, scores : array of shape (n,)
        Labels and model outputs, as :func:`roc_curve`.
    path : path, optional
        Where to save (format from the suffix: ``.pdf``, ``.png``, ...).
    title : str
        Title of the plot.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fpr, tpr, _ = roc_curve(y_true, scores)
    auc = auc_score(fpr, tpr)
    fig = figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    save(fig, path)
    return fig


# -- history ------------------------------------------------------------------------------------


def plot_history(history: Mapping[str, Sequence[float]] | Any, path: str | os.PathLike[str] | None = None) -> Any:
    """Plot loss and AUC per epoch, training and validation.

    Parameters
    ----------
    history : mapping or keras.callbacks.History
        Per-epoch metrics as ``History.history``: ``loss``, ``val_loss``,
        ``auc``, ``val_auc`` (any that are missing are left out).
    path : path, optional
        Where to save (format from the suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = getattr(history, "history", history)
    if not isinstance(data, Mapping) or not data:
        msg = f"history must be a non-empty mapping of metric name to per-epoch values, got {history!r}"
        raise ParameterError(msg)
    panels = [m for m in ("loss", "auc") if m in data or f"val_{m}" in data]
    if not panels:
        panels = sorted({k.removeprefix("val_") for k in data})[:2]
    fig = figure(figsize=(5 * len(panels), 4), layout="constrained")
    from matplotlib.ticker import MaxNLocator

    for i, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            if key in data:
                values = np.asarray(data[key], dtype=np.float64)
                ax.plot(np.arange(1, values.size + 1), values, marker="o", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    save(fig, path)
    return fig


# -- features of a sequence ----------------------------------------------------------------------


def feature_sample(sequence: Any, *, chunk: int = 0, max_events: int = 20_000) -> dict[str, Any]:
    """Raw and normalized values of a readable set of features from one chunk of a RootSequence.

    The features are every flat branch and the first element of every jagged
    branch (padded slots masked out).

    Parameters
    ----------
    sequence : RootSequence
        Where to read from: a reader of its own over the sequence's prepared data
        (aliases computed as for training), and its flattener; the sequence's
        batches and background reading are not touched.
    chunk : int
        Which chunk of the sequence's plan to read.
    max_events : int
        At most this many events (the first of the chunk).

    Returns
    -------
    dict
        ``names``, ``raw``, ``normalized``, ``mask`` (arrays of shape
        ``(n_events, len(names))``; the raw values of integer and boolean
        branches are whole numbers), ``labels`` (shape ``(n_events,)`` or None)
        and ``sample_names`` (label -> the stems of its files, e.g.
        ``{1.0: "GluGluToHToTauTau"}``; empty for labels read from a branch).

    Examples
    --------
    >>> sample = feature_sample(train, max_events=1000)  # doctest: +SKIP
    >>> sample["names"][:2], sample["sample_names"]  # doctest: +SKIP
    (['HLT_IsoMu24', 'MET_pt'], {1.0: 'GluGluToHToTauTau', 0.0: 'VBF_HToTauTau'})
    """
    prepared = sequence.prepared
    flattener = prepared.flattener
    reader = prepared.reader()
    try:
        read = reader.read(chunk)
    finally:
        reader.close()
    X, M = flattener.transform(read.pieces)
    assert M is not None  # transform makes the mask by default
    columns, names, whole = [], [], []
    for branch in flattener.branches:
        cols = flattener.columns(branch)
        if cols.stop > cols.start:
            columns.append(cols.start)
            names.append(branch if branch in flattener.specs.flat else f"{branch}[0]")
            whole.append(np.dtype(flattener.specs[branch].dtype).kind in "biu")
    X, M = X[:max_events], M[:max_events]
    raw = flattener.inverse_transform(X, M)[:, columns]
    raw[:, whole] = np.round(raw[:, whole])  # integers and booleans as they were, not float32's neighbours
    labels = None if read.labels is None else read.labels[:max_events]
    return {
        "names": names,
        "raw": raw,
        "normalized": X[:, columns],
        "mask": M[:, columns],
        "labels": labels,
        "sample_names": _sample_names(prepared),
    }


def _sample_names(prepared: Any) -> dict[float, str]:
    """Label -> the stems of the files that carry it ("a + b", or "a + 3 more"), for per-file labels."""
    if prepared.labels is None:
        return {}
    stems: dict[float, list[str]] = {}
    for source, label in zip(prepared.sources, prepared.labels, strict=True):
        stems.setdefault(float(label), []).append(PurePosixPath(source.path.split("?")[0]).stem)
    return {k: " + ".join(v) if len(v) <= 2 else f"{v[0]} + {len(v) - 1} more" for k, v in stems.items()}


def plot_sequence_features(
    sequence: Any, path: str | os.PathLike[str], *, chunk: int = 0, max_events: int = 20_000
) -> Path:
    """Histograms of :func:`feature_sample` of ``sequence``, one per sample (named after its files), into ``path``.

    Parameters
    ----------
    sequence : RootSequence
        The (training) sequence.
    path : path
        A ``.pdf`` (one page per feature) or ``.png`` pattern, as :func:`plot_feature_histograms`.
    chunk, max_events : int
        Which chunk to read and how many of its events to use, as :func:`feature_sample`.

    Returns
    -------
    pathlib.Path
        ``path`` (for a PDF) or the directory holding the images.

    Examples
    --------
    >>> plot_sequence_features(train, "pdfs/features.pdf")  # doctest: +SKIP
    PosixPath('pdfs/features.pdf')
    """
    require("matplotlib", "hist", "mplhep")
    sample = feature_sample(sequence, chunk=chunk, max_events=max_events)
    return plot_feature_histograms(
        sample["raw"],
        sample["normalized"],
        sample["labels"],
        sample["names"],
        path,
        mask=sample["mask"],
        sample_names=sample["sample_names"],
    )
