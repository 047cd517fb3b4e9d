"""The framework-neutral pipeline: chunks read, flattened, cached and cut into batches, ahead of need.

:class:`Pipeline` serves batch ``slot`` of ``epoch`` (:meth:`Pipeline.batch`)
of a :class:`~mlaas4hep.stream.prepare.PreparedData`, where :class:`~mlaas4hep.stream.plan.EpochPlan`
says it lies. It knows nothing of Keras or PyTorch: the faces turn its
:class:`Batch` into what their framework takes.

Two background threads form a pipeline: one reads (uproot decompresses with
the GIL released), the other flattens the chunk read before, so on two cores
reading the next chunk overlaps flattening this one. With ``processes > 1``
(Linux, local files) forked worker processes read and flatten instead
(:mod:`mlaas4hep.stream.workers`), each a share of the files, into shared memory.
Flattened chunks are cached (the ``cache_chunks`` last used) and their memory
reused once no batch refers to it (:mod:`mlaas4hep.stream.buffers`); the next
``prefetch`` chunks of the epoch (or of the next one, past its end) are read
ahead, the first of them flattened ahead too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..transform.outputs import Outputs
from .buffers import Buffers, Decoded
from .counters import LoaderCounters
from .plan import EpochPlan, balance, chunk_permutation
from .prepare import PreparedData
from .reader import Chunk, ChunkReader
from .workers import ChunkJob, WorkerPool, fork_safe_uproot, fork_supported

__all__ = ["Batch", "Pipeline"]

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (epoch, chunk) as EpochPlan.key gives it


@dataclass(frozen=True)
class Batch:
    """One batch: ``x`` (float32, read-only), the mask (bool), labels or targets ``y``, weights ``w``.

    ``x`` is an array ``(batch, num_features)`` in the flat layout, a dict of
    arrays in the collections layout (``"event"``, ``"Jet"``, ``"Jet_mask"``, ...).
    """

    x: np.ndarray | dict[str, np.ndarray]
    mask: np.ndarray | None
    y: np.ndarray | None
    w: np.ndarray | None

    def __len__(self) -> int:
        x = self.x if isinstance(self.x, np.ndarray) else next(iter(self.x.values()))
        return int(x.shape[0])

    @property
    def inputs(self) -> np.ndarray | dict[str, np.ndarray]:
        """What the model takes: ``x``, or ``{"features": x, "mask": m}`` (``m`` float32) with the mask."""
        if self.mask is None:
            return self.x
        return {"features": self.x, "mask": self.mask.astype(np.float32)}  # type: ignore[dict-item]  # flat: an array

    def as_tuple(self, outputs: Outputs) -> tuple[Any, ...]:
        """The batch as the faces serve it: ``(x,)`` without labels, ``(x, y)``, or ``(x, y, w)`` with weights.

        ``x`` is :attr:`inputs`; ``y`` as ``outputs`` serve it (one-hot when asked for).

        Examples
        --------
        >>> x, y = pipeline.batch(0, 0).as_tuple(prepared.outputs)  # doctest: +SKIP
        """
        y = outputs.batch_y(self.y)
        if y is None:
            return (self.inputs,)
        return (self.inputs, y) if self.w is None else (self.inputs, y, self.w)


class Pipeline:
    """Batches of the prepared data's chunks, read and flattened in the background.

    Parameters
    ----------
    prepared : PreparedData
        What to read and how to flatten it.
    epoch_plan : EpochPlan
        Where each batch lies in each epoch (the shard included).
    with_mask : bool, optional
        Whether batches carry the mask (default: the prepared data's ``mask_output`` option).
    cache_chunks : int, optional
        Flattened chunks kept once served (default: the prepared data's option).
    prefetch : int, optional
        Chunks read ahead, 0 for none (default: the prepared data's option).
    processes : int
        Worker processes that read and flatten (1: threads of this process).
        Without ``fork`` (not Linux) or with remote files, threads are used.
    stats : LoaderCounters, optional
        Where to count what the pipeline does (default: counters of its own, :attr:`stats`).

    Notes
    -----
    Safe to call from several threads. After a ``fork`` (Keras' worker
    processes), the copy starts its own threads and cache on first use; a
    pickled pipeline holds no threads, files or buffers.
    """

    def __init__(
        self,
        prepared: PreparedData,
        epoch_plan: EpochPlan,
        *,
        with_mask: bool | None = None,
        cache_chunks: int | None = None,
        prefetch: int | None = None,
        processes: int = 1,
        stats: LoaderCounters | None = None,
    ) -> None:
        options = prepared.options
        self.stats = stats if stats is not None else LoaderCounters()
        self.prepared, self.epoch_plan = prepared, epoch_plan
        self.with_mask = bool(options.mask_output if with_mask is None else with_mask)
        self.cache_chunks = int(options.cache_chunks if cache_chunks is None else cache_chunks)
        self.prefetch = int(options.prefetch if prefetch is None else prefetch)
        self.reader: ChunkReader = prepared.reader()
        self.groups = self._worker_groups(int(processes))
        self.rows = int(prepared.plan.sizes.max())
        self._start_runtime()

    @property
    def worker_processes(self) -> int:
        """Worker processes that read and flatten (0: threads of this process)."""
        return 0 if self.groups is None else len(self.groups)

    @property
    def reads(self) -> int:
        """Chunks read so far by this process (or, with worker processes, by them)."""
        return self.reader.reads

    @property
    def workers(self) -> WorkerPool | None:
        """The worker processes, once started (they start with the first batch)."""
        return self._pool

    @property
    def buffers(self) -> Buffers:
        """The buffers of the flattened chunks."""
        return self._buffers

    def _worker_groups(self, processes: int) -> list[list[int]] | None:
        """Files of each worker process, or None to read in threads of this process."""
        if processes <= 1:
            return None
        why = None
        if not fork_supported():
            why = "worker processes are forked, on Linux only"
        elif any(source.is_remote for source in self.prepared.sources):
            why = "remote files are read in threads"
        if why:
            log.info("workers=%d: reading in threads of this process (%s)", processes, why)
            return None
        return balance(self.prepared.plan.counts.sum(axis=0).tolist(), processes)

    def _start_runtime(self) -> None:
        """(Re)create what cannot be shared with a forked process: lock, threads, cache, buffers."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._flatten_executor: ThreadPoolExecutor | None = None
        self._futures: dict[Key, Future[Decoded]] = {}
        self._reads: dict[Key, Future[Chunk]] = {}  # read ahead, not yet flattened
        self._cache: OrderedDict[Key, Decoded] = OrderedDict()
        self._buffers = Buffers(self.rows, self.prepared.flattener.num_features, made=self.stats.buffer_made)
        self._pool: WorkerPool | None = None
        self._reader_lock = threading.Lock()  # for chunks made in this process while workers are running
        self._finalizers: list[weakref.finalize[Any, Any]] = []  # what a dropped pipeline stops

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in (
            "_lock",
            "_executor",
            "_flatten_executor",
            "_futures",
            "_reads",
            "_cache",
            "_buffers",
            "_pool",
            "_reader_lock",
            "_finalizers",
        ):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_runtime()

    # -- serving --------------------------------------------------------------------------------
    def batch(self, epoch: int, slot: int) -> Batch:
        """Batch ``slot`` (of this shard) of ``epoch``: views of its chunk's matrix, or a copy across two chunks."""
        if os.getpid() != self._pid:  # forked (by Keras): this process reads for itself
            self._start_runtime()
        t0, waited = time.perf_counter(), 0.0
        pieces: list[tuple[Decoded, slice]] = []
        try:
            for position, k, a, b in self.epoch_plan.pieces(epoch, slot):
                decoded, wait = self._chunk(self.epoch_plan.key(epoch, k), epoch)
                pieces.append((decoded, slice(a, b)))
                waited += wait
                for n, (e, j) in enumerate(self.epoch_plan.following(epoch, position, self.prefetch)):
                    # the next chunk is flattened ahead, the others only read
                    self._prefetch(self.epoch_plan.key(e, j), e, flatten=n == 0)
            batch = self._assemble(pieces)
            self.stats.served(epoch, len(batch), time.perf_counter() - t0, waited)
            return batch
        finally:
            for decoded, _ in pieces:
                self._release(decoded)

    def _assemble(self, pieces: list[tuple[Decoded, slice]]) -> Batch:
        if len(pieces) == 1:
            # views: the chunk's buffer is reused only once no batch looks into it (see Buffers.recycle)
            d, rows = pieces[0]
            return Batch(
                self.prepared.flattener.inputs(d.X[rows]),
                None if d.M is None or not self.with_mask else d.M[rows],
                None if d.y is None else d.y[rows],
                None if d.w is None else d.w[rows],
            )
        first = pieces[0][0]  # a batch across two chunks

        def joined(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            present = [a for a in arrays if a is not None]
            return np.concatenate(present) if len(present) == len(arrays) else None

        x = self.prepared.flattener.inputs(np.concatenate([d.X[rows] for d, rows in pieces]))
        mask = joined([None if d.M is None else d.M[rows] for d, rows in pieces]) if self.with_mask else None
        y = None if first.y is None else joined([None if d.y is None else d.y[rows] for d, rows in pieces])
        w = None if first.w is None else joined([None if d.w is None else d.w[rows] for d, rows in pieces])
        return Batch(x, mask, y, w)

    def _chunk(self, key: Key, epoch: int) -> tuple[Decoded, float]:
        """The flattened chunk of ``key``, from the cache or made now, and the seconds waited for it.

        The caller releases the chunk. ``epoch`` is the epoch served, which work
        done for it is counted under (unshuffled epochs share their keys).
        """
        waited = 0.0
        while True:
            with self._lock:
                decoded = self._cache.get(key)
                if decoded is not None:
                    self._cache.move_to_end(key)
                    decoded.users += 1
                    return decoded, waited
                future = self._submit(key, epoch)
            t0 = time.perf_counter()
            try:
                decoded = future.result()
            except BaseException:  # forgotten, so that the next request reads the chunk again
                with self._lock:
                    if self._futures.get(key) is future:
                        del self._futures[key]
                raise
            finally:
                waited += time.perf_counter() - t0
            with self._lock:
                if decoded.evicted and decoded.buffer is None:  # cached, used up and recycled meanwhile
                    continue
                if self._futures.get(key) is future:
                    del self._futures[key]
                    self._cache[key] = decoded
                    while len(self._cache) > self.cache_chunks:
                        _, old = self._cache.popitem(last=False)
                        old.evicted = True
                        if old.users == 0:
                            self._buffers.recycle(old)
                decoded.users += 1
            return decoded, waited

    def _release(self, decoded: Decoded) -> None:
        """A thread is done cutting a batch from ``decoded``."""
        with self._lock:
            decoded.users -= 1
            if decoded.evicted and decoded.users == 0:
                self._buffers.recycle(decoded)

    def _prefetch(self, key: Key, epoch: int, *, flatten: bool = True) -> None:
        with self._lock:
            if key not in self._cache:
                if flatten:
                    self._submit(key, epoch)
                else:
                    self._read_ahead(key, epoch)

    def _submit(self, key: Key, epoch: int) -> Future[Decoded]:
        """Start loading the chunk of ``key`` for ``epoch`` (caller holds the lock)."""
        future = self._futures.get(key)
        if future is None:
            executor, flattener = self._start_threads()
            if self._pool is not None:
                future = flattener.submit(self._flatten_in_workers, key, epoch)
            else:
                read = self._reads.pop(key, None) or executor.submit(self._read, key, epoch)
                future = flattener.submit(self._flatten, read, key[0], epoch)
            self._futures[key] = future
        return future

    def _read_ahead(self, key: Key, epoch: int) -> None:
        """Start reading the chunk of ``key``, to be flattened when it is next (caller holds the lock)."""
        if key in self._reads or key in self._futures:
            return
        executor, _ = self._start_threads()
        if self._pool is not None:  # the workers flatten what they read, into their own shared buffers
            self._submit(key, epoch)
            return
        self._reads[key] = executor.submit(self._read, key, epoch)
        while len(self._reads) > self.prefetch:  # reads ahead that were never asked for (another shard...)
            self._reads.pop(next(iter(self._reads))).cancel()

    def _start_threads(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """The reader and flattener threads (and the worker processes), started once (caller holds the lock)."""
        if self._executor is None or self._flatten_executor is None:
            fork_safe_uproot()  # these threads read with uproot: a fork (anyone's) then waits for its lock
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlaas4hep-reader")
            # with worker processes, two threads hand out chunks, so that a worker is asked for the
            # next chunk before the other has finished this one
            dispatchers = 1 if self.groups is None else 2
            self._flatten_executor = ThreadPoolExecutor(dispatchers, thread_name_prefix="mlaas4hep-flattener")
            # a pipeline that is dropped stops reading ahead
            self._finalizers.append(weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True))
            self._finalizers.append(
                weakref.finalize(self, self._flatten_executor.shutdown, wait=False, cancel_futures=True)
            )
            if self.groups is not None:
                self._start_workers(self.groups)
        return self._executor, self._flatten_executor

    # -- making chunks --------------------------------------------------------------------------
    def _read(self, key: Key, epoch: int) -> Chunk:
        """Read chunk ``key[1]``, counted as read for ``epoch``."""
        chunk = self.reader.read(key[1])
        self.stats.chunk_read(epoch, key[1], chunk.read_s, chunk.decompress_s)
        return chunk

    def _flatten(self, read: Future[Chunk], epoch: int, counted: int) -> Decoded:
        """Flatten a chunk once read, its events already in ``epoch``'s shuffled order (counted for ``counted``)."""
        chunk = read.result()
        t0 = time.perf_counter()
        prepared = self.prepared
        y, w = prepared.outputs.extract(chunk.pieces, chunk.file_index, chunk.labels)
        n = len(chunk)
        order = chunk_permutation(self.epoch_plan.seed, epoch, chunk.index, n) if self.epoch_plan.shuffle else None
        with self._lock:
            buffer, written = self._buffers.take(n)
        # a reused buffer is padded again only where the chunk before wrote
        X, M, written = prepared.flattener.transform_into(
            chunk.pieces, order, mask=self.with_mask, buffer=buffer, written=written
        )
        if order is not None:
            y = None if y is None else y[order]
            w = None if w is None else w[order]
        if M is not None:  # a mask is made for each chunk
            self.stats.buffer_made(M)
        decoded = Decoded(X, M, y, w, buffer, written=written)
        del buffer, X  # counted as Buffers.recycle will count: the chunk's own references only
        decoded.count_own_references()
        self.stats.add(counted, flatten_s=time.perf_counter() - t0)
        return decoded

    def _start_workers(self, groups: list[list[int]]) -> None:
        """Fork the worker processes and the shared buffers they fill (caller holds the lock)."""
        n_slots = self.cache_chunks + self.prefetch + 2  # cached, in flight, and being cut into batches
        job = ChunkJob(self.reader, self.prepared.outputs, self.prepared.flattener)
        features = self.prepared.flattener.num_features
        self._pool = WorkerPool(job, groups, n_slots, self.rows, features, with_mask=self.with_mask)
        self._buffers.use_slots(self._pool.slots)
        for arrays in self._pool.slots:
            for array in arrays:
                if array is not None:
                    self.stats.buffer_made(array)
        self._finalizers.append(weakref.finalize(self, self._pool.close))

    def _flatten_in_workers(self, key: Key, counted: int) -> Decoded:
        """Have the worker processes read and flatten chunk ``key[1]`` into a shared buffer (for ``counted``)."""
        assert self._pool is not None and self.groups is not None
        epoch, k = key
        counts = self.prepared.plan.counts[k]
        n = int(counts.sum())
        with self._lock:
            slot = self._buffers.take_slot()
        if slot is None:  # every shared buffer is taken: this chunk is made here, in this thread
            read: Future[Chunk] = Future()
            with self._reader_lock:  # the other dispatching thread may be here too
                read.set_result(self._read(key, counted))
            return self._flatten(read, epoch, counted)
        rows = np.arange(n, dtype=np.int64)
        if self.epoch_plan.shuffle:  # row r holds event order[r], as in _flatten
            rows[chunk_permutation(self.epoch_plan.seed, epoch, k, n)] = np.arange(n, dtype=np.int64)
        starts = np.cumsum(counts) - counts  # the chunk holds its files' events one file after another
        per_worker = [
            np.concatenate([rows[starts[i] : starts[i] + counts[i]] for i in files]).astype(np.int64, copy=False)
            for files in self.groups
        ]
        try:
            parts = self._pool.run(k, slot, per_worker)
        except BaseException:
            with self._lock:
                self._buffers.give_slot(slot)
            raise
        self.reader.reads += 1
        # summed over the workers: read_s, decompress_s and flatten_s are their seconds, not the wall's
        read_s, decompress_s, flatten_s = (sum(p[2][i] for p in parts) for i in range(3))
        self.stats.chunk_read(counted, k, read_s, decompress_s)
        self.stats.add(counted, flatten_s=flatten_s)
        X, M = self._pool.slots[slot]
        y = _gather([p[0] for p in parts], per_worker, n)
        w = _gather([p[1] for p in parts], per_worker, n)
        return Decoded(X[:n], None if M is None else M[:n], y, w, slot)

    def close(self) -> None:
        """Stop the background threads and worker processes, close the files, and forget the chunks made.

        The pipeline may be used again: it starts anew, as after a ``fork``.
        The chunks it had made are forgotten with the workers whose shared
        slots held them, so that no slot numbered by the old workers is lent
        out by the new ones (batches still held keep their memory).
        """
        if self._executor is not None and self._flatten_executor is not None:
            self._executor.shutdown(wait=True)
            self._flatten_executor.shutdown(wait=True)
            self._executor = self._flatten_executor = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.reader.close()
        for finalizer in self._finalizers:  # done by hand above: the stopped threads and workers are let go
            finalizer.detach()
        self._start_runtime()


def _gather(parts: list[np.ndarray | None], rows: list[np.ndarray], n: int) -> np.ndarray | None:
    """One array of ``n`` rows from the workers' parts, part ``g`` going to rows ``rows[g]``."""
    present = [(p, r) for p, r in zip(parts, rows, strict=True) if p is not None]
    if not present:
        return None
    first = present[0][0]
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    for part, where in present:
        out[where] = part
    return out
