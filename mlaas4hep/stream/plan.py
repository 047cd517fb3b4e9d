"""The arithmetic of the data path: which events, in which chunk, in which batch, in which order.

Nothing here opens a file or holds data: every function takes entry counts and
returns entry ranges, counts or permutations, so all of it is testable without
ROOT files, and every rule is written once.

* :func:`apportion` splits a number of events over files in proportion to their sizes;
* :func:`split_entries` and :func:`subset_ranges` cut each file's events into
  training, validation and test parts;
* :class:`ChunkPlan` says which entries of each file make up each chunk (the
  original MLaaS4HEP's ``next_mix_files``);
* :func:`shard_bounds` cuts an epoch's stream of events into shards and batches;
* :class:`EpochPlan` gives each epoch's chunk order and the chunks and rows
  of each batch; :func:`chunk_permutation` the shuffled order of a chunk's events;
* :func:`balance` deals files to worker processes by their events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._checks import check_int
from ..errors import ParameterError

__all__ = [
    "ChunkPlan",
    "EpochPlan",
    "apportion",
    "balance",
    "chunk_permutation",
    "shard_bounds",
    "split_entries",
    "subset_ranges",
]


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


def subset_ranges(
    events: Sequence[int], nevts: int, validation_split: float | None, test_split: float | None, subset: str | None
) -> list[tuple[int, int]]:
    """Per file, the range of its events that ``subset`` serves.

    Each file uses all its ``events`` (``nevts=-1``, or ``nevts`` at least their
    sum) or its share of ``nevts`` (:func:`apportion`); those are cut in order
    by :func:`split_entries`. Ranges count events, i.e. entries, or the entries
    that pass a cut when there is one.

    Examples
    --------
    >>> subset_ranges([100, 300], 200, 0.25, None, "validation")
    [(38, 50), (113, 150)]
    """
    total = int(sum(events))
    used = np.asarray(events, dtype=np.int64) if nevts == -1 or nevts >= total else apportion(nevts, events)
    return [split_entries(int(n), validation_split or 0.0, test_split or 0.0)[subset] for n in used]


@dataclass(frozen=True)
class ChunkPlan:
    """Which entries of each file make up each chunk.

    ``starts[k, i]`` and ``counts[k, i]`` give the first entry and the number of
    entries that chunk ``k`` reads from file ``i``; entries of a file are taken
    in order, so chunk ``k`` reads ``[starts[k, i], starts[k, i] + counts[k, i])``.

    The counts follow the original MLaaS4HEP's ``next_mix_files``: chunk ``k``
    takes about ``chunk_size * N_i / N`` events from file ``i``, apportioned with
    the largest-remainder rule on the events each file has left, so that every
    chunk but the last holds exactly ``chunk_size`` events, every entry of every
    range is in exactly one chunk, and each file's share of a chunk differs from
    its proportional share by less than one.
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

        Examples
        --------
        >>> ChunkPlan.build([(0, 30), (0, 70)], 40).counts.tolist()
        [[12, 28], [12, 28], [6, 14]]
        """
        if files_per_chunk is not None:
            files_per_chunk = check_int(files_per_chunk, "files_per_chunk", hint="None (all files)")
        lo = np.array([r[0] for r in ranges], dtype=np.int64)
        left = np.array([r[1] for r in ranges], dtype=np.int64) - lo
        if (left < 0).any():
            msg = f"entry ranges must have start <= stop, got {list(ranges)}"
            raise ParameterError(msg)
        n = int(left.sum())
        if chunk_size == -1:
            chunk_size = max(n, 1)
        chunk_size = check_int(chunk_size, "chunk_size", hint="-1 (all events in one chunk)")
        n_chunks = -(-n // chunk_size)
        starts = np.zeros((n_chunks, len(ranges)), dtype=np.int64)
        counts = np.zeros((n_chunks, len(ranges)), dtype=np.int64)
        n_groups = 1 if files_per_chunk is None else -(-len(ranges) // files_per_chunk)
        groups = [np.arange(g, len(ranges), n_groups) for g in range(n_groups)]
        position, group = lo.copy(), 0
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
            starts[k], counts[k] = position, part
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
        sizes: np.ndarray = self.counts.sum(axis=1)
        return sizes

    @property
    def n_events(self) -> int:
        """Events over all chunks."""
        return int(self.counts.sum())

    def share(self, k: int, i: int) -> tuple[int, int] | None:
        """Events ``[start, stop)`` of file ``i`` in chunk ``k``; None if it takes none, or there is no chunk ``k``."""
        if not 0 <= k < self.n_chunks or not self.counts[k, i]:
            return None
        start = int(self.starts[k, i])
        return start, start + int(self.counts[k, i])


def shard_bounds(n_events: int, num_shards: int, shard_index: int, batch_size: int) -> tuple[tuple[int, int], int]:
    """Which events of an epoch's stream shard ``shard_index`` serves, and in how many batches.

    The stream of ``n_events`` is cut into ``num_shards`` consecutive blocks
    whose sizes differ by at most one (the first ``n_events % num_shards``
    blocks hold one event more). Every shard has the same number of batches,
    ``ceil(ceil(n_events / num_shards) / batch_size)``; all batches of a shard
    hold ``batch_size`` events but its last, which holds the rest. When that
    would leave a shorter shard's last batch empty (the longer shards' last batch
    would hold a single event), there is one batch fewer and that single event
    joins the longer shards' last batch, which then holds ``batch_size + 1``.

    Returns
    -------
    (start, stop), batches
        The shard's events ``[start, stop)`` of the stream, and the batches per shard.

    Examples
    --------
    >>> shard_bounds(1000, 3, 2, 100)  # 334, 333 and 333 events: 4 batches each, the last of 34 or 33
    ((667, 1000), 4)
    >>> shard_bounds(1001, 2, 0, 100)  # 501 and 500 events: 5 batches each, the last of 101 or 100
    ((0, 501), 5)
    """
    if n_events < num_shards:
        msg = f"num_shards={num_shards} is more than the {n_events} events to serve; use at most {n_events} shards"
        raise ParameterError(msg)
    small, extra = divmod(n_events, num_shards)
    start = shard_index * small + min(shard_index, extra)
    stop = start + small + (shard_index < extra)
    batches = math.ceil((small + (extra > 0)) / batch_size)
    if small <= (batches - 1) * batch_size:  # a shorter shard would have an empty last batch
        batches -= 1
    return (start, stop), batches


def chunk_permutation(seed: int, epoch: int, k: int, n: int) -> np.ndarray:
    """The shuffled order of the ``n`` events of chunk ``k`` in ``epoch``: row ``r`` holds event ``order[r]``.

    The one place this permutation is drawn, so that every process that
    flattens a part of a chunk puts its events in the same rows.
    """
    return np.random.default_rng([seed, epoch, k, 1]).permutation(n)


def balance(events: Sequence[int], n_groups: int) -> list[list[int]]:
    """Deal file indices into ``n_groups`` groups of about equal ``events``.

    Largest file first, each to the group with the fewest events so far; files
    with no events are left out, and so are groups that would be empty.

    Examples
    --------
    >>> balance([100, 103, 0, 40], 2)
    [[1], [0, 3]]
    """
    totals = [0] * n_groups
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    for i in sorted(range(len(events)), key=lambda i: (-events[i], i)):
        if events[i] <= 0:
            continue
        g = min(range(n_groups), key=lambda g: (totals[g], g))
        groups[g].append(i)
        totals[g] += int(events[i])
    return [sorted(g) for g in groups if g]


class EpochPlan:
    """Where the batches of one shard lie in each epoch's stream of events.

    An epoch's stream is the chunks in the epoch's order, each chunk's events
    in their (shuffled) order. Without shuffling, the chunks come in the plan's
    order; with it, the epoch starts at a random chunk and reads on in a random
    direction, wrapping around, so that the clusters the files' consecutive
    chunks share are decompressed once per epoch. Batch ``s`` of the shard
    holds events ``[start + s * batch_size, ...)`` of the stream, where
    ``start`` is the shard's first event (:func:`shard_bounds`).

    Parameters
    ----------
    sizes : array of int
        Events in each chunk of the plan.
    batch_size, seed : int
    shuffle : bool
    num_shards, shard_index : int
    epochs : int, optional
        Epochs that will be served, when known (a single pass: 1): nothing
        is read ahead past the last one. Default: no end.

    Examples
    --------
    >>> plan = EpochPlan(np.array([40, 40, 20]), batch_size=30, shuffle=False, seed=0)
    >>> plan.batches, plan.pieces(0, 1)  # batch 1: chunk 0 rows 30-40 and chunk 1 rows 0-20
    (4, [(0, 0, 30, 40), (1, 1, 0, 20)])
    """

    def __init__(
        self,
        sizes: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        num_shards: int = 1,
        shard_index: int = 0,
        epochs: int | None = None,
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.epochs = None if epochs is None else check_int(epochs, "epochs", hint="None (no end)")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.num_shards, self.shard_index = int(num_shards), int(shard_index)
        self.n_events = int(self.sizes.sum())
        self.shard, self.batches = shard_bounds(self.n_events, self.num_shards, self.shard_index, self.batch_size)
        self._orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def n_chunks(self) -> int:
        """Chunks in the plan."""
        return int(self.sizes.size)

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The chunk order of ``epoch`` and the cumulative event counts along it."""
        cached = self._orders.get(epoch)
        if cached is None:
            n = self.n_chunks
            if self.shuffle:  # a random start and direction, then the chunks one after another
                rng = np.random.default_rng([self.seed, epoch])
                start, step = int(rng.integers(n)), int(rng.choice([-1, 1]))
                order = (start + step * np.arange(n)) % n
            else:
                order = np.arange(n)
            cached = (order, np.cumsum(self.sizes[order]))
            if len(self._orders) > 4:  # the epochs in use: this one and the next
                self._orders.clear()
            self._orders[epoch] = cached
        return cached

    def key(self, epoch: int, k: int) -> tuple[int, int]:
        """What names chunk ``k`` as served in ``epoch``: its events are shuffled anew each epoch, if at all."""
        return (epoch if self.shuffle else 0, int(k))

    def bounds(self, slot: int) -> tuple[int, int]:
        """Events ``[start, stop)`` of the epoch's stream that batch ``slot`` of this shard holds."""
        shard_start, shard_stop = self.shard
        start = shard_start + slot * self.batch_size
        stop = shard_stop if slot == self.batches - 1 else start + self.batch_size
        return start, stop

    def pieces(self, epoch: int, slot: int) -> list[tuple[int, int, int, int]]:
        """The parts of batch ``slot`` in ``epoch``: ``(position, k, a, b)`` for rows ``[a, b)`` of chunk ``k``.

        ``position`` is the chunk's place in the epoch's order; a batch spans
        one chunk, or two (or more, with tiny chunks) that follow each other.
        """
        order, ends = self.order(epoch)
        start, stop = self.bounds(slot)
        position = int(np.searchsorted(ends, start, side="right"))
        out = []
        while start < stop:
            first = int(ends[position - 1]) if position else 0
            a, b = start - first, min(stop, int(ends[position])) - first
            out.append((position, int(order[position]), a, b))
            start = first + b
            position += 1
        return out

    def position(self, epoch: int, slot: int) -> int:
        """The place in ``epoch``'s chunk order of the chunk where batch ``slot`` starts."""
        _, ends = self.order(epoch)
        return int(np.searchsorted(ends, self.bounds(slot)[0], side="right"))

    def following(self, epoch: int, position: int, n: int) -> list[tuple[int, int]]:
        """The ``n`` chunks this shard reads after the one at ``position``: ``(epoch, k)`` pairs.

        Past the shard's last chunk of ``epoch`` they are its first chunks of
        the next epoch (none past the last of ``epochs``); another shard's
        chunks are never among them.
        """
        out = []
        last = self._last(epoch)
        for ahead in range(position + 1, position + 1 + n):
            if ahead <= last:
                out.append((epoch, int(self.order(epoch)[0][ahead])))
                continue
            if self.epochs is not None and epoch + 1 >= self.epochs:
                break
            at = self._first(epoch + 1) + ahead - last - 1
            if at <= self._last(epoch + 1):
                out.append((epoch + 1, int(self.order(epoch + 1)[0][at])))
        return out

    def _first(self, epoch: int) -> int:
        return int(np.searchsorted(self.order(epoch)[1], self.shard[0], side="right"))

    def _last(self, epoch: int) -> int:
        return int(np.searchsorted(self.order(epoch)[1], self.shard[1] - 1, side="right"))
