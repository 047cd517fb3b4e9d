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

from .errors import FileAccessError, MLaaS4HEPError, ParameterError
from .sources import FileSource, open_tree

__all__ = ["Chunk", "ChunkPlan", "ChunkReader", "apportion"]

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
    def build(cls, ranges: Sequence[tuple[int, int]], chunk_size: int) -> ChunkPlan:
        """Plan chunks of ``chunk_size`` over the entry ``ranges`` ``[(start, stop), ...]`` of each file.

        ``chunk_size=-1`` puts every event in one chunk.
        """
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
        for k in range(n_chunks):
            size = min(chunk_size, int(left.sum()))
            part = apportion(size, left)
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
    max_open_files : int
        Files kept open between chunks; older ones are closed.

    Notes
    -----
    A reader is used by one thread at a time; after a ``fork`` it reopens its
    files, so copies in worker processes work.
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
        self.plan = ChunkPlan.build(ranges, chunk_size)
        self.max_open_files = max_open_files
        self.reads = 0
        self.bytes_read = 0
        self._open: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._cluster_cache: dict[int, np.ndarray | None] = {}
        self._segments: OrderedDict[tuple[int, int], tuple[ak.Array, int]] = OrderedDict()
        self.max_kept_clusters = 4 * len(self.sources) + 8
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
        return state

    def _tree(self, i: int) -> Any:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours
            self._open = OrderedDict()
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

    def _read_range(self, i: int, start: int, stop: int, names: list[str]) -> ak.Array:
        """Entries ``[start, stop)`` of file ``i``, decompressing each basket once per epoch.

        A file's share of a chunk rarely ends on a basket boundary. Reading
        ``[start, stop)`` directly would decompress the boundary baskets once for
        each of the two chunks that share them; instead whole clusters are read,
        and the clusters at the edges are kept until every chunk that needs them
        has taken its part.
        """
        tree = self._tree(i)
        offsets = self._clusters(i)
        if offsets is None or len(offsets) < 2:
            return tree.arrays(filter_name=names, entry_start=start, entry_stop=stop, library="ak")
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))
        parts, j = [], first
        while j < last:
            cached = self._segments.pop((i, j), None)
            if cached is not None:
                arrays, users = cached
                parts.append(arrays)
                if users > 1:
                    self._segments[(i, j)] = (arrays, users - 1)
                j += 1
                continue
            run_end = j + 1  # read consecutive missing clusters in one call
            while run_end < last and (i, run_end) not in self._segments:
                run_end += 1
            block = tree.arrays(
                filter_name=names, entry_start=int(offsets[j]), entry_stop=int(offsets[run_end]), library="ak"
            )
            for m in (j, run_end - 1):  # edge clusters may be shared with other chunks
                users = self._cluster_users(i, m, offsets) - 1
                if users > 0 and (m == first or m == last - 1):
                    lo = int(offsets[m] - offsets[j])
                    self._segments[(i, m)] = (block[lo : lo + int(offsets[m + 1] - offsets[m])], users)
            parts.append(block)
            j = run_end
        while len(self._segments) > self.max_kept_clusters:
            self._segments.popitem(last=False)
        whole = parts[0] if len(parts) == 1 else ak.concatenate(parts)
        return whole[start - int(offsets[first]) : stop - int(offsets[first])]

    def _cluster_users(self, i: int, m: int, offsets: np.ndarray) -> int:
        """How many chunks of the plan read part of cluster ``m`` of file ``i``."""
        lo, hi = int(offsets[m]), int(offsets[m + 1])
        starts, stops = self.plan.starts[:, i], self.plan.starts[:, i] + self.plan.counts[:, i]
        return int(np.count_nonzero((self.plan.counts[:, i] > 0) & (starts < hi) & (stops > lo)))

    def close(self) -> None:
        """Close every open file."""
        while self._open:
            _, (file, _) = self._open.popitem()
            file.close()

    def read(self, k: int) -> Chunk:
        """Read chunk ``k`` of the plan."""
        if not 0 <= k < len(self):
            msg = f"chunk index {k} out of range for {len(self)} chunks"
            raise IndexError(msg)
        t0 = time.perf_counter()
        names = self.branches + ([self.label_branch] if self.label_branch and self.label_branch not in self.branches else [])
        pieces, labels, files, entries = [], [], [], []
        nbytes = 0
        for i in np.flatnonzero(self.plan.counts[k]):
            start = int(self.plan.starts[k, i])
            stop = start + int(self.plan.counts[k, i])
            try:
                arrays = self._read_range(int(i), start, stop, names)
            except MLaaS4HEPError:
                raise
            except Exception as err:  # uproot raises OSError, ValueError, DeserializationError...
                self._forget(int(i))
                msg = f"cannot read entries {start}-{stop} of {self.sources[i]}: {type(err).__name__}: {err}"
                raise FileAccessError(msg) from err
            nbytes += arrays.layout.nbytes
            pieces.append(arrays)
            files.append(np.full(stop - start, i, dtype=np.int32))
            entries.append(np.arange(start, stop, dtype=np.int64))
            if self.label_branch:
                labels.append(ak.to_numpy(arrays[self.label_branch]).astype(np.float32))
            elif self.labels is not None:
                labels.append(np.full(stop - start, self.labels[i], dtype=np.float32))
        chunk = Chunk(
            k,
            pieces,
            np.concatenate(labels) if labels else None,
            np.concatenate(files) if files else np.zeros(0, np.int32),
            np.concatenate(entries) if entries else np.zeros(0, np.int64),
        )
        dt = time.perf_counter() - t0
        self.reads += 1
        self.bytes_read += nbytes
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
