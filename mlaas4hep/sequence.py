"""RootSequence: ROOT files streamed chunk by chunk into ``keras.Model.fit``."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
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

from ._workers import WorkerPool, balance, fork_supported
from .errors import BranchError, ParameterError, SpecsError, TreeError
from .flatten import JaggedFlattener
from .reader import Chunk, ChunkReader, apportion, split_entries
from .selection import Selection, decode_mask
from .sources import DEFAULT_TREE, FileSource, describe_branches, open_tree, parse_sources
from .specs import DEFAULT_EXCLUDE, SpecBuilder, Specs, scan_selection
from .targets import Outputs, per_file_totals, totals_by_class

__all__ = ["RootSequence", "shard_layout"]

log = logging.getLogger(__name__)

SUBSETS = ("training", "validation", "test")


@dataclass
class _Decoded:
    """A chunk after flattening, its events in serving order: batches are slices of it.

    ``users`` counts the threads cutting batches from it; ``X`` lives in a
    reusable ``buffer`` (with worker processes, the index of a shared buffer)
    that goes back to the pool once the chunk has left the cache and has no users.
    """

    X: np.ndarray
    M: np.ndarray | None
    y: np.ndarray | None
    buffer: np.ndarray | int | None = None
    users: int = 0
    evicted: bool = False
    w: np.ndarray | None = None
    refs: int = 0  # references to ``buffer`` when no batch looks into it (see RootSequence._recycle)
    written: list[tuple[np.ndarray, np.ndarray]] | None = None  # the cells of ``buffer`` that are not padding


def _read_only(*arrays: np.ndarray | None) -> None:
    """Mark a chunk's matrix and mask read-only: batches are views of buffers that are reused."""
    for a in arrays:
        if a is not None:
            a.flags.writeable = False


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
    ``ceil(n_events / batch_size)``; only the last batch may be smaller
    (with ``num_shards > 1``, see the note on sharding).

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
    cut : str, optional
        Serve only the events where this expression is true, in uproot's
        expression language, e.g. ``"(nMuon >= 1) & (MET_pt > 20)"``; jagged
        branches are reduced with ``any(...)``/``all(...)`` (see
        :class:`~mlaas4hep.selection.Selection`). ``len()``, ``nevts``, the
        chunks and the validation split all count surviving events.
    aliases : mapping of str to str, optional
        Derived branches, e.g. ``{"log_Jet_pt": "log(Jet_pt)"}``: features
        with their own specs (flat or jagged) unless ``exclude`` names them;
        usable in ``cut``, ``targets`` and ``weights``.
    targets : str or sequence of str, optional
        Regression: ``y`` is this branch (shape ``(batch,)``) or these branches
        (``(batch, n)``) instead of labels; targets are never features.
    weights : str, optional
        Branch holding each event's weight (e.g. ``"genWeight"``): batches become
        ``(x, y, sample_weight)``; never a feature.
    file_weights : sequence of float, optional
        A factor per file multiplying its events' weights (e.g. cross-section x
        luminosity / generated events); batches become ``(x, y, sample_weight)``.
    balance_classes : bool
        Scale the weights so that every class carries the same total weight
        over the sequence (mean weight 1); batches become ``(x, y, sample_weight)``.
    one_hot : bool
        Serve integer labels ``0 .. K-1`` one-hot, shape ``(batch, K)``, for
        ``categorical_crossentropy`` (default False).
    num_classes : int, optional
        ``K``; default the largest per-file label plus one. Needed with
        ``one_hot`` and a label branch.
    mask_output : bool
        Serve ``x`` as ``{"features": X, "mask": M}`` (``M`` float32, 1 where
        ``X`` holds a real value, 0 for padding), for a model with two named inputs.
    batch_size : int
        Events per batch (default 100, as the original).
    chunk_size : int
        Events per chunk read from the files (default 10,000; ``-1``: everything in one chunk).
    nevts : int
        Events to use over all files, split across files in proportion to
        their entries; ``-1`` (default) uses all.
    shuffle : bool
        Shuffle the events within each chunk, and where the epoch starts,
        anew every epoch (default True). Chunks are read in the files' order,
        from a random chunk in a random direction, wrapping around: each
        cluster of the files is then decompressed once per epoch and kept only
        until the next chunk has taken its part (in a random order of the
        chunks, the clusters a chunk shares with chunks read much later
        would have to be kept, or decompressed again, all epoch long).
    seed : int, optional
        Seed of the shuffling; the same seed gives the same batches. Default: random.
    specs : Specs, path, or None
        Branch statistics: a :class:`~mlaas4hep.Specs`, a JSON file to reuse
        (rebuilt with a warning if it does not match the files; written if
        missing), or None to make them with a first pass over the files.
    validation_split : float, optional
        Fraction of each file's events kept for validation (its last entries,
        or the ones just before the test part), as
        ``keras.utils.image_dataset_from_directory``; requires ``subset``.
    test_split : float, optional
        Fraction of each file's events held out as a test set: its last entries.
        Each file's events are cut in order: training, then validation, then test.
    subset : {"training", "validation", "test"}, optional
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
    retries : int
        Times a failed read of a remote file is tried again, reopening the
        file (default 3). If every try fails, :class:`~mlaas4hep.errors.FileAccessError`
        names the URL; an epoch never silently ends short.
    retry_backoff : float
        Seconds before the first retry, doubling after each (default 0.5).
    workers : int
        Processes that read and flatten chunks (default 1: two background
        threads of this process). With ``workers > 1`` (Linux, local files, not
        ``use_multiprocessing``), that many forked processes each take a share
        of the files, balanced by events, and write their part of every chunk
        into shared memory: reading and flattening then run on several cores
        (at most one worker per file; :attr:`worker_processes` says how many).
        Batches are the same as with one worker. Keras is then told
        ``workers=1``: its fetching threads would only add overhead. Otherwise
        ``workers`` is forwarded to :class:`keras.utils.PyDataset`.
    use_multiprocessing, max_queue_size
        Forwarded to :class:`keras.utils.PyDataset`.
    cache_chunks : int
        Flattened chunks kept in memory once served (default 2: the current one and the one before).
    prefetch : int
        Chunks read ahead, in background threads (default 2), past the end of
        an epoch into the next one's first chunks too. The next one is
        flattened ahead too; the others wait as read (several times smaller
        than flattened) until they are next.
    shard_index, num_shards : int
        Serve shard ``shard_index`` of ``num_shards`` (default 0 of 1), for
        data-parallel training on several workers (see the sharding note below).
        Every shard needs the same files, arguments and ``seed``.
    files_per_chunk : int, optional
        Files one chunk mixes (default: all): with thousands of files, chunks
        mix groups of this many files (dealt round-robin from the list) instead
        of every file, so a chunk opens only those (see :meth:`~mlaas4hep.ChunkPlan.build`).
    max_open_files : int
        Files kept open between chunk reads (default 8); others are closed after use.

    Notes
    -----
    **Sharding.** With ``num_shards > 1`` each epoch's stream (below) is cut
    into ``num_shards`` consecutive blocks whose sizes differ by at most one
    event, and this sequence serves block ``shard_index``: over all shards
    every selected event is served exactly once per epoch, and a shard reads
    only the chunks its block touches (at most one chunk at each edge is read
    by two shards). Every shard has the same number of batches,
    ``ceil(ceil(total_events / num_shards) / batch_size)``, so workers stay in
    step: a shard's batches hold ``batch_size`` events but its last, which holds
    the rest of its block (in the rare case where that would leave a shorter
    shard's last batch empty, there is one batch fewer and the longer shards'
    last batch holds ``batch_size + 1`` events); see :func:`shard_layout`.
    ``n_events`` counts this shard's events, ``total_events`` those of all shards.

    **How indices map to events.** Keras' ``fit`` asks for batch indices in a
    random order (``shuffle=True`` is its default), from several threads when
    ``workers > 1``, and with the TensorFlow backend it starts asking for the
    next epoch's batches before it calls ``on_epoch_end``. A batch index
    therefore does not name a fixed place in the files: the ``n``-th request
    is served batch ``n % len(seq)`` of epoch ``n // len(seq)`` of the stream,
    whatever index it names. Batch ``s`` of an epoch holds events
    ``[s * batch_size, (s + 1) * batch_size)`` of that epoch's stream: the
    chunks in the epoch's order (see ``shuffle``), each chunk's events in a
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

    **Batches are read-only views** of their chunk's matrix, not copies (copy
    one to change it). A chunk's memory is reused only once no batch of it is
    held anywhere, so batches a caller keeps stay as they were.

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
        cut: str | None = None,
        aliases: Mapping[str, str] | None = None,
        targets: str | Sequence[str] | None = None,
        weights: str | None = None,
        file_weights: Sequence[float] | None = None,
        balance_classes: bool = False,
        one_hot: bool = False,
        num_classes: int | None = None,
        mask_output: bool = False,
        batch_size: int = 100,
        chunk_size: int = 10_000,
        nevts: int = -1,
        shuffle: bool = True,
        seed: int | None = None,
        specs: Specs | str | os.PathLike[str] | None = None,
        validation_split: float | None = None,
        test_split: float | None = None,
        subset: str | None = None,
        normalization: str | None = "minmax",
        pad_value: float = 0.0,
        max_lengths: int | Mapping[str, int] | None = None,
        length_quantile: float | None = None,
        redirector: str = "",
        retries: int = 3,
        retry_backoff: float = 0.5,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache_chunks: int = 2,
        prefetch: int = 2,
        shard_index: int = 0,
        num_shards: int = 1,
        files_per_chunk: int | None = None,
        max_open_files: int = 8,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        _check_sizes(batch_size, chunk_size, nevts, cache_chunks)
        _check_shards(shard_index, num_shards, shuffle, seed)
        _check_split(validation_split, test_split, subset)
        self.sources = parse_sources(files, tree, redirector)
        if not self.sources:
            msg = "no input files given"
            raise ParameterError(msg)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.shuffle = bool(shuffle)
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else int(seed)
        self.validation_split = validation_split
        self.test_split = test_split
        self.subset = subset

        label_branch = labels if isinstance(labels, str) else None
        per_file = None if labels is None or isinstance(labels, str) else [float(v) for v in labels]
        if per_file is not None and len(per_file) != len(self.sources):
            msg = f"got {len(per_file)} labels for {len(self.sources)} files; give one label per file or a branch name"
            raise ParameterError(msg)
        if isinstance(exclude, str):
            exclude = [exclude]
        self.selection = Selection(cut, aliases or {})
        self.outputs = Outputs(
            len(self.sources),
            labels=per_file,
            label_branch=label_branch,
            targets=targets,
            weights=weights,
            file_weights=file_weights,
            balance_classes=balance_classes,
            one_hot=one_hot,
            num_classes=num_classes,
        )
        not_features = ([label_branch] if label_branch else []) + self.outputs.branches
        exclude = list(exclude) + not_features
        self.specs = self._specs(specs, branches, exclude, common_branches, not_features)
        entries = self._known_entries()
        if entries is None or not_features or self.selection:
            entries = self._check_files(label_branch)
        selected = self._selected_entries()
        if selected is not None:  # the plan counts the events that pass the cut
            entries = [len(s) for s in selected]
        self.label_branch = label_branch
        self.flattener = JaggedFlattener(
            self.specs,
            normalization=normalization,
            pad_value=pad_value,
            max_lengths=max_lengths,
            length_quantile=length_quantile,
        )
        ranges = self._ranges(entries, nevts)
        self.reader = ChunkReader(
            self.sources,
            self.selection.branches([*self.flattener.branches, *self.outputs.branches], cut=False),
            chunk_size=chunk_size,
            ranges=ranges,
            labels=per_file,
            label_branch=label_branch,
            selected=selected,
            retries=retries,
            retry_backoff=retry_backoff,
            files_per_chunk=files_per_chunk,
            max_open_files=max_open_files,
        )
        self.total_events = self.reader.plan.n_events
        if self.total_events == 0:
            msg = f"no events to serve in subset {subset!r} of {len(self.sources)} files"
            raise ParameterError(msg)
        self.shard_index, self.num_shards = int(shard_index), int(num_shards)
        self._shard, self._len = shard_layout(self.total_events, self.num_shards, self.shard_index, self.batch_size)
        self.n_events = self._shard[1] - self._shard[0]
        self.cache_chunks = int(cache_chunks)
        if not isinstance(prefetch, int) or prefetch < 0:
            msg = f"prefetch must be a non-negative integer, got {prefetch!r}"
            raise ParameterError(msg)
        self.prefetch = prefetch
        self.mask_output = bool(mask_output)
        self.with_mask = self.mask_output  # the mask is built only for models that take it
        self._rows_per_chunk = int(self.reader.plan.sizes.max())
        self._groups = self._worker_groups(int(workers), bool(use_multiprocessing))
        self.worker_processes = 0 if self._groups is None else len(self._groups)
        if self.worker_processes:  # Keras' own fetching threads would only queue up for this process's lock
            self.workers = 1
        self._requests = _Counter(shared=bool(use_multiprocessing))
        self._in_epoch = False
        self._start_runtime()
        if self.outputs.balance_classes:
            self.outputs.set_class_totals(self._class_totals(ranges, selected))

    # -- construction helpers ---------------------------------------------------------------
    def _worker_groups(self, workers: int, use_multiprocessing: bool) -> list[list[int]] | None:
        """Files of each worker process, or None to read in threads of this process."""
        if workers <= 1:
            return None
        why = None
        if use_multiprocessing:
            why = "Keras' use_multiprocessing forks its own processes"
        elif not fork_supported():
            why = "worker processes are forked, on Linux only"
        elif any(source.is_remote for source in self.sources):
            why = "remote files are read in threads"
        if why:
            log.info("workers=%d: reading in threads of this process (%s)", workers, why)
            return None
        return balance(self.reader.plan.counts.sum(axis=0).tolist(), workers)

    def _specs(
        self,
        specs: Specs | str | os.PathLike[str] | None,
        branches: Sequence[str] | None,
        exclude: list[str],
        common_branches: bool,
        not_features: list[str],
    ) -> Specs:
        if isinstance(specs, Specs):
            if branches is not None:
                specs = specs.select(_expand(specs, branches))
            if set(not_features) & set(specs.branches):  # labels, targets and weights are never features
                specs = specs.select([n for n in specs.names if n not in not_features])
            if not specs.branches:
                msg = f"the specs hold no branch to use besides {not_features}"
                raise SpecsError(msg)
            return specs
        builder = SpecBuilder(
            self.sources,
            branches=branches,
            exclude=exclude,
            common_branches=common_branches,
            cut=self.selection.cut,
            aliases=self.selection.aliases,
        )
        return builder.build(cache=specs)

    def _known_entries(self) -> list[int] | None:
        """Entries per file from the specs, when they were made from these very files."""
        described = [(f.path, f.tree) for f in self.specs.files]
        wanted = [(s.location, s.tree) for s in self.sources]
        if described != wanted:
            return None
        return [f.entries for f in self.specs.files]

    def _selected_entries(self) -> list[np.ndarray] | None:
        """Per file, the entries that pass the cut (None without one).

        Taken from the specs when they recorded the same cut for these very
        files; otherwise found by a pass over the branches the cut reads.
        """
        if self.selection.cut is None:
            return None
        files = self.specs.files
        same_files = [(f.path, f.tree) for f in files] == [(s.location, s.tree) for s in self.sources]
        recorded = self.specs.selection
        if (
            same_files
            and recorded.get("cut") == self.selection.cut
            and dict(recorded.get("aliases") or {}) == dict(self.selection.aliases)
            and all(f.mask is not None for f in files)
        ):
            return [np.flatnonzero(decode_mask(f.mask or "", f.entries)) for f in files]
        return [np.flatnonzero(mask) for mask in scan_selection(self.sources, self.selection)]

    def _class_totals(self, ranges: list[tuple[int, int]], selected: list[np.ndarray] | None) -> np.ndarray:
        """Each class's total weight before balancing, over every event of the subset (all shards)."""
        outputs = self.outputs
        if outputs.labels is not None and outputs.weights is None:  # nothing to read
            return per_file_totals(outputs.labels, self.reader.plan.counts.sum(axis=0), outputs.file_weights)
        names = self.selection.branches(outputs.branches, cut=False)
        reader = ChunkReader(
            self.sources,
            names,
            chunk_size=self.chunk_size,
            ranges=ranges,
            labels=None if outputs.labels is None else outputs.labels.tolist(),
            label_branch=self.label_branch,
            selected=selected,
        )
        totals = np.zeros(outputs.num_classes or 0)
        try:
            for k in range(len(reader)):
                chunk = reader.read(k)
                pieces = self._derive(chunk.pieces, names)
                y, w = outputs.extract(pieces, chunk.file_index, chunk.labels, balanced=False)
                assert y is not None
                part = totals_by_class(y, w, outputs.num_classes)
                size = max(part.size, totals.size)
                totals = np.pad(totals, (0, size - totals.size)) + np.pad(part, (0, size - part.size))
        finally:
            reader.close()
        return totals

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
            self.selection.check(kinds, str(source))
            weights = [self.outputs.weights] if self.outputs.weights else []
            for what, names in (("targets", self.outputs.targets), ("weights", weights)):
                for name in names:
                    if name not in self.selection.aliases and kinds.get(name) != "flat":
                        found = f"is {kinds[name]}, not one number per event" if name in kinds else "not found"
                        msg = f"{what} branch {name!r} {found} in {source}"
                        raise BranchError(msg)
            missing = [name for name in self.selection.branches(self.specs.names, cut=False) if name not in kinds]
            if missing:
                msg = f"{source} lacks the branches {missing} that the specs use"
                raise BranchError(msg)
            other = [
                f"{name!r} is {kinds[name]}"
                for name in self.specs.names
                if name in kinds and kinds[name] != self.specs[name].kind
            ]
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
        return [
            split_entries(n, self.validation_split or 0.0, self.test_split or 0.0)[self.subset] for n in used.tolist()
        ]

    # -- epoch state --------------------------------------------------------------------------
    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk order of ``epoch`` and the cumulative event counts along it."""
        with self._lock:
            cached = self._orders.get(epoch)
        if cached is None:
            sizes = self.reader.plan.sizes
            if self.shuffle:  # a random start and direction, then the chunks one after another
                rng = np.random.default_rng([self.seed, epoch])
                start, step = int(rng.integers(len(sizes))), int(rng.choice([-1, 1]))
                order = (start + step * np.arange(len(sizes))) % len(sizes)
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
        self._futures: dict[tuple[int, int], Future[_Decoded]] = {}
        self._reads: dict[tuple[int, int], Future[Chunk]] = {}  # read ahead, not yet flattened
        self._cache: OrderedDict[tuple[int, int], _Decoded] = OrderedDict()
        self._free: list[tuple[np.ndarray, Any]] = []  # reusable buffers and the cells written in them
        self._pool: WorkerPool | None = None
        self._free_slots: list[int] = []
        self._lent_slots: list[int] = []  # left the cache while a caller still held batches (views) of them
        self._reader_lock = threading.Lock()  # for chunks made in this process while workers are running
        self._orders: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in (
            "_lock",
            "_executor",
            "_flatten_executor",
            "_futures",
            "_reads",
            "_cache",
            "_free",
            "_orders",
            "_pool",
            "_reader_lock",
        ):
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
        batch = self._batch(self._requests.next())
        return batch[:1] if batch[1] is None else batch

    def _batch(self, request: int) -> tuple[Any, ...]:
        """The batch of the ``request``-th request: ``(x, y)`` or ``(x, y, sample_weight)``."""
        pieces = self._pieces(request)
        try:
            if len(pieces) == 1:
                # views: the chunk's buffer is reused only once no batch looks into it (see _recycle)
                d, rows = pieces[0]
                X = d.X[rows]
                y = None if d.y is None else d.y[rows]
                w = None if d.w is None else d.w[rows]
                M = d.M[rows] if self.mask_output else None
            else:  # a batch across two chunks
                X = np.concatenate([d.X[rows] for d, rows in pieces])
                y = None if pieces[0][0].y is None else np.concatenate([d.y[rows] for d, rows in pieces])
                w = None if pieces[0][0].w is None else np.concatenate([d.w[rows] for d, rows in pieces])
                M = np.concatenate([d.M[rows] for d, rows in pieces]) if self.mask_output else None
        finally:
            for decoded, _ in pieces:
                self._release(decoded)
        x = X if M is None else {"features": X, "mask": M.astype(np.float32)}
        y = self.outputs.batch_y(y)
        return (x, y) if w is None else (x, y, w)

    def _pieces(self, request: int) -> list[tuple[_Decoded, slice]]:
        """The chunks, and the rows of each, that make up the batch of the ``request``-th request."""
        epoch, slot = divmod(request, self._len)
        order, ends = self._order(epoch)
        start, stop = self._bounds(slot)
        shard_start, shard_stop = self._shard
        last = int(np.searchsorted(ends, shard_stop - 1, side="right"))  # this shard's last chunk
        pieces = []
        position = int(np.searchsorted(ends, start, side="right"))
        while start < stop:
            chunk_start = int(ends[position - 1]) if position else 0
            a, b = start - chunk_start, min(stop, int(ends[position])) - chunk_start
            decoded = self._chunk(self._key(epoch, int(order[position])))
            for ahead in range(position + 1, position + 1 + self.prefetch):
                flatten = ahead == position + 1  # the next chunk is flattened ahead, the others only read
                if ahead <= last:  # never read ahead into another shard's chunks
                    self._prefetch(self._key(epoch, int(order[ahead])), flatten=flatten)
                else:  # past this epoch's end: the next epoch's first chunks of this shard
                    next_order, next_ends = self._order(epoch + 1)
                    first = int(np.searchsorted(next_ends, shard_start, side="right"))
                    next_last = int(np.searchsorted(next_ends, shard_stop - 1, side="right"))
                    at = first + ahead - last - 1
                    if at <= next_last:
                        self._prefetch(self._key(epoch + 1, int(next_order[at])), flatten=flatten)
            pieces.append((decoded, slice(a, b)))
            start = chunk_start + b
            position += 1
        return pieces

    def _bounds(self, slot: int) -> tuple[int, int]:
        """Events ``[start, stop)`` of the epoch's stream that batch ``slot`` of this shard holds."""
        shard_start, shard_stop = self._shard
        start = shard_start + slot * self.batch_size
        stop = shard_stop if slot == self._len - 1 else start + self.batch_size
        return start, stop

    def _key(self, epoch: int, k: int) -> tuple[int, int]:
        """Cache key of chunk ``k`` as served in ``epoch`` (its events are shuffled per epoch)."""
        return (epoch if self.shuffle else 0, k)

    def _submit(self, key: tuple[int, int]) -> Future[_Decoded]:
        """Start loading the chunk of ``key`` (caller holds the lock).

        Two background threads form a pipeline: one reads (uproot decompresses
        with the GIL released), the other flattens the chunk read before, so on
        two cores reading the next chunk overlaps flattening this one.
        """
        future = self._futures.get(key)
        if future is None:
            self._start_threads()
            if self._pool is not None:
                future = self._flatten_executor.submit(self._flatten_in_workers, key)
            else:
                read = self._reads.pop(key, None) or self._executor.submit(self.reader.read, key[1])
                future = self._flatten_executor.submit(self._flatten, read, key[0])
            self._futures[key] = future
        return future

    def _read_ahead(self, key: tuple[int, int]) -> None:
        """Start reading the chunk of ``key``, to be flattened when it is next (caller holds the lock)."""
        if key in self._reads or key in self._futures:
            return
        self._start_threads()
        if self._pool is not None:  # the workers flatten what they read, into their own shared buffers
            self._submit(key)
            return
        self._reads[key] = self._executor.submit(self.reader.read, key[1])
        while len(self._reads) > self.prefetch:  # reads ahead that were never asked for (another shard...)
            self._reads.pop(next(iter(self._reads))).cancel()

    def _start_threads(self) -> None:
        """Start the reader and flattener threads (and the worker processes), once (caller holds the lock)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlaas4hep-reader")
            # with worker processes, two threads hand out chunks, so that a worker is asked for the
            # next chunk before the other has finished this one
            dispatchers = 1 if self._groups is None else 2
            self._flatten_executor = ThreadPoolExecutor(dispatchers, thread_name_prefix="mlaas4hep-flattener")
            # a sequence that is dropped stops reading ahead
            weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
            weakref.finalize(self, self._flatten_executor.shutdown, wait=False, cancel_futures=True)
            if self._groups is not None:
                self._start_workers()

    def _flatten(self, read: Future[Chunk], epoch: int) -> _Decoded:
        """Flatten a chunk once read, its events already in the epoch's shuffled order."""
        chunk = read.result()
        pieces = self._derive(chunk.pieces)
        y, w = self.outputs.extract(pieces, chunk.file_index, chunk.labels)
        order = None
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, chunk.index, 1]).permutation(len(chunk))
        n = len(chunk)
        with self._lock:
            buffer, written = self._free.pop() if self._free else (None, None)
        if buffer is None or buffer.shape[0] < n:
            buffer, written = np.empty((self._rows_per_chunk, self.num_features), dtype=np.float32), None
        # a reused buffer is padded again only where the chunk before wrote
        X, M, written = self.flattener._transform_into(
            pieces, order, mask=self.with_mask, buffer=buffer, written=written
        )
        if order is not None:
            y = None if y is None else y[order]
            w = None if w is None else w[order]
        _read_only(X, M)
        decoded = _Decoded(X, M, y, buffer, w=w, written=written)
        del buffer, X  # counted as _recycle will count: the chunk's own references only
        decoded.refs = sys.getrefcount(decoded.buffer)
        return decoded

    def _start_workers(self) -> None:
        """Fork the worker processes and the shared buffers they fill (caller holds the lock)."""
        assert self._groups is not None
        n_slots = self.cache_chunks + self.prefetch + 2  # cached, in flight, and being cut into batches
        self._pool = WorkerPool(
            self, self._groups, n_slots, self._rows_per_chunk, self.num_features, with_mask=self.with_mask
        )
        self._free_slots = list(range(n_slots))[::-1]
        self._slot_refs_free = self._slot_refs(0)  # references to a slot's arrays that nothing else holds
        weakref.finalize(self, self._pool.close)

    def _flatten_in_workers(self, key: tuple[int, int]) -> _Decoded:
        """Have the worker processes read and flatten chunk ``key[1]`` into a shared buffer."""
        assert self._pool is not None
        epoch, k = key
        counts = self.reader.plan.counts[k]
        n = int(counts.sum())
        with self._lock:
            slot = self._take_slot()
        if slot is None:  # every shared buffer is taken: this chunk is made here, in this thread
            read: Future[Chunk] = Future()
            with self._reader_lock:  # the other dispatching thread may be here too
                read.set_result(self.reader.read(k))
            return self._flatten(read, epoch)
        rows = np.arange(n, dtype=np.int64)
        if self.shuffle:  # the same permutation as _flatten's: row r holds event order[r]
            order = np.random.default_rng([self.seed, epoch, k, 1]).permutation(n)
            rows[order] = np.arange(n, dtype=np.int64)
        starts = np.cumsum(counts) - counts  # the chunk holds its files' events one file after another
        per_worker = [
            np.concatenate([rows[starts[i] : starts[i] + counts[i]] for i in files]).astype(np.int64, copy=False)
            for files in self._groups
        ]
        try:
            parts = self._pool.run(k, slot, per_worker)
        except BaseException:
            with self._lock:
                self._free_slots.append(slot)
            raise
        self.reader.reads += 1
        X, M = self._pool.slots[slot]
        y = _gather([p[0] for p in parts], per_worker, n)
        w = _gather([p[1] for p in parts], per_worker, n)
        X, M = X[:n], None if M is None else M[:n]
        _read_only(X, M)
        return _Decoded(X, M, y, slot, w=w)

    def _slot_refs(self, slot: int) -> int:
        """References to the arrays of shared buffer ``slot``: each batch cut from it (a view) holds one."""
        assert self._pool is not None
        return sum(sys.getrefcount(a) for a in self._pool.slots[slot] if a is not None)

    def _take_slot(self) -> int | None:
        """A shared buffer that no chunk and no batch uses, or None (caller holds the lock)."""
        if self._free_slots:
            return self._free_slots.pop()
        for slot in self._lent_slots:
            if self._slot_refs(slot) == self._slot_refs_free:  # the caller has let go of its batches
                self._lent_slots.remove(slot)
                return slot
        return None

    def _derive(self, pieces: list[Any], names: Sequence[str] | None = None) -> list[Any]:
        """The pieces of a chunk with the aliases among ``names`` (default: features, targets, weights) added."""
        if names is None:
            names = [*self.flattener.branches, *self.outputs.branches]
        wanted = [n for n in names if n in self.selection.aliases]
        if not wanted:
            return pieces
        return [{**{f: p[f] for f in p.fields}, **self.selection.derive(p, wanted, len(p))} for p in pieces]

    def _release(self, decoded: _Decoded) -> None:
        """A thread is done cutting a batch from ``decoded``."""
        with self._lock:
            decoded.users -= 1
            if decoded.evicted and decoded.users == 0:
                self._recycle(decoded)

    def _recycle(self, decoded: _Decoded) -> None:
        """Give the memory of a chunk that left the cache back to the pool (caller holds the lock).

        Batches cut from a chunk are views of its buffer, so the buffer is
        reused only if nothing refers to it but the chunk itself: as many
        references as when the chunk was made. Otherwise it is left to the
        garbage collector, and the batches a caller kept stay intact.
        """
        if isinstance(decoded.buffer, int):  # a shared buffer of the worker processes
            decoded.X = decoded.M = None  # the chunk's own views
            if self._slot_refs(decoded.buffer) == self._slot_refs_free:
                self._free_slots.append(decoded.buffer)
            else:  # batches of it are still held: taken back once they are let go
                self._lent_slots.append(decoded.buffer)
        elif decoded.buffer is not None and len(self._free) < 2 and sys.getrefcount(decoded.buffer) == decoded.refs:
            self._free.append((decoded.buffer, decoded.written))
        decoded.buffer = None

    def _prefetch(self, key: tuple[int, int], *, flatten: bool = True) -> None:
        with self._lock:
            if key not in self._cache:
                if flatten:
                    self._submit(key)
                else:
                    self._read_ahead(key)

    def _chunk(self, key: tuple[int, int]) -> _Decoded:
        while True:
            with self._lock:
                decoded = self._cache.get(key)
                if decoded is not None:
                    self._cache.move_to_end(key)
                    decoded.users += 1
                    return decoded
                future = self._submit(key)
            decoded = future.result()
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
                            self._recycle(old)
                decoded.users += 1
            return decoded

    def close(self) -> None:
        """Stop the background reader and close the files."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._flatten_executor.shutdown(wait=True)
            self._executor = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.reader.close()

    def __repr__(self) -> str:
        return (
            f"RootSequence({len(self.sources)} files, {self.n_events} events, {self._len} batches of "
            f"{self.batch_size}, {self.num_features} features, subset={self.subset!r}"
            + (f", shard {self.shard_index} of {self.num_shards})" if self.num_shards > 1 else ")")
        )


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


def shard_layout(n_events: int, num_shards: int, shard_index: int, batch_size: int) -> tuple[tuple[int, int], int]:
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
    >>> shard_layout(1000, 3, 2, 100)  # 334, 333 and 333 events: 4 batches each, the last of 34 or 33
    ((667, 1000), 4)
    >>> shard_layout(1001, 2, 0, 100)  # 501 and 500 events: 5 batches each, the last of 101 or 100
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


def _check_shards(shard_index: int, num_shards: int, shuffle: bool, seed: int | None) -> None:
    if not isinstance(num_shards, (int, np.integer)) or isinstance(num_shards, bool) or num_shards <= 0:
        msg = f"num_shards must be a positive integer, got {num_shards!r}"
        raise ParameterError(msg)
    if (
        not isinstance(shard_index, (int, np.integer))
        or isinstance(shard_index, bool)
        or not 0 <= shard_index < num_shards
    ):
        msg = f"shard_index must be an integer in [0, num_shards={num_shards}), got {shard_index!r}"
        raise ParameterError(msg)
    if num_shards > 1 and shuffle and seed is None:
        msg = "seed is required with num_shards > 1 and shuffle=True: every shard must draw the same shuffling"
        raise ParameterError(msg)


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


def _check_split(validation_split: float | None, test_split: float | None, subset: str | None) -> None:
    for name, value in (("validation_split", validation_split), ("test_split", test_split)):
        if value is not None and not 0 <= value < 1:
            msg = f"{name} must be in [0, 1), got {value!r}"
            raise ParameterError(msg)
    if (validation_split or 0) + (test_split or 0) >= 1:
        msg = f"validation_split + test_split must be below 1, got {validation_split} + {test_split}"
        raise ParameterError(msg)
    if subset is not None and subset not in SUBSETS:
        msg = f"subset must be one of {SUBSETS}, got {subset!r}"
        raise ParameterError(msg)
    if subset is not None and not (validation_split or test_split):
        msg = f"subset={subset!r} needs a validation_split or test_split in (0, 1)"
        raise ParameterError(msg)
    if subset == "validation" and not validation_split:
        msg = 'subset="validation" needs a validation_split in (0, 1)'
        raise ParameterError(msg)
    if subset == "test" and not test_split:
        msg = 'subset="test" needs a test_split in (0, 1)'
        raise ParameterError(msg)
    if (validation_split or test_split) and subset is None:
        msg = 'validation_split and test_split need subset="training", "validation" or "test"'
        raise ParameterError(msg)
