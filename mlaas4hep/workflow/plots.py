"""Plots of the workflow: feature histograms, training history, ROC curve.

Matplotlib is an optional dependency (``pip install mlaas4hep[plot]``), imported
only when a plot is made. Figures are built with :class:`matplotlib.figure.Figure`
and saved with the Agg/PDF renderers, so no display and no pyplot state are
involved; in a notebook the returned figure is shown as usual.

ROC curves are computed with numpy (:func:`roc_curve`, :func:`auc_score`).
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

__all__ = [
    "auc_score",
    "feature_sample",
    "plot_feature_histograms",
    "plot_history",
    "plot_roc",
    "plot_sequence_features",
    "roc_curve",
]

log = logging.getLogger(__name__)

_INSTALL_HINT = "plotting needs matplotlib: pip install mlaas4hep[plot]"


def _require_matplotlib() -> None:
    """Import matplotlib, or raise an ImportError that says how to install it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err


def _figure(**kwargs: Any) -> Any:
    """A new matplotlib Figure (not registered with pyplot)."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: str | os.PathLike[str] | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        log.info("wrote %s", path)


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
    fig = _figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    _save(fig, path)
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
    fig = _figure(figsize=(5 * len(panels), 4), layout="constrained")
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
    _save(fig, path)
    return fig


# -- features -----------------------------------------------------------------------------------


def plot_feature_histograms(
    raw: np.ndarray,
    normalized: np.ndarray,
    labels: np.ndarray | None,
    names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    mask: np.ndarray | None = None,
    bins: int = 50,
) -> Path:
    """Histograms of each feature's raw and normalized values, one page (or image) per feature, split by label.

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
        Bins per histogram.

    Returns
    -------
    pathlib.Path
        ``path`` (for a PDF) or the directory holding the images.
    """
    _require_matplotlib()
    raw = np.asarray(raw, dtype=np.float64)
    normalized = np.asarray(normalized, dtype=np.float64)
    if raw.shape != normalized.shape or raw.ndim != 2 or raw.shape[1] != len(names):
        msg = f"raw {raw.shape} and normalized {normalized.shape} must both be (n_events, {len(names)})"
        raise ParameterError(msg)
    keep = np.ones(raw.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    keep = keep & np.isfinite(raw) & np.isfinite(normalized)
    groups: list[tuple[str, np.ndarray]]
    if labels is None:
        groups = [("all", np.ones(raw.shape[0], dtype=bool))]
    else:
        labels = np.asarray(labels).ravel()
        groups = [(f"label {v:g}", labels == v) for v in np.unique(labels)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf: Any = None  # a PdfPages, whose methods have no type annotations
    if path.suffix.lower() == ".pdf":
        from matplotlib.backends.backend_pdf import PdfPages

        pdf = PdfPages(path)
    try:
        for j, name in enumerate(names):
            fig = _figure(figsize=(9, 3.5), layout="constrained")
            for k, (values, what) in enumerate(((raw, "raw"), (normalized, "normalized"))):
                ax = fig.add_subplot(1, 2, k + 1)
                column = values[:, j]
                finite = column[keep[:, j]]
                edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else np.linspace(0, 1, bins + 1)
                for label, rows in groups:
                    ax.hist(column[rows & keep[:, j]], bins=edges, histtype="step", density=True, label=label)
                ax.set(xlabel=f"{name} ({what})", ylabel="density")
                ax.legend(fontsize="small")
            fig.suptitle(name)
            if pdf is not None:
                pdf.savefig(fig)
            else:
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
                fig.savefig(path.with_name(f"{path.stem}_{safe}{path.suffix}"))
    finally:
        if pdf is not None:
            pdf.close()
    log.info("wrote histograms of %d features to %s", len(names), path)
    return path if pdf is not None else path.parent


def feature_sample(sequence: Any, *, chunk: int = 0, max_events: int = 20_000) -> dict[str, Any]:
    """Raw and normalized values of a readable set of features from one chunk of a RootSequence.

    The features are every flat branch and the first element of every jagged
    branch (padded slots masked out).

    Parameters
    ----------
    sequence : RootSequence
        Where to read from: a reader of its own over the sequence's dataset
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
        ``(n_events, len(names))``) and ``labels`` (shape ``(n_events,)`` or None).
    """
    dataset = sequence.prepared
    flattener = dataset.flattener
    reader = dataset.reader()
    try:
        read = reader.read(chunk)
    finally:
        reader.close()
    X, M = flattener.transform(read.pieces)
    assert M is not None  # transform makes the mask by default
    columns, names = [], []
    for branch in flattener.branches:
        cols = flattener.columns(branch)
        if cols.stop > cols.start:
            columns.append(cols.start)
            names.append(branch if branch in flattener.specs.flat else f"{branch}[0]")
    X, M = X[:max_events], M[:max_events]
    raw = flattener.inverse_transform(X, M)[:, columns]
    labels = None if read.labels is None else read.labels[:max_events]
    return {"names": names, "raw": raw, "normalized": X[:, columns], "mask": M[:, columns], "labels": labels}


def plot_sequence_features(
    sequence: Any, path: str | os.PathLike[str], *, chunk: int = 0, max_events: int = 20_000
) -> Path:
    """Histograms of :func:`feature_sample` of ``sequence``, split by label, written to ``path``.

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
    """
    _require_matplotlib()
    sample = feature_sample(sequence, chunk=chunk, max_events=max_events)
    return plot_feature_histograms(
        sample["raw"], sample["normalized"], sample["labels"], sample["names"], path, mask=sample["mask"]
    )
