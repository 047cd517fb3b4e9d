"""Memory for flattened chunks: made once, reused while no batch still looks into it.

A flattened chunk (:class:`Decoded`) lives in a buffer: a float32 matrix made
in this process, or, with worker processes, a slot of shared memory that the
workers write into. Batches are views of it, not copies, so a buffer is reused
only once nothing refers to it but the chunk itself; a batch a caller keeps
stays as it was, and its buffer is left to the garbage collector (or, for a
shared slot, taken back once the caller lets go of it). In the collections
layout too a chunk is one matrix: the tensors of a batch (``x["Jet"]``, ...)
are views of it, each counted as a reference.

:class:`Buffers` is not thread-safe: the pipeline calls it under its own lock.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Buffers", "Decoded", "Written", "mapped"]

Written = list[tuple[np.ndarray, np.ndarray]]
"""Cells of a buffer's jagged columns that hold values, as :meth:`JaggedFlattener.transform_into` returns them."""

_GONE = np.empty((0, 0), dtype=np.float32)  # what a recycled chunk's matrix becomes

FREE_BUFFERS = 2
"""Buffers made in this process that are kept for reuse."""


@dataclass
class Decoded:
    """A chunk after flattening, its events in serving order: batches are slices of it.

    ``users`` counts the threads cutting batches from it; ``buffer`` is the
    matrix ``X`` lives in (with worker processes, the index of a shared slot),
    which goes back to :class:`Buffers` once the chunk has left the cache and
    has no users.
    """

    X: np.ndarray
    M: np.ndarray | None
    y: np.ndarray | None
    w: np.ndarray | None
    buffer: np.ndarray | int | None = None
    users: int = 0
    evicted: bool = False
    refs: int = 0  # references to ``buffer`` when no batch looks into it
    written: Written | None = None  # the cells of ``buffer`` that are not padding

    def __post_init__(self) -> None:
        for a in (self.X, self.M):  # batches are views of buffers that are reused
            if a is not None:
                a.flags.writeable = False

    def count_own_references(self) -> None:
        """Remember how many references to ``buffer`` the chunk itself holds (call once the maker let go)."""
        self.refs = sys.getrefcount(self.buffer)


class Buffers:
    """Buffers of ``rows`` by ``features`` float32 values, made here or lent from shared slots.

    Parameters
    ----------
    rows, features : int
        The shape of a buffer: the largest chunk, by the width of ``X``.
    made : callable, optional
        Called with every buffer made (to follow their memory).
    """

    def __init__(self, rows: int, features: int, made: Callable[[np.ndarray], None] | None = None) -> None:
        self.rows, self.features = int(rows), int(features)
        self._made = made
        self._free: list[tuple[np.ndarray, Written | None]] = []
        self.slots: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._free_slots: list[int] = []
        self._lent_slots: list[int] = []  # left the cache while a caller still held batches (views) of them
        self._slot_refs_free = 0

    def take(self, n: int) -> tuple[np.ndarray, Written | None]:
        """A buffer of at least ``n`` rows and the cells of it that hold values (None: all may)."""
        buffer, written = self._free.pop() if self._free else (None, None)
        if buffer is None or buffer.shape[0] < n:
            buffer = mapped((self.rows, self.features))
            if self._made is not None:
                self._made(buffer)
            return buffer, None
        return buffer, written

    def use_slots(self, slots: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Lend these shared slots (matrix and mask) from now on."""
        self.slots = slots
        self._free_slots = list(range(len(slots)))[::-1]
        self._slot_refs_free = self.slot_refs(0)  # references to a slot's arrays that nothing else holds

    def slot_refs(self, slot: int) -> int:
        """References to the arrays of shared ``slot``: each batch cut from it (a view) holds one."""
        return sum(sys.getrefcount(a) for a in self.slots[slot] if a is not None)

    def unused(self, slot: int) -> bool:
        """Whether no batch refers to shared ``slot`` any more."""
        return self.slot_refs(slot) == self._slot_refs_free

    def take_slot(self) -> int | None:
        """A shared slot that no chunk and no batch uses, or None."""
        if self._free_slots:
            return self._free_slots.pop()
        for slot in self._lent_slots:
            if self.unused(slot):  # the caller has let go of its batches
                self._lent_slots.remove(slot)
                return slot
        return None

    def give_slot(self, slot: int) -> None:
        """Take back a slot that was never used (its chunk failed)."""
        self._free_slots.append(slot)

    @property
    def lent(self) -> list[int]:
        """Shared slots whose chunk left the cache while batches of it were still held."""
        return list(self._lent_slots)

    @property
    def free(self) -> int:
        """Buffers made here that wait to be reused."""
        return len(self._free)

    def recycle(self, decoded: Decoded) -> None:
        """Take back the memory of a chunk that left the cache and has no users.

        A buffer is reused only if nothing refers to it but the chunk itself:
        as many references as when the chunk was made. Otherwise it is left
        to the garbage collector (a shared slot: taken back once let go).
        """
        if isinstance(decoded.buffer, int):  # a shared slot of the worker processes
            decoded.X, decoded.M = _GONE, None  # the chunk's own views
            if self.unused(decoded.buffer):
                self._free_slots.append(decoded.buffer)
            else:  # batches of it are still held: taken back once they are let go
                self._lent_slots.append(decoded.buffer)
        elif (
            decoded.buffer is not None
            and len(self._free) < FREE_BUFFERS
            and sys.getrefcount(decoded.buffer) == decoded.refs
        ):
            self._free.append((decoded.buffer, decoded.written))
        decoded.buffer = None


def mapped(shape: tuple[int, int], dtype: type = np.float32, *, shared: bool = False) -> np.ndarray:
    """A zero-filled array on an anonymous memory mapping of its own, in small (4 KiB) pages.

    Private, it is a buffer of this process; ``shared``, it is seen by the
    processes forked after it was made (the workers' slots). Pages are
    committed only when written, and the mapping goes with the array. The
    array is made straight on the mapping, so that every view of it refers to
    the array (and can be counted, see :meth:`Buffers.recycle`).

    numpy asks the kernel for transparent huge pages for every large array; the
    first touch of a fresh huge page can stall (compaction), which made each
    new buffer of the demo files (71 MB) cost up to 0.2 s against 0.03 s in
    small pages, three times in a first epoch. So the mapping is marked for
    small pages where the system has the flag (Linux).
    """
    private = getattr(mmap, "MAP_PRIVATE", None)
    if private is None:  # not POSIX (and no fork to share with)
        return np.zeros(shape, dtype=dtype)
    flags = (mmap.MAP_SHARED if shared else private) | mmap.MAP_ANONYMOUS
    memory = mmap.mmap(-1, max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1), flags=flags)
    no_huge_pages = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if no_huge_pages is not None:
        try:
            memory.madvise(no_huge_pages)
        except OSError:  # a kernel without transparent huge pages
            pass
    array: np.ndarray = np.ndarray(shape, dtype=dtype, buffer=memory)
    return array
