"""k-fold training in the workflow: params.json's ``folds`` trains k models, model j tested on fold j.

With ``"folds": k`` (and ``"fold_by"``, default ``"event"``) :func:`train_fold`
trains model ``j`` on every fold but ``j`` (``validation_split`` taking its
part from them) and evaluates it on fold ``j``
(:mod:`mlaas4hep.inputs.folds`); :func:`summarize` tells each metric's mean
and spread over the folds, and the ROC AUC of every event pooled, each scored
by the model that never saw it. With a model path (``--fout``) each fold's
model and preprocessing are saved beside it (:func:`fold_path`), and
:func:`predict_command` is the ``mlaas4hep predict`` command that scores files
with all of them.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..specs.values import Specs
from .evaluation import ESTIMATES, evaluate
from .params import WorkflowParams
from .plots import auc_score, plot_history, plot_roc, plot_sequence_features, roc_curve
from .training import build_model, save_model, train

__all__ = ["FoldResult", "fold_path", "fold_split_line", "predict_command", "summarize", "train_fold"]

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """One fold's model, trained on the other folds, and its metrics on fold ``fold`` (its test set).

    ``y_true`` and ``scores`` are fold ``fold``'s labels and the model's outputs;
    ``model_path`` and ``preprocessing_path`` are None unless the model was saved;
    ``plots`` are the fold's (its history; fold 0's also the features).
    """

    fold: int
    model: Any
    specs: Specs
    history: dict[str, list[float]]
    metrics: dict[str, float]
    y_true: np.ndarray
    scores: np.ndarray
    model_path: Path | None = None
    preprocessing_path: Path | None = None
    plots: list[Path] = field(default_factory=list)


def fold_path(path: str | os.PathLike[str], fold: int) -> Path:
    """``path`` with ``_fold{fold}`` before its suffix: where fold ``fold``'s model (or specs) goes.

    Examples
    --------
    >>> fold_path("out/model.keras", 2).as_posix()
    'out/model_fold2.keras'
    """
    path = Path(path)
    return path.with_name(f"{path.stem}_fold{fold}{path.suffix}")


def _fold_specs(specs: str | os.PathLike[str] | Specs | None, fold: int) -> str | os.PathLike[str] | None:
    """The specs of fold ``fold``: ``specs.json`` -> ``specs_fold{fold}.json`` (each fold has its own)."""
    if specs is None:
        return None
    if isinstance(specs, Specs):
        msg = (
            "specs: a Specs object holds the statistics of one fold's training folds; with params' 'folds' "
            "give a specs path instead (one file per fold, specs_fold{j}.json)"
        )
        raise ParameterError(msg)
    return fold_path(specs, fold)


def train_fold(
    fold: int,
    model_function: Callable[[Any], Any],
    params: WorkflowParams,
    options: tuple[Mapping[str, Any], Mapping[str, Any]],
    specs: str | os.PathLike[str] | Specs | None = None,
    model_path: Path | None = None,
    hist_dir: Path | None = None,
) -> FoldResult:
    """Train model ``fold`` on the other folds and evaluate it on fold ``fold``; save it beside ``model_path``.

    Parameters
    ----------
    fold : int
        The test fold, in ``[0, params.folds)``.
    model_function : callable
        The user's ``model(idim)``.
    params : WorkflowParams
        The run's params, with ``folds``, ``fold_by`` and a seed (set before the model is built).
    options : (mapping, mapping)
        The keyword arguments of every sequence, and those of the training one only.
    specs : path, optional
        The run's specs path: the fold's are ``specs_fold{fold}.json`` beside it.
    model_path : pathlib.Path, optional
        The run's ``--fout``: the fold's model goes to ``model_fold{fold}.keras``
        and its preprocessing to ``model_fold{fold}.preprocessing.json``.
    hist_dir : pathlib.Path, optional
        Where the plots go: ``history_fold{fold}.pdf``, and for fold 0 the features
        of its training set, ``features.pdf``.

    Returns
    -------
    FoldResult
    """
    import keras

    assert params.seed is not None and params.folds is not None
    log.info(
        "--- fold %d of %d: %s %% %d == %d is the test set", fold, params.folds, params.fold_by, params.folds, fold
    )
    keras.utils.set_random_seed(params.seed)
    opened: list[Any] = []
    try:
        train_seq, val, test = _fold_sequences(fold, params, options, _fold_specs(specs, fold), opened)
        plots = []
        if hist_dir is not None and fold == 0:
            plots.append(plot_sequence_features(train_seq, hist_dir / "features.pdf"))
        ml_model = build_model(model_function, opened, params.verbose if fold == 0 else 0)
        history = train(ml_model, train_seq, val, params)
        metrics, y_true, scores = evaluate(ml_model, test, f"fold {fold} test")
        if hist_dir is not None and history:
            plot_history(history, hist_dir / f"history_fold{fold}.pdf")
            plots.append(hist_dir / f"history_fold{fold}.pdf")
        result = FoldResult(fold, ml_model, train_seq.specs, history, metrics, y_true, scores, plots=plots)
        if model_path is not None:
            _save_fold(result, fold_path(model_path, fold), train_seq)
        return result
    finally:
        for seq in opened:
            seq.close()


def _fold_sequences(
    fold: int,
    params: WorkflowParams,
    options: tuple[Mapping[str, Any], Mapping[str, Any]],
    specs: str | os.PathLike[str] | None,
    opened: list[Any],
) -> tuple[Any, Any | None, Any]:
    """Fold ``fold``'s training, validation (None without ``validation_split``) and test sequences."""
    from ..sequence import RootSequence

    common, training = options
    folding = {
        **common,
        "folds": params.folds,
        "fold": fold,
        "fold_by": params.fold_by,
        "validation_split": params.validation_split or None,
    }
    t0 = time.perf_counter()
    train_seq = RootSequence(subset="training", specs=specs, shuffle=params.shuffle, **training, **folding)
    opened.append(train_seq)
    if fold == 0:
        log.info("--- first pass: %s (the inputs per event, jagged branches padded)", train_seq.specs.summary())
    if params.fold_by in train_seq.specs.names:
        log.warning("fold_by %r is a feature: the model can tell the folds apart; exclude it", params.fold_by)
    val = None
    if params.validation_split:
        val = RootSequence(subset="validation", specs=train_seq.specs, shuffle=False, **folding)
        opened.append(val)
    test = RootSequence(subset="test", specs=train_seq.specs, shuffle=False, **folding)
    opened.append(test)
    log.debug("sequences of fold %d made in %.2f s", fold, time.perf_counter() - t0)
    n_val = None if val is None else val.n_events
    log.info("%s", fold_split_line(params, fold, train_seq.n_events, len(train_seq), n_val, test.n_events))
    return train_seq, val, test


