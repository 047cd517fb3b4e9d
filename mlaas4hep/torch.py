"""RootDataset: ROOT files streamed chunk by chunk into a plain PyTorch loop (the PyTorch face of the pipeline).

``pip install mlaas4hep[torch]``. Importing :mod:`mlaas4hep` never imports
PyTorch; importing this module does (and never imports Keras or TensorFlow).

>>> from torch.utils.data import DataLoader
>>> from mlaas4hep.torch import RootDataset
>>> train = RootDataset(["sig.root", "bkg.root"], labels=[1, 0], seed=1)  # doctest: +SKIP
>>> loader = DataLoader(train, batch_size=None, num_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

try:  # absolute imports: PyTorch itself, not this module
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ModuleNotFoundError as err:  # the one place the missing extra is explained
    msg = f"mlaas4hep.torch needs PyTorch ({err}): pip install 'mlaas4hep[torch]'"
    raise ModuleNotFoundError(msg, name=err.name) from err

from ._checks import check_int, is_int
from .errors import DataWarning, ParameterError
from .inputs.formats.decompression import chosen_zlib, use_zlib
from .inputs.sources import FileSource
from .options import Options, OptionView, takes_options
from .specs.values import Specs
from .stream.counters import LoaderCounters
from .stream.pipeline import Pipeline
from .stream.plan import EpochPlan
from .stream.prepare import PreparedData, labeled, prepare
from .stream.state import fingerprint
from .torch_support import (
    Cursor,
    batch_block,
    check_not_batched_again,
    check_state,
    classes,
    dataset_state,
    processes,
    rank_and_world_size,
    resume_position,
    share,
    to_tensors,
)

__all__ = ["RootDataset", "to_tensors"]

log = logging.getLogger(__name__)


@takes_options
class RootDataset(IterableDataset[tuple[Any, ...]]):
    """Batches of events from ROOT files for a plain PyTorch loop: one iteration is one epoch.

    Iterating over the dataset yields whole batches, as tensors: ``(x, y)``,
    ``(x, y, w)`` with weights, or ``(x,)`` without labels, the same batches
    as :class:`~mlaas4hep.RootSequence` serves (``x`` float32 of shape
    ``(batch, num_features)``, or ``{"features": x, "mask": m}`` with
    ``mask_output``). Give it to a ``DataLoader`` with ``batch_size=None``:
    the batches are already made. Call :meth:`set_epoch` before each epoch,
    as with ``DistributedSampler``: the epoch picks the shuffling, and without
    it every epoch is served in the order of epoch 0.

    **Labels** (:attr:`y_dtype`): class indices of more than two classes
    (``num_classes`` above 2, or per-file labels such as ``[0, 1, 2]``), not
    one-hot, are int64, as ``CrossEntropyLoss`` takes them; binary labels
    are float32, as ``BCEWithLogitsLoss`` takes them (``y.long()`` for a
    two-output ``CrossEntropyLoss``); one-hot rows, targets and weights are float32.

    **Exactly once, sharded.** Each epoch's stream is cut into ``world_size``
    consecutive blocks, balanced by events, and rank ``r`` serves block ``r``
    in :attr:`num_batches` batches of ``batch_size`` events (its last holds
    the rest), as many in every rank, which keeps DDP's ranks in step
    (:func:`~mlaas4hep.stream.plan.shard_bounds`). Shuffled, each of
    ``num_workers`` ``DataLoader`` workers serves a run of consecutive
    batches of its rank (their counts within one of each other) and reads
    only their chunks. The batches, and so ``len(ds)`` and ``len(loader)``,
    are the same with any ``num_workers``, only their order differs. Over
    all ranks and workers every selected event is served once per epoch.

    **In the files' order** (``shuffle=False``: validation, test, no labels)
    the workers of a rank take its batches in turn instead
    (:meth:`worker_slots`): the ``DataLoader``, which takes a batch from each
    worker in turn (``in_order=True``, its default), yields them in the
    files' order. Each worker then reads every chunk of its rank, so more
    workers do not read faster there.

    **Resuming mid-epoch.** :meth:`state_dict` says where this process's
    part of the epoch stands (a small JSON-able dict, no data) and
    :meth:`load_state_dict` resumes there, reading only the chunks from that
    place on: the protocol of torchdata's ``StatefulDataLoader``, which saves
    and restores each worker's part. A state is refused (ParameterError) for
    other data, options, ranks or workers, or another epoch than the one set.

    Parameters
    ----------
    files, labels
        The ROOT files and their labels, as for :class:`~mlaas4hep.RootSequence`.
    rank, world_size : int, optional
        This process's rank among ``world_size`` data-parallel processes.
        Default: ``torch.distributed``'s, when its process group is initialized
        (make the dataset after ``init_process_group``), else rank 0 of 1; a
        ParameterError when torchrun's ``WORLD_SIZE`` says more than one
        process but no process group is initialized.
        Every rank needs the same files, options and ``seed`` (required with
        ``world_size > 1`` and shuffling: every rank must draw the same shuffling).
    **options
        Every option of :class:`~mlaas4hep.options.Options` but those of Keras
        (``workers``, ``use_multiprocessing``, ``max_queue_size``), the shards
        (here ``rank`` and ``world_size``) and ``collections``, by keyword, each
        documented there. Each is checked when the dataset is made, before any
        file is opened: a bad value, or a keyword that is no option, raises
        :class:`~mlaas4hep.errors.ParameterError` naming it. ``cache_chunks``
        and ``prefetch`` hold in each ``DataLoader`` worker.

    Notes
    -----
    Reading runs on as many cores as the ``DataLoader`` has workers; the
    Keras face's ``workers``, ``use_multiprocessing`` and ``max_queue_size``,
    and its ``shard_index``/``num_shards`` (here ``rank``/``world_size``), have
    no place here. Each worker makes its own pipeline in its own process, with
    the ``fork``, ``spawn`` or ``forkserver`` start method; with
    ``persistent_workers=True`` they keep it (and its cache) from epoch to
    epoch and still see :meth:`set_epoch`, whose epoch lives in shared memory.

    **Tensors.** In a ``DataLoader`` worker the tensors are made on the
    chunk's own memory (``torch.from_numpy``) and leave the worker as copies
    in shared memory; with ``num_workers=0`` they are copies of the batch
    (a batch is a view into a chunk that the pipeline caches and reuses), so
    in both cases the loop owns its tensors and may change them in place.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> from mlaas4hep.torch import RootDataset
    >>> train = RootDataset(["sig.root", "bkg.root"], labels=[1, 0], seed=1)  # doctest: +SKIP
    >>> loader = DataLoader(train, batch_size=None, num_workers=2, persistent_workers=True)  # doctest: +SKIP
    >>> len(loader) == len(train) == train.num_batches  # an epoch's batches, any num_workers  # doctest: +SKIP
    True
    >>> model = torch.nn.Sequential(torch.nn.Linear(train.num_features, 1))  # doctest: +SKIP
    >>> optimizer = torch.optim.Adam(model.parameters())  # doctest: +SKIP
    >>> for epoch in range(5):  # doctest: +SKIP
    ...     train.set_epoch(epoch)
    ...     for x, y in loader:
    ...         loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    ...         optimizer.zero_grad()
    ...         loss.backward()
    ...         optimizer.step()
    """

    def __init__(
        self,
        files: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | FileSource],
        labels: Sequence[float] | str | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        # the ranks are the shards of the options
        self.options = Options.for_face(
            "RootDataset", options, labeled=labeled(files, labels), num_shards=self.world_size, shard_index=self.rank
        )
        self.prepared: PreparedData = prepare(files, labels, self.options)
        self._epoch: Any = multiprocessing.RawValue("q", 0)  # shared with the workers, persistent ones too
        self._served: Any = multiprocessing.RawArray("q", [-1, 0])  # the epoch served last; warned of a repeat
        self._pipeline: Pipeline | None = None
        self.stats = LoaderCounters()  # what this process's pipelines do (mlaas4hep.LoaderStats reads it)
        self._pipeline_key: tuple[int, int, int] | None = None  # (process, workers, worker) it serves
        self._cursor: Cursor | None = None  # where this process's part of the epoch stands (state_dict)
        self._loaded: dict[str, Any] | None = None  # a state loaded, not yet resumed
        self._fingerprint: str | None = None  # of the data, made once when a state is first asked for

    # -- what the dataset serves ---------------------------------------------------------------
    @property
    def specs(self) -> Specs:
        """The specs of the features (give them to a validation dataset: ``specs=train.specs``)."""
        return self.prepared.specs

    @property
    def num_features(self) -> int:
        """Width of ``x``: the input dimension of the model."""
        return self.prepared.flattener.num_features

    @property
    def feature_names(self) -> list[str]:
        """Name of each column of ``x``."""
        return self.prepared.flattener.feature_names

    @property
    def total_events(self) -> int:
        """Events of the subset per epoch, over all ranks and workers."""
        return self.prepared.n_events

    # -- the options, as given (see Options) -----------------------------------------------------------
    batch_size = OptionView()
    shuffle = OptionView()
    seed = OptionView()
    subset = OptionView()

    def epoch_plan(self, num_workers: int = 0, worker: int = 0) -> EpochPlan:
        """Where the batches of worker ``worker`` of this rank lie in each epoch, with ``num_workers`` workers.

        The rank's plan, or, shuffled with several workers, that of the
        worker's run of consecutive batches of it (whose chunks it reads).
        Raises :class:`~mlaas4hep.errors.ParameterError` with fewer events than ranks.

        >>> train.epoch_plan(2, 1).batches, len(train)  # doctest: +SKIP
        (23, 47)
        """
        workers = processes(num_workers)
        if not is_int(worker) or not 0 <= int(worker) < workers:
            msg = f"worker must be an integer in [0, {workers}), got {worker!r}"
            raise ParameterError(msg)
        plan = self._rank_plan()
        if self._in_turns(num_workers) or workers == 1:  # in turns: every worker looks at the rank's whole stream
            return plan
        return batch_block(plan, *share(plan.batches, workers, int(worker)))

    def _rank_plan(self) -> EpochPlan:
        """This rank's block of each epoch's stream and its batches, whatever the workers."""
        return self.prepared.epoch_plan(num_shards=self.world_size, shard_index=self.rank)

    def worker_slots(self, num_workers: int = 0, worker: int = 0) -> range:
        """The batches of :meth:`epoch_plan` that worker ``worker`` of ``num_workers`` serves, in its order.

        Shuffled, every batch of the worker's plan. In the files' order
        (``shuffle=False``) with several workers, the rank's batches dealt in
        turn, ``worker``, ``worker + num_workers``, ...: the ``DataLoader``,
        which takes a batch from each worker in turn, then yields them in the
        files' order (each worker reads every chunk).

        >>> RootDataset(files, labels=[1, 0], shuffle=False).worker_slots(2, 1)  # doctest: +SKIP
        range(1, 30, 2)
        """
        batches = self.epoch_plan(num_workers, worker).batches
        if self._in_turns(num_workers):
            return range(worker, batches, processes(num_workers))
        return range(batches)

    def _in_turns(self, num_workers: int) -> bool:
        """Whether the DataLoader's workers take the batches in turn (in the files' order) rather than blocks."""
        return not self.shuffle and processes(num_workers) > 1

    @property
    def num_batches(self) -> int:
        """Batches this rank serves per epoch, with any number of ``DataLoader`` workers (same as ``len``)."""
        return self._rank_plan().batches

    def __len__(self) -> int:
        """Batches per epoch of this rank: ``len(DataLoader(ds, batch_size=None))``, with any ``num_workers``."""
        return self.num_batches

    @property
    def n_events(self) -> int:
        """Events this rank serves per epoch, with any number of ``DataLoader`` workers."""
        start, stop = self._rank_plan().shard
        return stop - start

    def num_events(self, num_workers: int = 0) -> int:
        """Events this rank serves per epoch: :attr:`n_events`, the same for any ``num_workers`` (kept for 0.x)."""
        processes(num_workers)
        return self.n_events

    @property
    def y_dtype(self) -> torch.dtype | None:
        """The dtype of ``y``: ``torch.int64`` for class indices, else ``torch.float32``; None without ``y``.

        Class indices, for ``torch.nn.CrossEntropyLoss``: labels of more than
        two classes, not one-hot (``num_classes`` above 2, or per-file labels
        that are whole numbers up to 2 or more). Binary labels stay float32,
        for ``BCEWithLogitsLoss``; so do one-hot rows and regression targets.

        Examples
        --------
        >>> RootDataset(files, labels=[0, 1, 2]).y_dtype  # doctest: +SKIP
        torch.int64
        """
        outputs = self.prepared.outputs
        if outputs.targets:
            return torch.float32
        if outputs.labels is None and outputs.label_branch is None:
            return None
        return torch.int64 if classes(outputs) > 2 else torch.float32

    @property
    def chunk_reads(self) -> int:
        """Chunks read from the files so far by this process."""
        return 0 if self._pipeline is None else self._pipeline.reads

    # -- epochs and iteration ------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next iteration serves (see :meth:`set_epoch`)."""
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` from the next iteration on: its shuffling, the same in every rank and worker.

        After :meth:`load_state_dict`, set the state's epoch: the next
        iteration serves the rest of it (or, for a state of an epoch served
        whole, set the next epoch, served whole).

        >>> train.set_epoch(3)  # doctest: +SKIP
        """
        self._epoch.value = check_int(epoch, "epoch", minimum=0)
        self._served[0] = -1  # told: serving this epoch (again) is meant

    def _check_new_epoch(self, epoch: int) -> None:
        """Warn, once, when a shuffled epoch served whole is served again, with no ``set_epoch`` since: forgotten."""
        last, warned = self._served[0], self._served[1]
        if self.shuffle and last == epoch and not warned:
            self._served[1] = 1
            warnings.warn(
                f"epoch {epoch} is served again, in the same order: call set_epoch(epoch) before each epoch "
                "(as with DistributedSampler) to shuffle each anew",
                DataWarning,
                stacklevel=3,
            )

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """The batches of this rank (or, in a DataLoader worker, of this worker) in the current epoch.

        From the loaded state's place (:meth:`load_state_dict`) if there is
        one, else from the epoch's start; both taken when the first batch is asked for.
        """
        check_not_batched_again(sys._getframe(1))
        cursor = self._part(self.epoch)
        slots = self.worker_slots(cursor.num_workers, cursor.worker)
        if self._loaded is not None:
            cursor.position = resume_position(self._loaded, cursor, self.rank, self.world_size)
            self._loaded = None  # resumed: the next iteration starts its epoch from the start
        self._cursor = cursor
        yield from self._serve(cursor, slots, share=get_worker_info() is not None)

    def _serve(self, cursor: Cursor, slots: range, *, share: bool) -> Iterator[tuple[Any, ...]]:
        """Batches ``slots[cursor.position:]`` of ``cursor.epoch``, moving the cursor on before each leaves."""
        if cursor.position < len(slots):
            pipeline = self._worker_pipeline(cursor.num_workers, cursor.worker)
            if cursor.worker == 0 and cursor.position == 0:
                self._check_new_epoch(cursor.epoch)
            indices = self.y_dtype == torch.int64
            for slot in slots[cursor.position :]:
                batch = pipeline.batch(cursor.epoch, slot).as_tuple(self.prepared.outputs)
                if indices:  # class indices, for CrossEntropyLoss: a new array, owned by the tensor
                    batch = (batch[0], batch[1].astype(np.int64), *batch[2:])
                cursor.position += 1  # served once it is fetched: a state taken now counts it
                yield to_tensors(batch, share=share)
        if cursor.worker == 0 and slots:
            self._served[0] = cursor.epoch  # served whole (a look at its first batches is no epoch)

    # -- the loader's state: where each part of the epoch stands -----------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this process's part of the epoch stands, as a small JSON-able dict (no data).

        The protocol of torchdata's ``StatefulDataLoader``, which calls it in
        each DataLoader worker after each batch (so that each worker's part
        is saved), and of ``torch.distributed.checkpoint``. A state not yet
        resumed (loaded, no iteration since) is given back as loaded.

        Returns
        -------
        dict
            ``version`` and ``kind`` (``"RootDataset"``) of the format;
            ``epoch``; ``position``, the batches of this part served in the
            epoch (the one being yielded included), of its ``batches``; the
            part (``num_workers``, ``worker``, ``rank``, ``world_size``); and
            what names the data: ``seed``, ``shuffle``, ``batch_size``,
            ``events`` and ``data`` (a hash of the files' names, trees and
            entries, the cut and aliases, the split and the chunks).

        Examples
        --------
        >>> it = iter(train)  # doctest: +SKIP
        >>> _ = next(it), next(it)  # doctest: +SKIP
        >>> {k: train.state_dict()[k] for k in ("epoch", "position", "batches")}  # doctest: +SKIP
        {'epoch': 0, 'position': 2, 'batches': 47}
        """
        if self._loaded is not None:
            return dict(self._loaded)
        cursor = self._part(self.epoch) if self._cursor is None else self._cursor  # none yet: the epoch's start
        return dataset_state(cursor, self._identity(), self.rank, self.world_size)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``'s place: the next iteration serves the rest of its part of the epoch.

        Only the chunks from there on are read. Set the state's epoch before
        iterating (``for epoch in range(saved_epoch, epochs): ds.set_epoch(epoch)``);
        a state whose part of the epoch was served whole resumes into the next one too.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` gave, loaded where the same part is
            served: the same rank of ``world_size``, and the same worker of
            ``num_workers`` (``StatefulDataLoader`` loads each worker's state in
            that worker; in the main process the part is that of
            ``num_workers=0``). A state whose part was served whole resumes
            with any of them.

        Raises
        ------
        ParameterError
            A state of other data (files, entries, cut, split, chunks), seed,
            shuffling, batch size, ranks or workers, naming both values; when
            iterating, one of an epoch other than the one set (or the one
            before it, served whole), naming both epochs.

        Examples
        --------
        >>> loader = StatefulDataLoader(train, batch_size=None, num_workers=2)  # doctest: +SKIP
        >>> loader.load_state_dict(checkpoint["loader"])  # each worker's part, loaded there  # doctest: +SKIP
        >>> train.set_epoch(checkpoint["epoch"])  # doctest: +SKIP
        >>> rest = list(loader)  # the batches of the epoch not served before the checkpoint  # doctest: +SKIP
        """
        loaded = check_state(state, self._identity(), self.rank, self.world_size)
        resume_position(loaded, self._part(loaded["epoch"]), self.rank, self.world_size)  # this process's part?
        self._loaded = loaded

    def _part(self, epoch: int) -> Cursor:
        """The start of ``epoch`` for the part of it this process serves (this worker's, in a DataLoader worker)."""
        info = get_worker_info()
        num_workers, worker = (0, 0) if info is None else (info.num_workers, info.id)
        return Cursor(epoch, 0, len(self.worker_slots(num_workers, worker)), num_workers, worker)

    def _identity(self) -> dict[str, Any]:
        """What a state must match to be of this dataset: its data, seed, shuffling and batch size."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.prepared)
        return {
            "data": self._fingerprint,
            "events": self.total_events,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
        }

    def _worker_pipeline(self, num_workers: int, worker: int) -> Pipeline:
        """The pipeline of this process's shard, made on first use in each process (a worker's own)."""
        key = (os.getpid(), num_workers, worker)
        if self._pipeline is None or self._pipeline_key != key:
            if self._pipeline is not None and self._pipeline_key is not None and self._pipeline_key[0] == key[0]:
                self._pipeline.close()  # this process serves another shard now
            plan = self.epoch_plan(num_workers, worker)
            self._pipeline = Pipeline(self.prepared, plan, stats=self.stats)
            self._pipeline_key = key
            start, stop = plan.shard
            log.info(
                "rank %d of %d, worker %d of %d: events %d to %d of the epoch's stream, %d batches",
                *(self.rank, self.world_size, worker, max(num_workers, 1), start, stop, plan.batches),
            )
        return self._pipeline

    def close(self) -> None:
        """Stop this process's background reading and close its files."""
        if self._pipeline is not None:
            self._pipeline.close()

    # -- pickling: to spawned DataLoader workers, or anywhere --------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pipeline"] = state["_pipeline_key"] = state["_cursor"] = None  # every process makes its own
        if multiprocessing.context.get_spawning_popen() is None:  # not to a process being started: the value
            state["_epoch"], state["_served"] = self.epoch, list(self._served)
        state["_zlib"] = chosen_zlib()  # a spawned worker decompresses as the user chose here
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        library = state.pop("_zlib", None)
        if library is not None and chosen_zlib() != library:
            use_zlib(library)
        self.__dict__.update(state)
        if isinstance(self._epoch, int):
            epoch, self._epoch = self._epoch, multiprocessing.RawValue("q", 0)
            self._epoch.value = epoch
        if isinstance(self._served, list):
            self._served = multiprocessing.RawArray("q", self._served)

    def __repr__(self) -> str:
        return (
            f"RootDataset({len(self.prepared.sources)} files, {self.total_events} events, batches of "
            f"{self.batch_size}, {self.num_features} features, subset={self.subset!r}, "
            f"rank {self.rank} of {self.world_size})"
        )
