"""Targets 1, 6 and 8: the speed of an epoch of RootSequence, alone, through Keras' own data adapter, per layout.

An epoch is timed twice on each fresh sequence: its first epoch, which waits
for the files to open and the first chunk to be read and flattened, and its
second ("steady") epoch, which is what every later epoch of a training costs.
The targets are taken on the steady epoch, against a raw ``TTree.iterate`` of
the same files already opened; the first epoch is reported beside them.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from .common import TREE, Config, Result, median, ratios

__all__ = ["adapter_epoch", "bench_collections", "bench_parallel", "bench_throughput", "epoch"]

log = logging.getLogger("benchmarks")


def _events(x: Any) -> int:
    """Events in a batch's ``x``: an array, or the collections layout's dict of arrays."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def epoch(seq: Any) -> int:
    """One epoch, as a plain loop: ``seq[i]`` for every batch, then ``on_epoch_end``; return the events served."""
    n = 0
    seq.on_epoch_begin()
    for i in range(len(seq)):
        n += _events(seq[i][0])
    seq.on_epoch_end()
    return n


def adapter_epoch(seq: Any) -> int:
    """One epoch through Keras' ``PyDatasetAdapter`` (where ``workers`` take effect), shuffling batch indices."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(seq, shuffle=True)
    n = 0
    adapter.on_epoch_begin()
    for batch in adapter.get_numpy_iterator():
        n += _events(batch[0])
    adapter.on_epoch_end()
    return n


def _raw_opened(cfg: Config) -> float:
    """Seconds of a raw ``TTree.iterate`` (library "ak", step ``chunk_size``) over the files, opened beforehand."""
    import uproot

    files = [uproot.open(p) for p in cfg.files]
    try:
        trees = [f[TREE] for f in files]
        gc.collect()
        t0 = time.perf_counter()
        n = 0
        for tree in trees:
            for arrays in tree.iterate(filter_name=list(cfg.specs.names), step_size=cfg.chunk_size, library="ak"):
                n += len(arrays)
        dt = time.perf_counter() - t0
    finally:
        for f in files:
            f.close()
    assert n == cfg.specs.n_events
    return dt


def _two_epochs(cfg: Config, run: Callable[[Any], int], **kwargs: Any) -> tuple[float, float]:
    """Seconds of the first epoch (construction included) and of the second epoch of a fresh sequence."""
    gc.collect()
    t0 = time.perf_counter()
    seq = cfg.sequence(**kwargs)
    try:
        n1 = run(seq)
        t1 = time.perf_counter()
        n2 = run(seq)
        t2 = time.perf_counter()
    finally:
        seq.close()
    assert n1 == n2 == seq.n_events
    return t1 - t0, t2 - t1


def _measure(cfg: Config, contenders: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Each contender once per repeat, alternating the order from one repeat to the next."""
    out: dict[str, list[Any]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(cfg.repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(contenders[name]())
            log.info("repeat %d: %s %s", r + 1, name, out[name][-1])
    return out


def bench_throughput(cfg: Config) -> list[Result]:
    """Target 1: events/s of an epoch of RootSequence (no model) against a raw ``TTree.iterate``."""
    n_events = cfg.specs.n_events
    times = _measure(
        cfg,
        {
            "raw": lambda: _raw_opened(cfg),
            "ours": lambda: _two_epochs(cfg, epoch),
            "ours, workers=2": lambda: _two_epochs(cfg, epoch, workers=2),
        },
    )
    raw = times["raw"]
    steady = [t[1] for t in times["ours"]]
    first = [t[0] for t in times["ours"]]
    steady2 = [t[1] for t in times["ours, workers=2"]]
    first2 = [t[0] for t in times["ours, workers=2"]]

    def rate(ts: list[float]) -> str:
        return f"{n_events / median(ts) / 1e3:.0f} kev/s"

    setup = f"{n_events} events, {len(cfg.specs.names)} branches, step {cfg.chunk_size}"
    r_steady, r_first = ratios(raw, steady), ratios(raw, first)
    r_steady2, r_first2 = ratios(raw, steady2), ratios(raw, first2)
    return [
        Result(
            "1",
            "throughput: steady epoch / raw TTree.iterate",
            median(r_steady),
            ">=",
            0.8,
            r_steady,
            f"ours {rate(steady)}, raw {rate(raw)} ({setup}; default workers=1; second epoch of a fresh sequence)",
        ),
        Result(
            "1'",
            "first epoch / raw, construction included",
            median(r_first),
            ">=",
            0.0,
            r_first,
            f"ours {rate(first)} (first batch waits for the files to open and the first chunk)",
            info=True,
        ),
        Result(
            "1''",
            "steady epoch with workers=2 / raw",
            median(r_steady2),
            ">=",
            0.0,
            r_steady2,
            f"ours {rate(steady2)}; first epoch {median(r_first2):.2f} of raw ({rate(first2)})",
            info=True,
        ),
    ]


def bench_parallel(cfg: Config) -> list[Result]:
    """Target 6: an epoch through Keras' PyDatasetAdapter with ``workers=2`` against ``workers=1``."""
    n_events = cfg.specs.n_events
    times = _measure(
        cfg,
        {
            "workers=1": lambda: _two_epochs(cfg, adapter_epoch, workers=1),
            "workers=2": lambda: _two_epochs(cfg, adapter_epoch, workers=2),
        },
    )
    one, two = times["workers=1"], times["workers=2"]
    r = ratios([t[1] for t in one], [t[1] for t in two])
    r_first = ratios([t[0] for t in one], [t[0] for t in two])
    return [
        Result(
            "6",
            "parallelism: speed-up of workers=2 over 1",
            median(r),
            ">",
            1.0,
            r,
            f"steady epochs: workers=1 {n_events / median([t[1] for t in one]) / 1e3:.0f} kev/s, "
            f"workers=2 {n_events / median([t[1] for t in two]) / 1e3:.0f} kev/s; first epochs {median(r_first):.2f}x "
            "(Keras PyDatasetAdapter, shuffle; workers=2 forks two reading processes)",
        )
    ]


def bench_collections(cfg: Config) -> list[Result]:
    """Target 8: events/s of a steady epoch with ``layout="collections"`` against the flat layout."""
    n_events = cfg.specs.n_events
    times = _measure(
        cfg,
        {
            "flat": lambda: _two_epochs(cfg, epoch),
            "collections": lambda: _two_epochs(cfg, epoch, layout="collections"),
        },
    )
    flat, collections = times["flat"], times["collections"]
    r = ratios([t[1] for t in flat], [t[1] for t in collections])
    steady_flat = n_events / median([t[1] for t in flat]) / 1e3
    steady_collections = n_events / median([t[1] for t in collections]) / 1e3
    return [
        Result(
            "8",
            "layouts: collections / flat steady epoch",
            median(r),
            ">=",
            0.9,
            r,
            f"collections {steady_collections:.0f} kev/s, flat {steady_flat:.0f} kev/s (events/s of the second "
            "epoch of a fresh sequence, plain loop; x a dict of per-collection tensors and masks)",
        )
    ]
