"""LoaderStats: per epoch, whether training waited for the loader, and where the loader's time went.

A Keras callback (``model.fit(train, callbacks=[LoaderStats(train)])``) that
also serves a plain PyTorch loop (``for batch in stats.iterate(loader)``). The
numbers come from :class:`~mlaas4hep.stream.counters.LoaderCounters`, counted by the
pipeline as it works.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import keras
import numpy as np

from .errors import ParameterError
from .stream.counters import SERVED_FIELDS, WORK_FIELDS, LoaderCounters
from .stream.pipeline import Pipeline

__all__ = ["LoaderStats", "format_record"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_NAN = float("nan")


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
        The epoch's wall time (without ``fit``'s validation at its end), the
        events and batches served in it; under ``model.fit``, those trained on
        in it (TensorFlow asks for batches ahead of time: one served at the end
        of an epoch of ``steps_per_epoch`` counts in the epoch that trains on it).
    ``wait_s``, ``wait_fraction``
        Seconds the training loop waited for batches (and their share of the
        epoch). Under ``model.fit``, the time the pipeline was blocked on a
        chunk that was not ready yet when a batch was asked for, summed over
        the threads asking (Keras' fetching threads, where used, can make it
        exceed the epoch); under :meth:`iterate`, the whole time of each
        ``next()`` on the loader. TensorFlow's ``tf.data`` asks for batches a
        step ahead, which can hide some of that wait behind the model's step.
    ``serve_s``
        Seconds the pipeline spent cutting batches (waiting included).
    ``read_s``, ``decompress_s``, ``flatten_s``
        Seconds spent reading chunks (decompression included), decompressing
        their baskets (ROOT files; 0 for formats read without an executor) and
        flattening them. They are summed over threads and worker processes,
        so they can exceed ``seconds``.
    ``chunks_read``, ``chunks_reread``
        Chunks read, and how many of those were read a second time in one
        epoch (they had left the cache: raise ``cache_chunks`` if they are many).
    ``peak_buffer_mb``
        The most memory the flattened chunks' buffers held during the epoch
        (:meth:`begin` starts a new peak for every ``LoaderStats`` of the loader).

    The work fields (reading to re-reads) count the work done for the loader
    epochs served since the last record, work done ahead of time included, and
    each only once: the records of a training add up, also when
    ``steps_per_epoch`` makes a Keras epoch shorter than the loader's.
    ``epoch`` is the loader epoch served last.

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
    those processes and not seen here. When this process served no batch in
    an epoch, every field it could not count is NaN ("n/a" in the log line);
    :meth:`iterate` still counts the wait, the events and the batches.

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
        self._paused: float | None = None
        self._served = self.counters.served_totals()
        self._reported: dict[int, dict[str, float]] = {}  # each epoch's counts as last reported
        self._batches: dict[int, float] = {}  # each epoch's batches served when the epoch began
        self._sizes: deque[int] | None = None  # the served batches' sizes, while Keras trains (counters.watch)
        self._trained = [0, 0]  # batches and events Keras trained on in this epoch

    # -- Keras ----------------------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        # from now on: Keras' probes of the first batches (made before) are no training
        self._sizes = self.counters.watch()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._sizes is not None:
            self.counters.unwatch(self._sizes)
        self._sizes = None

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        # tf.data serves ahead and in order: the batch trained now is the oldest served not yet trained
        if self._sizes:
            self._trained[0] += 1
            self._trained[1] += self._sizes.popleft()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.begin()
        self._trained = [0, 0]

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        batches, events = self._trained
        self.end(trained=(batches, events) if batches else None)

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._t0 is not None:  # fit's validation at the end of an epoch: not the training's time
            self._paused = time.perf_counter()

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._t0 is not None and self._paused is not None:
            self._t0 += time.perf_counter() - self._paused
        self._paused = None

    # -- any loop -------------------------------------------------------------------------------
    def begin(self) -> None:
        """An epoch starts now."""
        self._t0, self._paused = time.perf_counter(), None
        self._served = self.counters.served_totals()
        self._batches = {epoch: counts["batches"] for epoch, counts in self.counters.epochs().items()}
        self.counters.reset_peak()

    def end(
        self,
        *,
        waited: float | None = None,
        batches: int = 0,
        events: int = 0,
        trained: tuple[int, int] | None = None,
    ) -> dict[str, float]:
        """The epoch ends now: its record, logged and added to :attr:`history`.

        ``waited``, ``batches`` and ``events`` are what a loop measured itself
        (:meth:`iterate`); the wait replaces the pipeline's, the counts are
        used where the pipeline counted none (worker processes). ``trained``,
        the batches and events Keras trained on, replace those served (which
        count the batches TensorFlow asked for ahead of time).
        """
        if self._t0 is None:
            msg = "LoaderStats.end() called before begin()"
            raise ParameterError(msg)
        stop = time.perf_counter() if self._paused is None else self._paused  # ended in a validation
        seconds = stop - self._t0
        self._t0 = self._paused = None
        served = self.counters.served_totals()
        record: dict[str, float] = {name: served[name] - self._served[name] for name in SERVED_FIELDS}
        record.update(self._work())
        if record["batches"] == 0:  # served by other processes: what they did is not seen here
            record.update(dict.fromkeys((*WORK_FIELDS, "peak_buffer_mb", "epoch", "serve_s", "wait_s"), _NAN))
            record.update(batches=float(batches), events=float(events))
        else:
            record["epoch"] = float(self.counters.last_epoch)
            record["peak_buffer_mb"] = self.counters.peak_buffer_bytes / 2**20
            if trained is not None:
                record["batches"], record["events"] = float(trained[0]), float(trained[1])
        if waited is not None:
            record["wait_s"] = waited
        record["seconds"] = seconds
        record["events_per_s"] = record["events"] / seconds if seconds > 0 else _NAN
        record["wait_fraction"] = record["wait_s"] / seconds if seconds > 0 else _NAN
        self.history.append(record)
        log.log(self.level, "%s", format_record(record))
        return record

    def _work(self) -> dict[str, float]:
        """Reading and flattening done for the epochs served since the last record, not reported before."""
        work = dict.fromkeys(WORK_FIELDS, 0.0)
        for epoch, counts in self.counters.epochs().items():
            if counts["batches"] <= self._batches.get(epoch, 0.0):
                continue  # not served since the epoch began (work done ahead for it is reported once it is)
            before = self._reported.get(epoch)
            for name in work:
                work[name] += counts[name] - (before[name] if before else 0.0)
            self._reported[epoch] = counts
        return work

    def iterate(self, batches: Iterable[T]) -> Iterator[T]:
        """The batches of ``batches`` (a ``DataLoader``, a ``RootDataset``...), one epoch, timed.

        The time of each ``next()`` counts as waited. A loop that stops early
        (``break``) still gets a record, of the batches it took.

        Examples
        --------
        >>> for x, y in stats.iterate(loader):  # doctest: +SKIP
        ...     step(x, y)
        """
        self.begin()
        waited, n_batches, n_events = 0.0, 0, 0
        iterator = iter(batches)
        try:
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
        finally:
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
    """One line of a :class:`LoaderStats` record ("n/a" for what was not counted)."""

    def f(name: str, digits: int = 2) -> str:
        value = record.get(name, _NAN)
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    seconds, wait = record.get("seconds", _NAN), record.get("wait_s", _NAN)
    share = "n/a" if math.isnan(wait) or not seconds > 0 else f"{100 * wait / seconds:.0f}%"
    return (
        f"loader: {f('events', 0)} events in {f('seconds')} s ({f('events_per_s', 0)} events/s); "
        f"waited {f('wait_s')} s for batches ({share}); read {f('read_s')} s, "
        f"flatten {f('flatten_s')} s, decompress {f('decompress_s')} s (each summed over threads); "
        f"{f('chunks_read', 0)} chunks read, {f('chunks_reread', 0)} re-read; "
        f"buffers peak {f('peak_buffer_mb', 0)} MB"
    )
