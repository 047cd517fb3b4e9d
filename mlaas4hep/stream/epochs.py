"""Which events a batch index names: the ``seq[i]`` contract of :class:`~mlaas4hep.RootSequence`.

Keras' ``fit`` asks for the batch indices of an epoch in a random order (its
default ``shuffle=True``), from several threads or processes; the TensorFlow
backend probes indices 0 and 1 before the first epoch, and asks for the next
epoch's first indices before it calls ``on_epoch_end``; an interrupted ``fit``
leaves an epoch half served. :class:`EpochTracker` maps each request to
``(epoch, slot)``, a slot being a batch of the epoch's stream, so that

* within an epoch an index always names the same slot, from any thread, in any order;
* the ``n`` indices of an epoch name its ``n`` slots once each, so a pass of
  ``fit`` over every index serves every event exactly once;
* with ``by_arrival=True`` (shuffled sequences) an index is given the next
  slot not yet given when it is first asked for, so that slots, and the
  chunks they lie in, are served one after another whatever order Keras asks
  in; with ``by_arrival=False`` (sequences in order) index ``i`` is slot ``i``.

Epochs and passes. A *pass* is what Keras asks for between ``on_epoch_begin``
and ``on_epoch_end``. An index asked for a second time in one pass names the
same slot while the epoch has slots left to give; once every slot is given, it
begins the next epoch (the TensorFlow backend reading ahead). An index that an
earlier, unfinished pass asked for (an interrupted ``fit``), asked again before
the epoch's slots run out, tells a new fit over that epoch: its pass serves the
whole epoch, every event once, and from then on gives the slots the earlier
passes gave (and the rest) by arrival, in order, so that their chunks are read
one after another rather than wherever those indices fall in the new order.
``on_epoch_end`` begins the next epoch if every slot was given; otherwise it
forgets the requests made outside a pass (a probe, a look at ``seq[0]``, a loop
that broke off) and keeps those made within one. Keras' ``steps_per_epoch``
(passes shorter than the sequence) is told apart from an interrupted ``fit`` by
the second pass that ends unfinished: from then on the epoch's passes are one.
So ``steps_per_epoch`` serves every event exactly once per epoch when it is at
most half the batches; a larger one can serve a few batches of an epoch twice
when its indices run out within its second pass. A fit that was interrupted in
its second short pass looks like ``steps_per_epoch`` at first; the next fit
tells it apart by asking again for an index an earlier pass asked for, before
the epoch's slots run out, or after they have in a pass that asked for more
than half the epoch's indices and more than twice (and two) as many as the
short pass (``steps_per_epoch``'s passes, read-ahead included, do neither).
That is exact while the interrupted pass asked for fewer than a third of the
indices; past that, a next fit that asks for every other index first (1 chance
in ``C(n, k + 1)`` for ``k`` asked) serves the rest of its epoch from the next.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

import numpy as np

__all__ = ["EpochTracker", "OrderWatch"]

log = logging.getLogger(__name__)

# the tracker's state: one array of int64, shared between processes when asked to
# counters and flags; then n slots, n marks (the pass an index was last asked in; 0: none kept), and
# the order in which slots are given by arrival (0, 1, ... but after a new fit over an interrupted pass)
_EPOCH, _GIVEN, _ASKED, _CROSSED, _SHORT, _STEPS, _PASS, _IN_PASS, _STEPS_LEN = range(9)
_HEAD = 9


class EpochTracker:
    """The epoch and slot of each batch index asked for.

    Parameters
    ----------
    n : int
        Batches (indices) per epoch.
    by_arrival : bool
        Give slots in the order indices are first asked for (True), or slot = index.
    shared : bool
        Keep the state in shared memory, so that processes forked after it
        was made (Keras' ``use_multiprocessing``) draw from one tracker.
    """

    def __init__(self, n: int, *, by_arrival: bool, shared: bool) -> None:
        self.n, self.by_arrival, self.shared = int(n), bool(by_arrival), bool(shared)
        size = _HEAD + 3 * self.n
        if shared:
            self._array: Any = multiprocessing.Array("q", size)
            self._lock: Any = self._array.get_lock()
            self._state = np.frombuffer(memoryview(self._array.get_obj()), dtype=np.int64)
        else:
            self._array = None
            self._lock = threading.Lock()
            self._state = np.zeros(size, dtype=np.int64)
        self._views()
        self._slots[:] = -1
        self._queue[:] = np.arange(self.n)
        self._state[_PASS] = 1  # requests before the first pass are of pass 1 (a mark of 0 is none)
        self._in_pass = False

    def assign(self, index: int) -> tuple[int, int]:
        """The ``(epoch, slot)`` that batch index ``index`` (in ``[0, n)``) names now."""
        state = self._state
        with self._lock:
            this_pass, mark = state[_PASS], self._asked[index]
            if state[_STEPS] and mark and mark != this_pass and (state[_GIVEN] < self.n or self._long_pass()):
                # steps_per_epoch's passes go on through the epoch's indices without repeating one, each
                # about as long as the short pass: an index of an earlier pass asked again before the slots
                # run out, or once they have in a pass over most of the epoch, is a new fit's
                state[_STEPS] = 0
            if mark and state[_GIVEN] == self.n and (mark == this_pass or state[_STEPS]):
                self._advance()  # asked again once every slot is given: the next epoch
                state[_CROSSED] = 1
            if (
                self.by_arrival
                and self._slots[index] >= 0
                and mark != this_pass
                and not state[_STEPS]
                and state[_GIVEN] < self.n
            ):
                self._free_earlier_slots(this_pass)  # a new fit over an interrupted pass's epoch
            slot = int(self._slots[index])
            if slot < 0:
                slot = int(self._queue[state[_GIVEN]]) if self.by_arrival else index
                self._slots[index] = slot
                state[_GIVEN] += 1
            if self._asked[index] != this_pass:
                state[_ASKED] += self._asked[index] == 0
                state[_IN_PASS] += 1
                self._asked[index] = this_pass
            return int(state[_EPOCH]), slot

    def _free_earlier_slots(self, this_pass: int) -> None:
        """Give the slots of earlier passes' indices not asked in this pass again, in order, by arrival.

        A new fit serves the whole epoch in this pass; the slots an interrupted
        pass gave would otherwise come back wherever its indices fall in this
        pass's order, and their chunks be read again and again.
        """
        earlier = (self._asked != this_pass) & (self._slots >= 0)
        self._slots[earlier] = -1
        self._asked[earlier] = 0
        used = np.zeros(self.n, dtype=bool)
        given = self._slots[self._slots >= 0]
        used[given] = True
        self._queue[: len(given)] = np.sort(given)
        self._queue[len(given) :] = np.flatnonzero(~used)
        self._state[_GIVEN] = len(given)

    def _long_pass(self) -> bool:
        """Whether this pass, now asking for an index of an earlier one (its request counted), asked for more than
        half the epoch's indices and more than twice (and two) as many as the short pass: a new fit's."""
        asked = int(self._state[_IN_PASS]) + 1
        return 2 * asked > self.n and asked > 2 * int(self._state[_STEPS_LEN]) + 2

    def begin_epoch(self) -> None:
        """The start of a pass (Keras' ``on_epoch_begin``)."""
        with self._lock:
            state = self._state
            state[_PASS] += 1
            state[_IN_PASS] = 0
            # a new pass, unless the epoch began in the last one (read ahead: its requests count as this
            # pass's) or passes are shorter than epochs (the earlier passes' requests are kept as theirs)
            if state[_CROSSED] and not state[_STEPS]:
                self._asked[self._asked > 0] = state[_PASS]
            elif not state[_STEPS]:
                self._asked[:] = 0
                state[_ASKED] = 0
            state[_CROSSED] = 0
        self._in_pass = True

    def end_epoch(self) -> None:
        """The end of a pass (Keras' ``on_epoch_end``).

        The next epoch begins if every slot of this one was given; if not,
        requests made outside a pass are forgotten, and those made within one kept.
        """
        state = self._state
        with self._lock:
            if state[_GIVEN] == self.n:
                self._advance()
                state[_STEPS] = 0  # the pass ended with its epoch
            elif not self._in_pass:
                self._forget()
            elif not state[_CROSSED]:
                state[_SHORT] += 1  # a pass ended before its epoch: an interrupted fit, or steps_per_epoch
                if state[_SHORT] == 2:  # steps_per_epoch: Keras goes on through the epoch's indices
                    self._asked[:] = np.where(self._slots >= 0, state[_PASS], 0)
                    state[_ASKED] = state[_GIVEN]
                    state[_STEPS] = 1
                if state[_STEPS]:  # the longest pass seen (read ahead included): the read-ahead moves
                    # requests from pass to pass, and can leave a pass with nothing to ask
                    state[_STEPS_LEN] = max(state[_STEPS_LEN], state[_IN_PASS], state[_GIVEN] // state[_SHORT])
        self._in_pass = False

    def _forget(self) -> None:
        self._state[_GIVEN] = self._state[_ASKED] = 0
        self._slots[:] = -1
        self._asked[:] = 0
        self._queue[:] = np.arange(self.n)

    def _advance(self) -> None:
        self._state[_EPOCH] += 1
        self._state[_SHORT] = 0
        self._forget()

    @property
    def epoch(self) -> int:
        """The epoch being served (epochs begun before it were served whole)."""
        return int(self._state[_EPOCH])

    @property
    def completed(self) -> int:
        """Epochs every slot of which has been given."""
        with self._lock:
            return int(self._state[_EPOCH]) + int(self._state[_GIVEN] == self.n)

    def _views(self) -> None:
        n = self.n
        self._slots = self._state[_HEAD : _HEAD + n]  # index -> slot (-1: none yet)
        self._asked = self._state[_HEAD + n : _HEAD + 2 * n]  # index -> the pass it was last asked in
        self._queue = self._state[_HEAD + 2 * n :]  # the slots in the order they are given by arrival

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_slots", "_asked", "_queue"):
            state.pop(key)
        if not self.shared:
            state["_lock"] = None
        else:  # the shared array travels (only to processes being started); the views are made anew
            state["_state"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self.shared:
            self._lock = threading.Lock()
        else:
            self._state = np.frombuffer(memoryview(self._array.get_obj()), dtype=np.int64)
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
