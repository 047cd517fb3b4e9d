"""What the loader did, counted where it happens: the numbers behind :class:`mlaas4hep.LoaderStats`.

:class:`LoaderCounters` keeps, for each epoch of a pipeline, the batches and
events it served, how long the caller was blocked on a chunk that was not ready
yet, and the chunks read (and read again) for that epoch with the seconds spent
reading, decompressing and flattening them; work done ahead for the next epoch
is counted as that epoch's. It also follows the memory of the flattened chunks'
buffers (live and peak). It knows nothing of Keras or PyTorch.

:class:`TimedExecutor` wraps uproot's decompression executor so that the time
its threads spend on baskets is counted (summed over the threads: with two of
them, up to twice the wall time of the read).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EPOCH_FIELDS", "SERVED_FIELDS", "WORK_FIELDS", "LoaderCounters", "Tally", "TimedExecutor"]

SERVED_FIELDS = ("batches", "events", "wait_s", "serve_s")
"""What serving batches counts (:meth:`LoaderCounters.served_totals` sums them over every epoch)."""

WORK_FIELDS = ("read_s", "decompress_s", "flatten_s", "chunks_read", "chunks_reread")
"""What making the chunks counts."""

EPOCH_FIELDS = SERVED_FIELDS + WORK_FIELDS
"""The per-epoch counts of :meth:`LoaderCounters.epoch` (seconds end in ``_s``)."""

_KEPT_EPOCHS = 8  # epochs whose counts are kept


_LOCKED: weakref.WeakSet[Tally | LoaderCounters] = weakref.WeakSet()


def _new_locks() -> None:
    """In a forked child: fresh locks, since a thread of the parent may have held one at the fork."""
    for counter in list(_LOCKED):
        counter.new_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks)


class Tally:
    """A sum that several threads add to."""

    def __init__(self) -> None:
        self.new_lock()
        self.value = 0.0
        _LOCKED.add(self)

    def new_lock(self) -> None:
        self._lock = threading.Lock()

    def add(self, amount: float) -> None:
        with self._lock:
            self.value += amount

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.new_lock()
        self.value = float(state["value"])
        _LOCKED.add(self)


class TimedExecutor:
    """An executor whose tasks' seconds are added to ``tally`` (uproot's ``decompression_executor``).

    uproot calls only ``submit`` (and ``shutdown`` when it owns the executor);
    everything else goes to the wrapped executor.
    """

    def __init__(self, executor: Any, tally: Tally) -> None:
        self.executor, self.tally = executor, tally

    def submit(self, task: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def timed() -> Any:
            t0 = time.perf_counter()
            try:
                return task(*args, **kwargs)
            finally:
                self.tally.add(time.perf_counter() - t0)

        return self.executor.submit(timed)

    def shutdown(self, *args: Any, **kwargs: Any) -> Any:
        return self.executor.shutdown(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "executor":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.executor, name)


class LoaderCounters:
    """Running counts of one loader (a pipeline, or every pipeline of a PyTorch dataset), by epoch.

    Thread-safe. A forked or unpickled copy counts on its own (a worker
    process's counts are not seen by its parent).

    Examples
    --------
    >>> counters = LoaderCounters()
    >>> counters.add(0, batches=1, events=100)
    >>> counters.epoch(0)["events"]
    100.0
    """

    def __init__(self) -> None:
        self._start()

    def new_lock(self) -> None:
        # re-entrant: a garbage collection while the lock is held may free a buffer (see buffer_made)
        self._lock = threading.RLock()

    def _start(self) -> None:
        self.new_lock()
        _LOCKED.add(self)
        self._epochs: OrderedDict[int, dict[str, float]] = OrderedDict()
        self._read: dict[int, set[int]] = {}  # chunks read, by epoch
        self.last_epoch = -1  # the epoch of the last batch served
        self._served = dict.fromkeys(SERVED_FIELDS, 0.0)
        self.buffer_bytes = 0  # flattened chunks' buffers alive now
        self.peak_buffer_bytes = 0
        self._watchers: list[deque[int]] = []  # the sizes of the batches served, in order (see watch)

    def __getstate__(self) -> dict[str, Any]:
        return {"fresh": True}  # counts are not copied (not empty: pickle protocols 0 and 1 skip an empty state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._start()

    def _counts(self, epoch: int) -> dict[str, float]:
        """The counts of ``epoch`` (caller holds the lock)."""
        counts = self._epochs.get(epoch)
        if counts is None:
            counts = self._epochs[epoch] = dict.fromkeys(EPOCH_FIELDS, 0.0)
            while len(self._epochs) > _KEPT_EPOCHS:
                old, _ = self._epochs.popitem(last=False)
                self._read.pop(old, None)
        return counts

    def add(self, epoch: int, **amounts: float) -> None:
        """Add ``amounts`` (names of :data:`EPOCH_FIELDS`) to the counts of ``epoch``."""
        with self._lock:
            counts = self._counts(epoch)
            for name, amount in amounts.items():
                counts[name] += amount

    def served(self, epoch: int, events: int, seconds: float, waited: float) -> None:
        """A batch of ``events`` of ``epoch`` was served in ``seconds``, ``waited`` of them blocked on a chunk."""
        with self._lock:
            for counts in (self._counts(epoch), self._served):
                counts["batches"] += 1
                counts["events"] += events
                counts["serve_s"] += seconds
                counts["wait_s"] += waited
            self.last_epoch = epoch
            for sizes in self._watchers:
                sizes.append(events)

    def watch(self) -> deque[int]:
        """A queue that gets the size of each batch served from now on, in the order served.

        Whoever trains takes them in that order: the batches trained are the
        first ones of the queue, those served ahead of time are left in it.
        :meth:`unwatch` it when done.
        """
        sizes: deque[int] = deque()
        with self._lock:
            self._watchers.append(sizes)
        return sizes

    def unwatch(self, sizes: deque[int]) -> None:
        """Stop feeding a queue of :meth:`watch`."""
        with self._lock:
            self._watchers = [w for w in self._watchers if w is not sizes]

    def served_totals(self) -> dict[str, float]:
        """Batches, events and seconds served so far, over every epoch (:data:`SERVED_FIELDS`)."""
        with self._lock:
            return dict(self._served)

    def chunk_read(self, epoch: int, k: int, seconds: float, decompress: float) -> None:
        """Chunk ``k`` of ``epoch`` was read; a second read of it (it had left the cache) is a re-read."""
        with self._lock:
            counts = self._counts(epoch)
            seen = self._read.setdefault(epoch, set())
            counts["chunks_read"] += 1
            counts["chunks_reread"] += k in seen
            counts["read_s"] += seconds
            counts["decompress_s"] += decompress
            seen.add(k)

    def epoch(self, epoch: int) -> dict[str, float]:
        """A copy of the counts of ``epoch`` (zeros for an epoch nothing was done for)."""
        with self._lock:
            counts = self._epochs.get(epoch)
            return dict(counts) if counts is not None else dict.fromkeys(EPOCH_FIELDS, 0.0)

    def epochs(self) -> dict[int, dict[str, float]]:
        """A copy of the counts of every epoch kept (the last few)."""
        with self._lock:
            return {epoch: dict(counts) for epoch, counts in self._epochs.items()}

    def buffer_made(self, array: np.ndarray) -> None:
        """Follow a new buffer's memory until it is garbage collected."""
        nbytes = int(array.nbytes)
        with self._lock:
            self.buffer_bytes += nbytes
            self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer_bytes)
        weakref.finalize(array, self._buffer_freed, nbytes)

    def _buffer_freed(self, nbytes: int) -> None:
        with self._lock:
            self.buffer_bytes -= nbytes

    def reset_peak(self) -> None:
        """Start a new peak from the memory alive now."""
        with self._lock:
            self.peak_buffer_bytes = self.buffer_bytes
