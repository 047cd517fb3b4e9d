"""RootSequence: ROOT files streamed chunk by chunk into ``keras.Model.fit``."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from .errors import BranchError, ParameterError, SpecsError, TreeError
from .flatten import JaggedFlattener
from .reader import Chunk, ChunkReader, apportion
from .sources import DEFAULT_TREE, FileSource, describe_branches, open_tree, parse_sources
from .specs import DEFAULT_EXCLUDE, SpecBuilder, Specs

__all__ = ["RootSequence"]

log = logging.getLogger(__name__)

SUBSETS = ("training", "validation")


@dataclass
class _Decoded:
    """A chunk after flattening: what batches are cut from."""

    X: np.ndarray
    M: np.ndarray
    y: np.ndarray | None
    file_index: np.ndarray
    entry: np.ndarray


class _Counter:
    """Numbers the batch requests: the n-th request gets slot n.

    With ``shared=True`` the counter lives in shared memory, so that processes
    forked by Keras (``use_multiprocessing=True``) draw from one sequence.
    """

    def __init__(self, shared: bool) -> None:
        self.shared = shared
        if shared:
            self._value = multiprocessing.Value("q", 0)
            self._lock = self._value.get_lock()
        else:
            self._count = 0
            self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            if self.shared:
                n = self._value.value
                self._value.value = n + 1
            else:
                n = self._count
                self._count = n + 1
            return int(n)

    @property
    def value(self) -> int:
        with self._lock:
            return int(self._value.value if self.shared else self._count)

    def round_down(self, multiple: int) -> None:
        """Forget the requests since the last multiple of ``multiple``."""
        with self._lock:
            if self.shared:
                self._value.value -= self._value.value % multiple
            else:
                self._count -= self._count % multiple

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if not self.shared:
            state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self.shared:
            self._lock = threading.Lock()


class RootSequence(keras.utils.PyDataset):
    """Batches of events from ROOT files, for ``model.fit``, ``evaluate`` and ``predict``.

    ``seq[i]`` returns a whole batch ``(x, y)``: ``x`` is a float32 array of shape
    ``(batch, num_features)`` made by :class:`~mlaas4hep.JaggedFlattener`, ``y``
    the float32 labels. ``len(seq)`` is the number of batches,
    ``ceil(n_events / batch_size)``; only the last batch may be smaller.

    Events are read in chunks of ``chunk_size`` that mix all files in proportion
    to their entries (:class:`~mlaas4hep.ChunkReader`); a chunk is read,
    flattened and cached once, and the next chunk is read in the background
    while batches are served from the current one.

    Parameters
    ----------
    files : path, URL, or sequence of them
        ROOT files; ``"file.root:tree"`` names the tree in that file. Remote
        URLs (``root://``, ``http(s)://``) are handed to uproot.
    labels : sequence of float or str
        One label per file (the original's labels.txt), or the name of a
        branch that holds each event's label (that branch is then not a feature).
    tree : str
        Tree (TTree or RNTuple) for files that do not name one; default ``"Events"``.
    branches : sequence of str, optional
        Feature branches: names or glob patterns (``"Jet_*"``). Default: every
        numeric flat or jagged branch.
    exclude : sequence of str
        Branches or patterns left out; default ``("run", "event", "luminosityBlock")``.
    common_branches : bool
        When the files' branches differ, train on those common to all files
        instead of raising :class:`~mlaas4hep.errors.BranchError` (default False).
    batch_size : int
        Events per batch (default 100, as the original).
    chunk_size : int
        Events per chunk read from the files (default 10,000; ``-1``: everything in one chunk).
    nevts : int
        Events to use over all files, split across files in proportion to
        their entries; ``-1`` (default) uses all.
    shuffle : bool
        Shuffle the order of the chunks and the events within each chunk,
        anew every epoch (default True).
    seed : int, optional
        Seed of the shuffling; the same seed gives the same batches. Default: random.
    specs : Specs, path, or None
        Branch statistics: a :class:`~mlaas4hep.Specs`, a JSON file to reuse
        (rebuilt with a warning if it does not match the files; written if
        missing), or None to make them with a first pass over the files.
    validation_split : float, optional
        Fraction of each file's events kept for validation (its last entries),
        as ``keras.utils.image_dataset_from_directory``; requires ``subset``.
    subset : {"training", "validation"}, optional
        Which part of the split this sequence serves.
    normalization : {"minmax", "standard", None}
        See :class:`~mlaas4hep.JaggedFlattener`.
    pad_value : float
        Value of padded slots and non-finite inputs (default 0, as the original).
    max_lengths : int or mapping, optional
        Cap on the columns of jagged branches (see :class:`~mlaas4hep.JaggedFlattener`).
    length_quantile : float, optional
        Cap each jagged branch at this quantile of its lengths (e.g. 0.999).
    redirector : str
        Prefix for bare file names (e.g. an XRootD redirector).
    workers, use_multiprocessing, max_queue_size
        Forwarded to :class:`keras.utils.PyDataset`.
    cache_chunks : int
        Flattened chunks kept in memory once served (default 2: the current one and the one before).
    prefetch : int
        Chunks read and flattened ahead, in background threads (default 2).

    Notes
    -----
    **How indices map to events.** Keras' ``fit`` asks for batch indices in a
    random order (``shuffle=True`` is its default), from several threads when
    ``workers > 1``, and with the TensorFlow backend it starts asking for the
    next epoch's batches before it calls ``on_epoch_end``. A batch index
    therefore does not name a fixed place in the files: the ``n``-th request
    is served batch ``n % len(seq)`` of epoch ``n // len(seq)`` of the stream,
    whatever index it names. Batch ``s`` of an epoch holds events
    ``[s * batch_size, (s + 1) * batch_size)`` of that epoch's stream: the
    chunks in the epoch's (shuffled) order, each chunk's events in a
    (shuffled) order drawn from ``seed``, the epoch and the chunk. However
    Keras orders its requests, the chunks are read one after another, each
    once per epoch, and over ``len(seq)`` requests every selected event is
    served exactly once. Keras asks for each index once per epoch; asking for
    the same index twice gives two different batches.

    Requests made outside an epoch (between ``on_epoch_end`` and the next
    ``on_epoch_begin``) that do not complete one, such as the TensorFlow
    backend's probe of batches 0 and 1 or a look at ``seq[0]`` in a notebook,
    are forgotten at the next ``on_epoch_end``: the epoch starts again from its
    first batch, and the chunk already read comes from the cache. With
    ``workers > 1`` the batches are the same, but which thread serves which
    one, and so the order in which the model sees them, may vary from run to run.

    Examples
    --------
    >>> from mlaas4hep import RootSequence
    >>> kw = dict(labels=[1, 0], batch_size=100, chunk_size=10_000, validation_split=0.2, seed=1)
    >>> files = ["GluGluToHToTauTau.root", "VBF_HToTauTau.root"]
    >>> train = RootSequence(files, subset="training", **kw)  # doctest: +SKIP
    >>> val = RootSequence(files, subset="validation", specs=train.specs, **kw)  # doctest: +SKIP
    >>> model.fit(train, validation_data=val, epochs=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
        labels: Sequence[float] | str | None = None,
        *,
        tree: str = DEFAULT_TREE,
        branches: Sequence[str] | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        common_branches: bool = False,
        batch_size: int = 100,
        chunk_size: int = 10_000,
        nevts: int = -1,
        shuffle: bool = True,
        seed: int | None = None,
        specs: Specs | str | os.PathLike[str] | None = None,
        validation_split: float | None = None,
        subset: str | None = None,
        normalization: str | None = "minmax",
        pad_value: float = 0.0,
        max_lengths: int | Mapping[str, int] | None = None,
        length_quantile: float | None = None,
        redirector: str = "",
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache_chunks: int = 2,
        prefetch: int = 2,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        _check_sizes(batch_size, chunk_size, nevts, cache_chunks)
        _check_split(validation_split, subset)
        self.sources = parse_sources(files, tree, redirector)
        if not self.sources:
            msg = "no input files given"
            raise ParameterError(msg)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.shuffle = bool(shuffle)
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
        self.validation_split = validation_split
        self.subset = subset

        label_branch = labels if isinstance(labels, str) else None
        per_file = None if labels is None or isinstance(labels, str) else [float(v) for v in labels]
        if per_file is not None and len(per_file) != len(self.sources):
            msg = f"got {len(per_file)} labels for {len(self.sources)} files; give one label per file or a branch name"
            raise ParameterError(msg)
        if isinstance(exclude, str):
            exclude = [exclude]
        exclude = list(exclude) + ([label_branch] if label_branch else [])
        self.specs = self._specs(specs, branches, exclude, common_branches, label_branch)
        entries = self._known_entries()
        if entries is None or label_branch:
            entries = self._check_files(label_branch)
        self.label_branch = label_branch
        self.flattener = JaggedFlattener(
            self.specs,
            normalization=normalization,
            pad_value=pad_value,
            max_lengths=max_lengths,
            length_quantile=length_quantile,
        )
        self.reader = ChunkReader(
            self.sources,
            self.flattener.branches,
            chunk_size=chunk_size,
            ranges=self._ranges(entries, nevts),
            labels=per_file,
            label_branch=label_branch,
        )
        self.n_events = self.reader.plan.n_events
        if self.n_events == 0:
            msg = f"no events to serve in subset {subset!r} of {len(self.sources)} files"
            raise ParameterError(msg)
        self._len = math.ceil(self.n_events / self.batch_size)
        self.cache_chunks = int(cache_chunks)
        if not isinstance(prefetch, int) or prefetch < 0:
            msg = f"prefetch must be a non-negative integer, got {prefetch!r}"
            raise ParameterError(msg)
        self.prefetch = prefetch
        self._requests = _Counter(shared=bool(use_multiprocessing))
        self._in_epoch = False
        self._start_runtime()

    # -- construction helpers ---------------------------------------------------------------
    def _specs(
        self,
        specs: Specs | str | os.PathLike[str] | None,
        branches: Sequence[str] | None,
        exclude: list[str],
        common_branches: bool,
        label_branch: str | None,
    ) -> Specs:
        if isinstance(specs, Specs):
            if branches is not None:
                specs = specs.select(_expand(specs, branches))
            if label_branch in specs.branches:  # a label is never a feature
                specs = specs.select([n for n in specs.names if n != label_branch])
            if not specs.branches:
                msg = f"the specs hold no branch to use besides the label branch {label_branch!r}"
                raise SpecsError(msg)
            return specs
        builder = SpecBuilder(self.sources, branches=branches, exclude=exclude, common_branches=common_branches)
        return builder.build(cache=specs)

    def _known_entries(self) -> list[int] | None:
        """Entries per file from the specs, when they were made from these very files."""
        described = [(f.path, f.tree) for f in self.specs.files]
        wanted = [(s.location, s.tree) for s in self.sources]
        if described != wanted:
            return None
        return [f.entries for f in self.specs.files]

    def _check_files(self, label_branch: str | None) -> list[int]:
        """Open every file (reading no data): its entries, and the branches the specs and labels need."""
        entries = []
        for source in self.sources:
            file, obj = open_tree(source)
            try:
                n = int(obj.num_entries)
                kinds = {b.name: b.kind for b in describe_branches(obj)}
            finally:
                file.close()
            if n == 0:
                msg = f"tree {source.tree!r} in {source.path!r} has 0 entries"
                raise TreeError(msg)
            missing = [name for name in self.specs.names if name not in kinds]
            if missing:
                msg = f"{source} lacks the branches {missing} that the specs use"
                raise BranchError(msg)
            other = [f"{name!r} is {kinds[name]}" for name in self.specs.names if kinds[name] != self.specs[name].kind]
            if other:
                msg = f"in {source}, {', '.join(other)}, unlike in the specs"
                raise BranchError(msg)
            if label_branch is not None and label_branch not in kinds:
                msg = f"label branch {label_branch!r} not found in {source}"
                raise BranchError(msg)
            if label_branch is not None and kinds[label_branch] != "flat":
                msg = f"label branch {label_branch!r} in {source} is {kinds[label_branch]}, not one number per event"
                raise BranchError(msg)
            entries.append(n)
        return entries

    def _ranges(self, entries: list[int], nevts: int) -> list[tuple[int, int]]:
        total = sum(entries)
        if nevts == -1 or nevts >= total:
            if nevts > total:
                warnings.warn(f"nevts={nevts} is more than the {total} events in the files; using all", stacklevel=3)
            used = np.asarray(entries, dtype=np.int64)
        else:
            used = apportion(nevts, entries)
        ranges = []
        for n in used.tolist():
            n_val = int(n * self.validation_split) if self.validation_split else 0
            ranges.append((0, n - n_val) if self.subset != "validation" else (n - n_val, n))
        return ranges

    # -- epoch state --------------------------------------------------------------------------
    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk order of ``epoch`` and the cumulative event counts along it."""
        with self._lock:
            cached = self._orders.get(epoch)
        if cached is None:
            sizes = self.reader.plan.sizes
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(sizes))
            else:
                order = np.arange(len(sizes))
            cached = (order, np.cumsum(sizes[order]))
            with self._lock:
                self._orders[epoch] = cached
                while len(self._orders) > 3:
                    self._orders.popitem(last=False)
        return cached

    def _start_runtime(self) -> None:
        """(Re)create what cannot be shared with a forked process: lock, thread, cache."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._futures: dict[int, Future[_Decoded]] = {}
        self._cache: OrderedDict[int, _Decoded] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._orders: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_executor", "_futures", "_cache", "_perms", "_orders"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_runtime()

    @property
    def num_batches(self) -> int:
        """Batches per epoch (same as ``len``)."""
        return self._len

    def __len__(self) -> int:
        return self._len

    @property
    def num_features(self) -> int:
        """Width of ``x``: the input dimension of the model (the original's ``idim``)."""
        return self.flattener.num_features

    @property
    def feature_names(self) -> list[str]:
        """Name of each column of ``x``."""
        return self.flattener.feature_names

    @property
    def chunk_reads(self) -> int:
        """Chunks read from the files so far by this process."""
        return self.reader.reads

    @property
    def epoch(self) -> int:
        """Epochs completed: every batch of the epoch has been served."""
        return self._requests.value // self._len

    def on_epoch_begin(self) -> None:
        """Mark the start of an epoch (Keras calls this; batches asked for before it are previews)."""
        self._in_epoch = True

    def on_epoch_end(self) -> None:
        """End an epoch.

        Batches asked for outside ``on_epoch_begin``/``on_epoch_end`` that do
        not complete an epoch (Keras' probe of batches 0 and 1, a look at
        ``seq[0]`` in a notebook) are forgotten: the epoch starts again from its
        first batch, and the chunk already read comes from the cache.
        """
        if not self._in_epoch:
            self._requests.round_down(self._len)
        self._in_epoch = False

    # -- serving ------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray]:
        if not -self._len <= index < self._len:
            msg = f"batch index {index} out of range for {self._len} batches"
            raise IndexError(msg)
        if os.getpid() != self._pid:
            self._start_runtime()
        X, y = self._batch(self._requests.next())
        return (X,) if y is None else (X, y)

    def _batch(self, request: int) -> tuple[np.ndarray, np.ndarray | None]:
        pieces = self._pieces(request)
        X = np.concatenate([d.X[idx] for d, idx in pieces]) if len(pieces) > 1 else pieces[0][0].X[pieces[0][1]]
        if pieces[0][0].y is None:
            return X, None
        y = np.concatenate([d.y[idx] for d, idx in pieces]) if len(pieces) > 1 else pieces[0][0].y[pieces[0][1]]
        return X, y

    def _pieces(self, request: int) -> list[tuple[_Decoded, np.ndarray]]:
        """The chunks and row indices that make up the batch of the ``request``-th request."""
        epoch, slot = divmod(request, self._len)
        order, ends = self._order(epoch)
        start = slot * self.batch_size
        stop = min(start + self.batch_size, self.n_events)
        pieces = []
        position = int(np.searchsorted(ends, start, side="right"))
        while start < stop:
            chunk_start = int(ends[position - 1]) if position else 0
            k = int(order[position])
            a, b = start - chunk_start, min(stop, int(ends[position])) - chunk_start
            decoded = self._chunk(k)
            for ahead in range(position + 1, position + 1 + self.prefetch):
                if ahead < len(order):
                    self._prefetch(int(order[ahead]))
                elif stop == self.n_events and ahead == len(order):
                    self._prefetch(int(self._order(epoch + 1)[0][0]))
            rows = self._perm(epoch, k, len(decoded.file_index))[a:b] if self.shuffle else np.arange(a, b)
            pieces.append((decoded, rows))
            start = chunk_start + b
            position += 1
        return pieces

    def _perm(self, epoch: int, k: int, size: int) -> np.ndarray:
        key = (epoch, k)
        with self._lock:
            perm = self._perms.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch, k, 1]).permutation(size)
            with self._lock:
                self._perms[key] = perm
                while len(self._perms) > self.cache_chunks + 1:
                    self._perms.popitem(last=False)
        return perm

    def _submit(self, k: int) -> Future[_Decoded]:
        """Start loading chunk ``k`` (caller holds the lock).

        Two background threads form a pipeline: one reads (uproot decompresses
        with the GIL released), the other flattens the chunk read before, so on
        two cores reading the next chunk overlaps flattening this one.
        """
        future = self._futures.get(k)
        if future is None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlaas4hep-reader")
                self._flatten_executor = ThreadPoolExecutor(1, thread_name_prefix="mlaas4hep-flattener")
                # a sequence that is dropped stops reading ahead
                weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
                weakref.finalize(self, self._flatten_executor.shutdown, wait=False, cancel_futures=True)
            read = self._executor.submit(self.reader.read, k)
            future = self._flatten_executor.submit(self._flatten, read)
            self._futures[k] = future
        return future

    def _flatten(self, read: Future[Chunk]) -> _Decoded:
        chunk = read.result()
        X, M = self.flattener.transform(chunk.pieces)
        return _Decoded(X, M, chunk.labels, chunk.file_index, chunk.entry)

    def _prefetch(self, k: int) -> None:
        with self._lock:
            if k not in self._cache:
                self._submit(k)

    def _chunk(self, k: int) -> _Decoded:
        with self._lock:
            decoded = self._cache.get(k)
            if decoded is not None:
                self._cache.move_to_end(k)
                return decoded
            future = self._submit(k)
        decoded = future.result()
        with self._lock:
            if self._futures.get(k) is future:
                del self._futures[k]
                self._cache[k] = decoded
                while len(self._cache) > self.cache_chunks:
                    self._cache.popitem(last=False)
        return decoded

    def close(self) -> None:
        """Stop the background reader and close the files."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._flatten_executor.shutdown(wait=True)
            self._executor = None
        self.reader.close()

    def __repr__(self) -> str:
        return (
            f"RootSequence({len(self.sources)} files, {self.n_events} events, {self._len} batches of "
            f"{self.batch_size}, {self.num_features} features, subset={self.subset!r})"
        )


def _expand(specs: Specs, patterns: Sequence[str]) -> list[str]:
    import fnmatch

    exact = [p for p in patterns if not any(c in p for c in "*?[")]
    missing = [p for p in exact if p not in specs.branches]
    if missing:
        msg = f"the specs lack the selected branches {missing}; they hold {specs.names}"
        raise SpecsError(msg)
    names = [n for n in specs.names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not names:
        msg = f"branches {list(patterns)} match nothing in the specs ({specs.names})"
        raise BranchError(msg)
    return names


def _check_sizes(batch_size: int, chunk_size: int, nevts: int, cache_chunks: int) -> None:
    for name, value in (("batch_size", batch_size), ("cache_chunks", cache_chunks)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            msg = f"{name} must be a positive integer, got {value!r}"
            raise ParameterError(msg)
    if not isinstance(chunk_size, (int, np.integer)) or (chunk_size <= 0 and chunk_size != -1):
        msg = f"chunk_size must be a positive integer or -1 (all events in one chunk), got {chunk_size!r}"
        raise ParameterError(msg)
    if chunk_size != -1 and batch_size > chunk_size:
        msg = f"batch_size={batch_size} is larger than chunk_size={chunk_size}; use a chunk_size of at least batch_size"
        raise ParameterError(msg)
    if not isinstance(nevts, (int, np.integer)) or (nevts <= 0 and nevts != -1):
        msg = f"nevts must be a positive integer or -1 (all events), got {nevts!r}"
        raise ParameterError(msg)


def _check_split(validation_split: float | None, subset: str | None) -> None:
    if validation_split is not None and not 0 <= validation_split < 1:
        msg = f"validation_split must be in [0, 1), got {validation_split!r}"
        raise ParameterError(msg)
    if subset is not None and subset not in SUBSETS:
        msg = f"subset must be one of {SUBSETS}, got {subset!r}"
        raise ParameterError(msg)
    if subset is not None and not validation_split:
        msg = f"subset={subset!r} needs a validation_split in (0, 1)"
        raise ParameterError(msg)
    if validation_split and subset is None:
        msg = 'validation_split needs subset="training" or subset="validation"'
        raise ParameterError(msg)
