"""Worker processes that read and flatten chunks on several cores (the pipeline's ``processes > 1``).

Threads cannot do this: most of uproot's and awkward's work holds Python's
interpreter lock, so a reading thread and a flattening thread mostly take turns.
Worker processes run truly in parallel. Each is forked from the pipeline and
owns a share of the files, balanced by events; for every chunk, each worker
reads its files' shares, flattens them straight into the chunk's buffer in
shared memory (at the rows the chunk's shuffle gives those events), and sends
back only the labels and weights. A file is always read by the same worker, so
the clusters that its consecutive chunks share are still decompressed once.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..errors import MLaaS4HEPError
from ..transform.flatten import JaggedFlattener
from ..transform.outputs import Outputs
from .buffers import mapped
from .reader import ChunkReader

__all__ = ["ChunkJob", "WorkerPool", "fork_safe_uproot", "fork_supported"]

log = logging.getLogger(__name__)

Reply = tuple[Any, Any, tuple[float, float, float]]
"""A worker's answer for a chunk: ``(y, w, (read_s, decompress_s, flatten_s))``."""


_GUARDED: list[bool] = []  # the fork hook below, registered once per process


def fork_safe_uproot() -> None:
    """Fork only while no thread holds uproot's module lock around every read's baskets (registered once).

    uproot guards the baskets read in any thread with one module-level lock
    (``uproot.behaviors.TBranch._basket_arrays_lock``). A fork while another
    thread (another sequence's read-ahead) held it gave the child a copy that
    stays held forever: the worker's first read, and the parent waiting for it,
    hung. Taking the lock before each fork and releasing it on both sides makes
    the fork wait for the read instead: this process's worker processes, and
    anyone's (a DataLoader's workers, Keras' ``use_multiprocessing``), once a
    pipeline reads in background threads.
    """
    import uproot.behaviors.TBranch as tbranch

    lock = getattr(tbranch, "_basket_arrays_lock", None)
    if not _GUARDED and lock is not None and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release)
        _GUARDED.append(True)


