"""Which events a batch index names: the ``seq[i]`` contract of :class:`~mlaas4hep.RootSequence`.

An epoch has ``n`` *slots*, the batches of its stream in order. :class:`EpochTracker`
maps each request for a batch index to ``(epoch, slot)`` by three rules:

1. An index asked for while its epoch has slots left names the slot it named
   the first time: the same events, from any thread or process, in any order.
2. An index not yet asked for in the epoch is given a slot: with
   ``by_arrival=True`` (shuffled sequences) the next slot not given yet, so that
   slots, and the chunks they lie in, are served one after another in whatever
   order the indices come; otherwise slot = index (in the files' order).
3. Once every slot of the epoch is given, an index asked for again names a slot
   of the next epoch (Keras' TensorFlow backend asks for the next epoch's first
   batches before the last ones of an epoch are trained).

So ``n`` requests for distinct indices serve every event of an epoch exactly
once, whatever order they come in; ``steps_per_epoch``, which cuts the stream
of requests into shorter passes, changes nothing. Nothing is inferred from
the pattern of the requests: :meth:`EpochTracker.restart` (Keras starting a new
``fit``, ``evaluate`` or ``predict``; a hand-written loop ending an epoch it
did not finish) forgets the requests of the epoch being served, which is then
served again whole, and :meth:`EpochTracker.resume` starts an epoch after its
first slots (a checkpoint's state, see :mod:`mlaas4hep.stream.state`).

The state is kept in one array of int64, shared between processes when asked
to (Keras' ``use_multiprocessing``): for the epoch being served and the next,
a header (:data:`HEADER`) and each index's slot.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

import numpy as np

__all__ = ["HEADER", "EpochTracker", "OrderWatch"]

log = logging.getLogger(__name__)

HEADER = np.dtype([("epoch", "i8"), ("offset", "i8"), ("given", "i8"), ("in_order", "i8")])
"""A kept epoch's header: its number (-1: none), the slots before its first (a resumed epoch's),
the slots given, and whether they were given in order (``offset``, ``offset + 1``, ...)."""

_LOWEST = 0  # the scalars before the two headers: the oldest epoch kept
_SCALARS = 1


class EpochTracker:
    """The epoch and slot of each batch index asked for (see the module's rules).

    Parameters
    ----------
    n : int
        Batches (indices, slots) per epoch.
    by_arrival : bool
        Give slots in the order indices are first asked for (True), or slot = index.
    shared : bool
        Keep the state in shared memory, so that processes forked after it
        was made (Keras' ``use_multiprocessing``) draw from one tracker.

    Examples
    --------
    >>> tracker = EpochTracker(3, by_arrival=True, shared=False)
    >>> [tracker.assign(i) for i in (2, 0, 2, 1)]
    [(0, 0), (0, 1), (0, 0), (0, 2)]
    >>> tracker.assign(1), tracker.completed
    ((1, 0), 1)
    """

    def __init__(self, n: int, *, by_arrival: bool, shared: bool) -> None:
        self.n, self.by_arrival, self.shared = int(n), bool(by_arrival), bool(shared)
        size = _SCALARS + 2 * (len(HEADER.names or ()) + self.n)
        if shared:
            self._array: Any = multiprocessing.Array("q", size)
            self._lock: Any = self._array.get_lock()
        else:
            self._array = np.zeros(size, dtype=np.int64)
            self._lock = threading.Lock()
        self._views()
        self._headers["epoch"] = -1
        self._slots[:] = -1
        self._open(0, offset=0)

    # -- the rules ----------------------------------------------------------------------------------
    def assign(self, index: int) -> tuple[int, int]:
        """The ``(epoch, slot)`` that batch index ``index`` (in ``[0, n)``) names now.

        Raises :class:`IndexError` for an index beyond the slots of an epoch
        resumed after its first slots, in the files' order (slot = offset + index).
        """
        with self._lock:
            epoch = self._first_open()  # rule 3: the first epoch with slots left
            row = self._row(epoch)
            slot = int(self._slots[row, index])
            return epoch, slot if slot >= 0 else self._give(row, index)  # rules 1 and 2

    def _give(self, row: int, index: int) -> int:
        header = self._headers[row]
        offset, given = int(header["offset"]), int(header["given"])
        slot = offset + (given if self.by_arrival else index)
        if slot >= self.n:
            msg = (
                f"batch index {index} is beyond the {self.n - offset} batches left of epoch {int(header['epoch'])}, "
                f"resumed after its first {offset}"
            )
            raise IndexError(msg)
        header["in_order"] &= slot == offset + given
        header["given"] = given + 1
        self._slots[row, index] = slot
        return slot

    def restart(self, *, keep_offset: bool = True) -> None:
        """Forget the requests of the epoch being served: it is served again whole.

        The epoch being served is the first with slots left; the epochs before
        it were given whole and stay so. A resumed epoch keeps its offset (its
        first slots stay trained), unless ``keep_offset`` is False.
        """
        with self._lock:
            epoch = self._first_open()
            row = self._row(epoch)
            self._scalars[_LOWEST] = epoch
            self._open(epoch, offset=int(self._headers[row]["offset"]) if keep_offset else 0)
            self._headers[1 - row]["epoch"] = -1

    def resume(self, epoch: int, served: int) -> None:
        """Serve ``epoch`` after its first ``served`` slots (trained before a checkpoint), then the next epochs."""
        if not 0 <= served <= self.n:
            msg = f"served must be in [0, {self.n}], got {served}"
            raise ValueError(msg)
        with self._lock:
            if served == self.n:
                epoch, served = epoch + 1, 0
            self._scalars[_LOWEST] = epoch
            self._headers["epoch"] = -1
            self._open(epoch, offset=served)

    # -- what was served --------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch being served: the first whose slots are not all given."""
        with self._lock:
            return self._first_open()

    @property
    def completed(self) -> int:
        """Epochs every slot of which has been given (so far as this tracker knows: epochs before are counted)."""
        return self.epoch

    @property
    def remaining(self) -> int:
        """Batches of the epoch being served that are left to serve: ``n``, less the offset of a resumed epoch."""
        with self._lock:
            header = self._headers[self._row(self._first_open())]
            return self.n - int(header["offset"])

    def served(self, epoch: int) -> tuple[int, bool]:
        """Slots of ``epoch`` served so far (its offset included) and whether they are its first ones, in order.

        An epoch before those kept counts as served whole; a later one as not begun.
        """
        with self._lock:
            lowest = int(self._scalars[_LOWEST])
            if epoch < lowest:
                return self.n, True
            row = epoch % 2
            header = self._headers[row]
            if epoch > lowest + 1 or int(header["epoch"]) != epoch:
                return 0, True
            return int(header["offset"] + header["given"]), bool(header["in_order"])

    # -- the rows of the two kept epochs --------------------------------------------------------------
    def _row(self, epoch: int) -> int:
        """The row of ``epoch`` (one of the two kept), opened afresh if it held another epoch."""
        row = epoch % 2
        if int(self._headers[row]["epoch"]) != epoch:
            self._open(epoch, offset=0)
        return row

    def _open(self, epoch: int, *, offset: int) -> int:
        row = epoch % 2
        self._headers[row] = (epoch, offset, 0, 1)
        self._slots[row] = -1
        return row

    def _left(self, row: int) -> int:
        header = self._headers[row]
        return self.n - int(header["offset"]) - int(header["given"])

    def _first_open(self) -> int:
        """The first epoch with slots left; when both kept epochs are given whole, the oldest is let go."""
        lowest = int(self._scalars[_LOWEST])
        for epoch in (lowest, lowest + 1):
            if int(self._headers[epoch % 2]["epoch"]) != epoch or self._left(epoch % 2) > 0:
                return epoch
        self._scalars[_LOWEST] = lowest + 1
        self._open(lowest + 2, offset=0)
        return lowest + 2

    def _views(self) -> None:
        buffer = memoryview(self._array.get_obj()) if self.shared else self._array
        state = np.frombuffer(buffer, dtype=np.int64)
        width = len(HEADER.names or ())
        self._scalars = state[:_SCALARS]
        self._headers = state[_SCALARS : _SCALARS + 2 * width].view(HEADER)
        self._slots = state[_SCALARS + 2 * width :].reshape(2, self.n)  # index -> slot (-1: not asked)

    # -- copies: forked or spawned processes, pickles ----------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items() if key not in ("_scalars", "_headers", "_slots")}
        if not self.shared:
            state["_lock"] = None
        return state  # a shared array travels only to processes being started

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self.shared:
            self._lock = threading.Lock()
        self._views()


class OrderWatch:
    """Says once when batches served in order (``shuffle=False``) are asked for out of order.

    Each chunk is then read out of order, and some several times: ``fit``'s
    default ``shuffle=True`` does that to a sequence made with ``shuffle=False``.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self._warned = False

    def watch(self, position: int, who: object) -> None:
        """Note that the batch asked for starts in chunk ``position`` of the epoch's order."""
        last, self._last = self._last, position
        if last is not None and position not in (last, last + 1, 0) and not self._warned:
            self._warned = True
            log.warning(
                "%r serves its batches in order (shuffle=False), but they are asked for out of order "
                "(fit's default shuffle=True?): chunks are then read out of order, some several times. "
                "Pass shuffle=False to fit, or make the sequence with shuffle=True.",
                who,
            )
