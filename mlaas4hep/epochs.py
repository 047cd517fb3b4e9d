"""Which events a batch index names: the ``seq[i]`` contract of :class:`~mlaas4hep.RootSequence`.

Keras' ``fit`` asks for the batch indices of an epoch in a random order (its
default ``shuffle=True``), from several threads or processes, and the
TensorFlow backend asks for the next epoch's first indices before it calls
``on_epoch_end``. :class:`EpochTracker` maps each request to ``(epoch, slot)``
so that

* within an epoch an index always names the same slot (batch of the epoch's
  stream), from any thread, in any order;
* the ``n`` indices of an epoch name the ``n`` slots once each, so every event
  is served exactly once however the indices are asked for, and however many
  of them a probe, an interrupted ``fit`` or a loop that broke off asked for;
* with ``by_arrival=True`` (shuffled sequences) an index is given the next
  slot not yet given when it is first asked for, so that the slots, and the
  chunks they lie in, are served one after another whatever order Keras asks
  in; with ``by_arrival=False`` (sequences in order) index ``i`` is slot ``i``;
* an epoch ends once all its indices were asked for, when ``on_epoch_end`` is
  called or an index is asked for a second time: the next epoch begins;
* requests made outside an epoch (before ``on_epoch_begin``, or after
  ``on_epoch_end``) that do not complete one, such as the TensorFlow backend's
  probe of batches 0 and 1 or a look at ``seq[0]`` in a notebook, are
  forgotten at the next ``on_epoch_end``: the epoch starts again from its first
  slot, whose chunk is then already read. Requests within an epoch are never
  forgotten: an epoch that ``on_epoch_end`` finds unfinished (Keras'
  ``steps_per_epoch``, the next epoch's first batches asked for ahead of time,
  an interrupted ``fit``) carries on.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import numpy as np

__all__ = ["EpochTracker"]


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
        # state[0]: the epoch; state[1]: indices given a slot in it; state[2 + i]: slot of index i, or -1
        if shared:
            self._array: Any = multiprocessing.Array("q", self.n + 2)
            self._lock: Any = self._array.get_lock()
            self._state = np.frombuffer(memoryview(self._array.get_obj()), dtype=np.int64)
        else:
            self._array = None
            self._lock = threading.Lock()
            self._state = np.zeros(self.n + 2, dtype=np.int64)
        self._state[2:] = -1
        self._in_epoch = False

    def begin_epoch(self) -> None:
        """The start of an epoch (Keras' ``on_epoch_begin``): requests from now on are kept."""
        self._in_epoch = True

    def assign(self, index: int) -> tuple[int, int]:
        """The ``(epoch, slot)`` that batch index ``index`` (in ``[0, n)``) names now."""
        state = self._state
        with self._lock:
            slot = int(state[2 + index])
            if slot >= 0 and state[1] == self.n:  # every index was asked for: a new epoch begins
                self._advance()
                slot = -1
            if slot < 0:
                slot = int(state[1]) if self.by_arrival else index
                state[2 + index] = slot
                state[1] += 1
            return int(state[0]), slot

    def end_epoch(self) -> None:
        """The end of an epoch (Keras' ``on_epoch_end``).

        The next epoch begins if this one was served whole; if not, requests
        made outside an epoch are forgotten, and those made within one kept.
        """
        with self._lock:
            if self._state[1] == self.n:
                self._advance()
            elif not self._in_epoch:
                self._state[1] = 0
                self._state[2:] = -1
        self._in_epoch = False

    def _advance(self) -> None:
        self._state[0] += 1
        self._state[1] = 0
        self._state[2:] = -1

    @property
    def epoch(self) -> int:
        """The epoch being served (epochs begun before it were served whole)."""
        return int(self._state[0])

    @property
    def completed(self) -> int:
        """Epochs every index of which has been asked for."""
        with self._lock:
            return int(self._state[0]) + int(self._state[1] == self.n)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if not self.shared:
            state["_lock"] = None
        else:  # the shared array travels (only to processes being started); the view is made anew
            state["_state"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self.shared:
            self._lock = threading.Lock()
        else:
            self._state = np.frombuffer(memoryview(self._array.get_obj()), dtype=np.int64)
