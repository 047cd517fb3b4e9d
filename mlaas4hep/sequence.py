"""RootSequence: ROOT files streamed chunk by chunk into ``keras.Model.fit`` (the Keras face of the pipeline)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ._checks import is_int
from .errors import MLaaS4HEPError, reraise_from
from .inputs.selection import Selection
from .inputs.sources import DEFAULT_TREE, FileSource
from .options import Options
from .specs.values import Specs
from .stream.epochs import EpochTracker, OrderWatch
from .stream.pipeline import Pipeline
from .stream.plan import shard_bounds
from .stream.prepare import PreparedData, prepare
from .stream.reader import ChunkReader
from .transform.flatten import JaggedFlattener
from .transform.outputs import Outputs

__all__ = ["RootSequence", "shard_bounds"]

log = logging.getLogger(__name__)


class RootSequence(keras.utils.PyDataset):  # type: ignore[misc]  # keras ships no type information
    """Batches of events from ROOT files, for ``model.fit``, ``evaluate`` and ``predict``.

    ``seq[i]`` returns a whole batch ``(x, y)``: ``x`` is a float32 array of shape
    ``(batch, num_features)`` made by :class:`~mlaas4hep.JaggedFlattener` (with
    ``layout="collections"``, a dict of a ``(batch, L, F)`` tensor and a
    ``(batch, L)`` mask per collection, and the flat branches), ``y``
    the float32 labels. ``len(seq)`` is the number of batches,
    ``ceil(n_events / batch_size)``; only the last batch may be smaller
    (with ``num_shards > 1``, see the note on sharding).

    **The batch contract.** Within an epoch ``seq[i]`` is stable: the same ``i``
    gives the same events, from any thread, in any order, and the epoch's
    ``len(seq)`` indices cover every selected event exactly once, whatever an
    unfinished epoch before asked for (Keras' probe, a loop that broke off, an
    interrupted ``fit``). With ``shuffle=False`` (the default for the
    validation and test subsets) index ``i`` names the same events every
    epoch, in file order: ``model.predict(seq)`` lines up with the files. With
    ``shuffle=True`` an index names the batch whose turn it is when it is first
    asked for, so chunks are read one after another however ``fit`` orders its
    requests (see :mod:`mlaas4hep.stream.epochs` and the user guide).

    Events are read in chunks of ``chunk_size`` that mix all files in proportion
    to their entries, each read, flattened and cached once, the next one read
    in the background while batches are served from the current one.

    Parameters
    ----------
    files : path, URL, or sequence of them
        ROOT files; ``"file.root:tree"`` names the tree in that file. Remote
        URLs (``root://``, ``http(s)://``) are handed to uproot.
    labels : sequence of float or str
        One label per file (the original's labels.txt), or the name of a
        branch that holds each event's label (that branch is then not a feature).
        Labels are finite numbers: for classes, give each class a number.
    tree : str
        Tree (TTree or RNTuple) for files that do not name one; default ``"Events"``.
    branches : sequence of str, optional
        Feature branches: names or glob patterns (``"Jet_*"``). Default: every
        numeric flat or jagged branch.
    exclude : sequence of str, optional
        Branches or patterns left out. Default: ``("run", "event",
        "luminosityBlock")`` when the specs are made by a first pass; with a
        ready :class:`~mlaas4hep.Specs` (``specs=train.specs``), nothing more
        than the specs hold, unless given.
    common_branches : bool
        When the files' branches differ, train on those common to all files
        instead of raising :class:`~mlaas4hep.errors.BranchError` (default False).
    cut : str, optional
        Serve only the events where this expression is true, in uproot's
        expression language, e.g. ``"(nMuon >= 1) & (MET_pt > 20)"``; jagged
        branches are reduced with ``any(...)``/``all(...)`` (see
        :class:`~mlaas4hep.inputs.selection.Selection`). ``len()``, ``nevts``, the
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
        ``X`` holds a real value, 0 for padding), for a model with two named inputs
        (the flat layout; the collections layout has its masks in ``x``).
    batch_size : int
        Events per batch (default 100, as the original).
    chunk_size : int
        Events per chunk read from the files (default 10,000; ``-1``: everything in one chunk).
    nevts : int
        Events to use over all files, split across files in proportion to
        their entries; ``-1`` (default) uses all.
    shuffle : bool, optional
        Shuffle the events within each chunk, and where the epoch starts,
        anew every epoch. Default: True, but False for ``subset="validation"``
        and ``"test"``, served in the files' order. Chunks are read in the
        files' order, from a random chunk in a random direction, wrapping
        around, so that each cluster of the files is decompressed once per epoch.
    seed : int, optional
        Seed of the shuffling; the same seed gives the same batches. Default: random.
    specs : Specs, path, or None
        Branch statistics: a :class:`~mlaas4hep.Specs`, a JSON file to reuse
        (rebuilt with a warning if it does not match the files; written if
        missing), or None to make them with a first pass over the files.
    validation_split : float, optional
        Fraction of each file's events kept for validation (its last entries,
        or those just before the test part); requires ``subset``.
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
    layout : {"flat", "collections"}
        ``"flat"`` (default): ``x`` is one padded vector per event. ``"collections"``:
        ``x`` is a dict, ``x["Jet"]`` float32 ``(batch, L, F)`` for each collection of
        jagged branches sharing their counts (``Jet_pt``, ``Jet_eta``, ...),
        ``x["Jet_mask"]`` ``(batch, L)`` and ``x["event"]`` the flat branches, with the
        flat layout's numbers (see :mod:`mlaas4hep.transform.tensors`, :attr:`input_spec`).
    redirector : str
        Prefix for bare file names (e.g. an XRootD redirector).
    retries : int
        Times a failed read of a remote file is tried again, reopening the
        file (default 3). If every try fails, :class:`~mlaas4hep.errors.FileAccessError`
        names the URL; an epoch never silently ends short.
    retry_backoff : float
        Seconds before the first retry, doubling after each (default 0.5).
    timeout : float
        Seconds to wait for a remote server, to connect and for each read
        (default 30): an unreachable server fails within about this time with
        a :class:`~mlaas4hep.errors.FileAccessError` naming the URL.
    drop_nonfinite : bool
        Leave out the events whose label, target or weight is NaN or infinite
        (default False: such events are an error, raised when the sequence is
        made, naming the file, the branch and how many entries hold one).
    workers : int
        Processes that read and flatten chunks (default 1: two background
        threads of this process). With ``workers > 1`` (Linux, local files, not
        ``use_multiprocessing``), forked processes each take a share of the
        files, balanced by events, and write their part of every chunk into
        shared memory (at most one per file: :attr:`worker_processes`); the
        batches are the same, and Keras is told ``workers=1``. Otherwise
        ``workers`` is forwarded to :class:`keras.utils.PyDataset`, with the
        TensorFlow backend only: Keras' JAX and PyTorch trainers serve some
        batches twice with their own fetchers, so there the sequence reads in
        its own threads or worker processes and Keras is told ``workers=1``.
    use_multiprocessing, max_queue_size
        Forwarded to :class:`keras.utils.PyDataset` (see ``workers``).
    cache_chunks : int
        Flattened chunks kept in memory once served (default 2: the current one and the one before).
    prefetch : int
        Chunks read ahead, in background threads (default 2), past the end of
        an epoch into the next one's too; the next one is flattened ahead.
    shard_index, num_shards : int
        Serve shard ``shard_index`` of ``num_shards`` (default 0 of 1), for
        data-parallel training on several workers (see the sharding note below).
        Every shard needs the same files, arguments and ``seed``.
    files_per_chunk : int, optional
        Files one chunk mixes (default: all): with thousands of files, groups
        of this many files, dealt round-robin (see :meth:`~mlaas4hep.ChunkPlan.build`).
    max_open_files : int
        Files kept open between chunk reads (default 8); others are closed after use.

    Notes
    -----
    **Sharding.** With ``num_shards > 1`` each epoch's stream is cut into
    ``num_shards`` consecutive blocks of sizes within one event of each other,
    and this sequence serves block ``shard_index`` (:func:`~mlaas4hep.stream.plan.shard_bounds`):
    over all shards every event is served once per epoch, all shards in step.

    **The epoch's stream** is the chunks in the epoch's order (see ``shuffle``),
    each chunk's events in a (shuffled) order drawn from ``seed``, the epoch and
    the chunk. Indices in order asked for out of order (``fit``'s default
    ``shuffle=True`` on a ``shuffle=False`` sequence) read chunks out of order (a warning says so).

    **Errors while reading.** TensorFlow hands ``fit``'s caller an ``UnknownError``
    of its own; ``with seq:`` or ``with reraise(train, val):`` raise the library's
    error instead (:attr:`last_error` keeps it).

    **Batches are read-only views** of their chunk's matrix (copy one to change
    it); a chunk's memory is reused only once no batch of it is held anywhere.

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
        exclude: Sequence[str] | None = None,
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
        shuffle: bool | None = None,
        seed: int | None = None,
        specs: Specs | str | os.PathLike[str] | None = None,
        validation_split: float | None = None,
        test_split: float | None = None,
        subset: str | None = None,
        normalization: str | None = "minmax",
        pad_value: float = 0.0,
        max_lengths: int | Mapping[str, int] | None = None,
        length_quantile: float | None = None,
        layout: str = "flat",
        redirector: str = "",
        retries: int = 3,
        retry_backoff: float = 0.5,
        timeout: float = 30.0,
        drop_nonfinite: bool = False,
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
        # every argument but the files and labels is an option, checked once by Options
        options = Options.from_arguments(locals())
        workers, use_multiprocessing = _keras_fetching(options)
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.options = options
        self.prepared: PreparedData = prepare(files, labels, options)
        self.epoch_plan = self.prepared.epoch_plan()
        self.pipeline = Pipeline(self.prepared, self.epoch_plan, processes=_processes(options))
        if self.pipeline.worker_processes:  # Keras' own fetching threads would only queue up for this process's lock
            self.workers = 1
        self._epochs = EpochTracker(len(self), by_arrival=bool(options.shuffle), shared=options.use_multiprocessing)
        self._order = OrderWatch()
        self.last_error: MLaaS4HEPError | None = None

    # -- what the sequence serves ----------------------------------------------------------------
    @property
    def sources(self) -> tuple[FileSource, ...]:
        """The input files and trees."""
        return self.prepared.sources

    @property
    def specs(self) -> Specs:
        """The specs of the features (give them to a validation sequence: ``specs=train.specs``)."""
        return self.prepared.specs

    @property
    def selection(self) -> Selection:
        """The cut and the aliases."""
        return self.prepared.selection

    @property
    def outputs(self) -> Outputs:
        """Labels or targets, and sample weights."""
        return self.prepared.outputs

    @property
    def flattener(self) -> JaggedFlattener:
        """What turns a chunk into ``x``: its columns, widths and normalization."""
        return self.prepared.flattener

    @property
    def label_branch(self) -> str | None:
        """The branch holding each event's label, if the labels come from one."""
        return self.prepared.label_branch

    @property
    def reader(self) -> ChunkReader:
        """The reader of this process's chunks."""
        return self.pipeline.reader

    @property
    def num_features(self) -> int:
        """Width of ``x``: the input dimension of the model (the original's ``idim``)."""
        return self.flattener.num_features

    @property
    def feature_names(self) -> list[str]:
        """Name of each column of ``x`` (of the matrix the collections layout's tensors are views of)."""
        return self.flattener.feature_names

    @property
    def input_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape (without the batch axis) and dtype of each input in ``x``, to build a model from.

        Flat layout: ``{"features": ((num_features,), "float32")}`` (``x`` is that
        array), and ``"mask"`` with ``mask_output``. Collections layout: ``"event"``,
        and for each collection ``"Jet": ((L, F), "float32")`` and ``"Jet_mask": ((L,), "float32")``.

        Examples
        --------
        >>> inputs = {n: keras.Input(s, dtype=t, name=n) for n, (s, t) in seq.input_spec.items()}  # doctest: +SKIP
        """
        spec = self.flattener.input_spec
        if self.mask_output:
            spec["mask"] = spec["features"]
        return spec

    @property
    def total_events(self) -> int:
        """Events of the subset over all shards."""
        return self.prepared.n_events

    @property
    def n_events(self) -> int:
        """Events this sequence (its shard) serves per epoch."""
        start, stop = self.epoch_plan.shard
        return stop - start

    # -- the arguments, as given (see the class docstring) --------------------------------------------
    batch_size = property(lambda self: self.options.batch_size, doc="Events per batch.")
    chunk_size = property(lambda self: self.options.chunk_size, doc="Events per chunk (-1: one chunk).")
    shuffle = property(lambda self: self.options.shuffle, doc="Whether events are shuffled anew every epoch.")
    seed = property(lambda self: self.options.seed, doc="Seed of the shuffling (drawn when none was given).")
    validation_split = property(lambda self: self.options.validation_split, doc="Fraction kept for validation.")
    test_split = property(lambda self: self.options.test_split, doc="Fraction held out for testing.")
    subset = property(lambda self: self.options.subset, doc="The part of the split served.")
    shard_index = property(lambda self: self.options.shard_index, doc="The shard served.")
    num_shards = property(lambda self: self.options.num_shards, doc="Shards of each epoch's stream.")
    cache_chunks = property(lambda self: self.options.cache_chunks, doc="Flattened chunks kept once served.")
    prefetch = property(lambda self: self.options.prefetch, doc="Chunks read ahead.")
    mask_output = property(lambda self: self.options.mask_output, doc="Whether ``x`` carries the mask.")
    with_mask = mask_output

    @property
    def worker_processes(self) -> int:
        """Worker processes that read and flatten chunks (0: threads of this process)."""
        return self.pipeline.worker_processes

    @property
    def chunk_reads(self) -> int:
        """Chunks read from the files so far by this process."""
        return self.pipeline.reads

    @property
    def num_batches(self) -> int:
        """Batches per epoch (same as ``len``)."""
        return self.epoch_plan.batches

    def __len__(self) -> int:
        return self.epoch_plan.batches

    @property
    def epoch(self) -> int:
        """Epochs completed: every batch index of the epoch has been asked for."""
        return self._epochs.completed

    # -- Keras' hooks ---------------------------------------------------------------------------
    def on_epoch_begin(self) -> None:
        """Mark the start of an epoch (Keras calls this; batches asked for before it are previews)."""
        self._epochs.begin_epoch()

    def on_epoch_end(self) -> None:
        """End an epoch: if every index of it was asked for, the next one begins (reshuffled).

        Batches asked for outside ``on_epoch_begin``/``on_epoch_end`` that do
        not complete an epoch (Keras' probe of batches 0 and 1, a look at
        ``seq[0]`` in a notebook) are forgotten: the epoch starts again from its
        first batch, and the chunk already read comes from the cache. An epoch
        begun with ``on_epoch_begin`` and not served whole (``steps_per_epoch``,
        an interrupted ``fit``) carries on: its indices keep naming the batches
        they named, and the others the rest.
        """
        self._epochs.end_epoch()

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """Batch ``index`` of the current epoch: ``(x, y)``, ``(x, y, sample_weight)``, or ``(x,)`` without labels."""
        n = len(self)
        if not is_int(index) or not -n <= int(index) < n:
            msg = f"batch index {index!r} out of range for {n} batches"
            raise IndexError(msg)
        epoch, slot = self._epochs.assign(int(index) % n)
        if not self.shuffle:
            self._order.watch(self.epoch_plan.position(epoch, slot), self)
        try:
            batch = self.pipeline.batch(epoch, slot)
        except MLaaS4HEPError as err:  # kept: TensorFlow hands fit's caller its own UnknownError instead
            self.last_error = err
            raise
        x: Any = batch.x
        if batch.mask is not None:
            x = {"features": batch.x, "mask": batch.mask.astype(np.float32)}
        y = self.outputs.batch_y(batch.y)
        if y is None:
            return (x,)
        return (x, y) if batch.w is None else (x, y, batch.w)

    def save_preprocessing(self, path: str | os.PathLike[str]) -> Path:
        """Write everything that turns events into ``x`` as JSON (see :class:`~mlaas4hep.preprocessing.Preprocessing`).

        The branches in column order, aliases, cut, normalization with these
        specs, widths, pad value and layout: :func:`~mlaas4hep.write_scores`
        makes the same inputs from other files with it. Returns the path.

        >>> train.save_preprocessing("model.preprocessing.json")  # doctest: +SKIP
        """
        from .preprocessing import Preprocessing

        return Preprocessing.from_prepared(self.prepared).save(path)

    def close(self) -> None:
        """Stop the background reading and close the files."""
        self.pipeline.close()

    def __enter__(self) -> RootSequence:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        """Close the sequence; an error that wraps one of the library's (TensorFlow's) is raised as the library's."""
        self.close()
        reraise_from(error, [self])

    def __repr__(self) -> str:
        return (
            f"RootSequence({len(self.sources)} files, {self.n_events} events, {len(self)} batches of "
            f"{self.batch_size}, {self.num_features} features, subset={self.subset!r}"
            + (f", shard {self.shard_index} of {self.num_shards})" if self.num_shards > 1 else ")")
        )