def fold_split_line(
    params: WorkflowParams, fold: int, n_train: int, n_batches: int, n_val: int | None, n_test: int
) -> str:
    """What fold ``fold`` trains, validates and tests on.

    Examples
    --------
    >>> fold_split_line(WorkflowParams(folds=3, fold_by="event", test_split=0), 1, 480, 5, 120, 300)
    ... # doctest: +NORMALIZE_WHITESPACE
    "fold 1 of 3: the test set is event % 3 == 1 (300 events); of each file's other folds, in order:
    the first 80% train (480 events, 5 batches of 100), the last 20% validate (120 events; validation_split)"
    """
    train_share = 100 * (1 - params.validation_split)
    parts = [f"the first {train_share:.3g}% train ({n_train} events, {n_batches} batches of {params.batch_size})"]
    if n_val is None:
        parts.append("no validation (validation_split 0)")
    else:
        parts.append(f"the last {100 * params.validation_split:.3g}% validate ({n_val} events; validation_split)")
    test = f"{params.fold_by} % {params.folds} == {fold} ({n_test} events)"
    return f"fold {fold} of {params.folds}: the test set is {test}; of each file's other folds, in order: " + ", ".join(
        parts
    )


def _save_fold(result: FoldResult, model_path: Path, train_seq: Any) -> None:
    """Save fold ``result.fold``'s model and its preprocessing (which records the fold); paths into ``result``."""
    result.model_path = model_path
    result.preprocessing_path = save_model(result.model, model_path, train_seq)
    log.info(
        "saved fold %d's model to %s and its preprocessing to %s", result.fold, model_path, result.preprocessing_path
    )


