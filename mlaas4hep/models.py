"""The Keras model of the original MLaaS4HEP recipe (its ``keras_model.py``)."""

from __future__ import annotations

from typing import Any

__all__ = ["seed_model"]


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
