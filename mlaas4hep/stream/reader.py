"""Reading chunks of events from the input files: the data path's reads, through :mod:`mlaas4hep.inputs.formats`.

:class:`ChunkReader` reads chunk ``k`` of a :class:`~mlaas4hep.stream.plan.ChunkPlan`:
for every file that contributes, the entries the plan gives it (or, with a
cut, the entries of its selected events), as awkward arrays of the branches
asked for, with the derived branches (aliases) computed on each piece. Whole
blocks (ROOT clusters, Parquet row groups) are read, each decompressed once
per epoch, and remote files are retried with backoff.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from .._arrays import row_range
from .._checks import check_int, check_number
from ..errors import FileAccessError, MLaaS4HEPError, ParameterError
from ..inputs.contents import FileInfo, check_unchanged
from ..inputs.formats import DEFAULT_TIMEOUT, Table, open_table
from ..inputs.selection import Selection
from ..inputs.sources import FileSource
from .counters import Tally, TimedExecutor
from .plan import ChunkPlan

__all__ = ["Chunk", "ChunkReader"]

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    """Events of one chunk, as read: one awkward array per file that contributes.

    ``labels`` has one value per event (from the per-file labels or the label
    branch), ``file_index`` and ``entry`` say where each event came from. A
    piece is an awkward record array, or a mapping of branch name to values
    when aliases were derived on it. ``read_s`` is the wall time of the read,
    ``decompress_s`` the seconds the decompression threads spent on it.
    """

    index: int
    pieces: list[Any]
    labels: np.ndarray | None
    file_index: np.ndarray
    entry: np.ndarray
    read_s: float = 0.0
    decompress_s: float = 0.0

    def __len__(self) -> int:
        return int(self.file_index.size)


class ChunkReader:
    """Read the chunks of a :class:`ChunkPlan` from the input files (of any format, mixed).

    Parameters
    ----------
    sources : sequence of FileSource
        Files (and trees) to read: ROOT, Parquet, CSV, JSON lines or Avro (see :mod:`mlaas4hep.inputs.formats`).
    branches : sequence of str
        Branches to read (or aliases of ``selection`` to compute); nothing else is decompressed.
    chunk_size : int, optional
        Events per chunk (``-1``: one chunk with everything); needed unless ``plan`` is given.
    ranges : sequence of (start, stop), optional
        Entry range to use in each file; default all entries (given by ``entries``).
    entries : sequence of int, optional
        Entries per file, when known (saves opening every file up front).
    labels : sequence of float, optional
        One label per file, repeated for its events.
    label_branch : str, optional
        Branch holding each event's label (read with the others).
    selected : sequence of (numpy.ndarray or None), optional
        Per file, the sorted entry numbers of the events that pass a cut (None:
        every entry). ``ranges`` and the plan then count these events, not
        entries: chunk ``k`` takes events ``[starts[k, i], starts[k, i] + counts[k, i])``
        of file ``i``'s selected events, reads the entries that span them and
        keeps exactly those, so that every chunk but the last still holds
        ``chunk_size`` events.
    max_open_files : int
        Files kept open between chunks; older ones are closed (the least
        recently read first). Every other file is closed as soon as it has been
        read. At least ``2 * files_per_chunk`` avoids reopening files between
        the chunks of a group.
    files_per_chunk : int, optional
        Files one chunk mixes, for datasets of many files (see :meth:`ChunkPlan.build`);
        default all files.
    retries : int
        Times a failed read of a remote file (``root://``, ``http(s)://``) is
        tried again, closing and reopening the file each time (default 3; local
        files are not retried).
    retry_backoff : float
        Seconds to wait before the first retry; the wait doubles after each
        (default 0.5: waits of 0.5, 1 and 2 seconds).
    plan : ChunkPlan, optional
        The plan to read, instead of one made from ``chunk_size`` and ``ranges``.
    timeout : float
        Seconds to wait for the server of a remote file, to connect and for each read (default 30).
    expect : sequence of FileInfo, optional
        Each file as it was when the plan was made: a file opened with other
        entries (or, local, another size or modification time) raises
        :class:`~mlaas4hep.errors.FileAccessError`, as the plan no longer fits it.
    selection : Selection, optional
        Aliases (and a cut, which the reader does not apply: give ``selected``):
        names of aliases among ``branches`` are computed on every piece read,
        from the file branches they need, which are read in their place.

    Notes
    -----
    A reader is used by one thread at a time; after a ``fork`` it reopens its
    files, so copies in worker processes work.

    Whole clusters (the entry ranges where every branch starts a basket; a
    Parquet file's row groups) are read, so that no basket is decompressed
    twice. When chunks are read one after another (``k``, then ``k + 1`` or
    ``k - 1``, as an epoch reads them), the clusters that the next
    ``read_ahead`` chunks (attribute, default 2) need and that adjoin a read
    are read in the same call (to uproot, which has a fixed cost per call),
    and kept until those chunks take them.
    """

    def __init__(
        self,
        sources: Sequence[FileSource],
        branches: Sequence[str],
        *,
        chunk_size: int | None = None,
        ranges: Sequence[tuple[int, int]] | None = None,
        entries: Sequence[int] | None = None,
        plan: ChunkPlan | None = None,
        labels: Sequence[float] | None = None,
        label_branch: str | None = None,
        max_open_files: int = 8,
        selected: Sequence[np.ndarray | None] | None = None,
        files_per_chunk: int | None = None,
        retries: int = 3,
        retry_backoff: float = 0.5,
        selection: Selection | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        expect: Sequence[FileInfo] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.timeout = float(timeout)
        self.expect = None if expect is None else list(expect)
        self.label_branch = label_branch
        self.selection = selection if selection is not None else Selection()
        names = list(dict.fromkeys(branches))
        if label_branch is not None and label_branch in self.selection.aliases:  # computed with the other aliases
            names = list(dict.fromkeys([*names, label_branch]))
        self.derive = [name for name in names if name in self.selection.aliases]
        # the file branches to read: those asked for, and those the aliases are computed from
        self.branches = self.selection.branches(names, cut=False)
        if labels is not None and len(labels) != len(self.sources):
            msg = f"got {len(labels)} labels for {len(self.sources)} files; give one label per file"
            raise ParameterError(msg)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        if selected is not None and len(selected) != len(self.sources):
            msg = f"got selected entries for {len(selected)} files, not {len(self.sources)}"
            raise ParameterError(msg)
        self.selected = None if selected is None else [None if s is None else np.asarray(s, np.int64) for s in selected]
        self.plan = plan if plan is not None else self._plan(chunk_size, ranges, entries, files_per_chunk)
        self.max_open_files = check_int(max_open_files, "max_open_files")
        self.retries = check_int(retries, "retries", minimum=0)
        self.retry_backoff = check_number(retry_backoff, "retry_backoff", what="a non-negative number of seconds")
        self.reads = 0
        self.bytes_read = 0
        self.decompress = Tally()  # seconds the decompression threads spent on this reader's baskets
        self._open: OrderedDict[int, Table] = OrderedDict()
        self._cluster_cache: dict[int, np.ndarray | None] = {}
        # clusters read and still needed by other chunks: (block read with them, its first entry, chunks to come)
        self._segments: OrderedDict[tuple[int, int], tuple[ak.Array, int, int]] = OrderedDict()
        self._executor: Any = None
        self.max_kept_clusters = 4 * len(self.sources) + 8
        self.read_ahead = 2  # chunks ahead whose clusters are read along when they touch a read
        self._last_chunk: int | None = None
        self._pid = os.getpid()

    def _plan(
        self,
        chunk_size: int | None,
        ranges: Sequence[tuple[int, int]] | None,
        entries: Sequence[int] | None,
        files_per_chunk: int | None,
    ) -> ChunkPlan:
        """The plan of the chunks, from entry ranges, or from the files' entries (opening them if not given)."""
        if chunk_size is None:
            msg = "ChunkReader needs a plan or a chunk_size"
            raise ParameterError(msg)
        if ranges is None:
            if entries is None:
                entries = [self._entries(s) for s in self.sources]
            ranges = [(0, int(n)) for n in entries]
        return ChunkPlan.build(ranges, chunk_size, files_per_chunk=files_per_chunk)

    @staticmethod
    def _entries(source: FileSource) -> int:
        with open_table(source, DEFAULT_TIMEOUT) as table:
            return table.entries

    def __len__(self) -> int:
        return self.plan.n_chunks

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        state["_segments"] = OrderedDict()
        state["_executor"] = None
        return state

    def _table(self, i: int) -> Table:
        if self._pid != os.getpid():  # forked: the parent's handles and threads are not ours
            self._open = OrderedDict()
            self._executor = None
            self._pid = os.getpid()
        self._check_unchanged(i)  # at every read: a CSV's Parquet copy would not see its file change
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        self._open[i] = open_table(self.sources[i], self.timeout)
        entries = self._open[i].entries
        if self.expect is not None and entries != self.expect[i].entries:
            self._forget(i)
            msg = (
                f"{self.sources[i]} has {entries} entries, {self.expect[i].entries} when the sequence was made: "
                "the file changed since; make the sequence again"
            )
            raise FileAccessError(msg)
        while len(self._open) > self.max_open_files:
            _, table = self._open.popitem(last=False)
            table.close()
        return self._open[i]

    def _check_unchanged(self, i: int) -> None:
        """Raise if file ``i`` is not the file the plan was made for (see ``check_unchanged``)."""
        if self.expect is not None:
            check_unchanged(self.expect[i])

    def _forget(self, i: int) -> None:
        """Close file ``i`` after a failed read, so that the next read opens it anew."""
        opened = self._open.pop(i, None)
        if opened is not None:
            opened.close()

    def _clusters(self, i: int) -> np.ndarray | None:
        """Entry numbers where all branches of file ``i`` start new baskets (row groups; None if unknown)."""
        if i not in self._cluster_cache:
            self._cluster_cache[i] = self._table(i).blocks(self.branches)
        return self._cluster_cache[i]

    def _read_range(
        self, i: int, start: int, stop: int, names: list[str], ahead: tuple[int, int] | None = None
    ) -> list[ak.Array]:
        """Entries ``[start, stop)`` of file ``i`` as consecutive pieces, each basket decompressed once.

        A file's share of a chunk rarely ends on a basket boundary. Reading
        ``[start, stop)`` directly would decompress the boundary baskets once for
        each of the two chunks that share them; instead whole clusters are read,
        and those that other chunks need too are kept until every one of them
        has taken its part. ``ahead`` (entries ``[lo, hi)``) names what the next
        chunks will read: clusters of it that touch this read are read in the
        same call (every call to uproot has a fixed cost) and kept for them.
        """
        table = self._table(i)
        offsets = self._clusters(i)
        if offsets is None or len(offsets) < 2:
            return [self._arrays(table, names, start, stop)]
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))
        lo, hi = first, last  # the clusters to have: those of this read and the next ones that touch it
        if ahead is not None:
            lo = min(lo, int(np.searchsorted(offsets, ahead[0], side="right")) - 1)
            hi = max(hi, int(np.searchsorted(offsets, ahead[1], side="left")))
        blocks: list[tuple[ak.Array, int, int, int]] = []  # (block, its first entry, rows [a, b) of it)
        j = lo
        while j < hi:
            kept = self._segments.pop((i, j), None)
            if kept is not None:
                block, entry0, users = kept
                if first <= j < last:  # this read takes its part
                    users -= 1
                    blocks.append((block, entry0, int(offsets[j] - entry0), int(offsets[j + 1] - entry0)))
                if users > 0:
                    self._segments[(i, j)] = (block, entry0, users)
                j += 1
                continue
            run_end = j + 1  # consecutive missing clusters in one call
            while run_end < hi and (i, run_end) not in self._segments:
                run_end += 1
            if run_end <= first or j >= last:  # a run of the next chunks' clusters only: read when needed
                j = run_end
                continue
            block = self._arrays(table, names, int(offsets[j]), int(offsets[run_end]))
            entry0 = int(offsets[j])
            for m in range(j, run_end):
                users = self._cluster_users(i, m, offsets) - (1 if first <= m < last else 0)
                if users > 0:
                    self._segments[(i, m)] = (block, entry0, users)
            a, b = max(j, first), min(run_end, last)
            blocks.append((block, entry0, int(offsets[a] - entry0), int(offsets[b] - entry0)))
            j = run_end
        while len(self._segments) > self.max_kept_clusters:
            self._segments.popitem(last=False)
        # neighbouring rows of one block make one piece; no ak.concatenate (it copies every field):
        # the flattener takes the pieces as they are
        merged: list[list[Any]] = []
        for block, entry0, a, b in blocks:
            if merged and merged[-1][0] is block and merged[-1][3] == a:
                merged[-1][3] = b
            else:
                merged.append([block, entry0, a, b])
        pieces = []
        for block, entry0, a, b in merged:
            a, b = max(a, start - entry0), min(b, stop - entry0)
            if b > a:
                pieces.append(row_range(block, a, b) if (a, b) != (0, len(block)) else block)
        return pieces

    def _share(self, k: int, i: int) -> tuple[int, int, np.ndarray | None] | None:
        """Entries ``[start, stop)`` of file ``i`` that chunk ``k`` reads, and its selected entries among them.

        The selected entries are None without a selection; the result is None
        when the chunk takes nothing from the file, or there is no chunk ``k``.
        """
        events = self.plan.share(k, i)
        if events is None:
            return None
        start, stop = events
        chosen = None if self.selected is None else self.selected[i]
        if chosen is None:
            return start, stop, None
        chosen = chosen[start:stop]  # selected events [start, stop): the entries that span them
        return int(chosen[0]), int(chosen[-1]) + 1, chosen

    def _read_retrying(
        self, i: int, start: int, stop: int, names: list[str], ahead: tuple[int, int] | None = None
    ) -> list[ak.Array]:
        """:meth:`_read_range`, tried again with backoff when a remote file fails (the server went away)."""
        source = self.sources[i]
        attempts = 1 + (self.retries if source.is_remote else 0)
        for attempt in range(attempts):
            try:
                return self._read_range(i, start, stop, names, ahead)
            except MLaaS4HEPError as err:
                # reopening a remote file that is still unreachable raises FileAccessError: retried too
                if not (isinstance(err, FileAccessError) and attempts > 1):
                    raise
                self._forget(i)  # a Parquet read that failed: open the file anew
                error: Exception = err
            except Exception as err:  # noqa: BLE001 - uproot raises OSError, ValueError, DeserializationError...
                self._forget(i)
                error = err
            if attempt + 1 == attempts:
                self._check_unchanged(i)  # a file removed or rewritten since is said so, not as uproot fails on it
                tries = f" (tried {attempts} times)" if attempts > 1 else ""
                msg = f"cannot read entries {start}-{stop} of {source}{tries}: {type(error).__name__}: {error}"
                raise FileAccessError(msg) from error
            wait = self.retry_backoff * 2**attempt
            log.warning(
                "reading entries %d-%d of %s failed (%s: %s); retry %d of %d in %.2g s",
                start, stop, source, type(error).__name__, error, attempt + 1, self.retries, wait,
            )  # fmt: skip
            time.sleep(wait)
        raise AssertionError  # unreachable: the last attempt returns or raises

    def _arrays(self, table: Table, names: list[str], start: int, stop: int) -> ak.Array:
        """Read ``names`` for entries ``[start, stop)`` (what uproot reads of a ROOT file inflated on two threads)."""
        if self._executor is None:
            executor = table.make_executor()
            self._executor = None if executor is None else TimedExecutor(executor, self.decompress)
        before = table.decompressed_seconds
        arrays = table.arrays(names, start, stop, self._executor)
        self.decompress.add(table.decompressed_seconds - before)  # what the table inflated in this thread
        self.bytes_read += arrays.layout.nbytes
        return arrays

    def _cluster_users(self, i: int, m: int, offsets: np.ndarray) -> int:
        """How many chunks of the plan read part of cluster ``m`` of file ``i``."""
        lo, hi = int(offsets[m]), int(offsets[m + 1])
        starts, stops = self.plan.starts[:, i], self.plan.starts[:, i] + self.plan.counts[:, i]
        chosen = self.selected[i] if self.selected is not None else None
        if chosen is not None and len(chosen):  # the plan counts selected events: their entries
            starts = chosen[np.minimum(starts, len(chosen) - 1)]
            stops = chosen[np.clip(stops - 1, 0, len(chosen) - 1)] + 1
        return int(np.count_nonzero((self.plan.counts[:, i] > 0) & (starts < hi) & (stops > lo)))

    def close(self) -> None:
        """Close every open file."""
        while self._open:
            _, table = self._open.popitem()
            table.close()

    def read(self, k: int, files: Sequence[int] | None = None) -> Chunk:
        """Read chunk ``k`` of the plan (only the shares of ``files``, given as indices, if given).

        The pieces hold the branches asked for (aliases among them computed),
        the label branch if any, and the file branches the aliases need.
        """
        if not 0 <= k < len(self):
            msg = f"chunk index {k} out of range for {len(self)} chunks"
            raise IndexError(msg)
        t0, bytes_before, decompressed = time.perf_counter(), self.bytes_read, self.decompress.value
        contributing = np.flatnonzero(self.plan.counts[k])
        if files is not None:
            contributing = np.intersect1d(contributing, np.asarray(files, dtype=np.int64))
        # chunks read one after another (an epoch's order) are read on in their direction: clusters
        # that the next chunks need and that touch this read are read with it, in one call
        step = k - self._last_chunk if self._last_chunk is not None and abs(k - self._last_chunk) == 1 else 0
        self._last_chunk = k
        pieces: list[Any] = []
        labels: list[np.ndarray] = []
        file_index: list[np.ndarray] = []
        entries: list[np.ndarray] = []
        for i in contributing.tolist():
            parts, entry = self._read_share(k, i, step)
            derived = [self._derived(part) for part in parts]
            pieces.extend(derived)
            file_index.append(np.full(len(entry), i, dtype=np.int32))
            entries.append(entry)
            if self.label_branch:
                labels.extend(ak.to_numpy(piece[self.label_branch]).astype(np.float32) for piece in derived)
            elif self.labels is not None:
                labels.append(np.full(len(entry), self.labels[i], dtype=np.float32))
        chunk = Chunk(
            k,
            pieces,
            np.concatenate(labels) if labels else None,
            np.concatenate(file_index) if file_index else np.zeros(0, np.int32),
            np.concatenate(entries) if entries else np.zeros(0, np.int64),
            time.perf_counter() - t0,
            self.decompress.value - decompressed,
        )
        self.reads += 1
        self._log_read(chunk, self.bytes_read - bytes_before, chunk.read_s)
        return chunk

    @property
    def names(self) -> list[str]:
        """The file branches each read takes: those asked for (or that the aliases need), and the label branch."""
        label = [self.label_branch] if self.label_branch and self.label_branch not in self.branches else []
        if self.label_branch in self.selection.aliases:  # computed from self.branches
            label = []
        return self.branches + label

    def _read_share(self, k: int, i: int, step: int) -> tuple[list[ak.Array], np.ndarray]:
        """File ``i``'s pieces of chunk ``k`` and their entry numbers (reading on by ``step`` chunks' needs)."""
        share = self._share(k, i)
        assert share is not None  # the file contributes to the chunk
        start, stop, chosen = share
        ahead = [self._share(k + step * s, i) for s in range(1, self.read_ahead + 1)] if step else []
        spans = [r for r in ahead if r is not None]
        span = (min(r[0] for r in spans), max(r[1] for r in spans)) if spans else None
        parts = self._read_retrying(i, start, stop, self.names, span)
        if chosen is not None and len(chosen) < stop - start:
            parts = _keep(parts, chosen - start)
        return parts, np.arange(start, stop, dtype=np.int64) if chosen is None else chosen

    def _derived(self, piece: ak.Array) -> Any:
        """``piece`` with the aliases asked for added (a mapping of branch name to values), or as it is."""
        if not self.derive:
            return piece
        return {**{f: piece[f] for f in piece.fields}, **self.selection.derive(piece, self.derive, len(piece))}

    def _log_read(self, chunk: Chunk, nbytes: int, dt: float) -> None:
        # nbytes: decoded from the file for this chunk (clusters kept from an earlier read not counted)
        if nbytes == 0:
            log.debug("chunk %d: %d entries, all from clusters kept from an earlier read", chunk.index, len(chunk))
            return
        log.debug(
            "read chunk %d: %d entries, %d branches, %.1f MB, %.3f sec, %.1f MB/sec, %.1f kHz",
            chunk.index,
            len(chunk),
            len(self.names),
            nbytes / 1e6,
            dt,
            nbytes / 1e6 / dt if dt else 0.0,
            len(chunk) / 1e3 / dt if dt else 0.0,
        )


def _keep(parts: list[ak.Array], rows: np.ndarray) -> list[ak.Array]:
    """The rows ``rows`` (sorted, counted over all parts one after another) of consecutive ``parts``."""
    keep = np.zeros(sum(len(p) for p in parts), dtype=bool)
    keep[rows] = True
    out, offset = [], 0
    for part in parts:
        mask = keep[offset : offset + len(part)]
        offset += len(part)
        if mask.any():
            out.append(part if mask.all() else part[mask])
    return out
