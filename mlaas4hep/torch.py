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
import types
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

from ._checks import check_int, check_shard, is_int
from .errors import DataWarning, ParameterError
from .inputs.formats.decompression import chosen_zlib, use_zlib
from .inputs.sources import FileSource
from .options import Options, OptionView, takes_options
from .specs.values import Specs
from .stream.counters import LoaderCounters
from .stream.pipeline import Pipeline
from .stream.plan import EpochPlan
from .stream.prepare import PreparedData, labeled, prepare

__all__ = ["RootDataset", "to_tensors"]

log = logging.getLogger(__name__)

_NOT_WRITABLE = "The given NumPy array is not writable"  # the start of torch.from_numpy's UserWarning


def to_tensors(value: Any, *, share: bool) -> Any:
    """A batch's arrays as tensors: an array becomes a tensor, a dict or tuple of arrays one of tensors.

    Parameters
    ----------
    value : numpy.ndarray, mapping or tuple of them
        What a batch holds (``x`` may be a dict of named arrays).
    share : bool
        Make each tensor on the array's own memory (``torch.from_numpy``), as
        in a DataLoader worker, whose tensors leave it as copies in shared
        memory before anyone can write to them. Otherwise an array that is a
        view into a chunk (which the pipeline caches and reuses) is copied, so
        that the caller owns what it gets and may change it in place; an array
        that owns its memory is never copied.

    Examples
    --------
    >>> x = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> to_tensors({"features": x[1:], "mask": np.ones(2)}, share=True)["features"].shape
    torch.Size([2, 2])
    """
    if isinstance(value, Mapping):
        return {key: to_tensors(item, share=share) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_tensors(item, share=share) for item in value)
    array = np.asarray(value)
    if not share and array.base is not None:  # a view into a cached chunk's buffer: the caller gets its own copy
        array = array.copy()
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        # A read-only view of a chunk's buffer, shared only where the tensor is never written to
        # (it leaves the DataLoader worker as a copy). The tensor holds the view, and so the buffer,
        # which the pipeline reuses only once nothing refers to it (mlaas4hep.stream.buffers).
        warnings.filterwarnings("ignore", message=_NOT_WRITABLE, category=UserWarning)
        return torch.from_numpy(array)


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

    **Exactly once, sharded.** Every ``DataLoader`` worker of every
    distributed rank serves its own shard of each epoch's stream: with
    ``world_size`` ranks of ``num_workers`` workers each, the stream is cut
    into ``world_size * max(num_workers, 1)`` consecutive blocks, balanced by
    events (sizes differing by at most one event), and worker ``w`` of rank
    ``r`` serves block ``r * num_workers + w``. Over all of them every
    selected event is served exactly once per epoch; a worker reads only the
    chunks its block touches; every worker, and so every rank, serves the
    same number of batches (:meth:`num_batches`), which keeps DDP's ranks in
    step. Batches are ``batch_size`` events, but each worker's last, which
    holds the rest of its block (see :func:`~mlaas4hep.stream.plan.shard_bounds`).

    **In the files' order** (``shuffle=False``: validation, test, no labels)
    the stream is cut into ``world_size`` blocks only, and the workers of a
    rank take its batches in turn (:meth:`worker_slots`): the ``DataLoader``,
    which takes a batch from each worker in turn (``in_order=True``, its
    default), yields them in the files' order. Each worker then reads every
    chunk of its rank, so more workers do not read faster there; the
    workers' batch counts differ by at most one, and only the rank's last
    batch is short.

    Parameters
    ----------
    files, labels
        The ROOT files and their labels, as for :class:`~mlaas4hep.RootSequence`.
    rank, world_size : int, optional
        This process's rank among ``world_size`` data-parallel processes.
        Default: ``torch.distributed``'s, when its process group is initialized
        (make the dataset after ``init_process_group``), else rank 0 of 1.
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
        self.rank, self.world_size = _rank_and_world_size(rank, world_size)
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

        Raises :class:`~mlaas4hep.errors.ParameterError` when there are fewer
        events than shards (``world_size * num_workers``).
        """
        workers = _processes(num_workers)
        if not is_int(worker) or not 0 <= int(worker) < workers:
            msg = f"worker must be an integer in [0, {workers}), got {worker!r}"
            raise ParameterError(msg)
        if self._in_turns(num_workers):  # every worker looks at the rank's whole stream (see worker_slots)
            return self.prepared.epoch_plan(num_shards=self.world_size, shard_index=self.rank)
        return self.prepared.epoch_plan(
            num_shards=self.world_size * workers, shard_index=self.rank * workers + int(worker)
        )

    def worker_slots(self, num_workers: int = 0, worker: int = 0) -> range:
        """The batches of :meth:`epoch_plan` that worker ``worker`` of ``num_workers`` serves, in its order.

        Shuffled, each worker serves its own block, every batch of it. In the
        files' order (``shuffle=False``) with several workers, the rank's
        batches are dealt in turn, ``worker``, ``worker + num_workers``, ...:
        the ``DataLoader``, which takes a batch from each worker in turn, then
        yields them in the files' order (each worker reads every chunk).

        Examples
        --------
        >>> test = RootDataset(files, labels=[1, 0], shuffle=False)  # doctest: +SKIP
        >>> test.worker_slots(2, 1)  # doctest: +SKIP
        range(1, 30, 2)
        """
        batches = self.epoch_plan(num_workers, worker).batches
        if self._in_turns(num_workers):
            return range(worker, batches, _processes(num_workers))
        return range(batches)

    def _in_turns(self, num_workers: int) -> bool:
        """Whether the DataLoader's workers take the batches in turn (in the files' order) rather than blocks."""
        return not self.shuffle and _processes(num_workers) > 1

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches this rank serves per epoch through a ``DataLoader`` with ``num_workers`` workers."""
        return sum(len(self.worker_slots(num_workers, w)) for w in range(_processes(num_workers)))

    def num_events(self, num_workers: int = 0) -> int:
        """Events this rank serves per epoch through a ``DataLoader`` with ``num_workers`` workers."""
        if self._in_turns(num_workers):
            start, stop = self.epoch_plan(num_workers).shard
            return stop - start
        shards = [self.epoch_plan(num_workers, w).shard for w in range(_processes(num_workers))]
        return sum(stop - start for start, stop in shards)

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
        """Serve ``epoch`` from the next iteration on: its shuffling, the same in every rank and worker."""
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
        """The batches of this rank (or, in a DataLoader worker, of this worker) in the current epoch."""
        _check_not_batched_again(sys._getframe(1))
        info = get_worker_info()
        num_workers, worker = (0, 0) if info is None else (info.num_workers, info.id)
        pipeline = self._worker_pipeline(num_workers, worker)
        epoch = self.epoch
        if worker == 0:
            self._check_new_epoch(epoch)
        for slot in self.worker_slots(num_workers, worker):
            yield to_tensors(pipeline.batch(epoch, slot).as_tuple(self.prepared.outputs), share=info is not None)
        if worker == 0:
            self._served[0] = epoch  # served whole (a look at its first batches is no epoch)

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
                "rank %d of %d, worker %d of %d: shard %d of %d, %d events in %d batches",
                *(self.rank, self.world_size, worker, max(num_workers, 1), plan.shard_index, plan.num_shards),
                *(stop - start, plan.batches),
            )
        return self._pipeline

    def close(self) -> None:
        """Stop this process's background reading and close its files."""
        if self._pipeline is not None:
            self._pipeline.close()

    # -- pickling: to spawned DataLoader workers, or anywhere --------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pipeline"] = state["_pipeline_key"] = None  # every process makes its own
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


