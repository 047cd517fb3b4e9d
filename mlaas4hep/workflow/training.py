"""Training in the workflow: the user's model built for the features, fitted, one log line per epoch.

:func:`build_model` calls the user's ``model(idim)``; :func:`fit_model` calls
its ``fit``, whatever that looks like (a Keras model, or a subclass with its own
``fit`` as in the original's ``models.py``); :func:`train` fits for the
params' epochs and logs one line per epoch: the model's metrics, and with a
:class:`~mlaas4hep.LoaderStats` the loader's events/s and the time training
waited for batches.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ParameterError, reraise
from ..preprocessing import preprocessing_path
from .params import WorkflowParams

__all__ = ["build_model", "epoch_line", "fit_model", "save_model", "train"]

log = logging.getLogger(__name__)


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

    Raises
    ------
    ParameterError
        If ``fit`` cannot be called with the training sequence at all.

    Examples
    --------
    >>> history = fit_model(model, train, val, epochs=5, verbose=0)  # doctest: +SKIP
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


def epoch_line(
    epoch: int, epochs: int, seconds: float, metrics: Mapping[str, float], loader: Mapping[str, float] | None = None
) -> str:
    """The log line of one epoch: its metrics as Keras names them, then the loader's rate and wait.

    Parameters
    ----------
    epoch, epochs : int
        The epoch (counted from 1) and how many there are.
    seconds : float
        The epoch's wall time, validation included.
    metrics : mapping
        Keras' logs of the epoch: ``loss`` first, then the other training metrics,
        then the validation ones (``val_*``).
    loader : mapping, optional
        The epoch's :class:`~mlaas4hep.LoaderStats` record (``events_per_s``,
        ``wait_s``, ``wait_fraction``); "n/a" for what it could not count.

    Examples
    --------
    >>> epoch_line(2, 5, 3.04, {"auc": 0.7731, "loss": 0.5655, "val_loss": 0.5579},
    ...            {"events_per_s": 23988.2, "wait_s": 0.012, "wait_fraction": 0.004})
    'Epoch 2/5 - 3.0s - loss: 0.5655 - auc: 0.7731 - val_loss: 0.5579 - 23988 events/s, waited 0.01 s for batches (0%)'
    """
    order = sorted(metrics, key=lambda k: (k.startswith("val_"), k.removeprefix("val_") != "loss"))
    parts = [f"Epoch {epoch}/{epochs}", f"{seconds:.1f}s", *(f"{k}: {float(metrics[k]):.4f}" for k in order)]
    if loader is not None:
        rate, wait, share = (loader.get(k, math.nan) for k in ("events_per_s", "wait_s", "wait_fraction"))
        rate_text = "n/a" if math.isnan(rate) else f"{rate:.0f}"
        wait_text = "n/a" if math.isnan(wait) else f"{wait:.2f} s"
        share_text = "n/a" if math.isnan(share) else f"{100 * share:.0f}%"
        parts.append(f"{rate_text} events/s, waited {wait_text} for batches ({share_text})")
    return " - ".join(parts)


def _epoch_callback(stats: Any | None) -> Any:
    """A Keras callback that keeps every epoch's metrics and logs :func:`epoch_line` (after ``stats``' record)."""
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
            metrics = {key: float(value) for key, value in (logs or {}).items()}
            for key, value in metrics.items():
                self.history.setdefault(key, []).append(value)
            record = stats.last if stats is not None else None
            log.info("%s", epoch_line(epoch + 1, self.epochs, time.perf_counter() - self._t0, metrics, record))

    return EpochLog()


def build_model(model_function: Callable[[Any], Any], sequences: Sequence[Any], verbose: int) -> Any:
    """The user's model for the features of ``sequences[0]`` (the training one).

    ``model(idim)`` is given the number of features, or with ``"layout": "collections"``
    the training sequence's ``input_spec``. A categorical cross-entropy loss gets
    one-hot labels from every sequence. At ``verbose`` 1 and above, Keras'
    summary of the model is logged.

    Examples
    --------
    >>> ml_model = build_model(seed_model, [train, val], verbose=0)  # doctest: +SKIP
    """
    first = sequences[0]
    if first.options.layout != "collections":
        ml_model = model_function(first.num_features)
    else:
        ml_model = _collections_model(model_function, first.input_spec)
    classes = _categorical_classes(ml_model)
    if classes:  # as the original: a categorical cross-entropy loss gets one-hot labels
        log.info("categorical cross-entropy loss: one-hot labels over %d classes", classes)
        for seq in sequences:
            seq.serve_one_hot(classes)
    if verbose >= 1 and hasattr(ml_model, "summary"):
        try:
            ml_model.summary(print_fn=lambda line, *a, **k: log.info("%s", line))
        except ValueError:  # a subclassed model that is not built yet has no summary
            log.info("model %s", type(ml_model).__name__)
    return ml_model


def _collections_model(model_function: Callable[[Any], Any], spec: dict[str, Any]) -> Any:
    """``model(input_spec)`` for the collections layout, refused clearly when it is a model of the flat layout."""
    hint = (
        f'"layout": "collections" gives model(idim) the inputs {sorted(spec)} (a dict: name -> (shape, dtype)) '
        "and serves x as a dict of them: write the model for them (e.g. mlaas4hep.workflow.models.deep_sets), "
        'or use "layout": "flat"'
    )
    try:
        ml_model = model_function(spec)
    except (TypeError, ValueError) as err:  # a flat model given a dict: Keras' own message says little
        msg = f"the model file's model(idim) failed: {type(err).__name__}: {err}; {hint}"
        raise ParameterError(msg) from err
    try:
        names = sorted(str(t.name).split(":")[0] for t in ml_model.inputs)
    except (AttributeError, TypeError, ValueError):  # a subclassed model may not know its inputs
        return ml_model
    if names != sorted(spec):
        msg = f"the model takes the inputs {names}; {hint}"
        raise ParameterError(msg)
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


def train(ml_model: Any, train: Any, val: Any | None, params: WorkflowParams) -> dict[str, list[float]]:
    """Fit the model for ``params.epochs``, one log line per epoch; the metrics of every epoch.

    At ``verbose`` 1 and above a :class:`~mlaas4hep.LoaderStats` follows the
    training sequence: its numbers join each epoch's line, and its own detailed
    line is logged too (logger ``mlaas4hep.loader_stats``). At 2 and above
    Keras shows its progress bar.

    Returns
    -------
    dict
        Metric name -> one value per epoch (Keras' ``History.history``).

    Examples
    --------
    >>> history = train(ml_model, train_seq, val_seq, WorkflowParams(epochs=2))  # doctest: +SKIP
    """
    stats = None
    if params.verbose >= 1 and hasattr(train, "pipeline"):  # a RootSequence: the loader's numbers per epoch
        from ..loader_stats import LoaderStats

        stats = LoaderStats(train)
    epoch_log = _epoch_callback(stats)
    callbacks = [epoch_log] if stats is None else [stats, epoch_log]  # stats' record first, for the epoch line
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
    log.info("trained %d epoch%s in %.1f s", params.epochs, "" if params.epochs == 1 else "s", time.perf_counter() - t1)
    history: dict[str, list[float]] = epoch_log.history or dict(getattr(returned, "history", None) or {})
    return history


def save_model(model: Any, model_path: Path, train_seq: Any) -> Path:
    """Save ``model`` to ``model_path`` and the training sequence's preprocessing beside it; the latter's path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras' notes on saving subclassed models
        model.save(model_path)
    return Path(train_seq.save_preprocessing(preprocessing_path(model_path)))
