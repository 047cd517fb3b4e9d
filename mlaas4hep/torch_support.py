"""What the PyTorch face stands on: ranks and workers, the DataLoader's checks, and the loader's state as a value.

:class:`~mlaas4hep.torch.RootDataset` serves, in each process, one **part**
of an epoch: the batches :meth:`~mlaas4hep.torch.RootDataset.worker_slots`
gives DataLoader worker ``worker`` of ``num_workers`` in rank ``rank`` of
``world_size``. Its state (:func:`dataset_state`) says how many of them were
served, in which epoch, and of which data (:func:`mlaas4hep.stream.state.fingerprint`), so that a
checkpoint resumes at its place (:func:`resume_position`) without reading what
was served before it. Importing this module imports PyTorch.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import check_int, check_shard
from .errors import ParameterError
from .stream.plan import EpochPlan
from .stream.state import STATE_VERSION
from .transform.outputs import Outputs

__all__ = [
    "Cursor",
    "batch_block",
    "check_not_batched_again",
    "check_state",
    "classes",
    "dataset_state",
    "processes",
    "rank_and_world_size",
    "resume_position",
    "share",
    "to_tensors",
]

_IDENTITY = ("events", "data", "seed", "shuffle", "batch_size")  # what must match for a state to be of this data
_NOT_WRITABLE = "The given NumPy array is not writable"  # the start of torch.from_numpy's UserWarning
_KEYS = ("version", "kind", "epoch", "position", "batches", "num_workers", "worker", "rank", "world_size", *_IDENTITY)


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


@dataclass
class Cursor:
    """Where this process's part of an epoch stands: ``position`` of its ``batches`` served in ``epoch``.

    The position counts the batch being yielded: it moves on before the
    batch leaves, so that a state taken once the batch is fetched (as
    torchdata's ``StatefulDataLoader`` takes it) says it was served.
    """

    epoch: int
    position: int
    batches: int
    num_workers: int
    worker: int


def dataset_state(cursor: Cursor, identity: Mapping[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """The JSON-able state of a part: the cursor, the part, and what names the data (``identity``)."""
    return {
        "version": STATE_VERSION,
        "kind": "RootDataset",
        "epoch": cursor.epoch,
        "position": cursor.position,
        "batches": cursor.batches,
        "num_workers": cursor.num_workers,
        "worker": cursor.worker,
        "rank": rank,
        "world_size": world_size,
        **{key: identity[key] for key in _IDENTITY},
    }


def check_state(state: object, identity: Mapping[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """``state`` as a plain dict, once it is a state of this dataset's data and options in this rank's layout.

    Raises
    ------
    ParameterError
        When ``state`` is no state of version :data:`STATE_VERSION`, or of
        other data, seed, shuffling or batch size (naming both values), or of
        another number of ranks or another rank, unless it is complete (its
        part of the epoch served whole: it resumes with any layout).
    """
    if not isinstance(state, Mapping) or (state.get("kind"), state.get("version")) != ("RootDataset", STATE_VERSION):
        got = (state.get("kind"), state.get("version")) if isinstance(state, Mapping) else type(state).__name__
        msg = f"state must be a RootDataset.state_dict() of version {STATE_VERSION}, got (kind, version) {got!r}"
        raise ParameterError(msg)
    missing = [key for key in _KEYS if key not in state]
    if missing:
        msg = f"state lacks {missing}: it is no RootDataset.state_dict()"
        raise ParameterError(msg)
    loaded = {key: state[key] for key in _KEYS}
    for key in ("epoch", "position", "batches", "num_workers", "worker", "rank", "world_size"):
        check_int(loaded[key], f"state[{key!r}]", minimum=0)
    if not loaded["position"] <= loaded["batches"]:
        msg = f"state['position'] must be at most state['batches']={loaded['batches']}, got {loaded['position']}"
        raise ParameterError(msg)
    for key in _IDENTITY:
        if loaded[key] != identity[key]:
            what = "other data (files, entries, cut, split or chunks): " if key in ("events", "data") else ""
            msg = f"state is of {what}{key}={loaded[key]!r}, this dataset has {key}={identity[key]!r}"
            raise ParameterError(msg)
    complete = loaded["position"] == loaded["batches"]
    if not complete and (loaded["world_size"], loaded["rank"]) != (world_size, rank):
        msg = (
            f"state is of rank {loaded['rank']} of world_size={loaded['world_size']}, this dataset rank {rank} of "
            f"world_size={world_size}: a state taken mid-epoch resumes only with the same ranks"
        )
        raise ParameterError(msg)
    return loaded


def resume_position(loaded: Mapping[str, Any], part: Cursor, rank: int, world_size: int) -> int:
    """The first of ``part``'s batches to serve in ``part.epoch``, from a state checked by :func:`check_state`.

    In the state's epoch, its position; in the next one, 0 when the state's
    part was served whole. A state taken with other workers or ranks resumes
    only when complete: its epoch then has nothing left to serve.

    Raises
    ------
    ParameterError
        Naming both numbers of workers (or both worker ids), or both epochs.

    Examples
    --------
    >>> state = {"epoch": 3, "position": 5, "batches": 24, "num_workers": 2, "worker": 1, "rank": 0, "world_size": 1}
    >>> resume_position(state, Cursor(3, 0, 24, 2, 1), 0, 1)
    5
    >>> resume_position({**state, "position": 24}, Cursor(4, 0, 47, 0, 0), 0, 1)  # served whole: the next epoch
    0
    """
    complete = loaded["position"] == loaded["batches"]
    saved = (loaded["rank"], loaded["world_size"], processes(loaded["num_workers"]), loaded["worker"])
    same = saved == (rank, world_size, processes(part.num_workers), part.worker)
    if not same and not complete:
        msg = (
            f"state is of DataLoader worker {loaded['worker']} of num_workers={loaded['num_workers']}, served by "
            f"worker {part.worker} of num_workers={part.num_workers}: a state taken mid-epoch resumes only with "
            "the same num_workers"
        )
        raise ParameterError(msg)
    if same and loaded["batches"] != part.batches:
        msg = f"state counts {loaded['batches']} batches in its part of the epoch, this dataset {part.batches}"
        raise ParameterError(msg)
    position = int(loaded["position"]) if same else part.batches
    if loaded["epoch"] == part.epoch:
        return position
    if complete and loaded["epoch"] + 1 == part.epoch:
        return 0
    where = "served whole" if complete else f"at batch {loaded['position']} of {loaded['batches']}"
    also = f", or set_epoch({loaded['epoch'] + 1})" if complete else ""
    msg = (
        f"state is of epoch {loaded['epoch']} ({where}), but epoch {part.epoch} is set: call "
        f"set_epoch({loaded['epoch']}) to serve the rest of epoch {loaded['epoch']}{also}"
    )
    raise ParameterError(msg)


def processes(num_workers: int) -> int:
    """The processes that serve a rank through a DataLoader with ``num_workers`` workers (0: the rank's own)."""
    return max(check_int(num_workers, "num_workers", minimum=0), 1)


def share(batches: int, workers: int, worker: int) -> tuple[int, int]:
    """The batches ``[first, stop)`` of a rank's ``batches`` that ``worker`` of ``workers`` serves, shuffled.

    Consecutive batches, the first ``batches % workers`` workers one more than
    the others: the rank's batches whatever the workers.

    >>> share(47, 2, 1)
    (24, 47)
    """
    small, extra = divmod(batches, workers)
    first = worker * small + min(worker, extra)
    return first, first + small + (worker < extra)


def batch_block(plan: EpochPlan, first: int, stop: int) -> EpochPlan:
    """Batches ``[first, stop)`` of ``plan`` as a plan of their own, whose shard is their events only.

    The same stream (chunks, order, shuffling): the pipeline of the block reads
    its chunks only, and its slot ``s`` is the rank's batch ``first + s``.
    """
    kw = {"num_shards": plan.num_shards, "shard_index": plan.shard_index}
    block = EpochPlan(plan.sizes, batch_size=plan.batch_size, shuffle=plan.shuffle, seed=plan.seed, **kw)
    bounds = (plan.bounds(first)[0], plan.bounds(stop - 1)[1]) if stop > first else (plan.shard[1],) * 2
    block.shard, block.batches = bounds, stop - first
    return block


def classes(outputs: Outputs) -> int:
    """How many classes the labels are the indices of: 0 for one-hot rows, or labels that may not be classes."""
    if outputs.one_hot:
        return 0
    if outputs.num_classes is not None:  # given, or found with one_hot, balance_classes: checked to be classes
        return int(outputs.num_classes)
    labels = outputs.labels
    if labels is None or not np.all((labels == np.round(labels)) & (labels >= 0)):  # a branch's, or not whole
        return 0
    return int(labels.max()) + 1


def check_not_batched_again(frame: types.FrameType | None) -> None:
    """Raise :class:`ParameterError` when a ``DataLoader`` that batches (``batch_size`` not None) iterates.

    ``frame`` is the caller of ``__iter__``: the ``DataLoader``'s fetcher, in
    the main process or a worker. Its ``auto_collation`` is True when the
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


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The rank and world size given, or torch.distributed's, or 0 and 1.

    Raises
    ------
    ParameterError
        When only one of them is given, or when neither is and torchrun's
        ``WORLD_SIZE`` says more than one process but no process group is
        initialized (every rank would serve every event), naming ``RANK``
        and ``WORLD_SIZE``.
    """
    if rank is None and world_size is None:
        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            return distributed.get_rank(), distributed.get_world_size()
        launched = os.environ.get("WORLD_SIZE", "1")
        if launched.isdigit() and int(launched) > 1:  # torchrun's ranks, before init_process_group
            msg = (
                f"WORLD_SIZE={launched} and RANK={os.environ.get('RANK')!s} are set (torchrun) but torch.distributed "
                "has no process group: every rank would serve every event. Make the dataset after "
                "init_process_group, or give rank= and world_size= (rank=0, world_size=1 for all events)"
            )
            raise ParameterError(msg)
        return 0, 1
    if rank is None or world_size is None:
        msg = f"give rank and world_size together, or neither (got rank={rank!r}, world_size={world_size!r})"
        raise ParameterError(msg)
    return check_shard(rank, world_size, ("rank", "world_size"))
