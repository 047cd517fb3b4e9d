"""Evaluation in the workflow: the held-out set's metrics, told once, and the plots of the results.

:func:`evaluate` computes the model's compiled metrics on the test set (or the
validation set when there is none) and the area under the ROC curve of all its
scores, computed exactly with numpy (``roc_auc``); :func:`plot_results` draws
the ROC curve and the training history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import reraise
from .plots import auc_score, plot_history, plot_roc, roc_curve

__all__ = ["evaluate", "plot_results", "predict_all"]

log = logging.getLogger(__name__)

ESTIMATES = ("auc",)
"""Compiled metrics that ``roc_auc`` supersedes in the log: Keras' AUC, estimated over 200 thresholds."""


def evaluate(ml_model: Any, evaluation: Any, name: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The compiled metrics and ``roc_auc`` on the ``name`` set, logged once; with its labels and scores.

    Parameters
    ----------
    ml_model : keras.Model
        The trained model.
    evaluation : RootSequence
        The set to evaluate, served in the files' order.
    name : str
        ``"test"`` or ``"validation"``, for the log.

    Returns
    -------
    metrics : dict
        The compiled metrics (Keras' ``evaluate``) and ``roc_auc``, the exact
        area under the ROC curve of every score. Keras' own ``auc`` (an estimate
        over 200 thresholds) is kept here but not logged, so that one AUC is told.
    y_true, scores : numpy.ndarray
        The labels and the model's outputs (for several classes: the last one against the rest).

    Examples
    --------
    >>> metrics, y, scores = evaluate(model, test, "test")  # doctest: +SKIP
    >>> metrics["roc_auc"]  # doctest: +SKIP
    0.7834
    """
    metrics: dict[str, float] = {}
    if hasattr(ml_model, "evaluate"):
        with reraise(evaluation):
            results = ml_model.evaluate(evaluation, verbose=0, return_dict=True)
        metrics = {k: float(v) for k, v in results.items()}
    y_true, scores = predict_all(ml_model, evaluation)
    if np.unique(y_true).size > 2:  # integer labels of several classes: the last one against the rest
        y_true = (y_true == y_true.max()).astype(np.float32)
    fpr, tpr, _ = roc_curve(y_true, scores)
    metrics["roc_auc"] = auc_score(fpr, tpr)
    log.info("%s set (%d events):", name, evaluation.n_events)
    for key in sorted(metrics, key=lambda k: (k != "loss", k == "roc_auc")):  # loss first, roc_auc last
        if key not in ESTIMATES:
            log.info("%s : %.4f", key, metrics[key])
    return metrics, y_true, scores


def predict_all(model: Any, seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and model outputs over one full pass of ``seq`` (for several classes, the last one's).

    Examples
    --------
    >>> y_true, scores = predict_all(model, test)  # doctest: +SKIP
    """
    ys, ps = [], []
    for i in range(len(seq)):
        X, y = seq[i][:2]  # batches may carry sample weights too
        y = np.asarray(y)
        # several classes: the last class against the rest, as the scores below
        ys.append(y[:, -1] if y.ndim == 2 and y.shape[1] > 1 else y.ravel())
        ps.append(np.asarray(model.predict_on_batch(X)).reshape(len(y), -1)[:, -1])
    seq.on_epoch_end()
    return np.concatenate(ys), np.concatenate(ps)


def plot_results(
    hist_dir: Path,
    curve: tuple[np.ndarray, np.ndarray, str] | None,
    history: Mapping[str, Sequence[float]],
    model_name: str,
) -> list[Path]:
    """The ROC curve (of the evaluated set, if any) and the training history, written into ``hist_dir``.

    Returns
    -------
    list of pathlib.Path
        ``roc.pdf`` and ``history.pdf`` (without a history: a warning, and no history plot).

    Examples
    --------
    >>> plot_results(Path("pdfs"), (y_true, scores, "test"), history, "Sequential")  # doctest: +SKIP
    [PosixPath('pdfs/roc.pdf'), PosixPath('pdfs/history.pdf')]
    """
    plots = []
    if curve is not None:
        y_true, scores, name = curve
        plot_roc(y_true, scores, hist_dir / "roc.pdf", title=f"ROC on the {name} set")
        plots.append(hist_dir / "roc.pdf")
    if history:
        plot_history(history, hist_dir / "history.pdf")
        plots.append(hist_dir / "history.pdf")
    else:
        log.warning("no training history to plot: %s.fit passed no callbacks", model_name)
    return plots
