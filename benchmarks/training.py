"""Target 3: ``model.fit`` over RootSequence against the same fit over the same events preloaded in memory."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import Config, Result, measure, median, ratios

__all__ = ["bench_training", "preload"]


def preload(seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every batch of an (unshuffled) sequence, stacked: the events as in-memory arrays."""
    xs, ys = [], []
    for i in range(len(seq)):
        x, y = seq[i]
        xs.append(x)
        ys.append(y)
    seq.on_epoch_end()
    return np.concatenate(xs), np.concatenate(ys)


def bench_training(cfg: Config) -> list[Result]:
    """One epoch of the seed's model: ``fit(RootSequence)`` against ``fit(X, y)``, same batch size, shuffled.

    One model serves both contenders; it is first fitted on a few batches so
    that tracing and compilation are outside the timed fits.
    """
    import keras

    from mlaas4hep.workflow.models import seed_model

    nevts = cfg.train_events
    preloaded = cfg.sequence(nevts=nevts, shuffle=False)
    X, y = preload(preloaded)
    preloaded.close()
    keras.utils.set_random_seed(0)
    model = seed_model(X.shape[1])
    model.fit(X[: 4 * cfg.batch_size], y[: 4 * cfg.batch_size], batch_size=cfg.batch_size, epochs=1, verbose=0)

    def fit_sequence() -> None:
        seq = cfg.sequence(nevts=nevts, shuffle=True)
        try:
            model.fit(seq, epochs=1, shuffle=True, verbose=0)
        finally:
            seq.close()

    def fit_arrays() -> None:
        model.fit(X, y, batch_size=cfg.batch_size, epochs=1, shuffle=True, verbose=0)

    times = measure(cfg.repeat, {"arrays": fit_arrays, "sequence": fit_sequence})
    r = ratios(times["sequence"], times["arrays"])
    return [
        Result(
            "3",
            "training: fit(RootSequence) / fit(arrays)",
            median(r),
            "<=",
            1.15,
            r,
            f"sequence {median(times['sequence']):.1f} s, arrays {median(times['arrays']):.1f} s for one epoch of "
            f"{len(X)} events x {X.shape[1]} features, batch {cfg.batch_size} (seed_model)",
        )
    ]
