"""The original MLaaS4HEP workflow (files, labels, a model file, params.json) as library calls.

:func:`run_workflow` does what the original ``workflow.py`` did: a first pass
over the files (the specs), training of the user's Keras model on chunks of
events, and the test-set loss, accuracy and AUC at the end, with optional
plots. Its inputs are read by :mod:`mlaas4hep.workflow.lists` (list files, the model
file) and :mod:`mlaas4hep.workflow.params` (params.json), whose functions are
re-exported here. The command line (:mod:`mlaas4hep.workflow.cli`) only parses
arguments and calls these functions.

Keras (and TensorFlow) are imported only when a model is loaded or trained,
after :func:`quiet_tensorflow` has silenced TensorFlow's C++ and absl logs.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..specs.values import Specs
from .lists import load_model_function, parse_labels, read_list
from .params import DEFAULT_PARAMS, WorkflowParams, load_params
from .preproc import Preproc, load_preproc, translate_preproc

__all__ = [
    "DEFAULT_PARAMS",
    "WorkflowParams",
    "WorkflowResult",
    "fit_model",
    "import_keras",
    "load_model_function",
    "load_params",
    "parse_labels",
    "quiet_tensorflow",
    "read_list",
    "run_workflow",
]

log = logging.getLogger(__name__)


def quiet_tensorflow(verbose: int = 0) -> None:
    """Silence TensorFlow's C++ and absl logging before Keras is imported.

    Parameters
    ----------
    verbose : int
        Below 2, TensorFlow's C++ log level is set to 3 (errors only) unless
        ``TF_CPP_MIN_LOG_LEVEL`` is already set; at 2 and above it is left alone.
    """
    if verbose < 2:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import absl.logging
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to silence
        return
    absl.logging.set_verbosity(absl.logging.ERROR if verbose < 2 else absl.logging.INFO)


def import_keras(verbose: int = 0) -> Any:
    """Import Keras (and TensorFlow) with :func:`quiet_tensorflow`, hiding TensorFlow's start-up lines.

    TensorFlow's C++ start-up messages (oneDNN, CUDA drivers, absl's
    ``InitializeLog`` warning) ignore ``TF_CPP_MIN_LOG_LEVEL`` in recent
    releases; below ``verbose`` 2 the process's stderr is sent to /dev/null
    while Keras is first imported. Python exceptions still propagate.

    Returns
    -------
    module
        :mod:`keras`.
    """
    quiet_tensorflow(verbose)
    if verbose >= 2 or "tensorflow" in sys.modules:
        import keras

        return keras
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to silence
        import keras

        return keras
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import keras
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    return keras


# -- training ---------------------------------------------------------------------------------


def fit_model(model: Any, train: Any, validation: Any | None, **kwargs: Any) -> Any:
    """Call ``model.fit`` with the sequences, whatever the model's own ``fit`` looks like.

    A Keras model gets ``fit(train, None, validation_data=validation, **kwargs)``.
    A ``keras.Model`` subclass that defines ``fit(self, x_train, y_train, **kwds)``
    as in the original's ``models.py`` gets the same call: ``x_train`` is the
    training sequence (which yields ``(x, y)`` batches), ``y_train`` is None.
    A ``fit`` with a single data argument gets only the sequence; keyword
    arguments it does not accept (and that no ``**kwds`` would take) are left out.

    Returns
    -------
    whatever ``fit`` returns (a ``keras.callbacks.History`` for Keras models)
    """
    fit = model.fit
    kwargs = dict(kwargs)
    if validation is not None:
        kwargs["validation_data"] = validation
    signature = inspect.signature(fit)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not takes_any:
        dropped = [k for k in kwargs if k not in signature.parameters]
        if dropped:
            log.warning("%s.fit takes no %s; not passing them", type(model).__name__, dropped)
        kwargs = {k: v for k, v in kwargs.items() if k in signature.parameters}
    for args in ((train, None), (train,)):
        try:
            signature.bind(*args, **kwargs)
        except TypeError:
            continue
        return fit(*args, **kwargs)
    msg = f"cannot call {type(model).__name__}.fit{signature} with the training sequence"
    raise ParameterError(msg)


def _history_callback() -> Any:
    """A Keras callback that logs one line per epoch and keeps every epoch's metrics."""
    import keras

    class EpochLog(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {}
            self.epochs = 0
            self._t0 = 0.0

        def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
            self.epochs = int(self.params.get("epochs") or 0)

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            logs = dict(logs or {})
            for key, value in logs.items():
                self.history.setdefault(key, []).append(float(value))
            metrics = " - ".join(f"{k}: {float(v):.4f}" for k, v in logs.items())
            log.info("Epoch %d/%d - %.1fs - %s", epoch + 1, self.epochs, time.perf_counter() - self._t0, metrics)

    return EpochLog()


@dataclass
class WorkflowResult:
    """What :func:`run_workflow` returns."""

    model: Any
    specs: Specs
    history: dict[str, list[float]]
    metrics: dict[str, float]
    roc_auc: float | None = None
    plots: list[Path] = field(default_factory=list)
    model_path: Path | None = None
    preprocessing_path: Path | None = None


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
        The params.json contents (see :data:`DEFAULT_PARAMS`); None uses the defaults.
    specs : path or Specs, optional
        Specs to reuse (``--specs``): a JSON file is read when it matches the
        files, and (re)written otherwise.
    fout : path, optional
        Where to save the trained model (``--fout``); must end in ``.keras`` or ``.h5``.
        The preprocessing (what :func:`~mlaas4hep.write_scores` needs to make
        the model's inputs) is saved beside it: ``model.keras`` -> ``model.preprocessing.json``.
    preproc : path, mapping or Preproc, optional
        The original's preproc.json (``--preproc``): new branches, cuts and
        branches to drop, translated by :func:`mlaas4hep.workflow.preproc.translate_preproc`
        into the sequences' ``cut``, ``aliases`` and ``exclude``.

    Returns
    -------
    WorkflowResult
        The trained model, the specs, the per-epoch history, the test-set
        metrics (those the model was compiled with, plus ``roc_auc``), and the
        plots written.

    Notes
    -----
    The events of every file are split in order: the first
    ``1 - validation_split - test_split`` train, the next ``validation_split``
    validate (Keras' ``val_*`` metrics), the last ``test_split`` make the test
    set evaluated at the end. With ``test_split`` 0 the test metrics are those
    of the validation set.
    """
    params = _as_params(params)
    if fout is not None and Path(fout).suffix not in (".keras", ".h5"):
        msg = f"--fout: {os.fspath(fout)!r} must end in .keras (or .h5), as keras.Model.save requires"
        raise ParameterError(msg)
    keras = import_keras(params.verbose)
    model_function = model if callable(model) else load_model_function(model)
    preproc = _as_preproc(preproc)
    log.info("model parameters: %s", json.dumps({k: getattr(params, k) for k in DEFAULT_PARAMS}, default=list))

    if params.seed is not None:
        keras.utils.set_random_seed(params.seed)
    sequences: list[Any] = []
    try:
        train, val, test = _make_sequences(files, labels, params, specs, preproc, sequences)
        plots: list[Path] = []
        hist_dir = Path(params.hist) if params.hist else None
        if hist_dir is not None:
            from .plots import plot_sequence_features

            hist_dir.mkdir(parents=True, exist_ok=True)
            plots.append(plot_sequence_features(train, hist_dir / "features.pdf"))
        ml_model = _build_model(model_function, sequences, params.verbose)
        history = _train(ml_model, train, val, params)
        evaluation, name = (test, "test") if test is not None else (val, "validation")
        metrics: dict[str, float] = {}
        roc_auc = None
        curve = None
        if evaluation is not None:
            metrics, y_true, scores = _evaluate(ml_model, evaluation, name)
            roc_auc = metrics["roc_auc"]
            curve = (y_true, scores, name)
        if hist_dir is not None:
            plots += _plot_results(hist_dir, curve, history, type(ml_model).__name__)
            log.info("wrote plots %s", ", ".join(map(str, plots)))
        model_path, preprocessing = _save(ml_model, fout, train)
        return WorkflowResult(ml_model, train.specs, history, metrics, roc_auc, plots, model_path, preprocessing)
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
    fractions = (params.validation_split, params.test_split)
    train = _make_sequence(
        "training",
        fractions,
        branches=list(params.selected_branches) or None,
        exclude=params.exclude + (list(preproc.exclude) if preproc is not None else []),
        specs=specs,
        shuffle=params.shuffle,
        **common,
    )
    log.info("--- first pass: %s", train.specs.summary())
    opened.append(train)
    val = test = None
    if params.validation_split:
        val = _make_sequence("validation", fractions, specs=train.specs, shuffle=False, **common)
        opened.append(val)
    if params.test_split:
        test = _make_sequence("test", fractions, specs=train.specs, shuffle=False, **common)
        opened.append(test)
    log.info(
        "init sequences in %.2f s: training on %d events (%d batches), validating on %d, testing on %d",
        time.perf_counter() - t0,
        train.n_events,
        len(train),
        val.n_events if val is not None else 0,
        test.n_events if test is not None else 0,
    )
    return train, val, test


def _make_sequence(part: str, fractions: tuple[float, float], **kwargs: Any) -> Any:
    """A RootSequence serving one part of the three-way split: ``"training"``, ``"validation"`` or ``"test"``."""
    from ..sequence import RootSequence

    validation_split, test_split = fractions
    return RootSequence(validation_split=validation_split or None, test_split=test_split or None, subset=part, **kwargs)


def _build_model(model_function: Callable[[Any], Any], sequences: Sequence[Any], verbose: int) -> Any:
    """The user's model for the features of ``sequences[0]`` (the training one).

    ``model(idim)`` is given the number of features, or with ``"layout": "collections"``
    the training sequence's ``input_spec``. A categorical cross-entropy loss gets
    one-hot labels from every sequence.
    """
    train = sequences[0]
    ml_model = model_function(train.input_spec if train.options.layout == "collections" else train.num_features)
    classes = _categorical_classes(ml_model)
    if classes:  # as the original: a categorical cross-entropy loss gets one-hot labels
        log.info("categorical cross-entropy loss: one-hot labels over %d classes", classes)
        for seq in sequences:
            seq.outputs.enable_one_hot(classes)
    if verbose >= 1 and hasattr(ml_model, "summary"):
        try:
            ml_model.summary(print_fn=lambda line, *a, **k: log.info("%s", line))
        except ValueError:  # a subclassed model that is not built yet has no summary
            log.info("model %s", type(ml_model).__name__)
    return ml_model


def _categorical_classes(model: Any) -> int | None:
    """Number of classes when ``model`` is compiled with a categorical (not sparse) cross-entropy loss."""
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else getattr(loss, "name", None) or getattr(loss, "__name__", "")
    if name not in ("categorical_crossentropy", "CategoricalCrossentropy"):
        return None
    try:
        classes = int(model.output_shape[-1])
    except (AttributeError, TypeError, ValueError):
        return None
    return classes if classes > 1 else None


def _train(ml_model: Any, train: Any, val: Any | None, params: WorkflowParams) -> dict[str, list[float]]:
    """Fit the model for ``params.epochs``, one log line per epoch; the metrics of every epoch."""
    from ..errors import reraise

    callbacks = [_history_callback()]
    if params.verbose >= 1 and hasattr(train, "pipeline"):  # a RootSequence: one line per epoch on the loader
        from ..loader_stats import LoaderStats

        callbacks.append(LoaderStats(train))
    t1 = time.perf_counter()
    with reraise(*(s for s in (train, val) if s is not None)):  # a read error as the library's, not TensorFlow's
        returned = fit_model(
            ml_model,
            train,
            val,
            epochs=params.epochs,
            verbose=1 if params.verbose >= 2 else 0,
            callbacks=callbacks,
        )
    log.info("####Time for training: %.2f s", time.perf_counter() - t1)
    history: dict[str, list[float]] = callbacks[0].history or dict(getattr(returned, "history", None) or {})
    return history


def _evaluate(ml_model: Any, evaluation: Any, name: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The compiled metrics and ``roc_auc`` on the ``name`` set, logged; with its labels and scores."""
    from ..errors import reraise

    metrics: dict[str, float] = {}
    if hasattr(ml_model, "evaluate"):
        with reraise(evaluation):
            results = ml_model.evaluate(evaluation, verbose=0, return_dict=True)
        metrics = {k: float(v) for k, v in results.items()}
    y_true, scores = _predict(ml_model, evaluation)
    if np.unique(y_true).size > 2:  # integer labels of several classes: the last one against the rest
        y_true = (y_true == y_true.max()).astype(np.float32)
    from .plots import auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y_true, scores)
    metrics["roc_auc"] = auc_score(fpr, tpr)
    log.info("%s set (%d events):", name, evaluation.n_events)
    for key, value in metrics.items():
        log.info("%s : %s", key, value)
    return metrics, y_true, scores


def _predict(model: Any, seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and model outputs over one full pass of ``seq``."""
    ys, ps = [], []
    for i in range(len(seq)):
        X, y = seq[i][:2]  # batches may carry sample weights too
        y = np.asarray(y)
        # several classes: the last class against the rest, as the scores below
        ys.append(y[:, -1] if y.ndim == 2 and y.shape[1] > 1 else y.ravel())
        ps.append(np.asarray(model.predict_on_batch(X)).reshape(len(y), -1)[:, -1])
    seq.on_epoch_end()
    return np.concatenate(ys), np.concatenate(ps)


def _plot_results(
    hist_dir: Path,
    curve: tuple[np.ndarray, np.ndarray, str] | None,
    history: Mapping[str, Sequence[float]],
    model_name: str,
) -> list[Path]:
    """The ROC curve (of the evaluated set, if any) and the training history, written into ``hist_dir``."""
    plots = []
    if curve is not None:
        from .plots import plot_roc

        y_true, scores, name = curve
        plot_roc(y_true, scores, hist_dir / "roc.pdf", title=f"ROC on the {name} set")
        plots.append(hist_dir / "roc.pdf")
    if history:
        from .plots import plot_history

        plot_history(history, hist_dir / "history.pdf")
        plots.append(hist_dir / "history.pdf")
    else:
        log.warning("no training history to plot: %s.fit passed no callbacks", model_name)
    return plots


def _save(ml_model: Any, fout: str | os.PathLike[str] | None, train: Any) -> tuple[Path | None, Path | None]:
    """Save the model to ``fout``, if given, and its preprocessing beside it; the paths saved to."""
    if fout is None:
        return None, None
    model_path = Path(fout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras' notes on saving subclassed models
        ml_model.save(model_path)
    log.info("saved model to %s", model_path)
    from ..preprocessing import preprocessing_path

    return model_path, train.save_preprocessing(preprocessing_path(model_path))
