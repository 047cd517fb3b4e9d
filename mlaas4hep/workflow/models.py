"""Keras models: the original MLaaS4HEP recipe's (its ``keras_model.py``), and a Deep Sets model for collections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ParameterError

__all__ = ["POOLINGS", "deep_sets", "seed_model"]

POOLINGS = ("sum", "mean")
"""Values of ``deep_sets``' ``pooling``."""


def seed_model(idim: int, learning_rate: float = 1e-3) -> Any:
    """Dense 128 relu, Dropout 0.5, Dense 64 relu, Dropout 0.5, Dense 1 sigmoid; Adam, binary cross-entropy.

    Parameters
    ----------
    idim : int
        Number of input features (``RootSequence.num_features``).
    learning_rate : float
        Adam's learning rate.

    Returns
    -------
    keras.Model
        Compiled with the metrics accuracy and AUC, as the original.
    """
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(idim,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


def deep_sets(
    inputs: Any,
    *,
    hidden: Sequence[int] = (64, 64),
    head: Sequence[int] = (64,),
    pooling: str = "sum",
    learning_rate: float = 1e-3,
) -> Any:
    """A small permutation-invariant (Deep Sets) classifier for ``layout="collections"``, compiled.

    Each entry of each collection (``x["Jet"][:, j, :]``) goes through the same
    dense layers (``hidden``, relu; one set per collection), the results are
    pooled over the real entries (``x["Jet_mask"]``: a masked sum or mean, so
    padding and the order of the entries do not matter), concatenated with the
    event features ``x["event"]``, and fed to dense layers (``head``) and a
    sigmoid output.

    Parameters
    ----------
    inputs : RootSequence or mapping
        A sequence made with ``layout="collections"``, or its ``input_spec``
        (name -> (shape, dtype), as the workflow's ``model(idim)`` receives it).
    hidden, head : sequence of int
        Units of the per-entry layers and of the layers after pooling.
    pooling : {"sum", "mean"}
        How a collection's entries are combined: the sum (default) also tells
        how many there are, the mean does not.
    learning_rate : float
        Adam's learning rate.

    Returns
    -------
    keras.Model
        Inputs named as ``x``'s keys; binary cross-entropy, with the metrics accuracy and AUC.

    Examples
    --------
    >>> train = RootSequence(files, labels=[1, 0], layout="collections")  # doctest: +SKIP
    >>> model = deep_sets(train)  # doctest: +SKIP
    >>> model.fit(train, epochs=3)  # doctest: +SKIP
    """
    import keras

    spec: Mapping[str, Any] = inputs if isinstance(inputs, Mapping) else inputs.input_spec
    collections = [name for name, (shape, _) in spec.items() if len(shape) == 2 and f"{name}_mask" in spec]
    if not collections or pooling not in POOLINGS:
        msg = (
            f"deep_sets needs the inputs of layout='collections' (a (L, F) tensor and its mask per collection) "
            f"and pooling in {POOLINGS}; got inputs {dict(spec)} and pooling={pooling!r}"
        )
        raise ParameterError(msg)
    model_inputs = {name: keras.Input(shape, dtype=dtype, name=name) for name, (shape, dtype) in spec.items()}
    parts = []
    for name in collections:
        h = model_inputs[name]
        for i, units in enumerate(hidden):
            h = keras.layers.Dense(units, activation="relu", name=f"{name}_entry_{i}")(h)
        mask = keras.ops.expand_dims(model_inputs[f"{name}_mask"], -1)
        pooled = keras.ops.sum(h * mask, axis=1)
        if pooling == "mean":
            pooled = pooled / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)
        parts.append(pooled)
    if "event" in model_inputs:
        parts.append(model_inputs["event"])
    h = keras.layers.Concatenate(name="pooled")(parts) if len(parts) > 1 else parts[0]
    for i, units in enumerate(head):
        h = keras.layers.Dense(units, activation="relu", name=f"head_{i}")(h)
    model = keras.Model(model_inputs, keras.layers.Dense(1, activation="sigmoid", name="output")(h), name="deep_sets")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model