def fork_supported() -> bool:
    """Whether worker processes can be forked here (Linux; elsewhere the pipeline uses threads)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


@dataclass
class ChunkJob:
    """What a worker needs to turn its files' share of a chunk into rows of the chunk's matrix."""

    reader: ChunkReader
    outputs: Outputs
    flattener: JaggedFlattener

    def fill(self, k: int, files: list[int], X: np.ndarray, M: np.ndarray | None, rows: np.ndarray) -> Reply:
        """Read the shares of ``files`` of chunk ``k`` and flatten them into ``rows``.

        Returns their ``(y, w)`` and the seconds spent reading, decompressing and flattening.
        """
        chunk = self.reader.read(k, files)
        t0 = time.perf_counter()
        y, w = self.outputs.extract(chunk.pieces, chunk.file_index, chunk.labels)
        self.flattener.write_rows(chunk.pieces, X, M, rows)
        return y, w, (chunk.read_s, chunk.decompress_s, time.perf_counter() - t0)


class WorkerPool:
    """Forked processes, each serving one group of files, and the shared buffers they write into.

    Parameters
    ----------
    job : ChunkJob
        What the workers read and flatten with (copied into each by the fork).
    groups : list of list of int
        File indices of each worker.
    n_slots : int
        Shared buffers of ``rows`` events each: a chunk being filled or cached holds one.
    rows, features : int
        Shape of a buffer.
    with_mask : bool
        Whether each buffer has a mask beside it.
    """

    def __init__(
        self,
        job: ChunkJob,
        groups: list[list[int]],
        n_slots: int,
        rows: int,
        features: int,
        *,
        with_mask: bool,
    ) -> None:
        self.groups = groups
        self.slots = [
            (
                mapped((rows, features), shared=True),
                mapped((rows, features), np.bool_, shared=True) if with_mask else None,
            )
            for _ in range(n_slots)
        ]
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._locks = [threading.Lock() for _ in groups]  # one thread at a time talks to a worker
        self._replies: dict[tuple[int, int], tuple[Any, ...]] = {}
        fork_safe_uproot()
        context = multiprocessing.get_context("fork")
        gc.freeze()  # the children's garbage collector then leaves the parent's objects (and their pages) alone
        try:
            with warnings.catch_warnings():  # Python >= 3.12 warns on fork() with threads; the workers use none of them
                warnings.simplefilter("ignore", DeprecationWarning)
                # and so does JAX (Keras' JAX backend), whose threads the workers never call either
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                for files in groups:
                    parent, child = context.Pipe()
                    process = context.Process(
                        target=_serve, args=(job, files, child, self.slots), name="mlaas4hep-worker", daemon=True
                    )
                    process.start()
                    child.close()
                    self._conns.append(parent)
                    self._procs.append(process)
        finally:
            gc.unfreeze()
        log.info("started %d worker processes for files %s", len(groups), groups)

    @property
    def processes(self) -> list[Any]:
        """The worker processes (``multiprocessing.Process``), one per group of files."""
        return list(self._procs)

    def run(self, k: int, slot: int, rows: list[np.ndarray]) -> list[Reply]:
        """Have every worker flatten its files' share of chunk ``k`` into ``slot``; return their replies.

        ``rows[g]`` are the rows of the buffer for worker ``g``'s events, in the
        order its files and entries come; workers with no events in the chunk
        are not asked.
        """
        asked, error = [], None
        for g, r in enumerate(rows):
            if len(r):
                try:
                    with self._locks[g]:
                        self._conns[g].send((k, slot, r))
                    asked.append(g)
                except OSError as err:  # a broken pipe: the worker is gone
                    error = error or self._died(g, k, err)
        replies: dict[int, Reply] = {}
        for g in asked:  # every reply is collected, so that no stale one is left in a pipe
            try:
                status, *payload = self._reply(g, slot)
            except (EOFError, OSError) as err:
                error = error or self._died(g, k, err)
                continue
            if status == "error":
                error = error or payload[0]
            else:
                replies[g] = (payload[0], payload[1], payload[2])
        if error is not None:
            raise error
        return [replies.get(g, (None, None, (0.0, 0.0, 0.0))) for g in range(len(rows))]

    def _reply(self, g: int, slot: int) -> tuple[Any, ...]:
        """Worker ``g``'s reply for ``slot``. Several threads may wait on one worker: each keeps the
        replies it reads for the others (a worker answers in the order it was asked)."""
        while True:
            with self._locks[g]:
                reply = self._replies.pop((g, slot), None)
                if reply is not None:
                    return reply
                status, answered, *payload = self._conns[g].recv()
                if answered == slot:
                    return (status, *payload)
                self._replies[(g, answered)] = (status, *payload)

    def _died(self, g: int, k: int, cause: BaseException) -> MLaaS4HEPError:
        self._procs[g].join(timeout=1)
        error = MLaaS4HEPError(
            f"worker process {g} (files {self.groups[g]}) died while reading chunk {k} "
            f"(exit code {self._procs[g].exitcode}); close the sequence and make a new one"
        )
        error.__cause__ = cause
        return error

    def close(self) -> None:
        """Stop the workers (they also stop when this process exits)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for process in self._procs:
            process.join(timeout=2)
            if process.is_alive():
                process.terminate()
                process.join(timeout=2)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        self.slots = []  # the shared memory is let go with the batches that still look into it


def _serve(job: ChunkJob, files: list[int], conn: Connection, slots: list[tuple[np.ndarray, Any]]) -> None:
    """A worker's loop: read and flatten the shares of ``files`` of each chunk asked for, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the parent's to handle
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            job.reader.close()
            return
        k, slot, rows = task
        try:
            X, M = slots[slot]
            y, w, seconds = job.fill(k, files, X, M, rows)
            conn.send(("ok", slot, y, w, seconds))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent, which raises it
            try:
                conn.send(("error", slot, err))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send(("error", slot, MLaaS4HEPError(f"{type(err).__name__}: {err}")))