def summarize(results: Sequence[FoldResult]) -> tuple[dict[str, float], dict[str, float], float]:
    """Each metric's mean and spread over the folds, and the ROC AUC of all test events pooled; logged.

    Every event is in one test fold, scored by the one model that never saw it:
    the means are the test metrics of every event, the spread (the standard
    deviation over the folds, ``ddof=1``) how much they vary from model to
    model, and the pooled AUC is that of the concatenated folds' labels and scores.

    Returns
    -------
    means, spreads : dict
        Metric name -> mean, and -> standard deviation, over the folds.
    pooled_auc : float
        The exact ROC AUC of every event's score by its fold's model.
    """
    names = [k for k in results[0].metrics if all(k in r.metrics for r in results)]
    values = {k: np.array([r.metrics[k] for r in results], dtype=np.float64) for k in names}
    means = {k: float(v.mean()) for k, v in values.items()}
    spreads = {k: float(v.std(ddof=1)) for k, v in values.items()}
    y_true = np.concatenate([r.y_true for r in results])
    fpr, tpr, _ = roc_curve(y_true, np.concatenate([r.scores for r in results]))
    pooled = auc_score(fpr, tpr)
    log.info("--- %d folds: the test metrics of every event, by the model that never saw it", len(results))
    for key in sorted(means, key=lambda k: (k != "loss", k == "roc_auc")):  # loss first, roc_auc last
        if key not in ESTIMATES:
            folds = ", ".join(f"{v:.4f}" for v in values[key])
            log.info("%s : %.4f ± %.4f (mean ± std over the folds: %s)", key, means[key], spreads[key], folds)
    log.info("pooled roc_auc : %.4f (all %d test events, each scored by its fold's model)", pooled, y_true.size)
    return means, spreads, pooled


def predict_command(
    files: Sequence[str | os.PathLike[str]], results: Sequence[FoldResult], output_dir: str | os.PathLike[str]
) -> list[str]:
    """The ``mlaas4hep predict`` command that scores ``files`` with every fold's saved model.

    Each ``--model`` is followed, in the same order, by its ``--preprocessing``
    (whose ``fold`` tells which entries the model scores).

    Examples
    --------
    >>> r = [FoldResult(j, None, None, {}, {}, np.zeros(0), np.zeros(0), Path(f"m{j}.keras"),
    ...      Path(f"m{j}.preprocessing.json")) for j in range(2)]  # doctest: +SKIP
    >>> shlex.join(predict_command(["a.root"], r, "scores"))  # doctest: +SKIP
    'mlaas4hep predict a.root --model m0.keras --model m1.keras --preprocessing ... --output-dir scores'
    """
    command = ["mlaas4hep", "predict", *(os.fspath(f) for f in files)]
    command += [arg for r in results for arg in ("--model", os.fspath(r.model_path or ""))]
    command += [arg for r in results for arg in ("--preprocessing", os.fspath(r.preprocessing_path or ""))]
    return [*command, "--output-dir", os.fspath(output_dir)]


def log_predict_command(
    files: Sequence[str | os.PathLike[str]], results: Sequence[FoldResult], output_dir: Path
) -> None:
    """Tell how to score files with the k saved models, each entry by its fold's model."""
    log.info(
        "score the files with the %d models (each entry by the model of its fold; a friend tree per file in %s):",
        len(results),
        output_dir,
    )
    log.info("  %s", shlex.join(predict_command(files, results, output_dir)))


def plot_pooled_roc(hist_dir: Path, results: Sequence[FoldResult]) -> Path:
    """The ROC curve of every test event pooled, each scored by its fold's model: ``roc.pdf``."""
    y_true = np.concatenate([r.y_true for r in results])
    scores = np.concatenate([r.scores for r in results])
    plot_roc(y_true, scores, hist_dir / "roc.pdf", title=f"ROC of the {len(results)} test folds, pooled")
    return hist_dir / "roc.pdf"