def _keras_queue_is_safe() -> bool:
    """Whether Keras may fetch batches itself, with ``workers > 1`` threads or processes.

    Keras' JAX and PyTorch trainers start an epoch's iteration to build the
    model and abandon it; the batches its fetchers had queued then come first
    in the next epoch instead of as many of its own (Keras 3.15, any PyDataset).
    The TensorFlow trainer does not, so only there do Keras' fetchers run.
    """
    return str(keras.backend.backend()) == "tensorflow"


def _keras_fetching(options: Options) -> tuple[int, bool]:
    """The ``workers`` and ``use_multiprocessing`` that Keras is given (see :func:`_keras_queue_is_safe`)."""
    if not _keras_queue_is_safe() and (options.workers > 1 or options.use_multiprocessing):
        log.info("Keras backend %r: the sequence's own threads or processes fetch", keras.backend.backend())
        return 1, False
    return options.workers, options.use_multiprocessing


def _processes(options: Options) -> int:
    """Worker processes for the pipeline: none when Keras forks its own (``use_multiprocessing``)."""
    if options.workers > 1 and options.use_multiprocessing and _keras_queue_is_safe():
        log.info(
            "workers=%d: reading in threads of this process (Keras' use_multiprocessing forks its own processes)",
            options.workers,
        )
        return 1
    return options.workers