def _processes(num_workers: int) -> int:
    """The processes that serve a rank through a DataLoader with ``num_workers`` workers (0: the rank's own)."""
    return max(check_int(num_workers, "num_workers", minimum=0), 1)


def _check_not_batched_again(frame: types.FrameType | None) -> None:
    """Raise :class:`ParameterError` when a ``DataLoader`` that batches (``batch_size`` not None) iterates.

    ``frame`` is the caller of ``__iter__``'s body: the ``DataLoader``'s fetcher,
    in the main process or a worker. Its ``auto_collation`` is True when the
    ``DataLoader`` has a ``batch_size`` (1 by default), which would stack our
    batches into a silent leading axis ``(batch_size, batch, ...)``. PyTorch
    tells a dataset nothing of its loader, so a fetcher that is not found (a
    plain ``for`` loop, another loader) is no error.
    """
    for _ in range(3):
        if frame is None:
            return
        fetcher = frame.f_locals.get("self")
        if type(fetcher).__name__ == "_IterableDatasetFetcher" and getattr(fetcher, "auto_collation", False):
            msg = (
                "give the DataLoader batch_size=None: RootDataset serves whole batches (its own batch_size), "
                "which a DataLoader with a batch_size (1 by default) would stack into a leading axis"
            )
            raise ParameterError(msg)
        frame = frame.f_back


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The rank and world size given, or torch.distributed's, or 0 and 1."""
    if rank is None and world_size is None:
        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            return distributed.get_rank(), distributed.get_world_size()
        launched = os.environ.get("WORLD_SIZE", "1")
        if launched.isdigit() and int(launched) > 1:  # torchrun's ranks, before init_process_group
            warnings.warn(
                f"WORLD_SIZE={launched} (RANK={os.environ.get('RANK')!s}) but torch.distributed is not initialized: "
                "this dataset serves every event in this rank; make it after init_process_group, or give rank= "
                "and world_size=",
                DataWarning,
                stacklevel=3,
            )
        return 0, 1
    if rank is None or world_size is None:
        msg = f"give rank and world_size together, or neither (got rank={rank!r}, world_size={world_size!r})"
        raise ParameterError(msg)
    return check_shard(rank, world_size, ("rank", "world_size"))
