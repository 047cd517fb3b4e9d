"""The models of scoring: loaded once, checked against their preprocessing, applied batch by batch."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..options import Options
from ..preprocessing import Preprocessing

__all__ = ["MODEL_SUFFIXES", "Scorer", "in_process", "load_model", "output_width", "resolve_model"]

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5")
"""Suffixes of the model files :func:`~mlaas4hep.scores.write_scores` loads."""


@dataclass
class Scorer:
    """The model and how to apply it, as every task needs it.

    ``options`` serve the events the model scores (with folds, the user's
    cut ANDed with the model's test fold); ``cut`` is the user's cut alone.

    In this process (threads) the loaded model is shared and its calls are
    serialized; a pickled copy (a Dask task) carries only the model's path and
    loads the model when first used.
    """

    preprocessing: Preprocessing
    options: Options
    branches: tuple[str, ...]
    rntuple: bool
    model_path: str | None
    cut: str | None = None
    model: Any = field(default=None)
    lock: Any = field(default_factory=threading.Lock)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": None, "lock": None}

    def loaded(self) -> Any:
        """The model, loaded from its path on first use in this process."""
        if self.model is None:
            assert self.model_path is not None  # a live model is never pickled (checked by write_scores)
            self.model = load_model(self.model_path)
        return self.model

    def predict(self, x: Any, n: int) -> np.ndarray:
        """The model's scores of one batch of ``n`` events, shape ``(n, len(branches))``."""
        model = self.loaded()
        with self.lock if self.lock is not None else contextlib.nullcontext():
            out = model.predict_on_batch(x)
        return np.asarray(_single_output(out), dtype=np.float32).reshape(n, len(self.branches))


def load_model(path: str | os.PathLike[str]) -> Any:
    import keras  # a library call: Keras is imported as it is, its logging left to the user

    log.info("loading the model %s", os.fspath(path))
    return keras.models.load_model(path, compile=False)


def in_process(executor: Any) -> bool:
    """Whether the tasks run in threads of this process (where a live model can be shared)."""
    if executor is None or isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return True
    return isinstance(executor, str) and executor in ("threads", "serial")


def resolve_model(model: Any, executor: Any) -> tuple[Any, str | None]:
    """The model loaded here (for the checks and threads), and its path (for tasks elsewhere)."""
    if not isinstance(model, (str, os.PathLike)):
        if not in_process(executor):
            msg = (
                f"with executor={executor!r} the tasks run in other processes: give the model as the path "
                f"of its {'/'.join(MODEL_SUFFIXES)} file (model.save(path)), which each task loads"
            )
            raise ParameterError(msg)
        if not callable(getattr(model, "predict_on_batch", None)):
            msg = (
                f"model must be a Keras model or the path of a saved one, got a {type(model).__module__}."
                f"{type(model).__name__} (no predict_on_batch); for a PyTorch module, export it to ONNX or score "
                "its batches with mlaas4hep.torch.RootDataset"
            )
            raise ParameterError(msg)
        return model, None
    path = Path(model)
    if path.suffix not in MODEL_SUFFIXES or not path.is_file():
        found = "not found" if not path.exists() else f"is not a {' or '.join(MODEL_SUFFIXES)} file"
        msg = f"model {os.fspath(model)!r} {found}"
        raise ParameterError(msg)
    return load_model(path), str(path.resolve())


def output_width(model: Any, preprocessing: Preprocessing) -> int:
    """How many scores the model gives per event, checking that it takes the preprocessing's inputs."""
    spec = preprocessing.input_spec
    features = preprocessing.num_features
    try:
        inputs = list(model.inputs)  # functional and sequential models; a subclassed one may not know them
    except (AttributeError, TypeError, ValueError):
        inputs = []
    expected = tuple(spec)
    if inputs and len(inputs) != len(expected):
        msg = f"the model takes {len(inputs)} inputs; the preprocessing makes {len(expected)}: {expected}"
        raise ParameterError(msg)
    sizes = [t.shape[-1] for t in inputs if t.shape and t.shape[-1] is not None]
    if preprocessing.layout == "flat" and any(int(size) != features for size in sizes):
        msg = (
            f"the model takes inputs of {sizes[0]} features, but the preprocessing makes {features} "
            f"({len(preprocessing.branches)} branches): was it trained with this preprocessing?"
        )
        raise ParameterError(msg)
    zeros = {name: np.zeros((1, *shape), dtype=np.float32) for name, (shape, _) in spec.items()}
    try:
        out = model.predict_on_batch(zeros if len(zeros) > 1 or preprocessing.layout != "flat" else zeros["features"])
    except (ValueError, TypeError) as err:
        msg = f"the model cannot take the preprocessing's inputs ({features} features): {err}"
        raise ParameterError(msg) from err
    out = np.asarray(_single_output(out))
    if out.ndim > 2 or out.shape[0] != 1:
        msg = f"the model gives scores of shape {out.shape[1:]} per event; expected one number or one per class"
        raise ParameterError(msg)
    return 1 if out.ndim == 1 else int(out.shape[1])


def _single_output(out: Any) -> Any:
    """The one output of a model's prediction (a named output comes in a dict or a list of one)."""
    if isinstance(out, (list, tuple, dict)):
        if len(out) != 1:
            msg = f"the model has {len(out)} outputs; scores are written for a model with one output"
            raise ParameterError(msg)
        return next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out
