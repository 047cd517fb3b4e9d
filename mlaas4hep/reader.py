"""Reading events in chunks that mix all files in proportion to their size.

:class:`ChunkPlan` decides, from entry counts alone, which entries of which file
make up each chunk; :class:`ChunkReader` reads a chunk of the plan with uproot.

The plan follows the original MLaaS4HEP's ``next_mix_files``: chunk ``k`` takes
about ``chunk_size * N_i / N`` events from file ``i``. Counts are apportioned
with the largest-remainder rule on the events each file has left, so that

* every chunk but the last holds exactly ``chunk_size`` events,
* every selected entry of every file is in exactly one chunk, and
* each file's share of a chunk differs from its proportional share by less than one.
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
import uproot

from ._arrays import row_range
from .errors import FileAccessError, MLaaS4HEPError, ParameterError
from .sources import FileSource, open_tree

__all__ = ["Chunk", "ChunkPlan", "ChunkReader", "apportion", "split_entries"]

log = logging.getLogger(__name__)


def apportion(total: int, weights: Sequence[int] | np.ndarray) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``weights``.

    Largest-remainder (Hamilton) rounding: parts sum to ``total`` exactly and
    each differs from its exact share by less than one; ties go to the lower index.
    A part never exceeds its weight when ``total <= sum(weights)``.

    Examples
    --------
    >>> apportion(10_000, [476_963, 491_653]).tolist()
    [4924, 5076]
    """
    w = np.asarray(weights, dtype=np.int64)
    wsum = int(w.sum())
    if total < 0 or wsum <= 0:
        if total == 0:
            return np.zeros_like(w)
        msg = f"cannot apportion {total} events over weights {w.tolist()}"
        raise ParameterError(msg)
    # integer arithmetic for the floor, so large totals stay exact
    parts = (w * total) // wsum
    left = total - int(parts.sum())
    if left:
        remainder = w * total - parts * wsum
        order = np.lexsort((np.arange(len(w)), -remainder))
        parts[order[:left]] += 1
    return parts


def split_entries(n: int, validation_split: float, test_split: float) -> dict[str | None, tuple[int, int]]:
    """Entry ranges ``(start, stop)`` of one file's ``n`` used events for each subset.

    The events are cut in order: training first, then ``validation_split`` of
    them for validation, then the last ``test_split`` for testing; the key
    ``None`` (no split) covers them all.

    Examples
    --------
    >>> split_entries(100, 0.2, 0.1)["validation"]
    (70, 90)
    """
    n_test = int(n * test_split)
    n_val = int(n * validation_split)
    return {
        None: (0, n),
        "training": (0, n - n_val - n_test),
        "validation": (n - n_val - n_test, n - n_test),
        "test": (n - n_test, n),
    }


