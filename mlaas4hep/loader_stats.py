"""LoaderStats: per epoch, whether training waited for the loader, and where the loader's time went.

A Keras callback (``model.fit(train, callbacks=[LoaderStats(train)])``) that
also serves a plain PyTorch loop (``for batch in stats.iterate(loader)``). The
numbers come from :class:`~mlaas4hep.stats.LoaderCounters`, counted by the
pipeline as it works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import keras
import numpy as np

from .errors import ParameterError
from .pipeline import Pipeline
from .stats import EPOCH_FIELDS, SERVED_FIELDS, LoaderCounters

__all__ = ["LoaderStats", "format_record"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def counters_of(loader: Any) -> LoaderCounters:
    """The counters of a :class:`RootSequence` or :class:`RootDataset` (or a pipeline, or counters)."""
    if isinstance(loader, LoaderCounters):
        return loader
    if isinstance(loader, Pipeline):
        return loader.stats
    pipeline = getattr(loader, "pipeline", None)  # RootSequence
    if isinstance(pipeline, Pipeline):
        return pipeline.stats
    counters = getattr(loader, "stats", None)  # RootDataset
    if isinstance(counters, LoaderCounters):
        return counters
    msg = f"LoaderStats needs a RootSequence or a RootDataset, got {type(loader).__name__}"
    raise ParameterError(msg)


class LoaderStats(keras.callbacks.Callback):  # type: ignore[misc]
    """Per epoch: events/s, the time training waited for batches, and what the loader spent it on.

    Each epoch adds a dict to :attr:`history` and logs it at INFO:

    ``seconds``, ``events``, ``batches``, ``events_per_s``
        The epoch's wall time, the events and batches served in it.
    ``wait_s``, ``wait_fraction``
        Seconds the training loop waited for batches (and their share of the
        epoch). Under ``model.fit``, the time ``seq[i]`` was blocked on a chunk
        that was not ready yet; under :meth:`iterate`, the whole time of each
        ``next()`` on the loader. TensorFlow's ``tf.data`` asks for batches a
        step ahead, which can hide some of that wait behind the model's step.
    ``serve_s``
        Seconds spent in ``seq[i]`` (waiting included).
    ``read_s``, ``decompress_s``, ``flatten_s``
        Seconds spent reading the epoch's chunks (decompression included),
        decompressing their baskets and flattening them. They are summed over
        threads and worker processes, so they can exceed ``seconds``; work done
        ahead for the next epoch counts as the next epoch's.
    ``chunks_read``, ``chunks_reread``
        Chunks of the epoch read, and how many of those were read a second
        time (they had left the cache: raise ``cache_chunks`` if they are many).
    ``peak_buffer_mb``
        The most memory the flattened chunks' buffers held during the epoch.

    Parameters
    ----------
    loader : RootSequence or RootDataset
        The loader to follow (the training one).
    level : int
        The logging level of the line logged per epoch (default INFO).

    Notes
    -----
    What Keras' own worker processes (``use_multiprocessing=True``) or a
    PyTorch ``DataLoader``'s workers (``num_workers > 0``) do is counted in
    those processes and not seen here: only ``seconds``, ``wait_s``,
    ``events`` and ``batches`` (the last two counted by :meth:`iterate`).

    Examples
    --------
    >>> stats = LoaderStats(train)  # doctest: +SKIP
    >>> model.fit(train, epochs=2, callbacks=[stats])  # doctest: +SKIP
    >>> stats.history[-1]["wait_fraction"]  # doctest: +SKIP
    0.03
    """

    def __init__(self, loader: Any, *, level: int = logging.INFO) -> None:
        super().__init__()
        self.counters = counters_of(loader)
        self.level = int(level)
        self.history: list[dict[str, float]] = []
        self._t0: float | None = None
        self._served = self.counters.served_totals()

    # -- Keras ----------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.begin()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.end()

    # -- any loop -------------------------------------------------------------------------------
    def begin(self) -> None:
        """An epoch starts now."""
        self._t0 = time.perf_counter()
        self._served = self.counters.served_totals()
        self.counters.reset_peak()

    def end(self, *, waited: float | None = None, batches: int = 0, events: int = 0) -> dict[str, float]:
        """The epoch ends now: its record, logged and added to :attr:`history`.

        ``waited``, ``batches`` and ``events`` are what a loop measured itself
        (:meth:`iterate`); the wait replaces the pipeline's, the counts are
        used where the pipeline counted none (worker processes).
        """
        if self._t0 is None:
            msg = "LoaderStats.end() called before begin()"
            raise ParameterError(msg)
        seconds = time.perf_counter() - self._t0
        self._t0 = None
        record: dict[str, float] = {"epoch": float(self.counters.last_epoch)}
        # what was done for the epoch served last (ahead of time too), and what was served meanwhile
        record.update(self.counters.epoch(self.counters.last_epoch))
        served = self.counters.served_totals()
        record.update({name: served[name] - self._served[name] for name in SERVED_FIELDS})
        if waited is not None:
            record["wait_s"] = waited
        if record["events"] == 0:
            record["events"], record["batches"] = float(events), float(batches)
        record["seconds"] = seconds
        record["events_per_s"] = record["events"] / seconds if seconds > 0 else float("nan")
        record["wait_fraction"] = record["wait_s"] / seconds if seconds > 0 else float("nan")
        record["peak_buffer_mb"] = self.counters.peak_buffer_bytes / 2**20
        self.history.append(record)
        log.log(self.level, "%s", format_record(record))
        return record

    def iterate(self, batches: Iterable[T]) -> Iterator[T]:
        """The batches of ``batches`` (a ``DataLoader``, a ``RootDataset``...), one epoch, timed.

        The time of each ``next()`` counts as waited.

        Examples
        --------
        >>> for x, y in stats.iterate(loader):  # doctest: +SKIP
        ...     step(x, y)
        """
        self.begin()
        waited, n_batches, n_events = 0.0, 0, 0
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            finally:
                waited += time.perf_counter() - t0
            n_batches += 1
            n_events += _length(batch)
            yield batch
        self.end(waited=waited, batches=n_batches, events=n_events)

    @property
    def last(self) -> dict[str, float]:
        """The record of the last epoch (empty before the first ends)."""
        return dict(self.history[-1]) if self.history else {}


def _length(batch: Any) -> int:
    """Events in a batch: the length of its first array (of ``x``, or of ``x``'s first entry)."""
    while isinstance(batch, (tuple, list, Mapping)) and len(batch):
        batch = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else int(np.size(batch) > 0)


def format_record(record: Mapping[str, float]) -> str:
    """One line of a :class:`LoaderStats` record."""
    r = {name: record.get(name, 0.0) for name in (*EPOCH_FIELDS, "seconds", "events_per_s", "peak_buffer_mb")}
    fraction = 100 * r["wait_s"] / r["seconds"] if r["seconds"] > 0 else 0.0
    return (
        f"loader: {r['events']:.0f} events in {r['seconds']:.2f} s ({r['events_per_s']:.0f} events/s); "
        f"waited {r['wait_s']:.2f} s for batches ({fraction:.0f}%); read {r['read_s']:.2f} s "
        f"(decompress {r['decompress_s']:.2f} s), flatten {r['flatten_s']:.2f} s; "
        f"{r['chunks_read']:.0f} chunks read, {r['chunks_reread']:.0f} re-read; "
        f"buffers peak {r['peak_buffer_mb']:.0f} MB"
    )
