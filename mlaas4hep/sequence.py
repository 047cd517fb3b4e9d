"""RootSequence: ROOT files streamed chunk by chunk into ``keras.Model.fit`` (the Keras face of the pipeline)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras

from ._checks import is_int
from .errors import MLaaS4HEPError, ParameterError, reraise_from
from .inputs.selection import Selection
from .inputs.sources import FileSource
from .options import Options, OptionView, takes_options
from .specs.values import Specs
from .stream.epochs import EpochTracker, OrderWatch
from .stream.pipeline import Pipeline
from .stream.prepare import PreparedData, labeled, prepare
from .stream.reader import ChunkReader
from .stream.state import fingerprint, make_state, place
from .transform.flatten import JaggedFlattener
from .transform.outputs import Outputs

__all__ = ["RootSequence"]

log = logging.getLogger(__name__)

try:  # the code of Keras' calls of on_epoch_end, to tell a pass's end from a new fit's beginning (Keras 3)
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    from keras.src.trainers.epoch_iterator import EpochIterator

    _ADAPTER_END: types.CodeType | None = PyDatasetAdapter.on_epoch_end.__code__
    _ITERATOR_RESET: types.CodeType | None = EpochIterator.reset.__code__
except (ImportError, AttributeError):  # pragma: no cover - another Keras: every call begins anew
    _ADAPTER_END = _ITERATOR_RESET = None


@takes_options
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
    ``len(seq)`` indices cover every selected event exactly once. Once every
    index of an epoch was asked for, an index asked again begins the next
    epoch (Keras reading ahead, ``steps_per_epoch``). An epoch not served
    whole (an interrupted ``fit``, Keras' probe, a loop that broke off) is
    served again whole when Keras begins a ``fit`` or a loop calls
    :meth:`on_epoch_end`. With ``shuffle=False`` (the default for the
    validation and test subsets) index ``i`` names the same events every
    epoch, in file order: ``model.predict(seq)`` lines up with the files. With
    ``shuffle=True`` an index names the batch whose turn it is when it is first
    asked for, so chunks are read one after another however ``fit`` orders its
    requests (see :mod:`mlaas4hep.stream.epochs` and the user guide).
    :meth:`state_dict` and :meth:`load_state_dict` save and restore the place
    reached in an epoch (:class:`~mlaas4hep.BackupAndRestore` does it for ``fit``).

    Events are read in chunks of ``chunk_size`` that mix all files in proportion
    to their entries, each read, flattened and cached once, the next one read
    in the background while batches are served from the current one.

    Parameters
    ----------
    files : path, URL, pattern, sequence of them, or mapping of them to labels or to trees
        ROOT files (or Parquet, CSV, JSON lines and Avro files, by their
        extensions or as ``FileSource(path, format=...)``); ``"file.root:tree"``
        names the tree in that file. Remote URLs (``root://``, ``http(s)://``)
        are handed to uproot. A local path or a ``root://`` file name with
        wildcards (``"data/sig_*.root"``) names every matching file, sorted.
        In an order (a list, a tuple; a set is refused): it pairs the entries
        as written with labels and ``file_weights``. A ``{file: label}``
        mapping gives the labels too; uproot's ``{file: tree}`` names each
        file's tree.
    labels : sequence of float or str, optional
        One label per entry of ``files`` (the original's labels.txt), or the
        name of a branch or alias that holds each event's label (True is 1;
        it is then not a feature).
        Labels are finite numbers: for classes, give each class a number.
        None: batches are ``(x,)``, for ``predict``.
    **options
        Every option of :class:`~mlaas4hep.options.Options` but ``collections``,
        by keyword (``batch_size=100``, ``seed=1``, ...), each documented there:
        the trees and features, the cut and aliases, targets and weights, the
        sizes of batches and chunks, the shuffling, specs and splits, padding
        and normalization, the layout, remote reading, Keras' ``workers``,
        ``use_multiprocessing`` and ``max_queue_size``, and shards. Each is
        checked when the sequence is made, before any file is opened: a bad
        value, or a keyword that is no option, raises
        :class:`~mlaas4hep.errors.ParameterError` naming it.

    Notes
    -----
    **Workers.** With ``workers > 1`` (Linux, local files, not
    ``use_multiprocessing``), forked processes each take a share of the
    files, balanced by events, and write their part of every chunk into
    shared memory (at most one per file: :attr:`worker_processes`); the
    batches are the same, and Keras is told ``workers=1``. Otherwise
    ``workers`` is forwarded to :class:`keras.utils.PyDataset`, with the
    TensorFlow backend only: Keras' JAX and PyTorch trainers serve some
    batches twice with their own fetchers, so there the sequence reads in
    its own threads or worker processes and Keras is told ``workers=1``.

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
        **options: Any,
    ) -> None:
        self.options = Options.for_face("RootSequence", options, labeled=labeled(files, labels))
        workers, use_multiprocessing = _keras_fetching(self.options)
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=self.options.max_queue_size
        )
        self.prepared: PreparedData = prepare(files, labels, self.options)
        self.epoch_plan = self.prepared.epoch_plan()
        self.pipeline = Pipeline(self.prepared, self.epoch_plan, processes=_processes(self.options))
        if self.pipeline.worker_processes:  # Keras' own fetching threads would only queue up for this process's lock
            self.workers = 1
        shared = self.options.use_multiprocessing
        self._epochs = EpochTracker(len(self), by_arrival=bool(self.options.shuffle), shared=shared)
        self._order = OrderWatch()
        self.last_error: MLaaS4HEPError | None = None
        self._data: str | None = None  # the digest of the data, in states (stream.state.fingerprint)
        self._loaded: tuple[int, int] | None = None  # the last state loaded mid-epoch

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

    def serve_one_hot(self, num_classes: int) -> None:
        """Serve the labels one-hot over ``num_classes`` classes from now on, as ``one_hot=True`` would have.

        For a model compiled after the sequence was made, with a categorical
        cross-entropy loss (the original workflow's rule). The prepared data
        is replaced by a copy with these outputs, not changed.

        Examples
        --------
        >>> train.serve_one_hot(3)  # doctest: +SKIP
        >>> train[0][1].shape  # doctest: +SKIP
        (100, 3)
        """
        self.prepared = dataclasses.replace(self.prepared, outputs=self.outputs.with_one_hot(num_classes))

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

    # -- the options, as given (see Options) -----------------------------------------------------------
    batch_size = OptionView()
    chunk_size = OptionView()
    shuffle = OptionView()
    seed = OptionView()
    validation_split = OptionView()
    test_split = OptionView()
    subset = OptionView()
    shard_index = OptionView()
    num_shards = OptionView()
    cache_chunks = OptionView()
    prefetch = OptionView()
    mask_output = OptionView()

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
        """Batches of the epoch being served: ``len``, less those trained before the checkpoint in a resumed epoch.

        Keras reads it when it begins an epoch's pass: an epoch resumed with
        :meth:`load_state_dict` is a shorter pass, over the batches left.
        """
        return self._epochs.remaining

    def __len__(self) -> int:
        return self.epoch_plan.batches

    @property
    def epoch(self) -> int:
        """The epoch being served: epochs before it were served whole (every batch index asked for)."""
        return self._epochs.epoch

    # -- Keras' hooks ---------------------------------------------------------------------------
    def on_epoch_begin(self) -> None:
        """Keras calls this as an epoch's pass begins; the batch contract needs nothing of it."""

    def on_epoch_end(self) -> None:
        """End a pass (Keras), or an epoch of a hand-written loop.

        Called by Keras as a pass ends it changes nothing: an epoch ends when
        every index of it was asked for, whatever Keras reads ahead. Called by
        Keras as it begins a ``fit`` or ``evaluate``, or called by hand, it
        forgets what was asked for in an epoch not served whole (an interrupted
        ``fit``, Keras' probe of batches 0 and 1, a look at ``seq[0]``, a loop
        that broke off): that epoch is served again whole.

        Raises :class:`~mlaas4hep.errors.ParameterError` when Keras begins a
        ``fit`` or ``evaluate`` over a state loaded mid-epoch with
        :meth:`load_state_dict` before it: Keras gives every epoch of a ``fit``
        as many batches as it finds when it begins, so it cannot serve the rest
        of an epoch first.
        :class:`mlaas4hep.BackupAndRestore` loads the state as ``fit`` begins.
        """
        caller = _keras_caller(sys._getframe(1))
        if caller == "pass":
            return
        if caller == "reset":
            if self._loaded is not None and self._epochs.epoch == self._loaded[0]:  # the resumed epoch not served
                msg = (
                    f"a state loaded with load_state_dict (epoch {self._loaded[0]}, after its first "
                    f"{self._loaded[1]} batches) cannot begin a Keras fit or evaluate, which gives every epoch "
                    "len(seq) batches: give fit mlaas4hep.BackupAndRestore(backup_dir, sequence=seq), which "
                    "restores the state as fit begins, or serve the rest of the epoch in a loop of your own"
                )
                raise ParameterError(msg)
            self._epochs.restart(keep_offset=False)  # a new fit: Keras' epochs are whole
            return
        self._epochs.restart()

    # -- the loader's state as a value ---------------------------------------------------------------
    def _arrangement(self) -> dict[str, Any]:
        if self._data is None:  # the data's digest, made once
            self._data = fingerprint(self.prepared)
        return {
            "data": self._data,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": bool(self.shuffle),
            "num_shards": self.num_shards,
            "shard_index": self.shard_index,
            "batches": len(self),  # follows from the others: checked last
        }

    def state_dict(self, *, epoch: int | None = None, batches: int | None = None) -> dict[str, Any]:
        """The sequence's place in its epochs, as a small dict of JSON types (no data).

        ``epoch`` (default: the epoch being served) and ``position``, the
        batches of its stream served before the place: by default every one
        served so far, or the first ``batches`` (what a model trained on, when
        Keras has read further ahead; :class:`mlaas4hep.BackupAndRestore`
        gives them). A state can be loaded only by a sequence of the same data,
        batches, seed, shuffling and shard (:meth:`load_state_dict`).

        Raises :class:`~mlaas4hep.errors.ParameterError` when the place is not
        the epoch's first batches, served in order (an epoch of ``shuffle=False``
        asked for out of order), or more than were served.

        >>> state = train.state_dict()  # doctest: +SKIP
        >>> state["epoch"], state["position"]  # doctest: +SKIP
        (3, 120)
        """
        epoch = self._epochs.epoch if epoch is None else int(epoch)
        served, in_order = self._epochs.served(epoch)
        position = served if batches is None else int(batches)
        if not in_order or not 0 <= position <= served:
            msg = (
                f"batches={batches!r}: the first {position} batches of epoch {epoch} are not what was served "
                f"({served} batches, {'in order' if in_order else 'out of order'}); a place in an epoch needs its "
                "batches served in order: make the sequence with shuffle=True, or call fit with shuffle=False"
            )
            raise ParameterError(msg)
        return make_state(type(self).__name__, self._arrangement(), epoch=epoch, position=position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the place of ``state`` (from :meth:`state_dict`): its epoch's other batches, then whole epochs.

        Nothing before the place is read again: the epoch's pass serves the
        ``len(seq) - position`` batches left (:attr:`num_batches`), reading from
        the chunk of the first of them. Raises
        :class:`~mlaas4hep.errors.ParameterError` for a state of other data or
        another arrangement, naming the field and both values.

        >>> train.load_state_dict(json.loads(Path("loader.json").read_text()))  # doctest: +SKIP
        """
        epoch, position = place(state, type(self).__name__, self._arrangement())
        if position > len(self):
            msg = f"the state's position {position} is beyond the {len(self)} batches of an epoch"
            raise ParameterError(msg)
        self._epochs.resume(epoch, position)
        self._loaded = (epoch, position) if position else None  # a Keras fit cannot begin in this epoch
        log.info("%r resumes epoch %d after its first %d batches", self, epoch, position)

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
        return batch.as_tuple(self.outputs)

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


def _keras_caller(frame: types.FrameType | None) -> str | None:
    """Who called :meth:`RootSequence.on_epoch_end` (``frame`` is its caller's frame, or a subclass's override's).

    ``"pass"``: Keras' adapter ending an epoch's pass; ``"reset"``: Keras'
    ``EpochIterator.reset``, as a ``fit`` or ``evaluate`` begins (the adapter's
    ``on_epoch_end`` again, before the first epoch); None: anyone else.
    """
    for _ in range(8):  # the adapter's frame, above a subclass's on_epoch_end calling super()
        if _ADAPTER_END is None or frame is None:
            return None
        if frame.f_code is _ADAPTER_END:
            caller = frame.f_back
            return "reset" if caller is not None and caller.f_code is _ITERATOR_RESET else "pass"
        frame = frame.f_back
    return None


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