@dataclass(frozen=True)
class ChunkPlan:
    """Which entries of each file make up each chunk.

    ``starts[k, i]`` and ``counts[k, i]`` give the first entry and the number of
    entries that chunk ``k`` reads from file ``i``; entries of a file are taken
    in order, so chunk ``k`` reads ``[starts[k, i], starts[k, i] + counts[k, i])``.
    """

    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(
        cls, ranges: Sequence[tuple[int, int]], chunk_size: int, *, files_per_chunk: int | None = None
    ) -> ChunkPlan:
        """Plan chunks of ``chunk_size`` over the entry ``ranges`` ``[(start, stop), ...]`` of each file.

        ``chunk_size=-1`` puts every event in one chunk.

        ``files_per_chunk`` (default: all files) bounds the files a chunk reads,
        for datasets of many files: the files are dealt round-robin into
        ``ceil(n_files / files_per_chunk)`` groups (file ``i`` into group
        ``i % n_groups``, so that each group takes files from all over the list,
        e.g. from both the signal and the background files when the list holds
        them in blocks). Chunks mix the files of one group in proportion to their
        entries, group after group; a chunk that finishes a group continues with
        the next one, so it reads at most two groups. Every chunk but the last
        still holds exactly ``chunk_size`` events and every entry is in one chunk.
        """
        if files_per_chunk is not None and (
            not isinstance(files_per_chunk, (int, np.integer))
            or isinstance(files_per_chunk, bool)
            or files_per_chunk <= 0
        ):
            msg = f"files_per_chunk must be a positive integer or None (all files), got {files_per_chunk!r}"
            raise ParameterError(msg)
        lo = np.array([r[0] for r in ranges], dtype=np.int64)
        hi = np.array([r[1] for r in ranges], dtype=np.int64)
        left = hi - lo
        if (left < 0).any():
            msg = f"entry ranges must have start <= stop, got {list(ranges)}"
            raise ParameterError(msg)
        n = int(left.sum())
        if chunk_size == -1:
            chunk_size = max(n, 1)
        if chunk_size <= 0:
            msg = f"chunk_size must be positive or -1 (all events in one chunk), got {chunk_size!r}"
            raise ParameterError(msg)
        n_chunks = -(-n // chunk_size)
        starts = np.zeros((n_chunks, len(ranges)), dtype=np.int64)
        counts = np.zeros((n_chunks, len(ranges)), dtype=np.int64)
        position = lo.copy()
        n_groups = 1 if files_per_chunk is None else -(-len(ranges) // int(files_per_chunk))
        groups = [np.arange(g, len(ranges), n_groups) for g in range(n_groups)]
        group = 0
        for k in range(n_chunks):
            need = min(chunk_size, int(left.sum()))
            part = np.zeros(len(ranges), dtype=np.int64)
            while need:  # the current group, then the next ones while the chunk is not full
                members = groups[group]
                take = min(need, int(left[members].sum()))
                part[members] += apportion(take, left[members])
                need -= take
                if take == int(left[members].sum()):
                    group += 1
            starts[k] = position
            counts[k] = part
            position += part
            left -= part
        return cls(starts, counts)

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return int(self.counts.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        """Events in each chunk."""
        return self.counts.sum(axis=1)

    @property
    def n_events(self) -> int:
        """Events over all chunks."""
        return int(self.counts.sum())


@dataclass
class Chunk:
    """Events of one chunk, as read: one awkward array per file that contributes.

    ``labels`` has one value per event (from the per-file labels or the label
    branch), ``file_index`` and ``entry`` say where each event came from.
    """

    index: int
    pieces: list[ak.Array]
    labels: np.ndarray | None
    file_index: np.ndarray
    entry: np.ndarray

    def __len__(self) -> int:
        return int(self.file_index.size)


class ChunkReader:
    """Read the chunks of a :class:`ChunkPlan` from ROOT files with uproot.

    Parameters
    ----------
    sources : sequence of FileSource
        Files (and trees) to read.
    branches : sequence of str
        Branches to read; nothing else is decompressed.
    chunk_size : int
        Events per chunk (``-1``: one chunk with everything).
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

    Notes
    -----
    A reader is used by one thread at a time; after a ``fork`` it reopens its
    files, so copies in worker processes work.

    Whole clusters (the entry ranges where every branch starts a basket) are
    read, so that no basket is decompressed twice. When chunks are read one
    after another (``k``, then ``k + 1`` or ``k - 1``, as an epoch reads them),
    the clusters that the next ``read_ahead`` chunks (attribute, default 2)
    need and that adjoin a read are read in the same call to uproot, which
    has a fixed cost per call, and kept until those chunks take them.
    """

    def __init__(
        self,
        sources: Sequence[FileSource],
        branches: Sequence[str],
        *,
        chunk_size: int,
        ranges: Sequence[tuple[int, int]] | None = None,
        entries: Sequence[int] | None = None,
        labels: Sequence[float] | None = None,
        label_branch: str | None = None,
        max_open_files: int = 8,
        selected: Sequence[np.ndarray | None] | None = None,
        files_per_chunk: int | None = None,
        retries: int = 3,
        retry_backoff: float = 0.5,
    ) -> None:
        self.sources = list(sources)
        self.branches = list(branches)
        self.label_branch = label_branch
        if labels is not None and len(labels) != len(self.sources):
            msg = f"got {len(labels)} labels for {len(self.sources)} files; give one label per file"
            raise ParameterError(msg)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        if ranges is None:
            if entries is None:
                entries = [self._entries(s) for s in self.sources]
            ranges = [(0, int(n)) for n in entries]
        if selected is not None and len(selected) != len(self.sources):
            msg = f"got selected entries for {len(selected)} files, not {len(self.sources)}"
            raise ParameterError(msg)
        self.selected = None if selected is None else [None if s is None else np.asarray(s, np.int64) for s in selected]
        self.plan = ChunkPlan.build(ranges, chunk_size, files_per_chunk=files_per_chunk)
        if not isinstance(max_open_files, (int, np.integer)) or isinstance(max_open_files, bool) or max_open_files <= 0:
            msg = f"max_open_files must be a positive integer, got {max_open_files!r}"
            raise ParameterError(msg)
        self.max_open_files = int(max_open_files)
        if not isinstance(retries, (int, np.integer)) or isinstance(retries, bool) or retries < 0:
            msg = f"retries must be a non-negative integer, got {retries!r}"
            raise ParameterError(msg)
        if not isinstance(retry_backoff, (int, float)) or not retry_backoff >= 0:
            msg = f"retry_backoff must be a non-negative number of seconds, got {retry_backoff!r}"
            raise ParameterError(msg)
        self.retries = int(retries)
        self.retry_backoff = float(retry_backoff)
        self.reads = 0
        self.bytes_read = 0
        self._open: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._cluster_cache: dict[int, np.ndarray | None] = {}
        # clusters read and still needed by other chunks: (block read with them, its first entry, chunks to come)
        self._segments: OrderedDict[tuple[int, int], tuple[ak.Array, int, int]] = OrderedDict()
        self._executor: Any = None
        self.max_kept_clusters = 4 * len(self.sources) + 8
        self.read_ahead = 2  # chunks ahead whose clusters are read along when they touch a read
        self._last_chunk: int | None = None
        self._pid = os.getpid()

    @staticmethod
    def _entries(source: FileSource) -> int:
        file, obj = open_tree(source)
        try:
            return int(obj.num_entries)
        finally:
            file.close()

    def __len__(self) -> int:
        return self.plan.n_chunks

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        state["_segments"] = OrderedDict()
        state["_executor"] = None
        return state

    def _tree(self, i: int) -> Any:
        if self._pid != os.getpid():  # forked: the parent's handles and threads are not ours
            self._open = OrderedDict()
            self._executor = None
            self._pid = os.getpid()
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i][1]
        self._open[i] = open_tree(self.sources[i])
        while len(self._open) > self.max_open_files:
            _, (file, _) = self._open.popitem(last=False)
            file.close()
        return self._open[i][1]

    def _forget(self, i: int) -> None:
        """Close file ``i`` after a failed read, so that the next read opens it anew."""
        opened = self._open.pop(i, None)
        if opened is not None:
            opened[0].close()

    def _clusters(self, i: int) -> np.ndarray | None:
        """Entry numbers where all branches of file ``i`` start new baskets (None if unknown)."""
        if i not in self._cluster_cache:
            tree = self._tree(i)
            try:
                offsets = np.asarray(tree.common_entry_offsets(filter_name=self.branches), dtype=np.int64)
            except Exception:  # noqa: BLE001 - RNTuple or an odd tree: read ranges as asked
                offsets = None
            self._cluster_cache[i] = offsets
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
        tree = self._tree(i)
        offsets = self._clusters(i)
        if offsets is None or len(offsets) < 2:
            return [self._arrays(tree, names, start, stop)]
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
            block = self._arrays(tree, names, int(offsets[j]), int(offsets[run_end]))
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
        if not 0 <= k < self.plan.n_chunks or not self.plan.counts[k, i]:
            return None
        start = int(self.plan.starts[k, i])
        stop = start + int(self.plan.counts[k, i])
        if self.selected is None:
            return start, stop, None
        chosen = self.selected[i][start:stop]  # selected events [start, stop): the entries that span them
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
                error: Exception = err
            except Exception as err:  # uproot raises OSError, ValueError, DeserializationError...
                self._forget(i)
                error = err
            if attempt + 1 == attempts:
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

    def _arrays(self, tree: Any, names: list[str], start: int, stop: int) -> ak.Array:
        """Read ``names`` for entries ``[start, stop)``, decompressing baskets on two threads."""
        wanted = frozenset(names)
        if self._executor is None:
            self._executor = uproot.source.futures.ThreadPoolExecutor(max_workers=2)
        arrays = tree.arrays(
            filter_name=wanted.__contains__,  # a set look-up: a list of names is matched like globs
            entry_start=start,
            entry_stop=stop,
            library="ak",
            decompression_executor=self._executor,
            array_cache=None,  # the file's default cache would hold up to 100 MB of arrays read once
        )
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
            _, (file, _) = self._open.popitem()
            file.close()

    def read(self, k: int, files: Sequence[int] | None = None) -> Chunk:
        """Read chunk ``k`` of the plan (only the shares of ``files``, given as indices, if given)."""
        if not 0 <= k < len(self):
            msg = f"chunk index {k} out of range for {len(self)} chunks"
            raise IndexError(msg)
        t0 = time.perf_counter()
        names = self.branches + (
            [self.label_branch] if self.label_branch and self.label_branch not in self.branches else []
        )
        pieces, labels, file_index, entries = [], [], [], []
        bytes_before = self.bytes_read
        contributing = np.flatnonzero(self.plan.counts[k])
        if files is not None:
            contributing = np.intersect1d(contributing, np.asarray(files, dtype=np.int64))
        # chunks read one after another (an epoch's order) are read on in their direction: clusters
        # that the next chunks need and that touch this read are read with it, in one call
        step = k - self._last_chunk if self._last_chunk is not None and abs(k - self._last_chunk) == 1 else 0
        self._last_chunk = k
        for i in contributing:
            start, stop, chosen = self._share(k, int(i))
            ahead = [self._share(k + step * s, int(i)) for s in range(1, self.read_ahead + 1)] if step else []
            ahead = [r for r in ahead if r is not None]
            span = (min(r[0] for r in ahead), max(r[1] for r in ahead)) if ahead else None
            parts = self._read_retrying(int(i), start, stop, names, span)
            if chosen is not None and len(chosen) < stop - start:
                parts = _keep(parts, chosen - start)
            pieces.extend(parts)
            entry = np.arange(start, stop, dtype=np.int64) if chosen is None else chosen
            file_index.append(np.full(len(entry), i, dtype=np.int32))
            entries.append(entry)
            if self.label_branch:
                labels.extend(ak.to_numpy(part[self.label_branch]).astype(np.float32) for part in parts)
            elif self.labels is not None:
                labels.append(np.full(len(entry), self.labels[i], dtype=np.float32))
        chunk = Chunk(
            k,
            pieces,
            np.concatenate(labels) if labels else None,
            np.concatenate(file_index) if file_index else np.zeros(0, np.int32),
            np.concatenate(entries) if entries else np.zeros(0, np.int64),
        )
        dt = time.perf_counter() - t0
        self.reads += 1
        nbytes = self.bytes_read - bytes_before  # decoded from the file for this chunk (kept clusters not counted)
        log.info(
            "read chunk %d: %d entries, %d branches, %.1f MB, %.3f sec, %.1f MB/sec, %.1f kHz",
            k,
            len(chunk),
            len(names),
            nbytes / 1e6,
            dt,
            nbytes / 1e6 / dt if dt else 0.0,
            len(chunk) / 1e3 / dt if dt else 0.0,
        )
        return chunk


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
