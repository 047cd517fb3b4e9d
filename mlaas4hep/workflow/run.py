"""The original MLaaS4HEP workflow (files, labels, a model file, params.json) as one library call.

:func:`run_workflow` does what the original ``workflow.py`` did: a first pass
over the files (the specs), training of the user's Keras model on chunks of
events, and the held-out set's loss, accuracy and AUC at the end, with optional
plots; it can save the model, its preprocessing and the params of the run.
The steps live beside it: :mod:`~mlaas4hep.workflow.training` (the model built
and fitted, one line per epoch), :mod:`~mlaas4hep.workflow.evaluation` (the
test metrics and the result plots); its inputs are read by
:mod:`~mlaas4hep.workflow.lists` (list files, the model file) and
:mod:`~mlaas4hep.workflow.params` (params.json).

A library call: Keras is imported as it is, when a model is built, and no
environment variable, logging setting or file descriptor of the process is
touched. The command line (:mod:`mlaas4hep.workflow.cli`) quiets TensorFlow for
its own runs before calling it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..specs.values import Specs
from .evaluation import evaluate, plot_results
from .folds import FoldResult, log_predict_command, plot_pooled_roc, summarize, train_fold
from .lists import load_model_function
from .params import DEFAULT_PARAMS, WorkflowParams, load_params, params_path, save_params
from .plots import plot_sequence_features
from .preproc import Preproc, load_preproc, translate_preproc
from .training import build_model, save_model, train

__all__ = ["WorkflowResult", "run_workflow", "split_line"]

log = logging.getLogger(__name__)


@dataclass
class WorkflowResult:
    """What :func:`run_workflow` returns.

    ``params`` are those the run used, its ``seed`` filled in (drawn when
    params.json said ``"seed": null``); ``model_path``, ``preprocessing_path``
    and ``params_path`` are None unless the model was saved (``fout``).

    With params' ``folds`` (k), ``folds`` holds each fold's
    :class:`~mlaas4hep.workflow.folds.FoldResult` (its model, metrics on its
    test fold, saved paths); ``model`` is the list of the k models, ``specs``
    fold 0's, ``history`` empty, ``metrics`` each metric's mean over the folds
    (``spreads`` their standard deviation) plus ``pooled_roc_auc``, which is
    also ``roc_auc``: the ROC AUC of every event, scored by its fold's model.
    ``model_path`` and ``preprocessing_path`` stay None (each fold has its
    own); ``params_path`` is the one params file of the run.
    """

    model: Any
    specs: Specs
    history: dict[str, list[float]]
    metrics: dict[str, float]
    roc_auc: float | None = None
    plots: list[Path] = field(default_factory=list)
    model_path: Path | None = None
    preprocessing_path: Path | None = None
    params: WorkflowParams = field(default_factory=WorkflowParams)
    params_path: Path | None = None
    folds: list[FoldResult] = field(default_factory=list)
    spreads: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        """The seed the run used (shuffling and Keras' initial weights)."""
        return self.params.seed


def run_workflow(
    files: Sequence[str | os.PathLike[str]],
    labels: Sequence[float] | str,
    model: Callable[[int], Any] | str | os.PathLike[str],
    params: WorkflowParams | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    specs: str | os.PathLike[str] | Specs | None = None,
    fout: str | os.PathLike[str] | None = None,
    preproc: str | os.PathLike[str] | Mapping[str, Any] | Preproc | None = None,
) -> WorkflowResult:
    """Run the original MLaaS4HEP workflow: specs, training on chunks, test-set metrics, plots.

    Parameters
    ----------
    files : sequence of path or URL
        ROOT files (the original's files.txt).
    labels : sequence of float, or str
        One label per file (labels.txt), or the name of a branch holding each event's label.
    model : callable, or path of a Python file
        ``model(idim)`` returning a compiled Keras model, or a file that defines it
        (the original's keras_model.py); with ``"layout": "collections"``,
        ``idim`` is the training sequence's ``input_spec`` (``models.deep_sets`` takes it).
    params : WorkflowParams, mapping, path, or None
        The params.json contents (see :data:`~mlaas4hep.workflow.params.DEFAULT_PARAMS`);
        None uses the defaults.
    specs : path or Specs, optional
        Specs to reuse (``--specs``): a JSON file is read when it matches the
        files, and (re)written otherwise.
    fout : path, optional
        Where to save the trained model (``--fout``); must end in ``.keras`` or ``.h5``.
        Beside it go the preprocessing (what :func:`~mlaas4hep.write_scores`
        needs to make the model's inputs), ``model.keras`` -> ``model.preprocessing.json``,
        and the params of the run, its seed included, ``model.params.json``
        (give it as ``params`` to repeat the run).
    preproc : path, mapping or Preproc, optional
        The original's preproc.json (``--preproc``): new branches, cuts and
        branches to drop, translated by :func:`mlaas4hep.workflow.preproc.translate_preproc`
        into the sequences' ``cut``, ``aliases`` and ``exclude``.

    Returns
    -------
    WorkflowResult
        The trained model, the specs, the per-epoch history, the held-out
        set's metrics (those the model was compiled with, plus ``roc_auc``),
        the plots and files written, and the params used (``result.seed``).

    Raises
    ------
    ParameterError
        For a bad ``fout`` suffix or params; the library's errors name the file,
        branch or key at fault.

    Notes
    -----
    The events of every file are split in order: the first
    ``1 - validation_split - test_split`` train, the next ``validation_split``
    validate (Keras' ``val_*`` metrics), the last ``test_split`` make the test
    set evaluated at the end. With ``test_split`` 0 the test metrics are those
    of the validation set. The seed (default 1; ``"seed": null`` draws one)
    shuffles the training events and is given to ``keras.utils.set_random_seed``
    (Python's, NumPy's and the backend's generators) before the model is built,
    so the same params repeat a run.

    With params' ``folds`` (k) the run trains k models instead
    (:mod:`~mlaas4hep.workflow.folds`): model j on every fold but j, less
    ``validation_split``, tested on fold j; ``fout`` ``model.keras`` saves
    ``model_fold{j}.keras`` and ``model_fold{j}.preprocessing.json`` for each
    fold and one ``model.params.json``, and ``specs`` ``specs.json`` becomes
    ``specs_fold{j}.json``.

    Examples
    --------
    >>> result = run_workflow(["sig.root", "bkg.root"], [1, 0], seed_model,
    ...                       {"epochs": 2}, fout="model.keras")  # doctest: +SKIP
    >>> result.metrics["roc_auc"], result.seed  # doctest: +SKIP
    (0.7834, 1)
    """
    given = _as_params(params)
    used = given.with_seed()  # the params of this run: a seed drawn for "seed": null
    if fout is not None and Path(fout).suffix not in (".keras", ".h5"):
        msg = f"--fout: {os.fspath(fout)!r} must end in .keras (or .h5), as keras.Model.save requires"
        raise ParameterError(msg)
    model_function = model if callable(model) else load_model_function(model)
    preproc = _as_preproc(preproc)
    log.info("model parameters: %s", json.dumps(used.to_dict()))
    assert used.seed is not None  # with_seed drew one
    _log_seed(used.seed, drawn=given.seed is None)
    import keras

    if used.folds is not None:
        return _run_folds(files, labels, model_function, used, specs, fout, preproc)
    keras.utils.set_random_seed(used.seed)
    sequences: list[Any] = []
    try:
        train_seq, val, test = _make_sequences(files, labels, used, specs, preproc, sequences)
        plots: list[Path] = []
        hist_dir = Path(used.hist) if used.hist else None
        if hist_dir is not None:
            hist_dir.mkdir(parents=True, exist_ok=True)
            plots.append(plot_sequence_features(train_seq, hist_dir / "features.pdf"))
        ml_model = build_model(model_function, sequences, used.verbose)
        history = train(ml_model, train_seq, val, used)
        evaluation, name = (test, "test") if test is not None else (val, "validation")
        metrics: dict[str, float] = {}
        roc_auc = curve = None
        if evaluation is not None:
            metrics, y_true, scores = evaluate(ml_model, evaluation, name)
            roc_auc, curve = metrics["roc_auc"], (y_true, scores, name)
        if hist_dir is not None:
            plots += plot_results(hist_dir, curve, history, type(ml_model).__name__)
            log.info("plots: %s", ", ".join(map(str, plots)))
        result = WorkflowResult(ml_model, train_seq.specs, history, metrics, roc_auc, plots, params=used)
        if fout is not None:
            _save(result, Path(fout), train_seq)
        return result
    finally:
        for seq in sequences:
            seq.close()


# -- the steps of run_workflow ----------------------------------------------------------------


def _as_params(params: WorkflowParams | Mapping[str, Any] | str | os.PathLike[str] | None) -> WorkflowParams:
    """``params`` as :class:`WorkflowParams`: the defaults for None, a params.json path read and checked."""
    if params is None:
        return WorkflowParams()
    if isinstance(params, (str, os.PathLike)):
        return load_params(params)
    if isinstance(params, Mapping):
        return WorkflowParams.from_dict(params)
    return params


def _as_preproc(preproc: str | os.PathLike[str] | Mapping[str, Any] | Preproc | None) -> Preproc | None:
    """``preproc`` as :class:`~mlaas4hep.workflow.preproc.Preproc`: a preproc.json path or contents translated."""
    if preproc is None or isinstance(preproc, Preproc):
        return preproc
    if isinstance(preproc, (str, os.PathLike)):
        return load_preproc(preproc)
    return translate_preproc(preproc)


def _log_seed(seed: int, *, drawn: bool) -> None:
    """Tell the seed of the run, and how to repeat it."""
    origin = '(drawn at random for "seed": null)' if drawn else "(params.json's seed)"
    if not drawn and seed == DEFAULT_PARAMS["seed"]:
        origin = "(the default)"
    log.info("seed %d %s: it shuffles the training events and sets Keras' initial weights", seed, origin)


def _make_sequences(
    files: Sequence[str | os.PathLike[str]],
    labels: Sequence[float] | str,
    params: WorkflowParams,
    specs: str | os.PathLike[str] | Specs | None,
    preproc: Preproc | None,
    opened: list[Any],
) -> tuple[Any, Any | None, Any | None]:
    """The training, validation and test sequences (None for a part of size 0).

    The training sequence makes (or reuses) the specs, which the other two
    share. Each sequence is appended to ``opened`` as soon as it exists, for
    the caller to close even when a later one fails.
    """
    t0 = time.perf_counter()
    common, training = _sequence_options(files, labels, params, preproc)
    fractions = (params.validation_split, params.test_split)
    train_seq = _make_sequence("training", fractions, specs=specs, shuffle=params.shuffle, **training, **common)
    opened.append(train_seq)
    log.info("--- first pass: %s (the inputs per event, jagged branches padded)", train_seq.specs.summary())
    val = test = None
    if params.validation_split:
        val = _make_sequence("validation", fractions, specs=train_seq.specs, shuffle=False, **common)
        opened.append(val)
    if params.test_split:
        test = _make_sequence("test", fractions, specs=train_seq.specs, shuffle=False, **common)
        opened.append(test)
    log.debug("sequences made in %.2f s", time.perf_counter() - t0)
    n_val, n_test = (None if seq is None else seq.n_events for seq in (val, test))
    log.info("%s", split_line(params, train_seq.n_events, len(train_seq), n_val, n_test))
    return train_seq, val, test


def _sequence_options(
    files: Sequence[str | os.PathLike[str]],
    labels: Sequence[float] | str,
    params: WorkflowParams,
    preproc: Preproc | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments of every sequence of the run, and those of the training one only (its branches)."""
    common: dict[str, Any] = {
        "files": list(files),
        "labels": labels,
        "tree": params.branch,
        "batch_size": params.batch_size,
        "chunk_size": params.chunk_size,
        "nevts": params.nevts,
        "seed": params.seed,
        "redirector": params.redirector,
        "normalization": params.normalization,
        "layout": params.layout,
        "cut": preproc.cut if preproc is not None else None,
        "aliases": dict(preproc.aliases) if preproc is not None else None,
    }
    training = {
        "branches": list(params.selected_branches) or None,
        "exclude": params.exclude + (list(preproc.exclude) if preproc is not None else []),
    }
    return common, training


def _make_sequence(part: str, fractions: tuple[float, float], **kwargs: Any) -> Any:
    """A RootSequence serving one part of the three-way split: ``"training"``, ``"validation"`` or ``"test"``."""
    from ..sequence import RootSequence

    validation_split, test_split = fractions
    return RootSequence(validation_split=validation_split or None, test_split=test_split or None, subset=part, **kwargs)


def split_line(params: WorkflowParams, n_train: int, n_batches: int, n_val: int | None, n_test: int | None) -> str:
    """What the run trains, validates and tests on: each part's share of every file, and its events.

    ``n_val`` and ``n_test`` are None for a part the params leave out.

    Examples
    --------
    >>> split_line(WorkflowParams(), 600, 6, 200, 200)  # doctest: +NORMALIZE_WHITESPACE
    "split of each file's events, in order: the first 60% train (600 events, 6 batches of 100),
    the next 20% validate (200 events; validation_split), the last 20% are the test set (200 events; test_split)"
    """
    scope = "each file's events" if params.nevts == -1 else f"each file's share of nevts={params.nevts} events"
    train_share = 100 * (1 - params.validation_split - params.test_split)
    parts = [f"the first {train_share:.3g}% train ({n_train} events, {n_batches} batches of {params.batch_size})"]
    if n_val is None:
        parts.append("no validation (validation_split 0)")
    else:
        parts.append(f"the next {100 * params.validation_split:.3g}% validate ({n_val} events; validation_split)")
    if n_test is None:
        parts.append("no test set (test_split 0): the final metrics are the validation set's")
    else:
        parts.append(f"the last {100 * params.test_split:.3g}% are the test set ({n_test} events; test_split)")
    return f"split of {scope}, in order: " + ", ".join(parts)


def _run_folds(
    files: Sequence[str | os.PathLike[str]],
    labels: Sequence[float] | str,
    model_function: Callable[[Any], Any],
    params: WorkflowParams,
    specs: str | os.PathLike[str] | Specs | None,
    fout: str | os.PathLike[str] | None,
    preproc: Preproc | None,
) -> WorkflowResult:
    """params' ``folds``: k models, model j trained on the other folds and tested on fold j; the summary."""
    assert params.folds is not None
    options = _sequence_options(files, labels, params, preproc)
    hist_dir = Path(params.hist) if params.hist else None
    if hist_dir is not None:
        hist_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(fout) if fout is not None else None
    folds = [
        train_fold(j, model_function, params, options, specs=specs, model_path=model_path, hist_dir=hist_dir)
        for j in range(params.folds)
    ]
    means, spreads, pooled = summarize(folds)
    plots = [path for fold in folds for path in fold.plots]
    if hist_dir is not None:
        plots.append(plot_pooled_roc(hist_dir, folds))
        log.info("plots: %s", ", ".join(map(str, plots)))
    metrics = {**means, "pooled_roc_auc": pooled}
    models = [fold.model for fold in folds]
    result = WorkflowResult(models, folds[0].specs, {}, metrics, pooled, plots, params=params, folds=folds)
    result.spreads = spreads
    if model_path is not None:
        result.params_path = save_params(params, params_path(model_path))
        log.info("saved the run's params (seed %s, %d folds) to %s", params.seed, params.folds, result.params_path)
        log_predict_command(files, folds, model_path.parent / "scores")
    return result


def _save(result: WorkflowResult, model_path: Path, train_seq: Any) -> None:
    """Save the model, its preprocessing and the run's params beside each other; their paths go into ``result``."""
    result.model_path = model_path
    result.preprocessing_path = save_model(result.model, model_path, train_seq)
    result.params_path = save_params(result.params, params_path(model_path))
    log.info(
        "saved the model to %s, its preprocessing to %s and the run's params (seed %s) to %s",
        model_path,
        result.preprocessing_path,
        result.seed,
        result.params_path,
    )
