"""Targets 1 and 6: the speed of an epoch of RootSequence, alone and through Keras' own data adapter."""

from __future__ import annotations

from typing import Any

from .common import Config, Result, measure, median, ratios, raw_read

__all__ = ["adapter_epoch", "bench_parallel", "bench_throughput", "epoch"]


def epoch(seq: Any) -> int:
    """One epoch, as a plain loop: ``seq[i]`` for every batch, then ``on_epoch_end``; return the events served."""
    n = 0
    seq.on_epoch_begin()
    for i in range(len(seq)):
        n += len(seq[i][0])
    seq.on_epoch_end()
    return n


def adapter_epoch(seq: Any) -> int:
    """One epoch through Keras' ``PyDatasetAdapter`` (where ``workers`` take effect), shuffling batch indices."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(seq, shuffle=True)
    n = 0
    adapter.on_epoch_begin()
    for batch in adapter.get_numpy_iterator():
        n += len(batch[0])
    adapter.on_epoch_end()
    return n


def _fresh_epoch(cfg: Config, run: Any, **kwargs: Any) -> Any:
    def go() -> int:
        seq = cfg.sequence(**kwargs)
        try:
            return run(seq)
        finally:
            seq.close()

    return go


def bench_throughput(cfg: Config) -> list[Result]:
    """Target 1: events/s of an epoch of a fresh RootSequence (no model) against a raw ``TTree.iterate``."""
    files, branches = cfg.files, cfg.specs.names
    n_events = cfg.specs.n_events
    times = measure(
        cfg.repeat,
        {
            "raw": lambda: raw_read(files, branches, cfg.chunk_size),
            "ours": _fresh_epoch(cfg, epoch),
        },
    )
    # ratio of speeds = raw time / our time (same events)
    r = ratios(times["raw"], times["ours"])
    raw_rate = n_events / median(times["raw"]) / 1e3
    our_rate = n_events / median(times["ours"]) / 1e3
    return [
        Result(
            "1",
            "throughput: epoch / raw TTree.iterate",
            median(r),
            ">=",
            0.8,
            r,
            f"ours {our_rate:.0f} kev/s, raw {raw_rate:.0f} kev/s ({n_events} events, {len(branches)} branches, "
            f"step {cfg.chunk_size}, fresh sequence, first epoch)",
        )
    ]


def bench_parallel(cfg: Config) -> list[Result]:
    """Target 6: an epoch through Keras' PyDatasetAdapter with ``workers=2`` against ``workers=1``."""
    n_events = cfg.specs.n_events
    times = measure(
        cfg.repeat,
        {
            "workers=1": _fresh_epoch(cfg, adapter_epoch, workers=1),
            "workers=2": _fresh_epoch(cfg, adapter_epoch, workers=2),
        },
    )
    r = ratios(times["workers=1"], times["workers=2"])
    return [
        Result(
            "6",
            "parallelism: speed-up of workers=2 over 1",
            median(r),
            ">",
            1.0,
            r,
            f"workers=1 {n_events / median(times['workers=1']) / 1e3:.0f} kev/s, "
            f"workers=2 {n_events / median(times['workers=2']) / 1e3:.0f} kev/s (Keras PyDatasetAdapter, shuffle)",
        )
    ]
