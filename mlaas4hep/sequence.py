"""RootSequence: ROOT files streamed chunk by chunk into ``keras.Model.fit`` (the Keras face of the pipeline)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from ._checks import is_int
from .dataset import Dataset, prepare
from .epochs import EpochTracker
from .flatten import JaggedFlattener
from .options import Options
from .pipeline import Pipeline
from .plan import shard_layout
from .reader import ChunkReader
from .selection import Selection
from .sources import DEFAULT_TREE, FileSource
from .specs import Specs
from .targets import Outputs

__all__ = ["RootSequence", "shard_layout"]

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

    **The batch contract.** Within an epoch ``seq[i]`` is stable: asking for
    the same ``i`` again returns the same events, from any thread, in any
    order, and the ``len(seq)`` indices of an epoch cover every selected event
    exactly once. An epoch ends once each of its indices has been asked for
    (at ``on_epoch_end``, or when an index is asked for again). One that was
    not finished never leaks into the next: requests made outside
    ``on_epoch_begin``/``on_epoch_end`` (Keras' probe of batches 0 and 1, a
    look at ``seq[0]``, a loop that broke off) are forgotten at the next
    ``on_epoch_end``, and an epoch ``fit`` began and did not finish (an
    interrupted ``fit``, ``steps_per_epoch``) carries on where it stopped, so
    the next full pass serves every event exactly once. With ``shuffle=False`` (the default
    for ``subset="validation"`` and ``"test"``) index ``i`` names the same events
    in every epoch, in file order, so ``model.predict(seq)`` lines up with
    ``[seq[i][1] for i in range(len(seq))]`` and with the files' entries. With
    ``shuffle=True``, an index names the batch of the epoch's stream whose turn
    it is when the index is first asked for: however ``fit`` orders its
    requests, chunks are read one after another, each once per epoch.

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
        and ``"test"``, which are then served in the files' order (so that
        ``model.predict`` lines up with the files' entries). Chunks are read in the files' order,
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
    layout : {"flat", "collections"}
        ``"flat"`` (default): ``x`` is one padded vector per event. ``"collections"``:
        ``x`` is a dict, ``x["Jet"]`` float32 ``(batch, L, F)`` for each collection of
        jagged branches sharing their counts (``Jet_pt``, ``Jet_eta``, ... counted by
        ``nJet``), its features sorted by name, ``x["Jet_mask"]`` ``(batch, L)`` (1 for
        a real entry), and ``x["event"]`` ``(batch, F_event)`` the flat branches; the
        same numbers as the flat layout, ``max_lengths`` and ``length_quantile``
        applying per collection (see :class:`~mlaas4hep.collections_layout.CollectionsFlattener`
        and :attr:`input_spec`).
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

    **The epoch's stream.** Batch ``s`` of an epoch holds events
    ``[s * batch_size, (s + 1) * batch_size)`` of that epoch's stream: the
    chunks in the epoch's order (see ``shuffle``), each chunk's events in a
    (shuffled) order drawn from ``seed``, the epoch and the chunk; the same
    seed gives the same stream. With ``shuffle=True`` index ``i`` is given
    batch ``s`` of the stream when it is the ``s``-th index first asked for in
    the epoch; with ``shuffle=False`` index ``i`` is batch ``i``, and asking for
    the indices out of order (``fit``'s default ``shuffle=True``) reads chunks
    out of order, which is slow (a warning says so): pass ``shuffle=False`` to
    ``fit`` too, or make the sequence with ``shuffle=True``. Keras' TensorFlow
    backend asks for the next epoch's first batches before it calls
    ``on_epoch_end``: they belong to the next epoch already. With ``workers > 1``
    the batches are the same, but which thread serves which one, and so the
    order in which the model sees them, may vary from run to run.

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
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.options = options
        self.dataset: Dataset = prepare(files, labels, options)
        self.layout = self.dataset.layout()
        self.pipeline = Pipeline(self.dataset, self.layout, processes=_processes(options))
        if self.pipeline.worker_processes:  # Keras' own fetching threads would only queue up for this process's lock
            self.workers = 1
        self._epochs = EpochTracker(len(self), by_arrival=bool(options.shuffle), shared=options.use_multiprocessing)
        self._last_position: int | None = None  # the chunk of the last batch served in order, and whether
        self._warned = False  # a warning said that batches in order are asked for out of order

    # -- what the sequence serves ----------------------------------------------------------------
    @property
    def sources(self) -> tuple[FileSource, ...]:
        """The input files and trees."""
        return self.dataset.sources

    @property
    def specs(self) -> Specs:
        """The specs of the features (give them to a validation sequence: ``specs=train.specs``)."""
        return self.dataset.specs

    @property
    def selection(self) -> Selection:
        """The cut and the aliases."""
        return self.dataset.selection

    @property
    def outputs(self) -> Outputs:
        """Labels or targets, and sample weights."""
        return self.dataset.outputs

    @property
    def flattener(self) -> JaggedFlattener:
        """What turns a chunk into ``x``: its columns, widths and normalization."""
        return self.dataset.flattener

    @property
    def label_branch(self) -> str | None:
        """The branch holding each event's label, if the labels come from one."""
        return self.dataset.label_branch

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
        return self.dataset.n_events

    @property
    def n_events(self) -> int:
        """Events this sequence (its shard) serves per epoch."""
        start, stop = self.layout.shard
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
        return self.layout.batches

    def __len__(self) -> int:
        return self.layout.batches

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
            self._watch_order(epoch, slot)
        batch = self.pipeline.batch(epoch, slot)
        x: Any = batch.x
        if batch.mask is not None:
            x = {"features": batch.x, "mask": batch.mask.astype(np.float32)}
        y = self.outputs.batch_y(batch.y)
        if y is None:
            return (x,)
        return (x, y) if batch.w is None else (x, y, batch.w)

    def _watch_order(self, epoch: int, slot: int) -> None:
        """Say once when indices in order come out of order: every chunk is then read more than once."""
        position = self.layout.position(epoch, slot)
        last, self._last_position = self._last_position, position
        if last is not None and position not in (last, last + 1, 0) and not self._warned:
            self._warned = True
            log.warning(
                "%r serves its batches in order (shuffle=False), but they are asked for out of order "
                "(fit's default shuffle=True?): chunks are then read out of order, some several times. "
                "Pass shuffle=False to fit, or make the sequence with shuffle=True.",
                self,
            )

    def close(self) -> None:
        """Stop the background reading and close the files."""
        self.pipeline.close()

    def __repr__(self) -> str:
        return (
            f"RootSequence({len(self.sources)} files, {self.n_events} events, {len(self)} batches of "
            f"{self.batch_size}, {self.num_features} features, subset={self.subset!r}"
            + (f", shard {self.shard_index} of {self.num_shards})" if self.num_shards > 1 else ")")
        )


def _processes(options: Options) -> int:
    """Worker processes for the pipeline: none when Keras forks its own (``use_multiprocessing``)."""
    if options.workers > 1 and options.use_multiprocessing:
        log.info(
            "workers=%d: reading in threads of this process (Keras' use_multiprocessing forks its own processes)",
            options.workers,
        )
        return 1
    return options.workers
