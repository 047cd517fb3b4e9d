"""Target 8: ``write_scores`` against a plain ``model.predict`` over a RootSequence of the same events."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .common import Config, Result, measure, median, ratios

__all__ = ["bench_scores"]


def bench_scores(cfg: Config) -> list[Result]:
    """Scores of every event of both files written as friend trees / ``model.predict(RootSequence)``.

    Both sides use one model (the seed's, untrained: the cost of a prediction
    does not depend on the weights), the same prediction batch and chunk
    sizes, and read and flatten in the background; the model is traced once
    before the timed runs. ``write_scores`` also checks every file, reads and
    writes every entry of each file and renames its outputs into place.
    """
    from mlaas4hep import Preprocessing, write_scores
    from mlaas4hep.workflow.models import seed_model

    batch = min(10 * cfg.batch_size, cfg.chunk_size)
    files = [str(p) for p in cfg.files]
    probe = cfg.sequence(shuffle=False, batch_size=batch)
    loaded = Preprocessing.from_prepared(probe.prepared)
    n_events, features = probe.n_events, probe.num_features
    probe.close()
    model = seed_model(features)
    model.predict(np.zeros((2 * batch, features), np.float32), batch_size=batch, verbose=0)
    model.predict_on_batch(np.zeros((batch, features), np.float32))

    def predict() -> None:
        seq = cfg.sequence(shuffle=False, batch_size=batch)
        try:
            model.predict(seq, verbose=0)
        finally:
            seq.close()

    with tempfile.TemporaryDirectory(prefix="mlaas4hep-bench-scores-") as out:

        def scores() -> None:
            write_scores(
                model,
                files,
                preprocessing=loaded,
                output_dir=out,
                batch_size=batch,
                chunk_size=cfg.chunk_size,
                overwrite=True,
            )

        times = measure(cfg.repeat, {"predict": predict, "scores": scores})
        written = sorted(p.name for p in Path(out).iterdir())
    r = ratios(times["scores"], times["predict"])
    return [
        Result(
            "9",
            "scores: write_scores / model.predict(RootSequence)",
            median(r),
            "<=",
            1.5,
            r,
            f"write_scores {median(times['scores']):.1f} s ({', '.join(written)}), predict "
            f"{median(times['predict']):.1f} s for {n_events} events x {features} features, batch {batch} (seed_model)",
        )
    ]
